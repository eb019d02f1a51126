import type { Argv, CommandModule } from 'yargs';
import { DaemonConfig, DEFAULT_TIMEOUTS, loadConfig, parseExportFlag } from '../config';
import { ConfigError } from '../errors';
import { redactText } from '../log';
import type { SecretOptions } from '../credentials';
import { LogArgs, setupLogging, withCommonOptions } from './common';

export function options<T>(y: Argv<T>) {
  return withCommonOptions(y)
    .option('config', { type: 'string', describe: 'YAML config file (flags override it)' })
    .option('listen', { type: 'string', array: true, describe: 'HOST:PORT or unix:/path to serve NBD on (default 127.0.0.1:10809)' })
    .option('export', { type: 'string', array: true, describe: 'NAME=iscsi://[user%pass@]host[:port]/<iqn>/<lun> (repeatable)' })
    .option('sessions', { type: 'number', describe: 'iSCSI sessions per export (default 2)' })
    .option('read-only', { type: 'boolean', describe: 'serve every export read-only' })
    .option('tls', { choices: ['off', 'on', 'require'] as const, describe: 'NBD TLS: off, on (optional), require (no plaintext)' })
    .option('tls-cert', { type: 'string', describe: 'server certificate (PEM)' })
    .option('tls-key', { type: 'string', describe: 'server private key (PEM)' })
    .option('tls-ca', { type: 'string', describe: 'CA for client certificates (PEM)' })
    .option('tls-verify-client', { type: 'boolean', describe: 'require client certificates signed by --tls-ca' })
    .option('metrics', { type: 'string', describe: 'HOST:PORT for /metrics, /healthz, /readyz (off unless given)' })
    .option('control', { type: 'string', describe: 'unix socket for `iscsi-nbd status` (default in the runtime dir)' })
    .option('replacement-timeout', { type: 'number', describe: `seconds an iSCSI outage may last before I/O fails (default ${DEFAULT_TIMEOUTS.replacement})` })
    .option('command-timeout', { type: 'number', describe: `seconds before a SCSI command is aborted (default ${DEFAULT_TIMEOUTS.command})` })
    .option('handshake-timeout', { type: 'number', describe: `seconds an NBD client has to negotiate (default ${DEFAULT_TIMEOUTS.handshake})` })
    .option('state-dir', { type: 'string', describe: 'where mapped devices are recorded (default /var/lib/iscsi-nbd as root)' })
    .option('io-timeout', { type: 'number', describe: `mapped devices: seconds before the kernel re-sends an unanswered request (default ${DEFAULT_TIMEOUTS.io})` })
    .option('reattach-timeout', { type: 'number', describe: `mapped devices: seconds the kernel holds I/O for a restarting daemon (default ${DEFAULT_TIMEOUTS.reattach})` });
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
}

/**
 * The config file, then the arguments (the command line, with the
 * ISCSI_NBD_* variables already filled in for options it left out).
 */
export function buildConfig(argv: ServeArgs): DaemonConfig {
  const base: DaemonConfig = argv.config
    ? loadConfig(argv.config)
    : { listen: [], sessions: 2, digest: 'prefer-none', readOnly: false, tls: { mode: 'off' }, timeouts: { ...DEFAULT_TIMEOUTS }, exports: [], devices: [] };
  const cfg: DaemonConfig = { ...base, timeouts: { ...base.timeouts }, tls: { ...base.tls }, exports: [...base.exports] };
  for (const e of argv.export ?? []) {
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
  if (argv['replacement-timeout'] !== undefined) cfg.timeouts.replacement = argv['replacement-timeout'];
  if (argv['command-timeout'] !== undefined) cfg.timeouts.command = argv['command-timeout'];
  if (argv['handshake-timeout'] !== undefined) cfg.timeouts.handshake = argv['handshake-timeout'];
  if (argv['log-level']) cfg.logLevel = argv['log-level'];
  for (const [k, v] of Object.entries(cfg.timeouts)) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ConfigError('ECONFIG', `timeout ${k} must be a number of seconds >= 0`);
  }
  if (!Number.isInteger(cfg.sessions) || cfg.sessions < 1 || cfg.sessions > 64) throw new ConfigError('ECONFIG', '--sessions must be 1..64');
  if (cfg.tls.mode !== 'off' && (!cfg.tls.cert || !cfg.tls.key)) throw new ConfigError('ECONFIG', `--tls ${cfg.tls.mode} needs --tls-cert and --tls-key`);
  if (cfg.tls.verifyClient && !cfg.tls.ca) throw new ConfigError('ECONFIG', '--tls-verify-client needs --tls-ca');
  return cfg;
}

export async function run(argv: ServeArgs): Promise<void> {
  const cfg = buildConfig(argv);
  // The config file's logLevel applies unless --log-level or $ISCSI_NBD_LOG_LEVEL said otherwise.
  setupLogging({ ...argv, 'log-level': cfg.logLevel });
  hideSecretsFromPs();
  const { startDaemon, installSignals } = await import('../daemon/daemon');
  const { notifySystemd } = await import('../daemon/notify');
  const daemon = await startDaemon(cfg, { secrets: argv, reloadConfig: argv.config ? () => buildConfig(argv) : undefined });
  const what = [...cfg.exports.map((e) => e.name), ...daemon.devices.list().map((m) => m.device)];
  notifySystemd('READY=1\nSTATUS=serving ' + (what.join(', ') || 'no exports yet; waiting for iscsi-nbd map'));
  installSignals(daemon);
}

/**
 * A password in an --export URL is visible in /proc/PID/cmdline; overwrite the
 * process title (Linux lets node rewrite argv's memory) so `ps` shows no secret.
 */
function hideSecretsFromPs(): void {
  const args = process.argv.slice(2);
  const scrubbed = args.map((a) => redactText(a));
  if (scrubbed.every((a, i) => a === args[i])) return;
  try {
    process.title = ['iscsi-nbd', ...scrubbed].join(' ');
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
