// A VM in which our daemon runs: Debian's kernel under qemu (TCG), a busybox initramfs
// with node and its libraries, and this repository mounted read-only over 9p.
//
// Image: buildVmImage()'s cached kernel + busybox/e2fsprogs/util-linux/mount image,
// built with the virtio and 9p modules as extra modules, plus a cached "node layer":
// process.execPath as /usr/local/bin/node and every library ldd lists for it and for
// each linux-x64 *.node addon under the repo's node_modules (koffi needs libstdc++ and
// libgcc_s, @node-rs/crc32 needs librt). The per-run /init, env, hostcall and script go
// in a small overlay archive appended to it.
//
// Guest layout:
//   /usr/local/bin/node       node (same binary as the host's)
//   /opt/iscsi-nbd            the repo (dist/, node_modules/, bin/), 9p, read-only
//   /usr/local/bin/hostcall   `hostcall NAME [ARGS...]`: runs hostActions[NAME] on the host
//   /etc/ng/script.sh         the scenario script, run as root by /bin/sh (busybox)
//   /tmp, /run, /dev/shm      tmpfs; /dev is devtmpfs (/dev/nbd0..15 after nbd loads)
// Network: user-mode networking with restrict=on; the guest is 10.0.2.15 and reaches only
// 10.0.2.100:<guestPort> for each forward (one `node guestfwd.js` helper per connection,
// spliced to 127.0.0.1:<hostPort>) plus the hostcall port.
// Note that a forward accepts the guest's connection even when nothing listens on the
// host port: the guest then sees the connection closed at once, not refused.
// Output: /init and the script write to ttyS1, a serial port qemu connects to a socket of
// the runner, so kernel messages (ttyS0, the console on qemu's stdio) never split a
// RESULT line. 9p is mounted with msize=512000,cache=loose (the share is read-only).
// qemu: -cpu max (node wants more than TCG's default qemu64 model), -smp 1 by default.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { buildVmImage, defaultCacheDir, lddLibs, publishCacheDir, vmTmpDir, type VmImage } from './build';
import { cpioNewc, CpioTree } from './cpio';

/** Address of the host inside the guest (the forwards and the hostcall channel). */
export const GUEST_HOST_ADDR = '10.0.2.100';
/** The guest's own address. */
export const GUEST_ADDR = '10.0.2.15';
/** Prefix of kernel console (ttyS0) lines in the log; the guest's own output has none. */
export const CONSOLE_PREFIX = 'console| ';
/** Guest port of the hostcall channel (not usable as a forward's guestPort). */
export const HOSTCALL_GUEST_PORT = 10999;
/** Where the repo is mounted in the guest. */
export const GUEST_REPO_DIR = '/opt/iscsi-nbd';
export const GUEST_NODE = '/usr/local/bin/node';
export const GUEST_HOSTCALL = '/usr/local/bin/hostcall';
/** 9p and virtio modules, in the order they load (after build.ts's GUEST_MODULES: nbd, ext4, e1000). */
export const NODE_GUEST_EXTRA_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_pci_legacy_dev',
  'virtio_pci_modern_dev',
  'virtio_pci',
  'netfs',
  'fscache',
  '9pnet',
  '9pnet_virtio',
  '9p',
];
/**
 * The kernel's own iSCSI target (LIO) with a fileio backstore, for `extraModules`:
 * configfs (modular in Debian's kernel), target_core_mod and its crc-t10dif (with the
 * generic crct10dif it soft-depends on, so no modprobe is needed), target_core_file and
 * iscsi_target_mod (its crc32c digests use crc32c_generic, already in GUEST_MODULES).
 * The script mounts configfs (`mount -t configfs none /sys/kernel/config`) and builds the
 * target there.
 */
export const LIO_GUEST_MODULES = ['crct10dif_generic', 'configfs', 'target_core_mod', 'target_core_file', 'iscsi_target_mod'];
const NODE_LAYER_VERSION = 1;

