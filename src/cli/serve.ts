import fs from 'node:fs';
import type { Argv } from 'yargs';
import { NbdServer, NbdTlsOptions } from '../nbd/server';
import { ExportManager } from '../bridge/manager';
import { DaemonConfig, DEFAULT_TIMEOUTS, loadConfig, parseExportFlag, parseListen, ExportConfig, readSecret } from '../config';
import { ConfigError } from '../errors';
import { Metrics, startMetricsServer } from '../metrics';
import { redactText, rootLogger } from '../log';
import { authFor, initiatorName, SecretOptions } from './common';
import { setupLogging } from './main';
import { notifySystemd } from './notify';
import { startControlServer, defaultControlPath } from './control';
import { formatHostPort } from '../iscsi/url';

export function options<T>(y: Argv<T>) {
  return y
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
    .option('handshake-timeout', { type: 'number', describe: `seconds an NBD client has to negotiate (default ${DEFAULT_TIMEOUTS.handshake})` });
}

export interface ServeArgs extends SecretOptions {
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
  'initiator-name'?: string;
  digest?: DaemonConfig['digest'];
  'log-level'?: string;
  'log-format'?: string;
}

/** The config file, then environment, then flags: the last one wins. */
export function buildConfig(argv: ServeArgs): DaemonConfig {
  const base: DaemonConfig = argv.config
    ? loadConfig(argv.config)
    : { listen: [], sessions: 2, digest: 'prefer-none', readOnly: false, tls: { mode: 'off' }, timeouts: { ...DEFAULT_TIMEOUTS }, exports: [] };
  const env = process.env;
  const cfg: DaemonConfig = { ...base, timeouts: { ...base.timeouts }, tls: { ...base.tls }, exports: [...base.exports] };
  if (env.ISCSI_NBD_LISTEN) cfg.listen = env.ISCSI_NBD_LISTEN.split(',');
  if (env.ISCSI_NBD_METRICS) cfg.metrics = env.ISCSI_NBD_METRICS;
  if (env.ISCSI_NBD_INITIATOR_NAME) cfg.initiatorName = env.ISCSI_NBD_INITIATOR_NAME;
  if (env.ISCSI_NBD_CONTROL) cfg.control = env.ISCSI_NBD_CONTROL;
  if (env.ISCSI_NBD_SESSIONS) cfg.sessions = Number(env.ISCSI_NBD_SESSIONS);
  if (env.ISCSI_NBD_DIGEST) {
    if (!['none', 'crc32c', 'prefer-crc32c', 'prefer-none'].includes(env.ISCSI_NBD_DIGEST)) throw new ConfigError('ECONFIG', 'ISCSI_NBD_DIGEST must be none, crc32c, prefer-crc32c or prefer-none');
    cfg.digest = env.ISCSI_NBD_DIGEST as DaemonConfig['digest'];
  }
  if (env.ISCSI_NBD_READ_ONLY) cfg.readOnly = /^(1|true|yes|on)$/i.test(env.ISCSI_NBD_READ_ONLY);
  if (env.ISCSI_NBD_LOG_LEVEL) cfg.logLevel = env.ISCSI_NBD_LOG_LEVEL;
  if (argv.listen?.length) cfg.listen = argv.listen;
  if (cfg.listen.length === 0) cfg.listen = ['127.0.0.1:10809'];
  for (const e of argv.export ?? []) {
    const spec = parseExportFlag(e);
    cfg.exports = cfg.exports.filter((x) => x.name !== spec.name);
    cfg.exports.push(spec);
  }
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
  if (logLevelGiven()) cfg.logLevel = argv['log-level'];
  for (const [k, v] of Object.entries(cfg.timeouts)) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new ConfigError('ECONFIG', `timeout ${k} must be a number of seconds >= 0`);
  }
  if (cfg.exports.length === 0) throw new ConfigError('ECONFIG', 'no exports: give --export NAME=iscsi://host/<iqn>/<lun> or a config file with exports');
  if (!Number.isInteger(cfg.sessions) || cfg.sessions < 1 || cfg.sessions > 64) throw new ConfigError('ECONFIG', '--sessions must be 1..64');
  if (cfg.tls.mode !== 'off' && (!cfg.tls.cert || !cfg.tls.key)) throw new ConfigError('ECONFIG', `--tls ${cfg.tls.mode} needs --tls-cert and --tls-key`);
  if (cfg.tls.verifyClient && !cfg.tls.ca) throw new ConfigError('ECONFIG', '--tls-verify-client needs --tls-ca');
  return cfg;
}

