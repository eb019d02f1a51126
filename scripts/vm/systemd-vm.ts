// Runs the systemd VM (disk from systemd-image.ts) under qemu TCG and drives it through
// the test agent (systemd-agent.sh) on a virtio-serial port.
//
// - qemu: Debian's kernel and the scenario's initramfs, the disk as virtio-blk (raw,
//   cache=unsafe: a scratch disk), virtio-net on user-mode networking with restrict=on: the
//   guest is 10.0.2.15 and reaches only 10.0.2.100:<guestPort> for each forward, spliced by
//   guestfwd.js to 127.0.0.1:<hostPort>. No -no-reboot: a guest reboot restarts the machine
//   with the same disk; a poweroff ends qemu.
// - ttyS0 is the console (kernel and systemd's status lines) on qemu's stdio; the agent's
//   port "e2e" is a chardev socket qemu connects to a server of the runner, so it stays
//   connected across guest reboots. Every boot the agent says HELLO with its boot id.
// - kill() SIGKILLs qemu's process group and the guestfwd helpers (slirp starts them in
//   sessions of their own), so nothing outlives the test; an exit hook does the same.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { GUEST_HOST_ADDR } from './systemd-image';

export interface SystemdVmForward {
  guestPort: number;
  hostPort: number;
}

export interface SystemdVmOptions {
  kernel: string;
  initrd: string;
  disk: string;
  forwards: SystemdVmForward[];
  /** Scratch directory (forward logs). */
  tmpDir: string;
  memoryMiB?: number;
  cpus?: number;
  /** qemu is SIGKILLed after this long whatever happens (default 30 min). */
  hardTimeoutMs?: number;
  /** Extra kernel command line. */
  append?: string;
  /** Console lines (ttyS0 and qemu's messages) as they come. */
  onConsole?: (line: string) => void;
}

export interface Hello {
  bootId: string;
  /** Guest uptime (s) when the agent started. */
  uptime: number;
  /** ms since qemu started. */
  atMs: number;
}

export interface AgentResult {
  rc: number;
  out: string;
}

const live = new Set<SystemdVm>();
let hookInstalled = false;