export interface GuestForward {
  guestPort: number;
  hostPort: number;
}

export interface GuestRunOptions {
  /**
   * Shell script run as root inside the guest (busybox sh; busybox applets such as mount
   * win over $PATH, so call e2fsprogs/util-linux tools by path: /usr/sbin/mkfs.ext4,
   * /usr/sbin/e2fsck, /usr/bin/mount). It runs after the modules (nbd, ext4, 9p...) are
   * loaded, the network is up and the repo is mounted read-only at /opt/iscsi-nbd, with
   * cwd /root, stdin /dev/null and NG_HOST, NG_REPO and opts.env in its environment.
   * Its stdout/stderr go to a second serial port (ttyS1) the runner reads apart from the
   * kernel console, then to onLine and the result log. Lines "RESULT key value" end up in
   * result.results. The kernel console keeps warnings and worse (consoleLogLevel); `dmesg`
   * in the script has everything.
   */
  script: string;
  /** Host TCP ports the guest can reach: guest 10.0.2.100:<guestPort> -> host 127.0.0.1:<hostPort>. */
  forwards: GuestForward[];
  /**
   * Called when the guest runs `hostcall NAME [ARGS...]`. Its resolved string is printed by
   * hostcall on the guest's stdout (with a newline added when missing); a rejection (or an
   * unknown NAME, or hostActionTimeoutMs passing) makes hostcall print the message on
   * stderr and exit 1. Calls may overlap.
   */
  hostActions?: Record<string, (args: string[]) => Promise<string>>;
  /** Bound on one host action (default 120 s). */
  hostActionTimeoutMs?: number;
  /** Extra environment for the script (names: [A-Za-z_][A-Za-z0-9_]*). */
  env?: Record<string, string>;
  /** Kill qemu after this long (default 600 s). */
  timeoutMs?: number;
  /** Guest memory (default 1536 MiB). */
  memoryMiB?: number;
  /**
   * Guest CPUs (default 1). On a 2-core host, -smp 2 under TCG made loading the project
   * over 9p 2-3x slower (the vCPU threads starve qemu's main loop, which serves 9p and slirp).
   */
  cpus?: number;
  /** Kernel console log level (default 4: warnings and worse reach the console; dmesg has everything). */
  consoleLogLevel?: number;
  /** nbd module nbds_max (default 16: /dev/nbd0../dev/nbd15). */
  nbdsMax?: number;
  /**
   * Kernel modules wanted beside the default ones (e.g. LIO_GUEST_MODULES), by name; they
   * load after them, dependencies first (from modules.dep). A run with extra modules boots
   * an image of its own (its own cache keys); without them the image is the default one.
   */
  extraModules?: string[];
  /** Lines as they arrive, as in GuestRunResult.log. */
  onLine?: (line: string) => void;
  /** Directory served to the guest (default: the repo root; must contain dist/ and node_modules/). */
  repoDir?: string;
  cacheDir?: string;
  /** qemu -accel value (default 'tcg'; env ISCSI_NBD_VM_ACCEL overrides). */
  accel?: string;
  /** qemu -cpu value (default 'max': node needs more than TCG's default qemu64 model offers). */
  cpu?: string;
  qemuBinary?: string;
}

export interface HostCallRecord {
  name: string;
  args: string[];
  ok: boolean;
  /** The answer, or the rejection's message. */
  answer: string;
  ms: number;
}