/** The manager's status, with each session's login details added (like iscsiadm -m session -P 3). */
function statusWithSessions(manager: ExportManager): object[] {
  return manager.status().map((st) => {
    const e = manager.exports.get((st as { name: string }).name);
    const sessions = ((st as { sessions?: object[] }).sessions ?? []).map((ss, i) => {
      const s = e?.sessions[i];
      const n = s?.negotiated;
      if (!s) return ss;
      return {
        ...ss,
        isid: s.isid.toString(16).padStart(12, '0'),
        tsih: n?.tsih,
        negotiated: n && {
          headerDigest: n.headerDigest ? 'CRC32C' : 'None',
          dataDigest: n.dataDigest ? 'CRC32C' : 'None',
          maxRecvDataSegmentLength: n.maxRecvDataSegmentLength,
          maxXmitDataSegmentLength: n.maxXmitDataSegmentLength,
          firstBurstLength: n.firstBurstLength,
          maxBurstLength: n.maxBurstLength,
          immediateData: n.immediateData,
          initialR2T: n.initialR2T,
          maxOutstandingR2T: n.maxOutstandingR2T,
          targetPortalGroupTag: n.targetPortalGroupTag,
          chap: n.chapAlgorithm ? (n.mutualAuthenticated ? 'mutual' : 'one-way') : 'none',
        },
      };
    });
    return { ...st, sessions };
  });
}

/** --log-level on the command line (the option's default comes from the environment otherwise). */
function logLevelGiven(): boolean {
  return process.argv.some((a) => a === '--log-level' || a.startsWith('--log-level='));
}

function readPem(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ConfigError('ECONFIG', `cannot read ${what} ${file}: ${(err as Error).message}`);
  }
}

export interface RunningDaemon {
  manager: ExportManager;
  server: NbdServer;
  stop(reason?: string): Promise<void>;
  reload(): Promise<void>;
}

