import fs from 'node:fs';
import net from 'node:net';
import type { Argv, CommandModule } from 'yargs';
import {
  checkConfig, checkListenHosts, ConfigFile, DaemonConfig, DEFAULT_TIMEOUTS, formatProblem, MAX_SESSIONS, parseExportFlag, parseListen, problemsError, readConfigFile,
} from '../config';
import { ConfigError } from '../errors';
import { formatHostPort } from '../iscsi/url';
import type { SecretOptions } from '../credentials';
import { prepareControlPath } from '../daemon/control';
import { defaultControlPath, NO_CONTROL } from '../daemon/paths';
import { LogArgs, setupLogging, UsageError, warn, withCommonOptions, withIfaceOption } from './common';

const NUMBER_OPTIONS = ['sessions', 'replacement-timeout', 'command-timeout', 'handshake-timeout', 'io-timeout', 'reattach-timeout'] as const;

/** Two --export flags with one name: the second would silently replace the first. */
export function duplicateExportFlags(flags: readonly string[] | undefined): string | undefined {
  const seen = new Set<string>();
  for (const f of flags ?? []) {
    const eq = f.indexOf('=');
    if (eq < 0) continue;
    const name = f.slice(0, eq);
    if (seen.has(name)) return `--export: the name "${name}" is given twice`;
    seen.add(name);
  }
  return undefined;
}

export function options<T>(y: Argv<T>) {
  return withIfaceOption(withCommonOptions(y))
    .option('config', { type: 'string', describe: 'YAML config file (flags override it)' })
    .option('listen', {
      type: 'string',
      array: true,
      describe: 'HOST:PORT, PORT (on 127.0.0.1) or unix:/path to serve the NBD exports on (default 127.0.0.1:10809 when there are exports; ' +
        'none without). NBD has no password: an address other hosts reach gives them the exports, so use --tls require there (serve warns)',
    })
    .option('export', { type: 'string', array: true, describe: 'NAME=iscsi://[user%pass@]host[:port]/<iqn>/<lun> (repeatable; replaces the config file\'s export of that name)' })
    .option('sessions', { type: 'number', describe: 'iSCSI sessions per export (default 2)' })
    .option('read-only', { type: 'boolean', describe: 'serve every export read-only' })
    .option('tls', { choices: ['off', 'on', 'require'] as const, describe: 'NBD TLS: off, on (optional), require (no plaintext)' })
    .option('tls-cert', { type: 'string', describe: 'server certificate (PEM); needs --tls on|require' })
    .option('tls-key', { type: 'string', describe: 'server private key (PEM); needs --tls on|require' })
    .option('tls-ca', { type: 'string', describe: 'CA for client certificates (PEM)' })
    .option('tls-verify-client', { type: 'boolean', describe: 'require client certificates signed by --tls-ca' })
    .option('metrics', { type: 'string', describe: 'HOST:PORT or PORT for /metrics, /healthz, /readyz (off unless given)' })
    .option('control', {
      type: 'string',
      describe: 'unix socket for status, map, unmap, list-mapped and reload (default /run/iscsi-nbd/control.sock as root, else ' +
        '$XDG_RUNTIME_DIR/iscsi-nbd-UID.sock or /tmp/iscsi-nbd-UID/control.sock); one that cannot be taken stops the start; none: run without one',
    })
    .option('replacement-timeout', { type: 'number', describe: `seconds an iSCSI outage may last before I/O fails (default ${DEFAULT_TIMEOUTS.replacement})` })
    .option('command-timeout', { type: 'number', describe: `seconds before a SCSI command is aborted (default ${DEFAULT_TIMEOUTS.command})` })
    .option('handshake-timeout', { type: 'number', describe: `seconds an NBD client has to negotiate (default ${DEFAULT_TIMEOUTS.handshake})` })
    .option('state-dir', { type: 'string', describe: 'where mapped devices are recorded (default /var/lib/iscsi-nbd as root)' })
    .option('io-timeout', { type: 'number', describe: `mapped devices: seconds before the kernel re-sends an unanswered request (default ${DEFAULT_TIMEOUTS.io})` })
    .option('reattach-timeout', { type: 'number', describe: `mapped devices: seconds the kernel holds I/O for a restarting daemon (default ${DEFAULT_TIMEOUTS.reattach})` })
    .option('strict', { type: 'boolean', describe: 'refuse to start when any export cannot be opened (exit with its code) instead of retrying it in the background' })
    .option('pid-file', { type: 'string', describe: 'write the daemon\'s pid to this file once it serves (removed on stop); refuse to start if it names a running iscsi-nbd' })
    .option('print-attach', { type: 'boolean', describe: 'print the nbd-client command and /etc/nbdtab line of each export once it is ready (default: when stdout is a terminal)' })
    .check((argv) => {
      const dup = duplicateExportFlags(argv.export as string[] | undefined);
      if (dup) return dup;
      for (const k of NUMBER_OPTIONS) {
        const v = (argv as Record<string, unknown>)[k];
        if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v))) return `--${k} wants a number`;
      }
      return true;
    });
}

