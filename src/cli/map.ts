import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { callControl, NoDaemonError } from '../daemon/control';
import { defaultControlPath, defaultStateDir, NO_CONTROL } from '../daemon/paths';
import { readOwner, isDaemonAlive } from '../daemon/owner';
import type { MappingStatus } from '../daemon/status';
import { MappingStore } from '../daemon/mapping-store';
import { ConfigError, IscsiNbdError } from '../errors';
import { redactText } from '../log';
import { authFor, type SecretOptions } from '../credentials';
import { parseLunUrl } from '../iscsi/url';
import type { DigestPref } from '../config';
import { LogArgs, withCommonOptions, withIfaceOption, withLogOptions } from './common';

// `map`, `unmap`, `list-mapped`: the CLI side of devices the daemon owns.
// They talk to the daemon that owns the state dir over its control socket;
// `map` starts that daemon in the background when none runs.

export interface DeviceArgs extends LogArgs {
  'state-dir'?: string;
  control?: string;
}

interface MapArgs extends DeviceArgs, SecretOptions {
  url: string;
  device?: string;
  connections?: number;
  'read-only'?: boolean;
  config?: string;
  'initiator-name'?: string;
  'io-timeout'?: number;
  'reattach-timeout'?: number;
  'daemon-wait'?: number;
  digest?: DigestPref;
  iface?: string[];
}

/** The map request can take as long as a login and a first read through a slow target. */
const MAP_TIMEOUT_MS = 180_000;

export function explicitStateDir(argv: DeviceArgs): string | undefined {
  return argv['state-dir'] ? path.resolve(argv['state-dir']) : undefined;
}

export function stateDirOf(argv: DeviceArgs): string {
  return path.resolve(argv['state-dir'] ?? defaultStateDir());
}

/** The owner's control socket when one runs, else the one asked for or the default. */
export function controlOf(argv: DeviceArgs, stateDir: string): string {
  if (argv.control) return argv.control;
  const o = readOwner(stateDir);
  if (o && isDaemonAlive(o.pid)) {
    if (o.control === NO_CONTROL) {
      throw new ConfigError('ECONFIG', `iscsi-nbd pid ${o.pid} owns ${stateDir} but runs without a control socket (--control none): restart it with one to map, unmap or list its devices`);
    }
    return o.control;
  }
  return defaultControlPath();
}

/** What map needs of the host before it starts a daemon: who we are, and the kernel's nbd driver. */
export interface MapHost {
  uid: number;
  /** /sys, or a test's stand-in. */
  sysfs: string;
  /** Whether `modinfo nbd` finds the module (it is there, but not loaded). */
  hasModule(): boolean;
}

const realHost = (): MapHost => ({
  uid: process.geteuid?.() ?? process.getuid?.() ?? 0,
  sysfs: '/sys',
  hasModule: () => spawnSync('modinfo', ['nbd'], { stdio: 'ignore', timeout: 5000 }).status === 0,
});

/** `map` refused before any daemon starts: it could not work on this host as things are. */
export class MapPreflightError extends ConfigError {
  constructor(message: string) {
    super('ECONFIG', message);
  }
}

/**
 * Before a daemon is started for it, whether `map` can work at all: root, the
 * nbd driver, and the device asked for free. A daemon started for a map that
 * cannot work would stay behind, serving nothing.
 */
export function mapPreflight(device: number | undefined, host: MapHost = realHost()): void {
  if (host.uid !== 0) throw new MapPreflightError('map needs root (CAP_SYS_ADMIN) to configure NBD devices: run it with sudo');
  if (!fs.existsSync(path.join(host.sysfs, 'module', 'nbd'))) {
    throw new MapPreflightError(host.hasModule()
      ? 'the kernel has no nbd module loaded: run `modprobe nbd` (and `echo nbd > /etc/modules-load.d/nbd.conf` to load it at every boot)'
      : 'this kernel has no nbd module (`modinfo nbd` finds none): install the kernel\'s extra modules package, or use a kernel built with CONFIG_BLK_DEV_NBD');
  }
  if (device === undefined) return; // the kernel picks a free one, or makes one
  let pid: string | undefined;
  try {
    pid = fs.readFileSync(path.join(host.sysfs, 'block', `nbd${device}`, 'pid'), 'utf8').trim();
  } catch {
    return; // no such device yet (the kernel makes it), or not connected
  }
  throw new MapPreflightError(`/dev/nbd${device} is in use already (served by pid ${pid}): pick another --device or leave it out`);
}

