// Builds (and caches) the kernel and base initramfs for the real-kernel e2e test,
// from Debian packages only:
// - kernel: `apt-get download` linux-image-amd64 and the image it depends on, `dpkg -x`;
//   the modules for nbd, ext4 (+ deps, + crc32c which ext4 only soft-depends on) and
//   e1000 are resolved with `depmod -b` (kmod's, or busybox's when kmod is absent);
// - userland: the installed busybox-static, nbd-client, e2fsprogs (mke2fs, e2fsck, resize2fs),
//   util-linux (fstrim) and mount (mount, umount) binaries, each with the shared
//   libraries ldd lists.
// The cache key covers every package version and this builder's layout version, so
// a package upgrade rebuilds. The per-run /init is not in the cache (see run.ts).

import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cpioNewc, CpioTree } from './cpio';

const BUILDER_VERSION = 3;
const USER_PACKAGES = ['busybox-static', 'nbd-client', 'e2fsprogs', 'util-linux', 'mount', 'libc6'];
/** Modules to load, by name; dependencies are added from modules.dep. */
export const GUEST_MODULES = ['crc32c_generic', 'nbd', 'ext4', 'e1000'];
/** Guest binaries: [Debian package, basename in that package, guest path]. */
const GUEST_BINARIES: [string, string, string][] = [
  ['nbd-client', 'nbd-client', '/usr/sbin/nbd-client'],
  ['e2fsprogs', 'mke2fs', '/usr/sbin/mke2fs'],
  ['e2fsprogs', 'e2fsck', '/usr/sbin/e2fsck'],
  ['e2fsprogs', 'resize2fs', '/usr/sbin/resize2fs'],
  ['util-linux', 'fstrim', '/usr/sbin/fstrim'],
  ['mount', 'mount', '/usr/bin/mount'],
  ['mount', 'umount', '/usr/bin/umount'],
];

export interface VmImage {
  /** Path of the kernel image (vmlinuz). */
  kernel: string;
  /** Path of the base initramfs (uncompressed newc cpio, no /init). */
  initrd: string;
  /** Kernel release, e.g. 6.1.0-56-amd64. */
  release: string;
  /** Module paths inside the guest, in load order. */
  modules: string[];
  /** Cache key (hash of package versions). */
  key: string;
  /** Package versions the image was built from. */
  packages: Record<string, string>;
  /** True when the image came from the cache. */
  cached: boolean;
  /** Build time in ms (0 when cached). */
  buildMs: number;
}

export function defaultCacheDir(): string {
  return process.env.ISCSI_NBD_VM_CACHE ?? '/var/tmp/iscsi-nbd-vm';
}

