// A private tgtd (Debian `tgt`) instance for tests.
//
// tgtd is started in the foreground in its own process group:
//   tgtd -f -C N --iscsi portal=127.0.0.1:PORT
// and configured with `tgtadm -C N --lld iscsi ...`. N keys the control socket
// (/var/run/tgtd/socket.N plus a lockf'd socket.N.lock); a second tgtd on the same N
// exits with "another tgtd is using ...", so N is picked at random and retried.
// A portal that fails to bind does NOT make tgtd exit (it logs "failed to
// create/bind to portal" and keeps running), so startup watches stderr for that
// and retries on another port. tgtd ignores SIGTERM; it exits on
// `tgtadm --op delete --mode system`, which is refused (EINVAL) while targets
// exist, so stop() deletes the targets first and SIGKILLs the group anyway.
// The configuration lives only in tgtd's memory: every configuring call is
// recorded so restart() can replay it.

import { spawn, execFile, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitForPort } from './ports';

export const TGTD_BIN = process.env.TGTD_BIN ?? 'tgtd';
export const TGTADM_BIN = process.env.TGTADM_BIN ?? 'tgtadm';
const CONTROL_DIR = '/var/run/tgtd';
const TGTADM_TIMEOUT_MS = 15000;
const START_TIMEOUT_MS = 10000;
const LOG_LIMIT = 256 * 1024;

export interface StartTgtdOptions {
  /** Portal port; a free one is picked when omitted. */
  port?: number;
  /**
   * Run tgtd inside this network namespace (`ip netns exec NS tgtd ...`); its
   * control socket is a path, so tgtadm still reaches it from here.
   */
  netns?: string;
  /** Portal address (default 127.0.0.1); with `netns`, an address of that namespace. */
  host?: string;
  /** Extra tgtd arguments (for example ['-d', '1'] for debug output). */
  extraArgs?: string[];
  /** Attempts at finding a free control number / port. */
  attempts?: number;
}

export interface LunOptions {
  /** Existing backing file or device. Either path or size is required (except for bstype null). */
  path?: string;
  /** Size in bytes of a sparse backing file created in the instance's temp dir. */
  size?: number;
  /** Backing store type; 'null' uses /dev/null and stores nothing. */
  bstype?: 'rdwr' | 'null';
  /** Logical block size; tgtd's default is 512. */
  blockSize?: 512 | 4096;
  /** Enable thin provisioning (UNMAP, LBPME, VPD B2). */
  thin?: boolean;
  /** tgtd --bsoflags: 'sync', 'direct' or 'sync:direct'. */
  bsoflags?: 'sync' | 'direct' | 'sync:direct';
}

export interface LunInfo {
  tid: number;
  lun: number;
  /** Backing path ('/dev/null' for bstype null). */
  path: string;
  blockSize: number;
  /** Whether the helper created (and will delete) the backing file. */
  owned: boolean;
}

interface ProcState {
  child: ChildProcess;
  control: number;
  log: { text: string };
  exited: Promise<void>;
  exitCode: number | null;
  exitSignal: NodeJS.Signals | null;
  hasExited: boolean;
}

const live = new Set<{ killSync(): void }>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort if a test forgot stop(): never leave a target (tgtd, istgt) behind.
  process.on('exit', () => {
    for (const t of live) t.killSync();
  });
}

/** killSync() this target when the process exits, until forgetAtExit(). */
export function killAtExit(t: { killSync(): void }): void {
  live.add(t);
  installExitHook();
}

export function forgetAtExit(t: { killSync(): void }): void {
  live.delete(t);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function randomControlPort(): number {
  // tgtd accepts -C values up to 65535.
  return 20000 + Math.floor(Math.random() * 45000);
}

export class TgtadmError extends Error {
  constructor(
    message: string,
    readonly args: string[],
    readonly stderr: string,
    readonly exitCode: number | null,
  ) {
    super(message);
    this.name = 'TgtadmError';
  }
}

/** Run tgtadm with a timeout; throws TgtadmError with its stderr on failure. Resolves with stdout. */
export function runTgtadm(control: number, args: string[], timeoutMs = TGTADM_TIMEOUT_MS): Promise<string> {
  const argv = ['-C', String(control), ...args];
  return new Promise((resolve, reject) => {
    execFile(TGTADM_BIN, argv, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (!err) {
        resolve(stdout);
        return;
      }
      const e = err as NodeJS.ErrnoException & { code?: unknown; killed?: boolean };
      const why = e.killed ? `timed out after ${timeoutMs} ms` : `failed (exit ${String(e.code)})`;
      reject(
        new TgtadmError(
          `tgtadm ${argv.join(' ')} ${why}: ${String(stderr).trim() || e.message}`,
          argv,
          String(stderr),
          typeof e.code === 'number' ? e.code : null,
        ),
      );
    });
  });
}

