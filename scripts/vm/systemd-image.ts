// The disk of the systemd VM scenario (test/e2e/systemd.test.ts): a Debian 12 root
// filesystem with systemd as PID 1, booted with Debian's kernel (the one build.ts fetches).
//
// Two layers:
// - the base (cached under the VM cache dir, keyed by a hash of its inputs): `debootstrap
//   --variant=minbase` of bookworm with systemd, systemd-sysv, udev, e2fsprogs, kmod,
//   nbd-client, util-linux, procps (and libstdc++6, which node needs), from the Debian
//   mirror the host's apt sources name; the kernel's modules the guest needs (nbd, ext4,
//   virtio blk/net/console/pci and what they depend on) with depmod; a fixed machine-id,
//   a persistent journal, systemd-networkd with the qemu user-net address (10.0.2.15), and
//   the timers and gettys that would only cost time masked. Docs, locales, apt lists and
//   .debs are dropped.
// - per run (makeSystemdDisk): a copy of the base plus the project installed as README
//   "Install" says (package.json, bin/, dist/, node_modules/ copied to /opt/iscsi-nbd, the
//   host's node as /usr/local/bin/node with any library the base lacks, the link
//   /usr/local/bin/iscsi-nbd, the units from scripts/systemd, `systemctl enable`), and the
//   caller's files, made into a raw ext4 image with `mkfs.ext4 -d` (no loop device, no mount).
// Debian's kernel has virtio_blk and ext4 as modules, so the boot needs an initramfs: the
// busybox image from build.ts (its virtio_pci and ext4 modules) plus virtio_blk.ko and a
// small /init (systemd-initrd-init.sh) that mounts /dev/vda and switch_roots to systemd.

import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { buildVmImage, defaultCacheDir, lddLibs, publishCacheDir, resolveModules, type VmImage } from './build';
import { cpioNewc } from './cpio';
import { NODE_GUEST_EXTRA_MODULES } from './node-guest';

const BASE_VERSION = 1;
export const SUITE = 'bookworm';
/** What debootstrap installs beside minbase. */
export const BASE_PACKAGES = ['systemd', 'systemd-sysv', 'udev', 'e2fsprogs', 'kmod', 'nbd-client', 'util-linux', 'procps', 'libstdc++6'];
/** Kernel modules in the root filesystem (with their dependencies), for udev and modprobe. */
export const ROOTFS_MODULES = ['nbd', 'ext4', 'crc32c_generic', 'virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_console'];
/** Modules of build.ts's initramfs the /init loads (by basename); nbd is left to the root filesystem. */
const INITRD_SKIP = /^(nbd|e1000|9p|9pnet|9pnet_virtio|netfs|fscache)\.ko/;
export const GUEST_ADDR = '10.0.2.15';
export const GUEST_HOST_ADDR = '10.0.2.100';

/** Files the base gets, by guest path (part of the cache key). */
const BASE_FILES: Record<string, string> = {
  '/etc/hostname': 'e2e\n',
  '/etc/hosts': `127.0.0.1 localhost\n127.0.1.1 e2e\n${GUEST_HOST_ADDR} host\n`,
  '/etc/fstab': '# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/vda  /  ext4  defaults  0  0\n',
  '/etc/machine-id': 'e2e0c0ffee0c0ffee0c0ffee0c0ffee0\n',
  '/etc/systemd/network/10-e2e.network': `[Match]\nName=eth0\n\n[Network]\nAddress=${GUEST_ADDR}/24\nGateway=10.0.2.2\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n`,
  // Persistent journal: the shutdown order is read back with journalctl -b -1.
  '/etc/systemd/journald.conf.d/e2e.conf': '[Journal]\nStorage=persistent\n',
  '/etc/systemd/system.conf.d/e2e.conf': '[Manager]\nDefaultTimeoutStopSec=60s\n',
};
const BASE_ENABLE = ['systemd-networkd.service', 'systemd-networkd-wait-online.service'];
const BASE_MASK = [
  'apt-daily.timer', 'apt-daily-upgrade.timer', 'dpkg-db-backup.timer', 'e2scrub_all.timer', 'e2scrub_reap.service',
  'fstrim.timer', 'systemd-tmpfiles-clean.timer', 'getty@tty1.service', 'getty-static.service', 'serial-getty@ttyS0.service',
  'systemd-timesyncd.service',
];