function splitter(onLine: (line: string) => void): (b: Buffer) => void {
  let partial = '';
  const utf8 = new StringDecoder('utf8'); // a character split between two reads stays whole
  return (b: Buffer): void => {
    partial += utf8.write(b);
    let i: number;
    while ((i = partial.indexOf('\n')) >= 0) {
      onLine(partial.slice(0, i).replace(/\x1b\[[0-9;?]*[a-zA-Z]/g, '').replace(/\r/g, ''));
      partial = partial.slice(i + 1);
    }
  };
}

export class SystemdVm {
  readonly console: string[] = [];
  readonly hellos: Hello[] = [];
  exitCode: number | null = null;
  private child?: ChildProcess;
  private server?: net.Server;
  private sock?: net.Socket;
  private nextId = 1;
  private pending = new Map<number, { resolve: (r: AgentResult) => void; reject: (e: Error) => void }>();
  private waiters: (() => void)[] = [];
  private exited!: Promise<void>;
  private fwdLogs: string[] = [];
  private t0 = Date.now();

  private constructor(private readonly o: SystemdVmOptions) {}

  static async start(o: SystemdVmOptions): Promise<SystemdVm> {
    const vm = new SystemdVm(o);
    live.add(vm);
    if (!hookInstalled) {
      hookInstalled = true;
      process.on('exit', () => {
        for (const v of live) v.kill();
      });
    }
    try {
      await vm.boot();
    } catch (err) {
      vm.kill();
      throw err;
    }
    return vm;
  }

  private note(line: string): void {
    this.console.push(line);
    if (this.console.length > 5000) this.console.splice(0, this.console.length - 5000);
    this.o.onConsole?.(line);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private onAgentLine(line: string): void {
    let m: RegExpExecArray | null;
    if ((m = /^HELLO (\S+) ([\d.]+)$/.exec(line))) {
      // A new agent: commands sent to the one before (another boot, or a restarted agent) never answer.
      this.failPending(new Error(`the guest agent started again (boot ${m[1]})`));
      this.hellos.push({ bootId: m[1], uptime: Number(m[2]), atMs: Date.now() - this.t0 });
      this.wake();
    } else if ((m = /^DONE (\d+) (\d+) ?(\S*)$/.exec(line))) {
      const p = this.pending.get(Number(m[1]));
      if (p) {
        this.pending.delete(Number(m[1]));
        p.resolve({ rc: Number(m[2]), out: Buffer.from(m[3], 'base64').toString('utf8') });
      }
    } else {
      this.note(`agent| ${line}`);
    }
  }

  private async boot(): Promise<void> {
    const fwd = path.join(__dirname, 'guestfwd.js');
    if (!fs.existsSync(fwd)) throw new Error(`${fwd} missing (run tsc)`);
    if (/[,\s]/.test(process.execPath + fwd + this.o.tmpDir + this.o.disk)) throw new Error('paths with commas or spaces are not supported by qemu options');
    this.server = net.createServer((s) => {
      if (this.sock) this.sock.destroy();
      this.sock = s;
      s.setNoDelay(true);
      s.on('data', splitter((l) => this.onAgentLine(l)));
      s.on('error', () => undefined);
    });
    const port = await new Promise<number>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(0, '127.0.0.1', () => resolve((this.server!.address() as net.AddressInfo).port));
    });
    const netdev = ['user', 'id=n0', 'restrict=on'];
    for (const f of this.o.forwards) {
      const lf = path.join(this.o.tmpDir, `fwd-${f.guestPort}.log`);
      this.fwdLogs.push(lf);
      netdev.push(`guestfwd=tcp:${GUEST_HOST_ADDR}:${f.guestPort}-cmd:${process.execPath} ${fwd} ${f.hostPort} ${lf}`);
    }
    const append = [
      'console=ttyS0', 'root=/dev/vda', 'rw', 'panic=-1', 'loglevel=4', 'net.ifnames=0', 'log_buf_len=4M', 'edd=off',
      'systemd.show_status=1', ...(this.o.append ? [this.o.append] : []),
    ].join(' ');
    const args = [
      '-accel', process.env.ISCSI_NBD_VM_ACCEL ?? 'tcg',
      '-cpu', 'max',
      '-m', String(this.o.memoryMiB ?? 1536),
      '-smp', String(this.o.cpus ?? 1),
      '-nographic',
      '-kernel', this.o.kernel,
      '-initrd', this.o.initrd,
      '-append', append,
      '-drive', `file=${this.o.disk},format=raw,if=virtio,cache=unsafe`,
      '-netdev', netdev.join(','),
      '-device', 'virtio-net-pci,netdev=n0,romfile=',
      '-device', 'virtio-serial-pci',
      '-chardev', `socket,id=e2e,host=127.0.0.1,port=${port}`,
      '-device', 'virtserialport,chardev=e2e,name=e2e',
      '-serial', 'mon:stdio',
    ];
    const hardS = Math.ceil((this.o.hardTimeoutMs ?? 1800000) / 1000);
    this.t0 = Date.now();
    const child = spawn('timeout', ['-s', 'KILL', String(hardS), 'qemu-system-x86_64', ...args], { detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout!.on('data', splitter((l) => this.note(l)));
    child.stderr!.on('data', splitter((l) => this.note(`qemu| ${l}`)));
    this.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, sig) => {
        this.exitCode = code ?? (sig ? 128 : -1);
        this.failPending(new Error(`qemu exited (${code ?? sig})`));
        this.wake();
        resolve();
      });
      child.once('error', (err) => {
        this.note(`spawn qemu failed: ${err.message}`);
        this.exitCode = -1;
        this.wake();
        resolve();
      });
    });
  }

  /** ms since qemu started. */
  elapsedMs(): number {
    return Date.now() - this.t0;
  }

  private failPending(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  private async until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (this.exitCode !== null) throw new Error(`qemu exited (${this.exitCode}) while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 1000));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** The next HELLO from a boot other than those in `after` (by boot id). */
  async waitBoot(timeoutMs: number, after: string[] = []): Promise<Hello> {
    const fresh = (): Hello | undefined => this.hellos.find((h) => !after.includes(h.bootId));
    await this.until(() => fresh() !== undefined, timeoutMs, 'the guest agent (HELLO)');
    return fresh()!;
  }

  /** Send a command and do not wait for it (a reboot or poweroff, whose answer may never come). */
  send(script: string): void {
    if (!this.sock || this.sock.destroyed) throw new Error('the guest agent is not connected');
    this.sock.write(`RUN ${this.nextId++} ${Buffer.from(script).toString('base64')}\n`);
  }

  /** Run a bash script in the guest as root; resolves with its exit code and output. */
  run(script: string, timeoutMs = 120000): Promise<AgentResult> {
    if (!this.sock || this.sock.destroyed) return Promise.reject(new Error('the guest agent is not connected'));
    const id = this.nextId++;
    return new Promise<AgentResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`guest command ${id} took more than ${timeoutMs} ms:\n${script.slice(0, 300)}`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sock!.write(`RUN ${id} ${Buffer.from(script).toString('base64')}\n`);
    });
  }

  /** Wait for qemu to end (the guest powered off); false on timeout. */
  async waitExit(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const ok = await Promise.race([
      this.exited.then(() => true),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(false), timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    return ok;
  }

  /** TCP connections the guest opened through each forward, by guest port. */
  connections(): Record<number, number> {
    const out: Record<number, number> = {};
    this.o.forwards.forEach((f, i) => {
      try {
        out[f.guestPort] = fs.readFileSync(this.fwdLogs[i], 'utf8').split('\n').filter((l) => / connect$/.test(l)).length;
      } catch {
        out[f.guestPort] = 0;
      }
    });
    return out;
  }

  /** SIGKILL qemu (its group) and the forward helpers. Safe to call twice. */
  kill(): void {
    if (this.child?.pid !== undefined && this.exitCode === null) {
      try {
        process.kill(-this.child.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const f of this.fwdLogs) {
      let text = '';
      try {
        text = fs.readFileSync(f, 'utf8');
      } catch {
        continue;
      }
      for (const pid of new Set(text.split('\n').map((l) => Number(l.split(' ')[1])))) {
        if (!Number.isInteger(pid) || pid <= 1) continue;
        try {
          if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('guestfwd.js')) process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    this.sock?.destroy();
    this.server?.close();
    this.failPending(new Error('the VM was killed'));
    live.delete(this);
  }

  /** kill(), then wait (bounded) for qemu to be gone. */
  async stop(): Promise<void> {
    this.kill();
    if (this.child) await this.waitExit(5000);
  }
}
