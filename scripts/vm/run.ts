// Boots a Debian kernel under qemu TCG against an NBD server on the host and runs the
// kernel end-to-end scenario (scripts/vm/guest-steps.sh) in it.
//
// Network: user-mode networking with restrict=on, so the guest reaches nothing but
// one guestfwd rule: 10.0.2.100:10809 -> `node guestfwd.js PORT`, one helper process
// per connection, spliced to 127.0.0.1:PORT. (nbd-client 3.24 always dials 10809,
// even with port= in /etc/nbdtab, so the guest side port is fixed.)
// Results are the PASS/FAIL lines the guest prints on the serial console.

import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { buildVmImage, vmTmpDir, type VmImage } from './build';
import { cpioNewc } from './cpio';

/** Guest steps in the order they run. */
export const GUEST_STEPS = [
  'modules',
  'network',
  'attach',
  'mkfs-mount',
  'write',
  'trim',
  'umount-detach',
  'fsck',
  'verify',
  'detach',
  'automount',
  'verify-automount',
  'parallel-write',
  'fsck-automount',
  'kernel-log',
  'report',
] as const;
export const HOST_CHECK_STEP = 'host-check';
export const GUEST_SERVER_ADDR = '10.0.2.100';

export interface StepResult {
  name: string;
  ok: boolean;
  detail: string;
}

export interface GuestReport {
  /** md5 of files the guest wrote, keyed by path relative to the filesystem root (e.g. 'big.bin'). */
  sums: Record<string, string>;
}

export interface KernelScenarioOptions {
  /** NBD server on 127.0.0.1 the guest is forwarded to. */
  nbdPort: number;
  /** Export name (nbd-client -N). */
  exportName: string;
  /** Block size for nbd-client -b; must equal the LUN's logical block size. */
  blockSize: 512 | 1024 | 2048 | 4096;
  /** Step 6: check the LUN on the host without the bridge. Throw (or return a string) to fail. */
  hostCheck?: (report: GuestReport) => Promise<string | void>;
  /** Kill qemu after this long (default 300 s). */
  timeoutMs?: number;
  cacheDir?: string;
  /** Size of the big random file in MiB (default 32). */
  bigMiB?: number;
  /** Number of small files (default 300). */
  smallFiles?: number;
  /** qemu -accel value (default 'tcg'; env ISCSI_NBD_VM_ACCEL overrides). */
  accel?: string;
  qemuBinary?: string;
  /** Progress lines (build, console). */
  onLine?: (line: string) => void;
}

export interface KernelScenarioResult {
  ok: boolean;
  /** Every guest step plus 'host-check', in order; steps that did not run are ok=false with a reason. */
  steps: StepResult[];
  /** First failed step, if any. */
  failedStep?: string;
  /** Serial console output. */
  log: string;
  /** Checksums the guest reported. */
  sums: Record<string, string>;
  /** TCP connections the guest opened to the NBD server (one guestfwd helper each). */
  connections: number;
  image: VmImage;
  /** From qemu start to guest DONE (or kill). */
  vmMs: number;
}

function findSource(name: string): string {
  for (const p of [path.join(__dirname, name), path.resolve(__dirname, '../../../scripts/vm', name)]) {
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`cannot find scripts/vm/${name}`);
}

const liveGroups = new Set<number>();
let hookInstalled = false;
function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  liveGroups.delete(pid);
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** Boot the VM against 127.0.0.1:nbdPort and run the scenario. Never throws for scenario failures. */
export async function runKernelScenario(opts: KernelScenarioOptions): Promise<KernelScenarioResult> {
  if (!/^[A-Za-z0-9._:+-]{1,200}$/.test(opts.exportName)) throw new Error(`export name not supported by the VM runner: ${opts.exportName}`);
  const onLine = opts.onLine ?? (() => undefined);
  const image = await buildVmImage({ cacheDir: opts.cacheDir, log: onLine });
  const tmp = vmTmpDir();
  try {
    return await boot(opts, image, tmp, onLine);
  } finally {
    // guestfwd helpers (slirp puts them in their own session) may still log a last line.
    fs.rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  }
}