export interface ServeArgs extends SecretOptions, LogArgs {
  config?: string;
  listen?: string[];
  export?: string[];
  sessions?: number;
  'read-only'?: boolean;
  tls?: 'off' | 'on' | 'require';
  'tls-cert'?: string;
  'tls-key'?: string;
  'tls-ca'?: string;
  'tls-verify-client'?: boolean;
  metrics?: string;
  control?: string;
  'replacement-timeout'?: number;
  'command-timeout'?: number;
  'handshake-timeout'?: number;
  'state-dir'?: string;
  'io-timeout'?: number;
  'reattach-timeout'?: number;
  'initiator-name'?: string;
  digest?: DaemonConfig['digest'];
  iface?: string[];
  'print-attach'?: boolean;
  strict?: boolean;
  'pid-file'?: string;
}

/** The pid a pid file names, when that process is a running iscsi-nbd (a stale or reused pid is not). */
export function pidFileOwner(file: string): number | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigError('ECONFIG', `cannot read the pid file ${file}: ${(err as Error).message}`);
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return undefined;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return undefined;
  }
  try {
    // The daemon names itself iscsi-nbd (nameProcess); anything else has the pid by chance.
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
    const comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    return /iscsi-nbd/.test(cmdline) || comm === 'iscsi-nbd' ? pid : undefined;
  } catch {
    return undefined; // gone meanwhile
  }
}

/** Write our pid atomically (a temporary file renamed over it). */
export function writePidFile(file: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, `${process.pid}\n`, { mode: 0o644 });
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw new ConfigError('ECONFIG', `cannot write the pid file ${file}: ${(err as Error).message}`);
  }
}

/** Remove the pid file if it still names this process. */
export function removePidFile(file: string): void {
  try {
    if (fs.readFileSync(file, 'utf8').trim() === String(process.pid)) fs.rmSync(file, { force: true });
  } catch {
    // gone already
  }
}

/**
 * The config file, then the arguments (the command line, with the
 * ISCSI_NBD_* variables already filled in for options it left out), then
 * every check that can be made without logging in anywhere (see checkConfig):
 * errors throw (all of them in one message), warnings go to `onWarning`.
 */
export function buildConfig(argv: ServeArgs, onWarning: (message: string) => void = warn): DaemonConfig {
  return buildConfigAndFile(argv, onWarning).cfg;
}

/** The flag of each timeout a flag can set (the others come from the config file only). */
const TIMEOUT_FLAGS = {
  replacement: '--replacement-timeout', command: '--command-timeout', handshake: '--handshake-timeout', io: '--io-timeout', reattach: '--reattach-timeout',
} as const;