export interface SystemdBase {
  /** The cached root filesystem directory (read only: copy it). */
  rootfs: string;
  key: string;
  /** Kernel (build.ts's). */
  kernel: string;
  release: string;
  mirror: string;
  /** dpkg -l of the root filesystem: package -> version. */
  packages: Record<string, string>;
  vm: VmImage;
  cached: boolean;
  buildMs: number;
}

function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: opts.cwd, env: opts.env, timeout: opts.timeoutMs ?? 300000, killSignal: 'SIGKILL', maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${String(stderr).trim().slice(-2000) || err.message}`));
        else resolve(String(stdout));
      });
  });
}

interface AptSource {
  types: string[];
  uris: string[];
  suites: string[];
  components: string[];
}

/** The entries of the host's apt sources (one-line .list and deb822 .sources files). */
export function readAptSources(root = '/'): AptSource[] {
  const out: AptSource[] = [];
  const files: string[] = [];
  const main = path.join(root, 'etc/apt/sources.list');
  if (fs.existsSync(main)) files.push(main);
  const dir = path.join(root, 'etc/apt/sources.list.d');
  if (fs.existsSync(dir)) for (const f of fs.readdirSync(dir).sort()) if (/\.(list|sources)$/.test(f)) files.push(path.join(dir, f));
  for (const f of files) {
    const text = fs.readFileSync(f, 'utf8');
    if (f.endsWith('.sources')) {
      for (const stanza of text.split(/\n\s*\n/)) {
        const fields = new Map<string, string>();
        let last = '';
        for (const line of stanza.split('\n')) {
          if (/^\s*#/.test(line) || line.trim() === '') continue;
          const m = /^([\w-]+):\s*(.*)$/.exec(line);
          if (m) fields.set((last = m[1].toLowerCase()), m[2]);
          else if (last && /^\s/.test(line)) fields.set(last, `${fields.get(last)} ${line.trim()}`);
        }
        if (/^(no|false)$/i.test(fields.get('enabled') ?? '')) continue;
        const list = (k: string): string[] => (fields.get(k) ?? '').split(/\s+/).filter(Boolean);
        if (fields.has('uris')) out.push({ types: list('types'), uris: list('uris'), suites: list('suites'), components: list('components') });
      }
    } else {
      for (const raw of text.split('\n')) {
        const line = raw.replace(/#.*/, '').trim();
        const m = /^(deb|deb-src)\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
        if (m) out.push({ types: [m[1]], uris: [m[2]], suites: [m[3]], components: m[4].split(/\s+/).filter(Boolean) });
      }
    }
  }
  return out;
}

/** The Debian mirror the host's apt uses for `suite` main (not -security or -updates). */
export function debianMirror(suite = SUITE, root = '/'): string {
  for (const s of readAptSources(root)) {
    if (!s.types.includes('deb') || !s.suites.includes(suite) || !s.components.includes('main')) continue;
    const uri = s.uris.find((u) => /^https?:\/\//.test(u));
    if (uri) return uri.replace(/\/+$/, '');
  }
  throw new Error(`no "deb <mirror> ${suite} main" source in ${root}etc/apt/sources.list(.d): cannot debootstrap`);
}

/** The Date: of the host's apt list for the suite (a new point release changes it), or '' . */
function suiteReleaseDate(suite: string): string {
  const dir = '/var/lib/apt/lists';
  try {
    const f = fs.readdirSync(dir).find((n) => n.endsWith(`_dists_${suite}_InRelease`) || n.endsWith(`_dists_${suite}_Release`));
    if (!f) return '';
    return /^Date: (.*)$/m.exec(fs.readFileSync(path.join(dir, f), 'utf8'))?.[1] ?? '';
  } catch {
    return '';
  }
}

function writeFileIn(root: string, guestPath: string, data: string | Buffer, mode = 0o644): void {
  const p = path.join(root, guestPath);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.rmSync(p, { force: true });
  fs.writeFileSync(p, data, { mode });
  fs.chmodSync(p, mode);
}

function symlinkIn(root: string, guestPath: string, target: string): void {
  const p = path.join(root, guestPath);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.rmSync(p, { force: true });
  fs.symlinkSync(target, p);
}

/** Build (or take from the cache) the base root filesystem and the boot files. */
export async function buildSystemdBase(opts: { cacheDir?: string; log?: (s: string) => void } = {}): Promise<SystemdBase> {
  const log = opts.log ?? (() => undefined);
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  // The same kernel (and cache entry) as the node guest: virtio_pci and ext4 in its initramfs.
  const vm = await buildVmImage({ cacheDir, log, extraModules: NODE_GUEST_EXTRA_MODULES });
  const kernelPkg = Object.keys(vm.packages).find((p) => /^linux-image-\d/.test(p));
  if (!kernelPkg) throw new Error(`no kernel package in ${JSON.stringify(vm.packages)}`);
  const mirror = debianMirror();
  const debootstrapVersion = await run('dpkg-query', ['-W', '-f', '${Version}', 'debootstrap']).catch(() => {
    throw new Error('debootstrap is not installed (apt-get install -y debootstrap)');
  });
  const key = crypto
    .createHash('sha256')
    .update(JSON.stringify({
      BASE_VERSION, SUITE, BASE_PACKAGES, ROOTFS_MODULES, BASE_FILES, BASE_ENABLE, BASE_MASK, mirror, debootstrapVersion,
      kernel: [kernelPkg, vm.packages[kernelPkg]], release: suiteReleaseDate(SUITE),
    }))
    .digest('hex')
    .slice(0, 16);
  const dir = path.join(cacheDir, `systemd-${key}`);
  const manifestPath = path.join(dir, 'manifest.json');
  const result = (m: { release: string; packages: Record<string, string> }, cached: boolean, buildMs: number): SystemdBase => ({
    rootfs: path.join(dir, 'rootfs'), key, kernel: vm.kernel, release: m.release, mirror, packages: m.packages, vm, cached, buildMs,
  });
  if (fs.existsSync(manifestPath)) return result(JSON.parse(fs.readFileSync(manifestPath, 'utf8')), true, 0);

  const t0 = Date.now();
  fs.mkdirSync(cacheDir, { recursive: true });
  const work = fs.mkdtempSync(path.join(cacheDir, `.systemd-${key}-`));
  try {
    const root = path.join(work, 'rootfs');
    log(`debootstrap --variant=minbase ${SUITE} from ${mirror}`);
    await run('debootstrap', ['--variant=minbase', `--include=${BASE_PACKAGES.join(',')}`, SUITE, root, mirror], { timeoutMs: 900000 });

    // The kernel's modules: the guest's udev and modprobe load them from here.
    fs.chmodSync(work, 0o777); // apt-get download fetches as _apt
    log(`apt-get download ${kernelPkg}=${vm.packages[kernelPkg]}`);
    await run('apt-get', ['download', '-q', `${kernelPkg}=${vm.packages[kernelPkg]}`], { cwd: work });
    const deb = fs.readdirSync(work).find((f) => f.startsWith(`${kernelPkg}_`) && f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download produced no ${kernelPkg} .deb`);
    const kroot = path.join(work, 'kernel');
    await run('dpkg', ['-x', path.join(work, deb), kroot]);
    await run('depmod', ['-b', kroot, vm.release]);
    const modSrc = path.join(kroot, 'lib/modules', vm.release);
    const modDst = path.join(root, 'lib/modules', vm.release);
    for (const m of resolveModules(fs.readFileSync(path.join(modSrc, 'modules.dep'), 'utf8'), ROOTFS_MODULES)) {
      fs.mkdirSync(path.dirname(path.join(modDst, m)), { recursive: true });
      fs.copyFileSync(path.join(modSrc, m), path.join(modDst, m));
    }
    for (const f of ['modules.order', 'modules.builtin', 'modules.builtin.modinfo']) {
      if (fs.existsSync(path.join(modSrc, f))) fs.copyFileSync(path.join(modSrc, f), path.join(modDst, f));
    }
    await run('depmod', ['-b', root, vm.release]);
    fs.rmSync(kroot, { recursive: true, force: true });
    fs.rmSync(path.join(work, deb), { force: true });

    for (const [p, text] of Object.entries(BASE_FILES)) writeFileIn(root, p, text);
    fs.mkdirSync(path.join(root, 'var/log/journal'), { recursive: true });
    await run('systemctl', [`--root=${root}`, 'enable', ...BASE_ENABLE]);
    await run('systemctl', [`--root=${root}`, 'mask', ...BASE_MASK]);
    // What only costs space in a test image.
    for (const d of ['usr/share/doc', 'usr/share/man', 'usr/share/locale', 'usr/share/info', 'var/cache/apt', 'var/lib/apt/lists']) {
      fs.rmSync(path.join(root, d), { recursive: true, force: true });
    }
    fs.mkdirSync(path.join(root, 'var/lib/apt/lists/partial'), { recursive: true });
    fs.mkdirSync(path.join(root, 'var/cache/apt/archives/partial'), { recursive: true });

    const packages: Record<string, string> = {};
    const dpkg = await run('chroot', [root, 'dpkg-query', '-W', '-f', '${Package}\\t${Version}\\n']);
    for (const line of dpkg.split('\n')) {
      const [p, v] = line.split('\t');
      if (p && v) packages[p] = v;
    }

    const manifest = { key, release: vm.release, mirror, packages };
    fs.writeFileSync(path.join(work, 'manifest.json'), JSON.stringify(manifest, null, 2));
    publishCacheDir(work, dir, manifestPath);
    const buildMs = Date.now() - t0;
    log(`built systemd base ${key} in ${buildMs} ms`);
    return result(manifest, false, buildMs);
  } catch (err) {
    fs.rmSync(work, { recursive: true, force: true });
    throw err;
  }
}