async function boot(opts: KernelScenarioOptions, image: VmImage, tmp: string, onLine: (l: string) => void): Promise<KernelScenarioResult> {
  const env = [
    `vmt_server=${GUEST_SERVER_ADDR}`,
    `vmt_export=${shQuote(opts.exportName)}`,
    `vmt_bs=${opts.blockSize}`,
    `vmt_bigmb=${opts.bigMiB ?? 32}`,
    `vmt_nsmall=${opts.smallFiles ?? 300}`,
    `vmt_modules=${shQuote(image.modules.join(' '))}`,
    `vmt_steps=${shQuote(GUEST_STEPS.join(' '))}`,
  ].join('\n');
  const overlay = cpioNewc([
    { kind: 'file', path: '/init', data: fs.readFileSync(findSource('guest-init.sh')), mode: 0o755 },
    { kind: 'file', path: '/steps.sh', data: fs.readFileSync(findSource('guest-steps.sh')), mode: 0o644 },
    { kind: 'file', path: '/etc/vmt.env', data: Buffer.from(env + '\n'), mode: 0o644 },
  ]);
  const initrd = path.join(tmp, 'initrd.cpio');
  fs.writeFileSync(initrd, Buffer.concat([fs.readFileSync(image.initrd), overlay]));
  const connLog = path.join(tmp, 'connections.log');
  const fwd = path.join(__dirname, 'guestfwd.js');
  if (!fs.existsSync(fwd)) throw new Error(`${fwd} missing (run tsc)`);
  if (/[,\s]/.test(process.execPath + fwd + connLog)) throw new Error('paths with commas or spaces are not supported in guestfwd');

  const args = [
    '-accel', process.env.ISCSI_NBD_VM_ACCEL ?? opts.accel ?? 'tcg',
    '-m', '512',
    '-smp', '2',
    '-nographic',
    '-no-reboot',
    '-kernel', image.kernel,
    '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 rdinit=/init loglevel=4',
    '-netdev', `user,id=n0,restrict=on,guestfwd=tcp:${GUEST_SERVER_ADDR}:10809-cmd:${process.execPath} ${fwd} ${opts.nbdPort} ${connLog}`,
    '-device', 'e1000,netdev=n0,romfile=',
  ];
  const qemu = opts.qemuBinary ?? 'qemu-system-x86_64';
  const t0 = Date.now();
  const child = spawn(qemu, args, { detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
  if (!hookInstalled) {
    hookInstalled = true;
    process.on('exit', () => { for (const g of liveGroups) killGroup(g); });
  }
  if (child.pid !== undefined) liveGroups.add(child.pid);

  let log = '';
  let done = false;
  const timeoutMs = opts.timeoutMs ?? 300000;
  let timedOut = false;
  const results = new Map<string, StepResult>();
  const sums: Record<string, string> = {};
  let current: string | undefined;

  // One line buffer per stream, so qemu's stderr never splits a console line.
  const parser = (): ((b: Buffer) => void) => {
    let partial = '';
    return (b: Buffer): void => {
      const s = b.toString('utf8');
      log += s;
      partial += s;
      let i: number;
      while ((i = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, i).replace(/\r+$/, '').replace(/\x1b\[[0-9;?]*[a-zA-Z]/g, '');
        partial = partial.slice(i + 1);
        onLine(line);
        let m: RegExpExecArray | null;
        if ((m = /^STEP (\S+)$/.exec(line))) current = m[1];
        else if ((m = /^PASS (\S+)$/.exec(line))) results.set(m[1], { name: m[1], ok: true, detail: '' });
        else if ((m = /^FAIL (\S+?): (.*)$/.exec(line))) results.set(m[1], { name: m[1], ok: false, detail: m[2] });
        else if ((m = /^SUM (\S+) ([0-9a-f]{32})$/.exec(line))) sums[m[1]] = m[2];
        else if (line === 'DONE') done = true;
      }
    };
  };
  const onStdout = parser();
  const onStderr = parser();
  child.stdout!.on('data', onStdout);
  child.stderr!.on('data', onStderr);

  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', (err) => { log += `\nspawn ${qemu} failed: ${err.message}\n`; resolve(); });
  });
  let timer: NodeJS.Timeout | undefined;
  let graceTimer: NodeJS.Timeout | undefined;
  const stopAfterDone = setInterval(() => {
    // The guest powers off after DONE; give it a moment, then make sure.
    if (done && !graceTimer) graceTimer = setTimeout(() => child.pid && killGroup(child.pid), 10000);
  }, 200);
  await Promise.race([
    exited,
    new Promise<void>((resolve) => {
      timer = setTimeout(() => { timedOut = true; resolve(); }, timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  clearTimeout(graceTimer);
  clearInterval(stopAfterDone);
  if (child.pid !== undefined) killGroup(child.pid);
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  const vmMs = Date.now() - t0;
  onStdout(Buffer.from('\n'));

  const tail = log.split('\n').slice(-15).join('\n');
  const steps: StepResult[] = [];
  let broken = false;
  for (const name of GUEST_STEPS) {
    const r = results.get(name);
    if (r && !broken) {
      steps.push(r);
      if (!r.ok) broken = true;
    } else if (!broken && name === current) {
      broken = true;
      steps.push({ name, ok: false, detail: `${timedOut ? `timed out after ${timeoutMs} ms` : 'VM stopped'} during this step; console tail:\n${tail}` });
    } else if (!broken) {
      broken = true;
      steps.push({ name, ok: false, detail: `never started (${timedOut ? 'timeout' : done ? 'guest skipped it' : 'VM stopped'}); console tail:\n${tail}` });
    } else {
      steps.push({ name, ok: false, detail: 'not reached' });
    }
  }
  if (broken) {
    steps.push({ name: HOST_CHECK_STEP, ok: false, detail: 'not reached' });
  } else if (opts.hostCheck) {
    try {
      const msg = await opts.hostCheck({ sums });
      steps.push({ name: HOST_CHECK_STEP, ok: msg === undefined, detail: msg ?? '' });
    } catch (err) {
      steps.push({ name: HOST_CHECK_STEP, ok: false, detail: (err as Error).message });
    }
  } else {
    steps.push({ name: HOST_CHECK_STEP, ok: true, detail: 'skipped (no hostCheck given)' });
  }
  let connections = 0;
  try {
    connections = fs.readFileSync(connLog, 'utf8').split('\n').filter((l) => / connect$/.test(l)).length;
  } catch {
    /* none */
  }
  const failed = steps.find((s) => !s.ok);
  return { ok: !failed, steps, failedStep: failed?.name, log, sums, connections, image, vmMs };
}

function exec(cmd: string, args: string[], timeoutMs = 120000): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', encoding: 'buffer', maxBuffer: 1 << 30 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : -1) : 0;
      resolve({ code, stdout: stdout as Buffer, stderr: (stderr as Buffer).toString() });
    });
  });
}

/**
 * Step 6 against the target itself: copy the LUN with `qemu-img convert` from the
 * iscsi:// URL (not through the bridge), run `e2fsck -fn` on the copy and compare
 * the files the guest reported (read with debugfs) with their checksums.
 */
export function iscsiHostCheck(url: string): (report: GuestReport) => Promise<string | void> {
  return async (report) => {
    const dir = vmTmpDir('iscsi-nbd-hostcheck-');
    try {
      const img = path.join(dir, 'lun.img');
      const conv = await exec('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', url, img], 300000);
      if (conv.code !== 0) return `qemu-img convert ${url} failed: ${conv.stderr.trim()}`;
      const fsck = await exec('e2fsck', ['-fn', img]);
      if (fsck.code !== 0) return `e2fsck -fn on the LUN copy exited ${fsck.code}: ${fsck.stdout.toString().trim().split('\n').slice(-5).join(' | ')}`;
      const names = Object.keys(report.sums);
      if (names.length === 0) return 'the guest reported no checksums';
      for (const name of names) {
        const cat = await exec('debugfs', ['-R', `cat /${name}`, img]);
        if (cat.code !== 0) return `debugfs cat /${name} failed: ${cat.stderr.trim()}`;
        const md5 = crypto.createHash('md5').update(cat.stdout).digest('hex');
        if (md5 !== report.sums[name]) return `/${name} on the LUN has md5 ${md5} (${cat.stdout.length} bytes), the guest wrote ${report.sums[name]}`;
      }
      return undefined;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
}

/** One line per step, for assertion messages. */
export function formatSteps(r: KernelScenarioResult): string {
  return r.steps.map((s) => `${s.ok ? 'PASS' : 'FAIL'} ${s.name}${s.detail ? `: ${s.detail}` : ''}`).join('\n');
}