function buildConfigAndFile(argv: ServeArgs, onWarning: (message: string) => void): { cfg: DaemonConfig; file?: ConfigFile } {
  // A file with errors is still merged and checked further, so that every problem is reported at once.
  const file: ConfigFile | undefined = argv.config ? readConfigFile(argv.config) : undefined;
  const base: DaemonConfig = file?.loose
    ?? { listen: [], sessions: 2, digest: 'prefer-none', readOnly: false, tls: { mode: 'off' }, timeouts: { ...DEFAULT_TIMEOUTS }, exports: [], devices: [] };
  const cfg: DaemonConfig = { ...base, timeouts: { ...base.timeouts }, tls: { ...base.tls }, exports: [...base.exports] };
  const dup = duplicateExportFlags(argv.export);
  if (dup) throw new UsageError(dup, 'serve');
  for (const e of argv.export ?? []) {
    // A flag replaces the config file's export of the same name (README: flags > file).
    const spec = parseExportFlag(e);
    cfg.exports = cfg.exports.filter((x) => x.name !== spec.name);
    cfg.exports.push(spec);
  }
  if (argv.listen?.length) cfg.listen = argv.listen;
  // With no exports there is nothing to serve over TCP: the daemon only serves mapped devices.
  if (cfg.listen.length === 0 && cfg.exports.length > 0) cfg.listen = ['127.0.0.1:10809'];
  if (argv['state-dir']) cfg.stateDir = argv['state-dir'];
  if (argv['io-timeout'] !== undefined) cfg.timeouts.io = argv['io-timeout'];
  if (argv['reattach-timeout'] !== undefined) cfg.timeouts.reattach = argv['reattach-timeout'];
  if (argv.sessions !== undefined) cfg.sessions = argv.sessions;
  if (argv['read-only'] !== undefined) cfg.readOnly = argv['read-only'];
  if (argv.tls) cfg.tls.mode = argv.tls;
  if (argv['tls-cert']) cfg.tls.cert = argv['tls-cert'];
  if (argv['tls-key']) cfg.tls.key = argv['tls-key'];
  if (argv['tls-ca']) cfg.tls.ca = argv['tls-ca'];
  if (argv['tls-verify-client'] !== undefined) cfg.tls.verifyClient = argv['tls-verify-client'];
  if (argv.metrics) cfg.metrics = argv.metrics;
  if (argv.control) cfg.control = argv.control;
  if (argv['initiator-name']) cfg.initiatorName = argv['initiator-name'];
  if (argv.digest) cfg.digest = argv.digest;
  // Like the top-level `ifaces:`: for every export that names none of its own.
  if (argv.iface?.length) cfg.ifaces = argv.iface;
  if (argv['replacement-timeout'] !== undefined) cfg.timeouts.replacement = argv['replacement-timeout'];
  if (argv['command-timeout'] !== undefined) cfg.timeouts.command = argv['command-timeout'];
  if (argv['handshake-timeout'] !== undefined) cfg.timeouts.handshake = argv['handshake-timeout'];
  if (argv['log-level']) cfg.logLevel = argv['log-level'];
  // The file's own values were checked by its schema, and its problems name file and line: those come first.
  const problems = [...(file?.problems ?? []), ...checkConfig(cfg, { file, emptyExports: file && !argv.export?.length ? 'serve' : 'ignore' })];
  const err = problemsError(problems);
  if (err) throw err;
  // What is left to check came from flags or variables.
  for (const [k, v] of Object.entries(cfg.timeouts)) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 86400) {
      const flag = TIMEOUT_FLAGS[k as keyof typeof TIMEOUT_FLAGS];
      throw new ConfigError('ECONFIG', `${flag ?? `timeouts.${k}`} must be a number of seconds 0..86400, got ${String(v)}`);
    }
  }
  if (!Number.isInteger(cfg.sessions) || cfg.sessions < 1 || cfg.sessions > MAX_SESSIONS) throw new ConfigError('ECONFIG', `--sessions must be 1..${MAX_SESSIONS}, got ${cfg.sessions}`);
  for (const p of problems) onWarning(formatProblem(p));
  return { cfg, file };
}

/** Refuse a port that is taken before logging in anywhere, in the words startDaemon uses. */
async function ensureFree(addr: { host: string; port: number }, what: 'nbd' | 'metrics'): Promise<void> {
  if (addr.port === 0) return;
  await new Promise<void>((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => reject(listenError(err, formatHostPort(addr.host, addr.port), what)));
    srv.listen(addr.port, addr.host, () => srv.close(() => resolve()));
  });
}

/** A failed listen(), worded for a person: which flag to change. */
export function listenError(err: NodeJS.ErrnoException, where: string, what: 'nbd' | 'metrics'): ConfigError {
  if (what === 'metrics') {
    if (err.code === 'EADDRINUSE') return new ConfigError('ECONFIG', `cannot serve metrics on ${where}: the address is in use (another iscsi-nbd?). Pick another with --metrics HOST:PORT`);
    return new ConfigError('ECONFIG', `cannot serve metrics on ${where}: ${err.message}`);
  }
  if (err.code === 'EADDRINUSE') return new ConfigError('ECONFIG', `cannot listen on ${where}: the address is in use (another iscsi-nbd or nbd-server?). Pick another with --listen HOST:PORT`);
  return new ConfigError('ECONFIG', `cannot listen on ${where}: ${err.message}`);
}