/** Start everything a config describes; used by `serve` and `demo`. */
export async function startDaemon(cfg: DaemonConfig, argv: ServeArgs, reloadConfig?: () => DaemonConfig): Promise<RunningDaemon> {
  const log = rootLogger();
  const metrics = cfg.metrics ? new Metrics() : undefined;
  const iname = initiatorName(cfg.initiatorName);
  log.info({ initiatorName: iname }, 'initiator name');
  const manager = new ExportManager({
    initiatorName: iname,
    sessions: cfg.sessions,
    digest: cfg.digest,
    readOnly: cfg.readOnly,
    timeouts: cfg.timeouts,
    metrics,
    log,
    authFor: (url, spec: ExportConfig) =>
      authFor(url, argv, spec.chap && {
        user: spec.chap.user,
        secret: readSecret({ value: spec.chap.secret, file: spec.chap.secretFile, env: spec.chap.secretEnv }, 'the CHAP secret'),
        targetUser: spec.chap.targetUser,
        targetSecret: readSecret({ value: spec.chap.targetSecret, file: spec.chap.targetSecretFile, env: spec.chap.targetSecretEnv }, 'the target CHAP secret'),
      }),
  });
  // Every export is checked before we accept a single client.
  const results = await Promise.allSettled(cfg.exports.map((e) => manager.add(e)));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed.length > 0) {
    await manager.closeAll();
    throw failed[0].reason;
  }

  let tls: NbdTlsOptions | undefined;
  if (cfg.tls.mode !== 'off') {
    tls = {
      mode: cfg.tls.mode,
      cert: readPem(cfg.tls.cert!, 'TLS certificate'),
      key: readPem(cfg.tls.key!, 'TLS key'),
      ca: cfg.tls.ca ? readPem(cfg.tls.ca, 'TLS CA') : undefined,
      requestClientCert: cfg.tls.verifyClient,
    };
  }
  const server = new NbdServer({ exports: manager, tls, handshakeTimeoutMs: cfg.timeouts.handshake * 1000, log });
  for (const l of cfg.listen) {
    const addr = parseListen(l);
    try {
      await server.listen(addr);
    } catch (err) {
      await server.close({ drainMs: 0 }).catch(() => undefined);
      await manager.closeAll();
      const e = err as NodeJS.ErrnoException;
      const where = 'path' in addr ? addr.path : formatHostPort(addr.host, addr.port);
      if (e.code === 'EADDRINUSE') throw new ConfigError('ECONFIG', `cannot listen on ${where}: the address is in use (another iscsi-nbd or nbd-server?). Pick another with --listen HOST:PORT`);
      throw new ConfigError('ECONFIG', `cannot listen on ${where}: ${e.message}`);
    }
  }
  for (const a of server.addresses()) log.info({ address: typeof a === 'string' ? a : formatHostPort(a.address, a.port) }, 'serving NBD');

  metrics?.setSource(() =>
    [...manager.exports.values()].map((e) => ({
      name: e.name,
      queued: e.pool?.queued ?? 0,
      sessions: e.sessions.map((ss, index) => {
        const st = ss.stats;
        return { index, state: ss.state, portal: st.portal, target: e.url.target ?? '', window: st.window, cmdSn: st.cmdSn, maxCmdSn: st.maxCmdSn, digestErrors: st.digestErrors, inFlight: ss.inFlight };
      }),
    })),
  );
  const metricsSrv = cfg.metrics
    ? await (async () => {
        const m = parseListen(cfg.metrics!, 9810);
        if ('path' in m) throw new ConfigError('ECONFIG', '--metrics wants HOST:PORT');
        return startMetricsServer({ host: m.host, port: m.port, metrics: metrics!, ready: () => manager.ready(), readyDetail: () => manager.status().map((s) => ({ name: (s as { name: string }).name, state: (s as { state: string }).state })) });
      })()
    : undefined;

  let stopping: Promise<void> | undefined;
  const daemon: RunningDaemon = {
    manager,
    server,
    stop(reason = 'stop') {
      if (!stopping) {
        stopping = (async () => {
          log.info({ reason }, 'stopping: draining NBD clients, flushing and logging out');
          await server.close({ drainMs: 30_000 });
          await manager.closeAll();
          control?.close();
          metricsSrv?.close();
          log.info('stopped');
        })();
      }
      return stopping;
    },
    reload() {
      // One reload at a time: a second SIGHUP waits for the first.
      reloading = reloading.then(() => doReload()).catch((err) => log.error({ err: (err as Error).message }, 'reload failed'));
      return reloading;
    },
  };
  let reloading: Promise<void> = Promise.resolve();
  const doReload = async (): Promise<void> => {
    if (!reloadConfig) return;
    let next: DaemonConfig;
    try {
      next = reloadConfig();
    } catch (err) {
      log.error({ err: (err as Error).message }, 'reload refused: the config file is not valid; keeping the running exports');
      return;
    }
    const want = new Map(next.exports.map((e) => [e.name, e]));
    const gone: string[] = [];
    for (const [name, e] of manager.exports) {
      const spec = want.get(name);
      if (!spec || JSON.stringify(spec) !== JSON.stringify(e.spec)) gone.push(name);
    }
    const added = [...want.keys()].filter((n) => !manager.exports.has(n) || gone.includes(n));
    log.info({ remove: gone, add: added, keep: [...manager.exports.keys()].filter((n) => !gone.includes(n)) }, 'reload: plan');
    // Removed and changed exports: their clients drain, then their sessions log out.
    await Promise.all(
      gone.map(async (name) => {
        log.info({ export: name }, want.has(name) ? 'reload: export changed, re-opening' : 'reload: export removed, draining');
        await server.drainExport(name);
        await manager.remove(name);
        await metrics?.forgetExport(name);
        log.info({ export: name }, 'reload: export closed');
      }),
    );
    await Promise.all(
      added.map(async (name) => {
        try {
          await manager.add(want.get(name)!);
          log.info({ export: name }, 'reload: export added');
        } catch (err) {
          log.error({ export: name, err: (err as Error).message }, 'reload: export could not be opened');
        }
      }),
    );
    log.info({ exports: [...manager.exports.keys()] }, 'reload: done');
  };
  const control = await startControlServer(cfg.control ?? defaultControlPath(), () => ({
    pid: process.pid,
    initiatorName: iname,
    listen: server.addresses().map((a) => (typeof a === 'string' ? a : formatHostPort(a.address, a.port))),
    exports: statusWithSessions(manager),
    clients: server.connections(),
  })).catch((err) => {
    log.warn({ err: (err as Error).message }, 'control socket not available; `iscsi-nbd status` will not reach this daemon');
    return undefined;
  });
  return daemon;
}

export async function run(argv: ServeArgs): Promise<void> {
  setupLogging(argv);
  const cfg = buildConfig(argv);
  // The config file's logLevel applies unless --log-level or $ISCSI_NBD_LOG_LEVEL said otherwise.
  if (cfg.logLevel && cfg.logLevel !== argv['log-level']) setupLogging({ ...argv, 'log-level': cfg.logLevel });
  hideSecretsFromPs();
  const daemon = await startDaemon(cfg, argv, argv.config ? () => buildConfig(argv) : undefined);
  notifySystemd('READY=1\nSTATUS=serving ' + cfg.exports.map((e) => e.name).join(', '));
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

export function installSignals(daemon: RunningDaemon): void {
  const log = rootLogger();
  const stop = (sig: string) => {
    notifySystemd('STOPPING=1');
    daemon.stop(sig).then(
      () => process.exit(0),
      (err) => {
        log.error({ err: (err as Error).message }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    log.info('SIGHUP: reloading exports');
    notifySystemd('RELOADING=1');
    daemon.reload().finally(() => notifySystemd('READY=1'));
  });
}
