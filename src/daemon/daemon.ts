import fs from 'node:fs';
import { NbdServer, NbdTlsOptions } from '../nbd/server';
import { ExportManager } from '../bridge/manager';
import { DaemonConfig, parseListen, readSecret } from '../config';
import { ConfigError } from '../errors';
import { Metrics, startMetricsServer } from '../metrics';
import { rootLogger } from '../log';
import { authFor, SecretOptions } from '../credentials';
import { formatHostPort } from '../iscsi/url';
import { notifySystemd } from './notify';
import { startControlServer, ControlHandler } from './control';
import { defaultControlPath, initiatorName } from './paths';
import { planReload } from './reload';
import { clientStatus, DaemonStatus, exportsStatus } from './status';

// The composition root: one daemon process = the export manager (iSCSI
// sessions per LUN), the NBD server in front of it, metrics, and the control
// socket. `serve` and `demo` start one; the CLI only parses and prints.

export interface DaemonOptions {
  /** Where CHAP secrets come from when an export's URL and config give none. */
  secrets?: SecretOptions;
  /** Re-read the configuration on reload (SIGHUP); absent: reload does nothing. */
  reloadConfig?: () => DaemonConfig;
}

export interface RunningDaemon {
  manager: ExportManager;
  server: NbdServer;
  initiatorName: string;
  status(): DaemonStatus;
  stop(reason?: string): Promise<void>;
  reload(): Promise<void>;
}

function readPem(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ConfigError('ECONFIG', `cannot read ${what} ${file}: ${(err as Error).message}`);
  }
}

function tlsOptions(cfg: DaemonConfig): NbdTlsOptions | undefined {
  if (cfg.tls.mode === 'off') return undefined;
  return {
    mode: cfg.tls.mode,
    cert: readPem(cfg.tls.cert!, 'TLS certificate'),
    key: readPem(cfg.tls.key!, 'TLS key'),
    ca: cfg.tls.ca ? readPem(cfg.tls.ca, 'TLS CA') : undefined,
    requestClientCert: cfg.tls.verifyClient,
  };
}

/** Start everything a config describes. Every export is opened before a single client is accepted. */
export async function startDaemon(cfg: DaemonConfig, opts: DaemonOptions = {}): Promise<RunningDaemon> {
  const log = rootLogger();
  const metrics = cfg.metrics ? new Metrics() : undefined;
  const iname = initiatorName(cfg.initiatorName);
  log.info({ initiatorName: iname }, 'initiator name');
  const secrets = opts.secrets ?? {};
  const manager = new ExportManager({
    initiatorName: iname,
    sessions: cfg.sessions,
    digest: cfg.digest,
    readOnly: cfg.readOnly,
    timeouts: cfg.timeouts,
    metrics,
    log,
    authFor: (url, spec) =>
      authFor(url, secrets, spec.chap && {
        user: spec.chap.user,
        secret: readSecret({ value: spec.chap.secret, file: spec.chap.secretFile, env: spec.chap.secretEnv }, 'the CHAP secret'),
        targetUser: spec.chap.targetUser,
        targetSecret: readSecret({ value: spec.chap.targetSecret, file: spec.chap.targetSecretFile, env: spec.chap.targetSecretEnv }, 'the target CHAP secret'),
      }),
  });
  const results = await Promise.allSettled(cfg.exports.map((e) => manager.add(e)));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed.length > 0) {
    await manager.closeAll();
    throw failed[0].reason;
  }

  const server = new NbdServer({ exports: manager, tls: tlsOptions(cfg), handshakeTimeoutMs: cfg.timeouts.handshake * 1000, log });
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
        return startMetricsServer({ host: m.host, port: m.port, metrics: metrics!, ready: () => manager.ready(), readyDetail: () => manager.status().map((s) => ({ name: s.name, state: s.state })) });
      })()
    : undefined;

  const status = (): DaemonStatus => ({
    pid: process.pid,
    initiatorName: iname,
    listen: server.addresses().map((a) => (typeof a === 'string' ? a : formatHostPort(a.address, a.port))),
    exports: exportsStatus(manager),
    clients: server.connections().map(clientStatus),
  });

  const doReload = async (): Promise<void> => {
    if (!opts.reloadConfig) return;
    let next: DaemonConfig;
    try {
      next = opts.reloadConfig();
    } catch (err) {
      log.error({ err }, 'reload refused: the config file is not valid; keeping the running exports');
      return;
    }
    const plan = planReload([...manager.exports.values()].map((e) => e.spec), next.exports);
    log.info(plan, 'reload: plan');
    const want = new Map(next.exports.map((e) => [e.name, e]));
    // Removed and changed exports: their clients drain, then their sessions log out.
    await Promise.all(
      [...plan.remove, ...plan.change].map(async (name) => {
        log.info({ export: name }, want.has(name) ? 'reload: export changed, re-opening' : 'reload: export removed, draining');
        await server.drainExport(name);
        await manager.remove(name);
        await metrics?.forgetExport(name);
        log.info({ export: name }, 'reload: export closed');
      }),
    );
    await Promise.all(
      [...plan.change, ...plan.add].map(async (name) => {
        try {
          await manager.add(want.get(name)!);
          log.info({ export: name }, 'reload: export added');
        } catch (err) {
          log.error({ export: name, err }, 'reload: export could not be opened');
        }
      }),
    );
    log.info({ exports: [...manager.exports.keys()] }, 'reload: done');
  };

  let reloading: Promise<void> = Promise.resolve();
  let stopping: Promise<void> | undefined;
  const handlers: Record<string, ControlHandler> = { status };
  const control = await startControlServer(cfg.control ?? defaultControlPath(), handlers).catch((err) => {
    log.warn({ err: (err as Error).message }, 'control socket not available; `iscsi-nbd status` will not reach this daemon');
    return undefined;
  });
  return {
    manager,
    server,
    initiatorName: iname,
    status,
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
      reloading = reloading.then(() => doReload()).catch((err) => log.error({ err }, 'reload failed'));
      return reloading;
    },
  };
}

/** SIGTERM/SIGINT stop the daemon gracefully; SIGHUP reloads. */
export function installSignals(daemon: Pick<RunningDaemon, 'stop' | 'reload'>): void {
  const log = rootLogger();
  const stop = (sig: string) => {
    notifySystemd('STOPPING=1');
    daemon.stop(sig).then(
      () => process.exit(0),
      (err) => {
        log.error({ err }, 'shutdown failed');
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