/** The daemon's last error line in its log (JSON lines), for a daemon that exited before it was ready. */
function lastLoggedError(logFile: string, from: number): string | undefined {
  let text: string;
  try {
    const fd = fs.openSync(logFile, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      const buf = Buffer.alloc(Math.min(size - from, 256 * 1024));
      fs.readSync(fd, buf, 0, buf.length, size - buf.length);
      text = buf.toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
  let found: string | undefined;
  for (const line of text.split('\n')) {
    try {
      const l = JSON.parse(line) as { level?: number; msg?: string };
      if ((l.level ?? 0) >= 50 && l.msg) found = l.msg;
    } catch {
      // not a log line
    }
  }
  return found;
}

/** Start `iscsi-nbd serve` for this state dir, detached, logging to a file there; wait for its control socket. */
async function startDaemon(argv: MapArgs, stateDir: string, control: string): Promise<void> {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const logFile = path.join(stateDir, 'daemon.log');
  const out = fs.openSync(logFile, 'a', 0o600);
  const logStart = fs.fstatSync(out).size;
  const bin = path.resolve(__dirname, '../../../bin/iscsi-nbd.js');
  const args = [bin, 'serve', '--state-dir', stateDir, '--control', control, '--log-format', 'json'];
  if (argv.config) args.push('--config', argv.config);
  if (argv['initiator-name']) args.push('--initiator-name', argv['initiator-name']);
  if (argv['log-level']) args.push('--log-level', argv['log-level']);
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  let exited: number | null | undefined;
  child.once('exit', (code) => (exited = code));
  child.unref();
  const deadline = Date.now() + (argv['daemon-wait'] ?? 60) * 1000;
  while (Date.now() < deadline) {
    if (exited !== undefined) {
      const why = lastLoggedError(logFile, logStart);
      throw new IscsiNbdError('EIO', `the daemon exited (code ${exited}) before it was ready${why ? `: ${why}` : ''}; see ${logFile}`);
    }
    try {
      await callControl(control, { op: 'status' }, 2000);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new IscsiNbdError('ETIMEOUT', `the daemon did not answer on ${control} within ${argv['daemon-wait'] ?? 60} s; see ${logFile}`);
}

/**
 * The daemon logs in, possibly long after this command is gone (a restart
 * reattaches): a CHAP secret this command found in a file or the environment
 * travels in the URL, which the daemon keeps in its 0600 mapping record.
 */
function urlWithSecrets(url: string, argv: MapArgs): string {
  if (!/^iscsi:\/\//i.test(url)) return url; // an export name: the config has its CHAP
  const u = parseLunUrl(url);
  const auth = authFor(u, argv);
  if (!auth || u.auth?.password) return url;
  const enc = (s: string | Buffer) => encodeURIComponent(String(s));
  const rest = url.slice('iscsi://'.length);
  const at = rest.slice(0, rest.indexOf('/') < 0 ? undefined : rest.indexOf('/')).lastIndexOf('@');
  let out = `iscsi://${enc(auth.user)}%${enc(auth.secret)}@${rest.slice(at + 1)}`;
  if (auth.targetUser && auth.targetSecret && !u.auth?.targetPassword) {
    out += `${out.includes('?') ? '&' : '?'}target_user=${enc(auth.targetUser)}&target_password=${enc(auth.targetSecret)}`;
  }
  return out;
}

export async function runMap(argv: MapArgs): Promise<void> {
  const stateDir = stateDirOf(argv);
  const control = controlOf(argv, stateDir);
  const req = {
    // The state dir is checked only when one was asked for: else the running daemon's own is right.
    op: 'map', stateDir: explicitStateDir(argv), url: urlWithSecrets(argv.url, argv), connections: argv.connections, readOnly: argv['read-only'],
    device: argv.device === undefined ? undefined : parseDeviceArg(argv.device),
    ioTimeout: argv['io-timeout'], reattachTimeout: argv['reattach-timeout'], digest: argv.digest,
    ...(argv.iface?.length ? { ifaces: argv.iface } : {}),
  };
  let st: MappingStatus;
  try {
    st = await callControl<MappingStatus>(control, req, MAP_TIMEOUT_MS);
  } catch (err) {
    if (!(err instanceof NoDaemonError)) throw err;
    mapPreflight(req.device);
    await startDaemon(argv, stateDir, control);
    st = await callControl<MappingStatus>(control, req, MAP_TIMEOUT_MS);
  }
  process.stdout.write(`${st.device}\n`);
}

function parseDeviceArg(s: string): number {
  const m = /^(?:\/dev\/nbd|nbd)?(\d+)$/.exec(s.trim());
  if (!m) throw new ConfigError('ECONFIG', `"${s}" is not an NBD device: expected /dev/nbdN`);
  return Number(m[1]);
}

export async function runUnmap(argv: DeviceArgs & { device: string; force?: boolean }): Promise<void> {
  const stateDir = stateDirOf(argv);
  const index = parseDeviceArg(argv.device);
  try {
    await callControl(controlOf(argv, stateDir), { op: 'unmap', stateDir: explicitStateDir(argv), device: index, force: argv.force === true }, MAP_TIMEOUT_MS);
  } catch (err) {
    if (err instanceof NoDaemonError) {
      const { records, problems } = new MappingStore(stateDir).load();
      // A record that cannot be read may still be that device's: then it is not "nothing".
      if (!records.some((r) => r.index === index) && !problems.some((p) => path.basename(p.file) === `nbd${index}.json`)) {
        throw new ConfigError('ECONFIG', `nothing is mapped on /dev/nbd${index}: no daemon serves ${stateDir}, and it has no record of that device`);
      }
      throw new IscsiNbdError('EIO', `no daemon serves ${stateDir}: start it (iscsi-nbd serve --state-dir ${stateDir}), then unmap; the device keeps its I/O waiting for it`);
    }
    throw err;
  }
}

export function renderMappings(list: MappingStatus[]): string {
  if (list.length === 0) return '';
  const rows = [['DEVICE', 'STATE', 'SOCKETS', 'BLOCK', 'SIZE', 'CONNS', 'IDENTITY', 'URL']];
  for (const m of list) rows.push([m.device, m.state, m.attach ?? '-', String(m.blockSize), m.size, String(m.connections), m.identity, m.url + (m.readOnly ? ' (ro)' : '')]);
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]))).join('  ')).join('\n') + '\n';
}