export function findSource(name: string): string {
  for (const p of [path.join(__dirname, name), path.resolve(__dirname, '../../../scripts/vm', name)]) {
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`cannot find scripts/vm/${name}`);
}

/**
 * The initramfs: build.ts's (busybox, virtio_pci, ext4) with virtio_blk.ko and the /init
 * (systemd-initrd-init.sh) appended. Made per run (it is small), so /init is the checkout's.
 */
export function makeSystemdInitrd(base: SystemdBase, out: string): void {
  const modDir = path.join(base.rootfs, 'lib/modules', base.release);
  const vblk = resolveModules(fs.readFileSync(path.join(modDir, 'modules.dep'), 'utf8'), ['virtio_blk']).find((m) => /\/virtio_blk\.ko/.test(m));
  if (!vblk) throw new Error(`no virtio_blk in ${modDir}/modules.dep`);
  const initModules = base.vm.modules.filter((m) => !INITRD_SKIP.test(path.basename(m)));
  const overlay = cpioNewc([
    { kind: 'file', path: '/lib/modules/virtio_blk.ko', data: fs.readFileSync(path.join(modDir, vblk)), mode: 0o644 },
    { kind: 'file', path: '/init', data: fs.readFileSync(findSource('systemd-initrd-init.sh')), mode: 0o755 },
    { kind: 'file', path: '/etc/initrd-modules', data: Buffer.from([...initModules, '/lib/modules/virtio_blk.ko'].join('\n') + '\n'), mode: 0o644 },
  ]);
  fs.copyFileSync(base.vm.initrd, out);
  fs.appendFileSync(out, overlay);
}