export interface GuestRunResult {
  /** exitCode === 0 and not timed out. */
  ok: boolean;
  /** The script's exit code (255: guest setup failed, see log); null when the guest never said. */
  exitCode: number | null;
  /**
   * In arrival order: the guest's /init and script output (its own serial port, so kernel
   * messages never split these lines), the kernel console and qemu's messages as lines
   * prefixed with CONSOLE_PREFIX ('console| '), and "[host] ..." lines about hostcalls.
   */
  log: string;
  /** Lines the guest printed as "RESULT key value" (the last one wins). */
  results: Record<string, string>;
  /** From qemu's start to its end. */
  vmMs: number;
  timedOut: boolean;
  /** From qemu's start to the guest being ready to run the script (modules, network, 9p). */
  readyMs?: number;
  /** Guest uptime (s) when /init started and when the script started. */
  guestInitUptime?: number;
  guestReadyUptime?: number;
  /** "NG FAIL ..." detail when the guest's own setup failed. */
  setupError?: string;
  /** TCP connections the guest opened, by forward guestPort. */
  connections: Record<number, number>;
  hostCalls: HostCallRecord[];
  image: NodeGuestImage;
}

export interface NodeGuestImage {
  /** Kernel image. */
  kernel: string;
  /** Base image + node layer (uncompressed newc cpio, no /init). */
  initrd: string;
  /** Module paths in the guest, in load order. */
  modules: string[];
  /** The kernel/userland image it extends. */
  base: VmImage;
  /** Node layer cache key. */
  key: string;
  nodeVersion: string;
  /** Host paths of the libraries added for node and its addons. */
  libs: string[];
  /** Addons (relative to the repo) whose libraries were added. */
  addons: string[];
  cached: boolean;
  /** Build time of the node layer in ms (0 when cached). */
  buildMs: number;
}

export function defaultRepoDir(): string {
  // dist/scripts/vm -> repo root; also works from scripts/vm under ts-node-like loaders.
  for (const p of [path.resolve(__dirname, '../../..'), path.resolve(__dirname, '../..')]) {
    if (fs.existsSync(path.join(p, 'package.json')) && fs.existsSync(path.join(p, 'node_modules'))) return p;
  }
  throw new Error(`cannot find the repo root from ${__dirname}`);
}

function findSource(name: string): string {
  for (const p of [path.join(__dirname, name), path.resolve(__dirname, '../../../scripts/vm', name)]) {
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`cannot find scripts/vm/${name}`);
}

function shQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

// ---------------------------------------------------------------------------
// Image

/** Prebuilt addons for other x86-64 systems that may still look like Linux ELF files. */
const FOREIGN_ADDON = /musl|freebsd|openbsd|netbsd|darwin|win32|android/i;

/** True for an x86-64 ELF shared object meant for a (glibc) Linux. */
function isLinuxX64Elf(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const h = Buffer.alloc(20);
    if (fs.readSync(fd, h, 0, 20, 0) < 20) return false;
    // \x7fELF, ELFCLASS64, little endian, OSABI SYSV(0) or GNU/Linux(3), e_machine EM_X86_64 (62).
    return h.readUInt32BE(0) === 0x7f454c46 && h[4] === 2 && h[5] === 1 && (h[7] === 0 || h[7] === 3) && h.readUInt16LE(18) === 62;
  } finally {
    fs.closeSync(fd);
  }
}

/** Every *.node under dir/node_modules (not following symlinks). */
function findAddons(repo: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && e.name.endsWith('.node')) out.push(p);
    }
  };
  walk(path.join(repo, 'node_modules'));
  return out.sort();
}

function nearestPackageVersion(file: string, stop: string): string {
  for (let d = path.dirname(file); d.startsWith(stop) && d !== stop; d = path.dirname(d)) {
    const pj = path.join(d, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        const j = JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: string; version?: string };
        if (j.version) return `${j.name ?? path.basename(d)}@${j.version}`;
      } catch {
        /* keep looking */
      }
    }
  }
  return '?';
}

function fileStamp(p: string): string {
  const st = fs.statSync(p);
  return `${st.size}:${Math.floor(st.mtimeMs)}:${st.ino}`;
}

/**
 * The kernel image with the 9p modules plus the node layer; built once and cached
 * (keyed on the base image, node's version and binary, the libraries, and every addon's
 * hash and package version), so a second run does not rebuild.
 */