export async function runListMapped(argv: DeviceArgs & { json?: boolean }): Promise<void> {
  const stateDir = stateDirOf(argv);
  let list: MappingStatus[];
  let problems: string[] = [];
  try {
    const r = await callControl<{ mappings: MappingStatus[]; problems: string[] }>(controlOf(argv, stateDir), { op: 'list-mapped', stateDir: explicitStateDir(argv) });
    list = r.mappings;
    problems = r.problems;
  } catch (err) {
    if (!(err instanceof NoDaemonError)) throw err;
    // No daemon: the records say what is mapped; their devices wait for one.
    const loaded = new MappingStore(stateDir).load();
    problems = loaded.problems.map((p) => p.message);
    list = loaded.records.map((r) => ({
      device: `/dev/nbd${r.index}`, index: r.index, url: redactText(r.url), export: r.exportName ?? '',
      identity: r.identity, blockSize: r.blockSize, size: r.size, connections: r.connections, readOnly: r.readOnly, state: 'no daemon',
    }));
  }
  const text = list.length === 0 ? `no devices are mapped (state dir ${stateDir})\n` : renderMappings(list);
  process.stdout.write(argv.json ? JSON.stringify(list, null, 2) + '\n' : text);
  for (const p of problems) process.stderr.write(`iscsi-nbd: ${p}\n`);
}

export const deviceOptions = <T>(y: Argv<T>) =>
  y
    .option('state-dir', { type: 'string', describe: 'the daemon\'s state dir (default /var/lib/iscsi-nbd as root)' })
    .option('control', { type: 'string', describe: 'the daemon\'s control socket (default: the state dir\'s daemon, else the standard one)' });

export const mapCommand: CommandModule<object, MapArgs> = {
  command: 'map <url>',
  describe: 'attach a LUN as /dev/nbdN, served by the daemon (started in the background if needed)',
  builder: (y) =>
    deviceOptions(withIfaceOption(withCommonOptions(y)))
      .positional('url', { type: 'string', demandOption: true, describe: 'iscsi://[user%pass@]host[:port]/<iqn>/<lun>, or an export name from the config' })
      .option('device', { type: 'string', describe: '/dev/nbdN to use (default: the kernel picks a free one)' })
      .option('connections', { type: 'number', describe: 'kernel connections to the daemon (default 1)' })
      .option('read-only', { type: 'boolean', describe: 'map read-only' })
      .option('config', { type: 'string', describe: 'config file for a daemon that map starts' })
      .option('io-timeout', { type: 'number', describe: 'seconds before the kernel re-sends an unanswered request' })
      .option('reattach-timeout', { type: 'number', describe: 'seconds the kernel holds I/O while the daemon restarts' })
      .option('daemon-wait', { type: 'number', describe: 'seconds to wait for a daemon map starts (default 60)' }) as unknown as Argv<MapArgs>,
  handler: (argv) => runMap(argv),
};

export const unmapCommand: CommandModule<object, DeviceArgs & { device: string; force?: boolean }> = {
  command: 'unmap <device>',
  describe: 'flush and detach a mapped /dev/nbdN and forget it',
  builder: (y) =>
    deviceOptions(withLogOptions(y))
      .positional('device', { type: 'string', demandOption: true, describe: '/dev/nbdN' })
      .option('force', { type: 'boolean', describe: 'detach even if it is mounted (the filesystem loses what it has not written)' }) as never,
  handler: (argv) => runUnmap(argv),
};

export const listMappedCommand: CommandModule<object, DeviceArgs & { json?: boolean }> = {
  command: 'list-mapped',
  describe: 'list the mapped devices: device, state, block size, size, connections, LUN identity, URL',
  builder: (y) => deviceOptions(y).option('json', { type: 'boolean', default: false }) as never,
  handler: (argv) => runListMapped(argv),
};