export class Tgtd {
  readonly port: number;
  readonly portal: string;
  readonly host: string;
  readonly netns?: string;
  /** Temp dir holding the backing files the helper creates. */
  readonly dir: string;
  private proc: ProcState | null = null;
  /** tgtadm argument lists (without -C) in the order they succeeded; replayed by restart(). */
  private readonly recorded: string[][] = [];
  private readonly luns = new Map<string, LunInfo>();
  private readonly targets = new Map<number, string>();
  private readonly extraArgs: string[];
  private stopped = false;

  private constructor(port: number, dir: string, extraArgs: string[], where: { host?: string; netns?: string } = {}) {
    this.port = port;
    this.host = where.host ?? '127.0.0.1';
    if (where.netns) this.netns = where.netns;
    this.portal = `${this.host.includes(':') ? `[${this.host}]` : this.host}:${port}`;
    this.dir = dir;
    this.extraArgs = extraArgs;
  }

  /** Start a tgtd; see startTgtd(). */
  static async start(opts: StartTgtdOptions = {}): Promise<Tgtd> {
    const attempts = opts.attempts ?? 8;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tgtd-test-'));
    let lastErr: unknown;
    for (let i = 0; i < attempts; i++) {
      // A namespace of the test's own has every port free.
      const port = opts.port ?? (opts.netns ? 3260 : await freePort());
      const t = new Tgtd(port, dir, opts.extraArgs ?? [], { host: opts.host, netns: opts.netns });
      try {
        await t.spawnProcess(attempts);
        killAtExit(t);
        return t;
      } catch (err) {
        lastErr = err;
        // A fixed port that is taken will stay taken; do not spin on it.
        if (opts.port !== undefined && err instanceof PortBusyError) break;
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not start tgtd: ${(lastErr as Error)?.message ?? String(lastErr)}`);
  }

  /** The control number (-C N) of the running process. */
  get control(): number {
    if (!this.proc) throw new Error('tgtd is not running');
    return this.proc.control;
  }

  /** Process id of tgtd (also its process group id), or undefined when not running. */
  get pid(): number | undefined {
    return this.proc?.child.pid;
  }

  /** Everything tgtd printed on stdout/stderr (last 256 KiB). */
  get log(): string {
    return this.proc?.log.text ?? '';
  }

  /** iscsi:// URL of a LUN (or of the portal, when tid is omitted). */
  url(tid?: number, lun?: number, auth?: { user: string; secret: string }): string {
    const cred = auth ? `${encodeURIComponent(auth.user)}%${encodeURIComponent(auth.secret)}@` : '';
    if (tid === undefined) return `iscsi://${cred}${this.portal}`;
    const iqn = this.targets.get(tid);
    if (!iqn) throw new Error(`no target ${tid}`);
    return `iscsi://${cred}${this.portal}/${iqn}/${lun ?? 1}`;
  }

  /** The IQN of a target created with addTarget. */
  iqn(tid: number): string {
    const iqn = this.targets.get(tid);
    if (!iqn) throw new Error(`no target ${tid}`);
    return iqn;
  }

  /** Details of a LUN added with addLun (backing path, block size). */
  lunInfo(tid: number, lun: number): LunInfo {
    const info = this.luns.get(`${tid}/${lun}`);
    if (!info) throw new Error(`no LUN ${tid}/${lun}`);
    return info;
  }

  /** Run tgtadm against this instance (no recording). */
  tgtadm(args: string[], timeoutMs?: number): Promise<string> {
    return runTgtadm(this.control, args, timeoutMs);
  }

  private async configure(args: string[]): Promise<string> {
    const out = await this.tgtadm(args);
    this.recorded.push(args);
    return out;
  }

  async addTarget(tid: number, iqn: string): Promise<void> {
    await this.configure(['--lld', 'iscsi', '--mode', 'target', '--op', 'new', '--tid', String(tid), '--targetname', iqn]);
    this.targets.set(tid, iqn);
  }

  async deleteTarget(tid: number, force = true): Promise<void> {
    const args = ['--lld', 'iscsi', '--mode', 'target', '--op', 'delete', '--tid', String(tid)];
    if (force) args.push('--force');
    await this.configure(args);
    this.targets.delete(tid);
    for (const k of [...this.luns.keys()]) if (k.startsWith(`${tid}/`)) this.luns.delete(k);
  }

  /** Add a LUN. A size-based LUN gets a sparse file in this instance's temp dir. Returns its details. */
  async addLun(tid: number, lun: number, o: LunOptions): Promise<LunInfo> {
    const bstype = o.bstype ?? 'rdwr';
    let backing: string;
    let owned = false;
    if (bstype === 'null') {
      backing = o.path ?? '/dev/null';
    } else if (o.path) {
      backing = o.path;
    } else if (o.size !== undefined) {
      backing = path.join(this.dir, `t${tid}-lun${lun}.img`);
      if (!fs.existsSync(backing)) {
        const fd = fs.openSync(backing, 'w');
        try {
          fs.ftruncateSync(fd, o.size);
        } finally {
          fs.closeSync(fd);
        }
      }
      owned = true;
    } else {
      throw new Error('addLun needs path or size');
    }
    const args = ['--lld', 'iscsi', '--mode', 'logicalunit', '--op', 'new', '--tid', String(tid), '--lun', String(lun),
      '--backing-store', backing, '--bstype', bstype];
    if (o.blockSize !== undefined) args.push(`--blocksize=${o.blockSize}`);
    if (o.bsoflags) args.push('--bsoflags', o.bsoflags);
    await this.configure(args);
    if (o.thin) {
      await this.configure(['--lld', 'iscsi', '--mode', 'logicalunit', '--op', 'update', '--tid', String(tid),
        '--lun', String(lun), '--params', 'thin_provisioning=1']);
    }
    const info: LunInfo = { tid, lun, path: backing, blockSize: o.blockSize ?? 512, owned };
    this.luns.set(`${tid}/${lun}`, info);
    return info;
  }

  /**
   * Give a LUN another size, as an array does when it is grown: tgtd cannot
   * resize a LUN, so delete it and add it again over the same file, now
   * `size` bytes. Its identity (scsi_id, scsi_sn: from the tid and LUN
   * number, or `params` given again) stays.
   */
  async resizeLun(tid: number, lun: number, size: number, params?: string): Promise<void> {
    const old = this.luns.get(`${tid}/${lun}`);
    if (!old) throw new Error(`no LUN ${tid}/${lun}`);
    await this.deleteLun(tid, lun);
    fs.truncateSync(old.path, size);
    await this.addLun(tid, lun, { path: old.path, blockSize: old.blockSize as 512 | 4096 });
    this.luns.set(`${tid}/${lun}`, old);
    if (params) await this.configure(['--lld', 'iscsi', '--mode', 'logicalunit', '--op', 'update', '--tid', String(tid), '--lun', String(lun), '--params', params]);
  }

  async deleteLun(tid: number, lun: number): Promise<void> {
    await this.configure(['--lld', 'iscsi', '--mode', 'logicalunit', '--op', 'delete', '--tid', String(tid), '--lun', String(lun)]);
    this.luns.delete(`${tid}/${lun}`);
  }

  /** Accept every initiator (-I ALL). */
  async bindAll(tid: number): Promise<void> {
    await this.configure(['--lld', 'iscsi', '--mode', 'target', '--op', 'bind', '--tid', String(tid), '--initiator-address', 'ALL']);
  }

  /** Accept only this initiator name. */
  async bindInitiatorName(tid: number, iqn: string): Promise<void> {
    await this.configure(['--lld', 'iscsi', '--mode', 'target', '--op', 'bind', '--tid', String(tid), '--initiator-name', iqn]);
  }

  /** Create a CHAP account (accounts are global in tgtd; bind them per target). */
  async addAccount(user: string, secret: string): Promise<void> {
    await this.configure(['--lld', 'iscsi', '--mode', 'account', '--op', 'new', '--user', user, '--password', secret]);
  }

  /** Require CHAP with this account to log in to tid. */
  async bindAccount(tid: number, user: string): Promise<void> {
    await this.configure(['--lld', 'iscsi', '--mode', 'account', '--op', 'bind', '--tid', String(tid), '--user', user]);
  }

  /** The account the target proves itself with (mutual CHAP). */
  async setOutgoingAccount(tid: number, user: string): Promise<void> {
    await this.configure(['--lld', 'iscsi', '--mode', 'account', '--op', 'bind', '--tid', String(tid), '--user', user, '--outgoing']);
  }

  /** Change a target's iSCSI parameter (e.g. MaxRecvDataSegmentLength). */
  async setTargetParam(tid: number, name: string, value: string | number): Promise<void> {
    await this.configure(['--lld', 'iscsi', '--mode', 'target', '--op', 'update', '--tid', String(tid), '--name', name, '--value', String(value)]);
  }

  /** SIGKILL the process group (fault injection). Configuration is kept for restart(). */
  async kill(): Promise<void> {
    const p = this.proc;
    if (!p) return;
    this.proc = null;
    killGroup(p.child);
    await withTimeout(p.exited, 5000);
    removeControlFiles(p.control);
  }

  /** Start tgtd again on the same port and replay the recorded configuration. */
  async restart(): Promise<void> {
    if (this.stopped) throw new Error('tgtd was stopped');
    if (this.proc) await this.kill();
    // The port may be held briefly by the kernel or stolen; retry on the same port for a while.
    const deadline = Date.now() + START_TIMEOUT_MS;
    let lastErr: unknown;
    while (Date.now() < deadline) {
      try {
        await this.spawnProcess(8);
        lastErr = undefined;
        break;
      } catch (err) {
        lastErr = err;
        await sleep(200);
      }
    }
    if (lastErr) throw lastErr;
    for (const args of this.recorded) await this.tgtadm(args);
  }

  /** Delete everything, shut tgtd down, kill its group and remove temp files. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    const p = this.proc;
    this.proc = null;
    forgetAtExit(this);
    if (p && !p.hasExited) {
      try {
        for (const tid of this.targets.keys()) {
          await runTgtadm(p.control, ['--lld', 'iscsi', '--mode', 'target', '--op', 'delete', '--tid', String(tid), '--force'], 5000).catch(() => undefined);
        }
        await runTgtadm(p.control, ['--op', 'delete', '--mode', 'system'], 5000).catch(() => undefined);
        await withTimeout(p.exited, 2000);
      } finally {
        killGroup(p.child);
        await withTimeout(p.exited, 5000);
      }
    }
    if (p) removeControlFiles(p.control);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** Synchronous SIGKILL, for process 'exit' handlers. */
  killSync(): void {
    if (this.proc) {
      killGroup(this.proc.child);
      removeControlFiles(this.proc.control);
      this.proc = null;
    }
    try {
      fs.rmSync(this.dir, { recursive: true, force: true });
    } catch {
      /* best effort at exit */
    }
  }

  private async spawnProcess(attempts: number): Promise<void> {
    let lastErr: unknown;
    for (let i = 0; i < attempts; i++) {
      const control = randomControlPort();
      try {
        this.proc = await this.trySpawn(control);
        return;
      } catch (err) {
        lastErr = err;
        if (err instanceof PortBusyError) throw err;
      }
    }
    throw lastErr;
  }

  private async trySpawn(control: number): Promise<ProcState> {
    fs.mkdirSync(CONTROL_DIR, { recursive: true });
    const args = ['-f', '-C', String(control), '--iscsi', `portal=${this.portal}`, ...this.extraArgs];
    // `ip netns exec` execs tgtd: the pid and process group are tgtd's own.
    const child = this.netns
      ? spawn('ip', ['netns', 'exec', this.netns, TGTD_BIN, ...args], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(TGTD_BIN, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const log = { text: '' };
    const append = (b: Buffer): void => {
      log.text += b.toString();
      if (log.text.length > LOG_LIMIT) log.text = log.text.slice(-LOG_LIMIT);
    };
    child.stdout!.on('data', append);
    child.stderr!.on('data', append);
    const st: ProcState = {
      child,
      control,
      log,
      exitCode: null,
      exitSignal: null,
      hasExited: false,
      exited: Promise.resolve(),
    };
    st.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, sig) => {
        st.hasExited = true;
        st.exitCode = code;
        st.exitSignal = sig;
        resolve();
      });
      child.once('error', (err) => {
        append(Buffer.from(`spawn error: ${err.message}\n`));
        st.hasExited = true;
        resolve();
      });
    });
    child.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    (child.stderr as unknown as { unref?: () => void }).unref?.();

    const deadline = Date.now() + START_TIMEOUT_MS;
    const fail = (err: Error): never => {
      killGroup(child);
      throw err;
    };
    for (;;) {
      if (/failed to create\/bind to portal|unable to bind server socket/.test(log.text)) {
        fail(new PortBusyError(`tgtd could not bind ${this.portal}: ${log.text.trim()}`));
      }
      if (st.hasExited) {
        // Most likely the control number is taken ("another tgtd is using ...").
        throw new Error(`tgtd -C ${control} exited (code ${st.exitCode}, signal ${st.exitSignal}): ${log.text.trim()}`);
      }
      if (Date.now() > deadline) fail(new Error(`tgtd did not come up within ${START_TIMEOUT_MS} ms: ${log.text.trim()}`));
      const ok = await runTgtadm(control, ['--lld', 'iscsi', '--mode', 'target', '--op', 'show'], 2000).then(() => true, () => false);
      if (ok && !st.hasExited) break;
      await sleep(50);
    }
    try {
      if (this.netns) await waitForPortInNetns(this.netns, this.port, Math.max(500, deadline - Date.now()));
      else await waitForPort(this.port, '127.0.0.1', Math.max(500, deadline - Date.now()));
    } catch (err) {
      fail(err as Error);
    }
    // The bind error can race with the control socket coming up; look once more.
    if (/failed to create\/bind to portal|unable to bind server socket/.test(log.text) || st.hasExited) {
      fail(new PortBusyError(`tgtd could not bind ${this.portal}: ${log.text.trim()}`));
    }
    return st;
  }
}