function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: opts.cwd, timeout: opts.timeoutMs ?? 300000, killSignal: 'SIGKILL', maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${String(stderr).trim() || err.message}`));
        else resolve(String(stdout));
      });
  });
}

async function installedVersion(pkg: string): Promise<string> {
  const out = await run('dpkg-query', ['-W', '-f', '${Version}\\t${db:Status-Status}', pkg]).catch(() => '');
  const [ver, status] = out.split('\t');
  if (!ver || status !== 'installed') throw new Error(`Debian package ${pkg} is not installed (apt-get install -y ${pkg})`);
  return ver;
}

/** The kernel image package linux-image-amd64 points at, from the local apt lists (no network). */
async function kernelCandidate(): Promise<{ meta: string; pkg: string; version: string }> {
  const out = await run('apt-cache', ['show', '--no-all-versions', 'linux-image-amd64']).catch((e: Error) => {
    throw new Error(`apt-cache show linux-image-amd64 failed (run apt-get update?): ${e.message}`);
  });
  const ver = /^Version: (\S+)$/m.exec(out)?.[1];
  const dep = /^Depends: (linux-image-[^\s,(]+)/m.exec(out)?.[1];
  if (!ver || !dep) throw new Error(`cannot parse apt-cache show linux-image-amd64:\n${out}`);
  return { meta: ver, pkg: dep, version: ver };
}

async function packageFiles(pkg: string): Promise<string[]> {
  return (await run('dpkg', ['-L', pkg])).split('\n').filter(Boolean);
}

/** ldd's list of absolute library paths for a binary (empty for static binaries). */
export async function lddLibs(bin: string): Promise<string[]> {
  const out = await run('ldd', [bin]).catch((e: Error) => {
    if (/not a dynamic executable/.test(e.message)) return '';
    throw e;
  });
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]);
    else if (/not found/.test(line)) throw new Error(`ldd ${bin}: ${line.trim()}`);
  }
  return libs;
}

/** Modules in load order (dependencies first) for the wanted names, from a modules.dep. */
export function resolveModules(modulesDep: string, wanted: string[]): string[] {
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  for (const line of modulesDep.split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    const mod = line.slice(0, i).trim();
    deps.set(mod, line.slice(i + 1).trim().split(/\s+/).filter(Boolean));
    byName.set(path.basename(mod).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_'), mod);
  }
  const order: string[] = [];
  const visit = (mod: string, stack: string[]): void => {
    if (order.includes(mod)) return;
    if (stack.includes(mod)) throw new Error(`module dependency cycle: ${[...stack, mod].join(' -> ')}`);
    for (const d of deps.get(mod) ?? []) visit(d, [...stack, mod]);
    order.push(mod);
  };
  for (const name of wanted) {
    const mod = byName.get(name.replace(/-/g, '_'));
    if (!mod) throw new Error(`module ${name} not found in modules.dep`);
    visit(mod, []);
  }
  return order;
}

async function depmod(base: string, release: string): Promise<void> {
  const kmod = ['/usr/sbin/depmod', '/sbin/depmod'].find((p) => fs.existsSync(p));
  if (kmod) await run(kmod, ['-b', base, release]);
  else await run('busybox', ['depmod', '-b', base, release]);
}

export interface BuildVmImageOptions {
  cacheDir?: string;
  log?: (s: string) => void;
  /**
   * Modules wanted beside GUEST_MODULES, by name, in the order they should load (dependencies
   * are still added first from modules.dep). They load after GUEST_MODULES. An image with
   * extra modules is cached under its own key; without them the key is the plain image's.
   */
  extraModules?: string[];
}

/** Build or fetch from cache. Safe to run concurrently (the cache entry is renamed into place). */
export async function buildVmImage(opts: BuildVmImageOptions = {}): Promise<VmImage> {
  const log = opts.log ?? (() => undefined);
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const extraModules = opts.extraModules ?? [];
  const packages: Record<string, string> = {};
  for (const p of USER_PACKAGES) packages[p] = await installedVersion(p);
  const kc = await kernelCandidate();
  packages['linux-image-amd64'] = kc.meta;
  packages[kc.pkg] = kc.version;
  const keyInput: Record<string, unknown> = { BUILDER_VERSION, packages, GUEST_MODULES, GUEST_BINARIES };
  if (extraModules.length > 0) keyInput.extraModules = extraModules;
  const key = crypto
    .createHash('sha256')
    .update(JSON.stringify(keyInput))
    .digest('hex')
    .slice(0, 16);
  const dir = path.join(cacheDir, key);
  const manifestPath = path.join(dir, 'manifest.json');
  if (fs.existsSync(manifestPath)) {
    const m = JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as Omit<VmImage, 'kernel' | 'initrd' | 'cached' | 'buildMs'>;
    return { ...m, kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'base.cpio'), cached: true, buildMs: 0 };
  }

  const t0 = Date.now();
  fs.mkdirSync(cacheDir, { recursive: true });
  const work = fs.mkdtempSync(path.join(cacheDir, `.build-${key}-`));
  try {
    // apt-get download runs its fetch as _apt; let it write here.
    fs.chmodSync(work, 0o777);
    log(`downloading linux-image-amd64 ${kc.meta} (${kc.pkg})`);
    await run('apt-get', ['download', '-q', `linux-image-amd64=${kc.meta}`, `${kc.pkg}=${kc.version}`], { cwd: work });
    const deb = fs.readdirSync(work).find((f) => f.startsWith(`${kc.pkg}_`) && f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download produced no ${kc.pkg} .deb`);
    const root = path.join(work, 'root');
    await run('dpkg', ['-x', path.join(work, deb), root]);
    const releases = fs.readdirSync(path.join(root, 'lib/modules'));
    if (releases.length !== 1) throw new Error(`expected one kernel release in ${deb}, got ${releases.join(',')}`);
    const release = releases[0];
    await depmod(root, release);
    const modRoot = path.join(root, 'lib/modules', release);
    const order = resolveModules(fs.readFileSync(path.join(modRoot, 'modules.dep'), 'utf8'), [...GUEST_MODULES, ...extraModules]);

    const tree = new CpioTree();
    const entries = tree.entries;
    const addDir = (d: string): void => tree.dir(d);
    const addFile = (p: string, data: Buffer, mode: number): void => tree.file(p, data, mode);
    for (const d of ['/proc', '/sys', '/dev', '/tmp', '/mnt', '/run', '/bin', '/sbin', '/etc', '/root', '/usr/bin', '/usr/sbin']) addDir(d);

    const modules: string[] = [];
    for (const m of order) {
      const g = `/lib/modules/${path.basename(m)}`;
      addFile(g, fs.readFileSync(path.join(modRoot, m)), 0o644);
      modules.push(g);
    }

    // busybox-static: the shell and the applets (installed as links by /init).
    const bbFiles = await packageFiles('busybox-static');
    const bb = bbFiles.find((f) => /\/bin\/busybox$/.test(f) && fs.existsSync(f));
    if (!bb) throw new Error('busybox-static installs no bin/busybox');
    addFile('/bin/busybox', fs.readFileSync(bb), 0o755);
    entries.push({ kind: 'symlink', path: '/bin/sh', target: 'busybox' });

    const libs = new Set<string>();
    for (const [pkg, name, guestPath] of GUEST_BINARIES) {
      const files = await packageFiles(pkg);
      const host = files.find((f) => path.basename(f) === name && /\/s?bin\//.test(f) && fs.existsSync(f));
      if (!host) throw new Error(`package ${pkg} installs no ${name}`);
      addFile(guestPath, fs.readFileSync(host), 0o755);
      for (const l of await lddLibs(host)) libs.add(l);
    }
    entries.push({ kind: 'symlink', path: '/usr/sbin/mkfs.ext4', target: 'mke2fs' });
    for (const l of libs) addFile(l, fs.readFileSync(fs.realpathSync(l)), 0o755);
    if (fs.existsSync('/etc/mke2fs.conf')) addFile('/etc/mke2fs.conf', fs.readFileSync('/etc/mke2fs.conf'), 0o644);
    entries.push({ kind: 'symlink', path: '/etc/mtab', target: '/proc/self/mounts' });
    addFile('/etc/passwd', Buffer.from('root:x:0:0:root:/root:/bin/sh\n'), 0o644);
    addFile('/etc/group', Buffer.from('root:x:0:\n'), 0o644);

    const vmlinuz = path.join(root, 'boot', `vmlinuz-${release}`);
    fs.copyFileSync(vmlinuz, path.join(work, 'vmlinuz'));
    fs.writeFileSync(path.join(work, 'base.cpio'), cpioNewc(entries));
    const manifest = { release, modules, key, packages };
    fs.writeFileSync(path.join(work, 'manifest.json'), JSON.stringify(manifest, null, 2));
    // Keep only the artifacts.
    fs.rmSync(root, { recursive: true, force: true });
    for (const f of fs.readdirSync(work)) if (f.endsWith('.deb')) fs.rmSync(path.join(work, f));
    publishCacheDir(work, dir, manifestPath);
    const buildMs = Date.now() - t0;
    log(`built VM image ${key} in ${buildMs} ms`);
    return { ...manifest, kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'base.cpio'), cached: false, buildMs };
  } catch (err) {
    fs.rmSync(work, { recursive: true, force: true });
    throw err;
  }
}

/** Temp dir helper for callers. */
/**
 * Move a finished build (work) into its cache directory in one rename. When
 * another build of the same key got there first, its result stands (it has
 * a manifest) and ours is dropped.
 */
export function publishCacheDir(work: string, dir: string, manifestPath: string): void {
  fs.chmodSync(work, 0o755);
  try {
    fs.renameSync(work, dir);
  } catch (err) {
    if (!fs.existsSync(manifestPath)) throw err;
    fs.rmSync(work, { recursive: true, force: true });
  }
}

export function vmTmpDir(prefix = 'iscsi-nbd-vm-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}