/** Quote a word for a POSIX shell when it needs it. */
function sh(word: string): string {
  return /^[A-Za-z0-9._:@%+=,/-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

export interface AttachExport {
  name: string;
  blockSize: number;
}

/**
 * For each export, the nbd-client command and the /etc/nbdtab line that attach
 * it (with -b / bs= the LUN's logical block size, which nbd-client does not
 * learn from the server), through the first address the daemon listens on.
 */
export function attachInstructions(exports: readonly AttachExport[], addresses: ReadonlyArray<net.AddressInfo | string>): string {
  if (exports.length === 0 || addresses.length === 0) return '';
  const tcp = addresses.find((a): a is net.AddressInfo => typeof a !== 'string');
  const out: string[] = [];
  exports.forEach((e, i) => {
    const dev = `nbd${i}`;
    let cmd: string;
    let tab: string;
    if (tcp) {
      // A wildcard address is reached locally through loopback.
      const host = tcp.address === '0.0.0.0' ? '127.0.0.1' : tcp.address === '::' ? '::1' : tcp.address;
      cmd = `nbd-client ${host} ${tcp.port} /dev/${dev} -N ${sh(e.name)} -b ${e.blockSize}`;
      tab = `${dev}  ${host}  ${e.name}  bs=${e.blockSize}${tcp.port === 10809 ? '' : `,port=${tcp.port}`}`;
    } else {
      const path = addresses[0] as string;
      cmd = `nbd-client -unix ${sh(path)} /dev/${dev} -N ${sh(e.name)} -b ${e.blockSize}`;
      tab = `${dev}  ${path}  ${e.name}  bs=${e.blockSize},unix`;
    }
    // nbdtab fields are separated by white space: such a name cannot go there.
    if (/\s/.test(e.name) || e.name === '') tab = '(not possible: the export name is empty or has white space)';
    out.push(`export "${e.name}" is ready (${e.blockSize}-byte blocks); attach it with:`, `  ${cmd}`, `  /etc/nbdtab: ${tab}`);
  });
  if (tcp && tcp.port !== 10809) out.push('(nbd-client 3.24, Debian 12, ignores port= in /etc/nbdtab: serve on 10809 for nbdtab use)');
  return out.join('\n') + '\n';
}

export async function run(argv: ServeArgs): Promise<void> {
  const { cfg, file } = buildConfigAndFile(argv, warn);
  const pidFile = argv['pid-file'];
  if (pidFile) {
    const other = pidFileOwner(pidFile);
    if (other !== undefined) throw new ConfigError('ECONFIG', `the pid file ${pidFile} names iscsi-nbd pid ${other}, which still runs: stop it first, or give another --pid-file`);
  }
  const hostProblems = await checkListenHosts(cfg, { file });
  const hostErr = problemsError(hostProblems);
  if (hostErr) throw hostErr;
  // Taken ports are refused now, not after every export has logged in.
  for (const l of cfg.listen) {
    const a = parseListen(l);
    if ('host' in a) await ensureFree(a, 'nbd');
  }
  if (cfg.metrics) {
    const m = parseListen(cfg.metrics, 9810);
    if ('host' in m) await ensureFree(m, 'metrics');
  }
  // So is a control socket that cannot be taken (another daemon's, another user's, a directory others can write to).
  const control = cfg.control ?? defaultControlPath();
  if (control !== NO_CONTROL) await prepareControlPath(control);
  // The config file's logLevel applies unless --log-level or $ISCSI_NBD_LOG_LEVEL said otherwise.
  setupLogging({ ...argv, 'log-level': cfg.logLevel });
  nameProcess();
  const { startDaemon, installSignals } = await import('../daemon/daemon');
  const { notifySystemd } = await import('../daemon/notify');
  let daemon: Awaited<ReturnType<typeof startDaemon>>;
  try {
    daemon = await startDaemon(cfg, { secrets: argv, reloadConfig: argv.config ? () => buildConfig(argv) : undefined, strict: argv.strict === true });
  } catch (err) {
    // The metrics server's listen() error comes out of startDaemon as it is.
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    if (!(err instanceof ConfigError) && e?.syscall === 'listen' && cfg.metrics) {
      const where = e.address !== undefined && e.port !== undefined ? formatHostPort(e.address, e.port) : cfg.metrics;
      throw listenError(e, where, 'metrics');
    }
    throw err;
  }
  const what = [...cfg.exports.map((e) => e.name), ...daemon.devices.list().map((m) => m.device)];
  if (pidFile) {
    try {
      writePidFile(pidFile);
    } catch (err) {
      await daemon.stop('pid file');
      throw err;
    }
  }
  // Signals first: a person who reads the lines below and presses Ctrl-C gets a clean stop.
  const running = daemon;
  installSignals({
    reload: () => running.reload(),
    stop: (reason) => running.stop(reason).finally(() => {
      if (pidFile) removePidFile(pidFile);
    }),
  });
  notifySystemd('READY=1\nSTATUS=serving ' + (what.join(', ') || 'no exports yet; waiting for iscsi-nbd map'));
  if (argv['print-attach'] ?? process.stdout.isTTY === true) {
    const ready: AttachExport[] = [];
    for (const e of daemon.manager.exports.values()) {
      if (e.isServing && e.lun?.isOpen) ready.push({ name: e.name, blockSize: e.lun.info.blockSize });
    }
    process.stdout.write(attachInstructions(ready, daemon.server.addresses()));
  }
}

/**
 * The daemon is named plain `iscsi-nbd` (so `pidof iscsi-nbd` and `pkill -HUP
 * iscsi-nbd` find it, as they would a C daemon). Linux lets node rewrite its
 * argv memory: that also hides a password given in --export from `ps`.
 */
export function nameProcess(): void {
  try {
    process.title = 'iscsi-nbd';
  } catch {
    // not fatal
  }
}

export const serveCommand: CommandModule<object, ServeArgs> = {
  command: 'serve',
  describe: 'serve iSCSI LUNs to NBD clients',
  builder: (y) => options(y) as unknown as Argv<ServeArgs>,
  handler: (argv) => run(argv),
};