class PortBusyError extends Error {}

/** A listener on `port` inside a network namespace (ss there), within timeoutMs. */
async function waitForPortInNetns(netns: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const out = await new Promise<string>((resolve) => {
      execFile('ip', ['netns', 'exec', netns, 'ss', '-Hltn', `sport = :${port}`], { timeout: 5000 }, (_err, stdout) => resolve(String(stdout ?? '')));
    });
    if (out.trim() !== '') return;
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} in network namespace ${netns} after ${timeoutMs} ms`);
    await sleep(50);
  }
}

export function killGroup(child: ChildProcess, sig: NodeJS.Signals = 'SIGKILL'): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    try {
      child.kill(sig);
    } catch {
      /* already gone */
    }
  }
}

function removeControlFiles(control: number): void {
  for (const f of [`socket.${control}`, `socket.${control}.lock`]) {
    try {
      fs.rmSync(path.join(CONTROL_DIR, f), { force: true });
    } catch {
      /* best effort */
    }
  }
}

export async function withTimeout(p: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise<void>((r) => { timer = setTimeout(r, ms); })]);
  if (timer) clearTimeout(timer);
}

/** Start a private tgtd on a free 127.0.0.1 port. Always call stop() (t.after). */
export function startTgtd(opts?: StartTgtdOptions): Promise<Tgtd> {
  return Tgtd.start(opts);
}

export interface LunSpec extends LunOptions {
  /** LUN number; defaults to 1, 2, ... in order. */
  lun?: number;
}

export interface TargetSpec {
  /** Target id; defaults to 1, 2, ... in order. */
  tid?: number;
  /** Target IQN; defaults to iqn.2026-11.test.iscsi-nbd:t<tid>. */
  iqn?: string;
  luns: LunSpec[];
  /** Incoming CHAP: the initiator must log in with this account. */
  chap?: { user: string; secret: string };
  /** Outgoing CHAP account (mutual CHAP; needs chap too). */
  mutualChap?: { user: string; secret: string };
  /** Initiator IQNs allowed; default: ALL. */
  initiators?: string[];
}

export interface TgtdSpec extends StartTgtdOptions {
  targets: TargetSpec[];
}

/** Start a tgtd and create the targets and LUNs in spec. Stops tgtd again if configuring fails. */
export async function startTgtdWithLuns(spec: TgtdSpec): Promise<Tgtd> {
  const t = await startTgtd(spec);
  try {
    const accounts = new Set<string>();
    let tidSeq = 1;
    for (const ts of spec.targets) {
      const tid = ts.tid ?? tidSeq;
      tidSeq = tid + 1;
      await t.addTarget(tid, ts.iqn ?? `iqn.2026-11.test.iscsi-nbd:t${tid}`);
      let lunSeq = 1;
      for (const l of ts.luns) {
        const lun = l.lun ?? lunSeq;
        lunSeq = lun + 1;
        await t.addLun(tid, lun, l);
      }
      if (ts.initiators && ts.initiators.length > 0) {
        for (const i of ts.initiators) await t.bindInitiatorName(tid, i);
      } else {
        await t.bindAll(tid);
      }
      if (ts.chap) {
        if (!accounts.has(ts.chap.user)) {
          await t.addAccount(ts.chap.user, ts.chap.secret);
          accounts.add(ts.chap.user);
        }
        await t.bindAccount(tid, ts.chap.user);
      }
      if (ts.mutualChap) {
        if (!accounts.has(ts.mutualChap.user)) {
          await t.addAccount(ts.mutualChap.user, ts.mutualChap.secret);
          accounts.add(ts.mutualChap.user);
        }
        await t.setOutgoingAccount(tid, ts.mutualChap.user);
      }
    }
    return t;
  } catch (err) {
    await t.stop();
    throw err;
  }
}