export async function buildNodeGuestImage(
  opts: { repoDir?: string; cacheDir?: string; log?: (s: string) => void; extraModules?: string[] } = {},
): Promise<NodeGuestImage> {
  const log = opts.log ?? (() => undefined);
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const repo = path.resolve(opts.repoDir ?? defaultRepoDir());
  // The base image's key covers its module list, and this layer's key covers the base's.
  const base = await buildVmImage({ cacheDir, log, extraModules: [...NODE_GUEST_EXTRA_MODULES, ...(opts.extraModules ?? [])] });

  const nodeBin = fs.realpathSync(process.execPath);
  const libs = new Set<string>(await lddLibs(nodeBin));
  const addons: string[] = [];
  const addonKeys: string[] = [];
  for (const a of findAddons(repo)) {
    const rel = path.relative(repo, a);
    if (FOREIGN_ADDON.test(rel) || !isLinuxX64Elf(a)) continue;
    let al: string[];
    try {
      al = await lddLibs(a);
    } catch (err) {
      log(`node guest: skipping ${rel}: ${(err as Error).message}`);
      continue;
    }
    for (const l of al) libs.add(l);
    addons.push(rel);
    addonKeys.push(`${rel}:${crypto.createHash('sha256').update(fs.readFileSync(a)).digest('hex')}:${nearestPackageVersion(a, repo)}`);
  }
  const libList = [...libs].sort();
  const key = crypto
    .createHash('sha256')
    .update(JSON.stringify({
      NODE_LAYER_VERSION,
      base: base.key,
      node: [process.version, nodeBin, fileStamp(nodeBin)],
      libs: libList.map((l) => `${l}:${fileStamp(l)}`),
      addons: addonKeys,
    }))
    .digest('hex')
    .slice(0, 16);
  const dir = path.join(cacheDir, `node-${key}`);
  const manifestPath = path.join(dir, 'manifest.json');
  const result = (cached: boolean, buildMs: number): NodeGuestImage => ({
    kernel: base.kernel,
    initrd: path.join(dir, 'initrd.cpio'),
    modules: base.modules,
    base,
    key,
    nodeVersion: process.version,
    libs: libList,
    addons,
    cached,
    buildMs,
  });
  if (fs.existsSync(manifestPath)) return result(true, 0);

  const t0 = Date.now();
  fs.mkdirSync(cacheDir, { recursive: true });
  const work = fs.mkdtempSync(path.join(cacheDir, `.node-${key}-`));
  try {
    const tree = new CpioTree();
    const entries = tree.entries;
    const addDir = (d: string): void => tree.dir(d);
    const addFile = (p: string, data: Buffer, mode: number): void => tree.file(p, data, mode);
    for (const d of [GUEST_REPO_DIR, '/usr/local/bin', '/var/lib', '/var/tmp', '/etc/ng']) addDir(d);
    addFile(GUEST_NODE, fs.readFileSync(nodeBin), 0o755);
    for (const l of libList) addFile(l, fs.readFileSync(fs.realpathSync(l)), 0o755);
    addFile('/etc/hosts', Buffer.from(`127.0.0.1 localhost\n${GUEST_ADDR} guest\n${GUEST_HOST_ADDR} host\n`), 0o644);
    addFile('/etc/nsswitch.conf', Buffer.from('passwd: files\ngroup: files\nhosts: files dns\n'), 0o644);
    const out = path.join(work, 'initrd.cpio');
    fs.copyFileSync(base.initrd, out);
    fs.appendFileSync(out, cpioNewc(entries));
    fs.writeFileSync(path.join(work, 'manifest.json'), JSON.stringify({ key, base: base.key, nodeVersion: process.version, libs: libList, addons }, null, 2));
    publishCacheDir(work, dir, manifestPath);
    const buildMs = Date.now() - t0;
    log(`built node guest layer ${key} in ${buildMs} ms`);
    return result(false, buildMs);
  } catch (err) {
    fs.rmSync(work, { recursive: true, force: true });
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Processes: qemu runs in its own process group (under `timeout -s KILL` as a last bound
// if this process dies without running its exit hook); the guestfwd helpers slirp starts
// are in sessions of their own, so they are found through their log lines (pid) and
// killed one by one. They also exit by themselves within 3 s of qemu going away.

interface LiveRun {
  pgid?: number;
  helperLogs: string[];
  /** Per-run temp dir, removed by the exit hook when the run could not clean up itself. */
  tmp?: string;
}
const liveRuns = new Set<LiveRun>();
let hookInstalled = false;

function killHelpers(logs: string[]): void {
  for (const f of logs) {
    let text = '';
    try {
      text = fs.readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    const pids = new Set<number>();
    for (const line of text.split('\n')) {
      const pid = Number(line.split(' ')[1]);
      if (Number.isInteger(pid) && pid > 1) pids.add(pid);
    }
    for (const pid of pids) {
      try {
        // Only our helper, not a recycled pid.
        if (!fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('guestfwd.js')) continue;
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

function killRun(r: LiveRun): void {
  if (r.pgid !== undefined) {
    try {
      process.kill(-r.pgid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  killHelpers(r.helperLogs);
}

function installExitHook(): void {
  if (hookInstalled) return;
  hookInstalled = true;
  process.on('exit', () => {
    for (const r of liveRuns) {
      killRun(r);
      if (r.tmp) {
        try {
          fs.rmSync(r.tmp, { recursive: true, force: true });
        } catch {
          /* best effort at exit */
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// hostcall server

function b64(s: string): string {
  return Buffer.from(s, 'utf8').toString('base64');
}

function startHostcallServer(
  actions: Record<string, (args: string[]) => Promise<string>>,
  timeoutMs: number,
  note: (line: string) => void,
  calls: HostCallRecord[],
): Promise<{ port: number; close: () => void }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => undefined);
    sock.on('close', () => sockets.delete(sock));
    let buf = Buffer.alloc(0);
    let handled = false;
    sock.on('data', (d: Buffer) => {
      if (handled) return;
      buf = Buffer.concat([buf, d]);
      const nl = buf.indexOf(10);
      if (nl < 0) {
        if (buf.length > 4 << 20) sock.destroy();
        return;
      }
      handled = true;
      void answer(buf.subarray(0, nl).toString('utf8').replace(/\r$/, '')).then((reply) => {
        if (!sock.destroyed) sock.end(reply + '\n');
      });
    });
  });
  const answer = async (line: string): Promise<string> => {
    const parts = line.split(' ');
    if (parts[0] !== 'HOSTCALL1' || parts.length < 2) return `ERR ${b64(`bad hostcall request: ${line.slice(0, 100)}`)}`;
    const dec = (s: string): string => (s === '-' ? '' : Buffer.from(s, 'base64').toString('utf8'));
    const name = dec(parts[1]);
    const args = parts.slice(2).map(dec);
    const t0 = Date.now();
    note(`[host] hostcall ${name} ${JSON.stringify(args)}`);
    let ok = false;
    let text: string;
    let timer: NodeJS.Timeout | undefined;
    try {
      if (!Object.prototype.hasOwnProperty.call(actions, name)) {
        throw new Error(`unknown host action ${JSON.stringify(name)} (known: ${Object.keys(actions).join(', ') || 'none'})`);
      }
      const action = actions[name];
      text = await Promise.race([
        Promise.resolve().then(() => action(args)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`host action ${name} took more than ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      text = String(text ?? '');
      if (text !== '' && !text.endsWith('\n')) text += '\n';
      ok = true;
    } catch (err) {
      text = err instanceof Error ? err.message : String(err);
    } finally {
      clearTimeout(timer);
    }
    const ms = Date.now() - t0;
    calls.push({ name, args, ok, answer: text.replace(/\n$/, ''), ms });
    note(`[host] hostcall ${name} ${ok ? 'resolved' : 'rejected'} after ${ms} ms: ${text.replace(/\n$/, '').slice(0, 200)}`);
    return `${ok ? 'OK' : 'ERR'} ${b64(text)}`;
  };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address() as net.AddressInfo;
      resolve({
        port: addr.port,
        close: () => {
          server.close();
          for (const s of sockets) s.destroy();
        },
      });
    });
  });
}

// ---------------------------------------------------------------------------
// Run

/** Boot the node guest, run opts.script in it and power off. Never throws for guest failures. */
export async function runGuest(opts: GuestRunOptions): Promise<GuestRunResult> {
  const onLine = opts.onLine ?? (() => undefined);
  const repo = path.resolve(opts.repoDir ?? defaultRepoDir());
  for (const d of ['dist', 'node_modules']) {
    if (!fs.existsSync(path.join(repo, d))) throw new Error(`${repo}/${d} missing: the guest runs the built project (npm ci && tsc)`);
  }
  if (/[,\s]/.test(repo)) throw new Error(`repo path with commas or spaces is not supported by -virtfs: ${repo}`);
  const seen = new Set<number>([HOSTCALL_GUEST_PORT]);
  for (const f of opts.forwards) {
    for (const p of [f.guestPort, f.hostPort]) if (!Number.isInteger(p) || p <= 0 || p > 65535) throw new Error(`bad forward port ${p}`);
    if (seen.has(f.guestPort)) throw new Error(`guest port ${f.guestPort} used twice (${HOSTCALL_GUEST_PORT} is the hostcall channel)`);
    seen.add(f.guestPort);
  }
  for (const k of Object.keys(opts.env ?? {})) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`bad env name ${k}`);
  const image = await buildNodeGuestImage({ repoDir: repo, cacheDir: opts.cacheDir, log: onLine, extraModules: opts.extraModules });
  const tmp = vmTmpDir('iscsi-nbd-node-guest-');
  try {
    return await boot(opts, repo, image, tmp, onLine);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  }
}

async function boot(opts: GuestRunOptions, repo: string, image: NodeGuestImage, tmp: string, onLine: (l: string) => void): Promise<GuestRunResult> {
  const fwd = path.join(__dirname, 'guestfwd.js');
  if (!fs.existsSync(fwd)) throw new Error(`${fwd} missing (run tsc)`);
  if (/[,\s]/.test(process.execPath + fwd + tmp)) throw new Error('paths with commas or spaces are not supported in guestfwd');

  let log = '';
  const note = (line: string): void => {
    log += line + '\n';
    onLine(line);
  };
  const hostCalls: HostCallRecord[] = [];
  const hc = await startHostcallServer(opts.hostActions ?? {}, opts.hostActionTimeoutMs ?? 120000, note, hostCalls);
  const run: LiveRun = { helperLogs: [], tmp };
  const closers: (() => void)[] = [];
  liveRuns.add(run);
  installExitHook();
  try {
    const env: string[] = [
      `ng_modules=${shQuote(image.modules.join(' '))}`,
      `ng_nbds_max=${opts.nbdsMax ?? 16}`,
      `ng_printk=${opts.consoleLogLevel ?? 4}`,
      `ng_host=${GUEST_HOST_ADDR}`,
      `ng_hostcall_port=${HOSTCALL_GUEST_PORT}`,
      `ng_9p_opts=${shQuote('trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose')}`,
      `NG_HOST=${GUEST_HOST_ADDR}`,
      `NG_REPO=${GUEST_REPO_DIR}`,
      ...Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${shQuote(v)}`),
    ];
    const overlay = cpioNewc([
      { kind: 'file', path: '/init', data: fs.readFileSync(findSource('node-guest-init.sh')), mode: 0o755 },
      { kind: 'dir', path: '/etc/ng' },
      { kind: 'file', path: '/etc/ng/env', data: Buffer.from(env.join('\n') + '\n'), mode: 0o644 },
      { kind: 'file', path: '/etc/ng/script.sh', data: Buffer.from(opts.script.endsWith('\n') ? opts.script : opts.script + '\n'), mode: 0o755 },
      { kind: 'file', path: GUEST_HOSTCALL, data: fs.readFileSync(findSource('hostcall.sh')), mode: 0o755 },
    ]);
    const initrd = path.join(tmp, 'initrd.cpio');
    fs.copyFileSync(image.initrd, initrd);
    fs.appendFileSync(initrd, overlay);

    const netdev = ['user', 'id=n0', 'restrict=on'];
    const fwdLogs = new Map<number, string>();
    const addFwd = (guestPort: number, hostPort: number): void => {
      const lf = path.join(tmp, `fwd-${guestPort}.log`);
      fwdLogs.set(guestPort, lf);
      run.helperLogs.push(lf);
      netdev.push(`guestfwd=tcp:${GUEST_HOST_ADDR}:${guestPort}-cmd:${process.execPath} ${fwd} ${hostPort} ${lf}`);
    };
    for (const f of opts.forwards) addFwd(f.guestPort, f.hostPort);
    addFwd(HOSTCALL_GUEST_PORT, hc.port);

    const timeoutMs = opts.timeoutMs ?? 600000;
    const qemu = opts.qemuBinary ?? 'qemu-system-x86_64';
    const qemuArgs = [
      '-accel', process.env.ISCSI_NBD_VM_ACCEL ?? opts.accel ?? 'tcg',
      '-cpu', opts.cpu ?? 'max',
      '-m', String(opts.memoryMiB ?? 1536),
      '-smp', String(opts.cpus ?? 1),
      '-nographic',
      '-no-reboot',
      '-kernel', image.kernel,
      '-initrd', initrd,
      '-append', 'console=ttyS0 panic=-1 rdinit=/init loglevel=4 edd=off',
      '-netdev', netdev.join(','),
      '-device', 'e1000,netdev=n0,romfile=',
      '-virtfs', `local,path=${repo},mount_tag=repo,security_model=none,readonly=on`,
    ];
    let t0 = Date.now();
    let exitCode: number | null = null;
    let setupError: string | undefined;
    let readyMs: number | undefined;
    let guestInitUptime: number | undefined;
    let guestReadyUptime: number | undefined;
    const results: Record<string, string> = {};
    /** A line splitter per stream, so one stream never splits another's line. */
    const splitter = (onLine: (line: string) => void): ((b: Buffer) => void) => {
      let partial = '';
      return (b: Buffer): void => {
        // An empty buffer flushes a last unterminated line.
        if (b.length === 0 && partial !== '') b = Buffer.from('\n');
        partial += b.toString('utf8');
        let i: number;
        while ((i = partial.indexOf('\n')) >= 0) {
          const line = partial.slice(0, i).replace(/\x1b\[[0-9;?]*[a-zA-Z]/g, '').replace(/\r/g, '');
          partial = partial.slice(i + 1);
          onLine(line);
        }
      };
    };
    const parseMarkers = (line: string): void => {
      let m: RegExpExecArray | null;
      if ((m = /^RESULT (\S+)(?: (.*))?$/.exec(line))) results[m[1]] = m[2] ?? '';
      else if ((m = /^NG EXIT (\d+)$/.exec(line))) exitCode = Number(m[1]);
      else if ((m = /^NG FAIL (.*)$/.exec(line))) setupError = m[1];
      else if ((m = /^NG init ([\d.]+)$/.exec(line))) guestInitUptime = Number(m[1]);
      else if ((m = /^NG ready ([\d.]+)$/.exec(line))) {
        guestReadyUptime = Number(m[1]);
        readyMs = Date.now() - t0;
      }
    };
    // The guest's /init and script write to ttyS1, which qemu connects to this socket.
    const onOutput = splitter((line) => {
      note(line);
      parseMarkers(line);
    });
    // The kernel console (ttyS0) and qemu's own messages. Markers are parsed here too for
    // a guest without ttyS1 (the init then falls back to the console).
    const consoleLine = (line: string): void => {
      note(`${CONSOLE_PREFIX}${line}`);
      parseMarkers(line);
    };
    const onStdout = splitter(consoleLine);
    const onStderr = splitter(consoleLine);
    const outSockets = new Set<net.Socket>();
    const outServer = net.createServer((sock) => {
      outSockets.add(sock);
      sock.on('data', onOutput);
      sock.on('error', () => undefined);
      sock.on('close', () => outSockets.delete(sock));
    });
    const outPort = await new Promise<number>((resolve, reject) => {
      outServer.once('error', reject);
      outServer.listen(0, '127.0.0.1', () => resolve((outServer.address() as net.AddressInfo).port));
    });
    closers.push(() => {
      outServer.close();
      for (const so of outSockets) so.destroy();
    });
    // ttyS0: the kernel console on stdio (explicit: any other serial port turns off
    // -nographic's default one); ttyS1: the guest's output, on the socket.
    qemuArgs.push(
      '-chardev', `socket,id=ngout,host=127.0.0.1,port=${outPort}`,
      '-serial', 'mon:stdio',
      '-serial', 'chardev:ngout',
    );

    // `timeout` bounds qemu even if this process is SIGKILLed before its exit hook runs.
    const hardS = Math.ceil(timeoutMs / 1000) + 60;
    t0 = Date.now();
    const child = spawn('timeout', ['-s', 'KILL', String(hardS), qemu, ...qemuArgs], { detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
    run.pgid = child.pid;
    child.stdout!.on('data', onStdout);
    child.stderr!.on('data', onStderr);
    const exited = new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.once('error', (err) => {
        note(`spawn ${qemu} failed: ${err.message}`);
        resolve();
      });
    });

    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    let graceTimer: NodeJS.Timeout | undefined;
    const afterExit = setInterval(() => {
      // The guest powers off after NG EXIT; give it a moment, then make sure.
      if (exitCode !== null && !graceTimer) graceTimer = setTimeout(() => killRun(run), 10000);
    }, 200);
    await Promise.race([
      exited,
      new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          timedOut = true;
          resolve();
        }, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    clearTimeout(graceTimer);
    clearInterval(afterExit);
    killRun(run);
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    const vmMs = Date.now() - t0;
    // Let the output socket deliver what qemu wrote last.
    await new Promise((r) => setTimeout(r, 100));
    onOutput(Buffer.alloc(0));
    onStdout(Buffer.alloc(0));
    onStderr(Buffer.alloc(0));
    if (timedOut) note(`[host] timed out after ${timeoutMs} ms; qemu killed`);

    const connections: Record<number, number> = {};
    for (const f of opts.forwards) {
      try {
        connections[f.guestPort] = fs.readFileSync(fwdLogs.get(f.guestPort)!, 'utf8').split('\n').filter((l) => / connect$/.test(l)).length;
      } catch {
        connections[f.guestPort] = 0;
      }
    }
    return {
      ok: exitCode === 0 && !timedOut,
      exitCode,
      log,
      results,
      vmMs,
      timedOut,
      readyMs,
      guestInitUptime,
      guestReadyUptime,
      setupError,
      connections,
      hostCalls,
      image,
    };
  } finally {
    hc.close();
    for (const c of closers) c();
    killRun(run);
    liveRuns.delete(run);
  }
}

/** The last lines of a result's log, for assertion messages. */
export function logTail(r: GuestRunResult, lines = 40): string {
  return r.log.split('\n').slice(-lines).join('\n');
}