export interface DiskFile {
  data: string | Buffer;
  mode?: number;
}

export interface MakeDiskOptions {
  /** The checkout whose built tree is installed (package.json, bin/, dist/, node_modules/). */
  repoDir: string;
  /** Where the raw image goes. */
  out: string;
  /** Extra files by guest path (written after the install, so they win). */
  files?: Record<string, DiskFile>;
  /** Lines appended to /etc/fstab. */
  fstab?: string[];
  /** Units to `systemctl enable` (after the files are in place). */
  enable?: string[];
  sizeMiB?: number;
  /** Scratch directory for the staging tree (removed after). */
  tmpDir: string;
}

export const GUEST_INSTALL_DIR = '/opt/iscsi-nbd';
/** Unit files from scripts/systemd that go to /etc/systemd/system. */
export const INSTALLED_UNITS = ['iscsi-nbd.service', 'nbd@.service'];

/** The base plus the project installed as README "Install" says, as a raw ext4 image. */
export async function makeSystemdDisk(base: SystemdBase, o: MakeDiskOptions): Promise<{ ms: number; bytes: number }> {
  const t0 = Date.now();
  const stage = path.join(o.tmpDir, 'stage');
  fs.rmSync(stage, { recursive: true, force: true });
  await run('cp', ['-a', base.rootfs, stage]);
  try {
    // README "Install": the checkout in /opt, npm ci's result (copied: this checkout's), the link.
    const inst = path.join(stage, GUEST_INSTALL_DIR);
    fs.mkdirSync(inst, { recursive: true });
    for (const d of ['package.json', 'bin', 'dist', 'node_modules']) {
      if (!fs.existsSync(path.join(o.repoDir, d))) throw new Error(`${o.repoDir}/${d} missing: the image installs the built project (npm ci)`);
      await run('cp', ['-a', path.join(o.repoDir, d), inst]);
    }
    symlinkIn(stage, '/usr/local/bin/iscsi-nbd', `${GUEST_INSTALL_DIR}/bin/iscsi-nbd.js`);
    const nodeBin = fs.realpathSync(process.execPath);
    writeFileIn(stage, '/usr/local/bin/node', fs.readFileSync(nodeBin), 0o755);
    // Libraries node or an addon needs that the base does not have (same paths as the host's).
    // Every addon but musl's (ldd skips those for other systems).
    const addons = (await run('find', [path.join(o.repoDir, 'node_modules'), '-type', 'f', '-name', '*.node'])).split('\n').filter((f) => f && !/musl/.test(f));
    const needs = [nodeBin, ...addons];
    for (const bin of needs) {
      let libs: string[];
      try {
        libs = await lddLibs(bin);
      } catch {
        continue; // an addon for another system
      }
      for (const l of libs) {
        if (!fs.existsSync(path.join(stage, l))) writeFileIn(stage, l, fs.readFileSync(fs.realpathSync(l)), 0o755);
      }
    }
    for (const u of INSTALLED_UNITS) {
      writeFileIn(stage, `/etc/systemd/system/${u}`, fs.readFileSync(path.join(o.repoDir, 'scripts/systemd', u)));
    }
    // README "Install": load nbd at every boot.
    writeFileIn(stage, '/etc/modules-load.d/nbd.conf', 'nbd\n');
    for (const [p, f] of Object.entries(o.files ?? {})) writeFileIn(stage, p, f.data, f.mode ?? 0o644);
    if (o.fstab && o.fstab.length > 0) {
      const fstab = path.join(stage, 'etc/fstab');
      writeFileIn(stage, '/etc/fstab', fs.readFileSync(fstab, 'utf8') + o.fstab.join('\n') + '\n');
    }
    if (o.enable && o.enable.length > 0) await run('systemctl', [`--root=${stage}`, 'enable', ...o.enable]);
    fs.rmSync(o.out, { force: true });
    fs.writeFileSync(o.out, '');
    fs.truncateSync(o.out, (o.sizeMiB ?? 1536) * 1024 * 1024);
    await run('mkfs.ext4', ['-q', '-F', '-L', 'e2e-root', '-d', stage, o.out], { timeoutMs: 300000 });
    return { ms: Date.now() - t0, bytes: fs.statSync(o.out).blocks * 512 };
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}
