import fs from 'node:fs';
import { NbdServer, NbdTlsOptions } from '../nbd/server';
import { ExportManager, ManagerOptions } from '../bridge/manager';
import { DaemonConfig, parseListen, readSecret } from '../config';
import { ConfigError } from '../errors';
import { Metrics, startMetricsServer } from '../metrics';
import { rootLogger } from '../log';
import { authFor, SecretOptions } from '../credentials';
import { formatHostPort } from '../iscsi/url';
import { notifySystemd } from './notify';
import { startControlServer, ControlHandler } from './control';
import { defaultControlPath, defaultStateDir, initiatorName } from './paths';
import { DeviceManager, KernelNbd, MapRequest } from './devices';
import { MappingStore } from './mapping-store';
import { claimStateDir, releaseStateDir } from './owner';
import { parseDevice } from '../nbd/netlink/kernel';
import { planReload, type ReloadPlan } from './reload';
import { clientStatus, DaemonStatus, exportsStatus } from './status';

// The composition root: one daemon process = the export manager (iSCSI
// sessions per LUN), the NBD server in front of it, metrics, and the control
// socket. `serve` and `demo` start one; the CLI only parses and prints.

export interface DaemonOptions {
  /** Where CHAP secrets come from when an export's URL and config give none. */
  secrets?: SecretOptions;
  /** Re-read the configuration on reload (SIGHUP); absent: reload does nothing. */
  reloadConfig?: () => DaemonConfig;
  /** The kernel's NBD devices (tests pass a fake); default: netlink. */
  kernel?: () => Promise<KernelNbd>;
  /**
   * The old behaviour (`serve --strict`): an export that cannot be opened at
   * the start aborts the start with its error. Otherwise it is reported
   * `failed` and retried with backoff while the others are served.
   */
  strict?: boolean;
}

/** What a reload did (the control op `reload` answers it; SIGHUP logs it). */
export interface ReloadOutcome {
  /** The new config was read and applied, and every export in the plan opened. */
  ok: boolean;
  /** Why the new config was refused (nothing changed then). */
  refused?: string;
  plan?: ReloadPlan;
  /** Added or changed exports that could not be opened (they stay `failed` and keep retrying). */
  errors: { export: string; error: string }[];
  /** Every export after the reload, with its state. */
  exports: { name: string; state: string }[];
}

/** /readyz's detail: each export and each mapped device with its state. */
export interface ReadyDetail {
  exports: { name: string; state: string; error?: string }[];
  devices: { device: string; state: string; error?: string }[];
}

export interface RunningDaemon {
  manager: ExportManager;
  server: NbdServer;
  devices: DeviceManager;
  initiatorName: string;
  status(): DaemonStatus;
  /** /readyz: every export ready or degraded, every mapped device attached. */
  ready(): { ready: boolean; detail: ReadyDetail };
  stop(reason?: string): Promise<void>;
  reload(): Promise<ReloadOutcome>;
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

/**
 * Start everything a config describes. Every export is tried once before a
 * single client is accepted; one that fails stays `failed` and is retried
 * in the background (unless opts.strict: then the start fails).
 */
export async function startDaemon(cfg: DaemonConfig, opts: DaemonOptions = {}): Promise<RunningDaemon> {
  const log = rootLogger();
  const metrics = cfg.metrics ? new Metrics() : undefined;
  const stateDir = cfg.stateDir ?? defaultStateDir();
  const iname = initiatorName(cfg.initiatorName, stateDir);
  log.info({ initiatorName: iname }, 'initiator name');
  const secrets = opts.secrets ?? {};
  const managerOptions: ManagerOptions = {
    initiatorName: iname,
    sessions: cfg.sessions,
    digest: cfg.digest,
    readOnly: cfg.readOnly,
    timeouts: cfg.timeouts,
    metrics,
    // `component` names the half of the daemon a line comes from: `exports` (served
    // over the NBD listeners) or `devices` (the kernel's /dev/nbdN); see src/log.ts.
    log: log.child({ component: 'exports' }),
    authFor: (url, spec) =>
      authFor(url, secrets, spec.chap && {
        user: spec.chap.user,
        secret: readSecret({ value: spec.chap.secret, file: spec.chap.secretFile, env: spec.chap.secretEnv }, 'the CHAP secret'),
        targetUser: spec.chap.targetUser,
        targetSecret: readSecret({ value: spec.chap.targetSecret, file: spec.chap.targetSecretFile, env: spec.chap.targetSecretEnv }, 'the target CHAP secret'),
      }),
  };
  const manager = new ExportManager(managerOptions);
  const results = await Promise.allSettled(cfg.exports.map((e) => (opts.strict ? manager.add(e) : manager.start(e))));
  const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed.length > 0) {
    await manager.closeAll();
    throw failed[0].reason;
  }
  const notOpen = [...manager.exports.values()].filter((e) => e.state === 'failed');
  if (notOpen.length > 0) {
    log.warn({ exports: notOpen.map((e) => e.name) }, 'starting without the exports that could not be opened; they are retried in the background');
  }

  const server = new NbdServer({ exports: manager, tls: tlsOptions(cfg), handshakeTimeoutMs: cfg.timeouts.handshake * 1000, log: log.child({ component: 'exports' }) });
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
  // One line per listener, once every listener is up (NbdServer.listen() itself does not log it).
  for (const a of server.addresses()) log.info({ address: typeof a === 'string' ? a : formatHostPort(a.address, a.port) }, 'serving NBD');

  // Mapped devices: their LUNs are not NBD exports anyone may connect to; the
  // kernel reaches them only through the socketpairs handed to it.
  const control = cfg.control ?? defaultControlPath();
  const mapped = new ExportManager({ ...managerOptions, log: log.child({ component: 'devices' }) });
  const kernelServer = new NbdServer({ exports: mapped, log: log.child({ component: 'devices' }) });
  const store = new MappingStore(stateDir);
  const devices = new DeviceManager({
    kernel: opts.kernel ?? (async () => (await import('./kernel')).openKernel()),
    store,
    exports: mapped,
    server: kernelServer,
    defaults: { connections: cfg.connections ?? 1, ioTimeout: cfg.timeouts.io, reattachTimeout: cfg.timeouts.reattach },
    configExport: (name) => cfg.exports.find((e) => e.name === name),
    onReattach: (device) => metrics?.recordReattach(device),
    onExportClosed: (name) => void metrics?.forgetExport(name),
    log: log.child({ component: 'devices' }),
  });
  let owner = false;
  const own = (): void => {
    if (owner) return;
    claimStateDir(stateDir, control);
    owner = true;
  };
  if (store.load().records.length > 0 || cfg.devices.length > 0) {
    own();
    await devices.restore();
    await devices.ensure(cfg.devices.map((d) => ({ url: d.url, device: d.device === undefined ? undefined : parseDevice(d.device), connections: d.connections, readOnly: d.readOnly, digest: d.digest })));
  }

  const ready = (): { ready: boolean; detail: ReadyDetail } => {
    const mappings = devices.list();
    const detail: ReadyDetail = {
      exports: [...manager.exports.values()].map((e) => ({ name: e.name, state: e.state, ...(e.lastError ? { error: e.lastError.message } : {}) })),
      devices: mappings.map((d) => ({ device: d.device, state: d.state, ...(d.error ? { error: d.error } : {}) })),
    };
    return { ready: manager.ready() && mappings.every((d) => d.state === 'attached'), detail };
  };
  metrics?.setSource(() => {
    metrics.setDevices(devices.list());
    return [...manager.exports.values(), ...mapped.exports.values()].map((e) => ({
      name: e.name,
      state: e.state,
      queued: e.pool?.queued ?? 0,
      sessions: e.sessions.map((ss, index) => {
        const st = ss.stats;
        return { index, state: ss.state, portal: st.portal, target: e.url.target ?? '', window: st.window, cmdSn: st.cmdSn, maxCmdSn: st.maxCmdSn, digestErrors: st.digestErrors, inFlight: ss.inFlight };
      }),
    }));
  });
  const metricsSrv = cfg.metrics
    ? await (async () => {
        const m = parseListen(cfg.metrics!, 9810);
        if ('path' in m) throw new ConfigError('ECONFIG', '--metrics wants HOST:PORT');
        return startMetricsServer({ host: m.host, port: m.port, metrics: metrics!, ready: () => ready().ready, readyDetail: () => ready().detail }).catch(
          async (err: NodeJS.ErrnoException) => {
            await Promise.all([server.close({ drainMs: 0 }), manager.closeAll()]);
            const where = formatHostPort(m.host, m.port);
            throw new ConfigError('ECONFIG', err.code === 'EADDRINUSE'
              ? `cannot serve metrics on ${where}: the address is in use (another iscsi-nbd?). Pick another with --metrics HOST:PORT`
              : `cannot serve metrics on ${where}: ${err.message}`);
          },
        );
      })()
    : undefined;

  const status = (): DaemonStatus => ({
    pid: process.pid,
    initiatorName: iname,
    listen: server.addresses().map((a) => (typeof a === 'string' ? a : formatHostPort(a.address, a.port))),
    exports: exportsStatus(manager),
    clients: server.connections().map(clientStatus),
    stateDir,
    mappings: devices.list(),
  });
  const sameStateDir = (req: Record<string, unknown>): void => {
    if (typeof req.stateDir === 'string' && req.stateDir !== stateDir) {
      throw new ConfigError('ECONFIG', `the daemon at ${control} keeps its mappings in ${stateDir}, not ${req.stateDir} (give --control for the other daemon)`);
    }
  };

  const exportStates = (): ReloadOutcome['exports'] => [...manager.exports.values()].map((e) => ({ name: e.name, state: e.state }));
  const doReload = async (): Promise<ReloadOutcome> => {
    if (!opts.reloadConfig) {
      log.info('reload: the daemon was started without --config; nothing to re-read');
      return { ok: false, refused: 'the daemon was started without --config: there is no file to re-read', errors: [], exports: exportStates() };
    }
    let next: DaemonConfig;
    try {
      next = opts.reloadConfig();
    } catch (err) {
      log.error({ err }, 'reload refused: the config file is not valid; keeping the running exports');
      metrics?.recordReload(false);
      return { ok: false, refused: (err as Error)?.message ?? String(err), errors: [], exports: exportStates() };
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
    const errors: ReloadOutcome['errors'] = [];
    await Promise.all(
      [...plan.change, ...plan.add].map(async (name) => {
        try {
          // Like at the start: an export that cannot be opened stays, failed, and is retried.
          const { error } = await manager.start(want.get(name)!);
          if (error) {
            errors.push({ export: name, error: error.message });
            log.error({ export: name, err: error }, 'reload: export could not be opened; it keeps retrying');
          } else {
            log.info({ export: name }, 'reload: export added');
          }
        } catch (err) {
          errors.push({ export: name, error: (err as Error)?.message ?? String(err) });
          log.error({ export: name, err }, 'reload: export could not be opened');
        }
      }),
    );
    const ok = errors.length === 0;
    log.info({ exports: [...manager.exports.keys()], failed: errors.map((e) => e.export) }, 'reload: done');
    metrics?.recordReload(ok);
    return { ok, plan, errors, exports: exportStates() };
  };

  let reloading: Promise<unknown> = Promise.resolve();
  const reload = (): Promise<ReloadOutcome> => {
    // One reload at a time: a second SIGHUP (or `iscsi-nbd reload`) waits for the first.
    const run = reloading.then(() => doReload());
    reloading = run.catch((err) => {
      log.error({ err }, 'reload failed');
      metrics?.recordReload(false);
    });
    return run;
  };
  let stopping: Promise<void> | undefined;
  const handlers: Record<string, ControlHandler> = {
    status,
    map: async (req) => {
      sameStateDir(req);
      own();
      return devices.map(req as unknown as MapRequest);
    },
    unmap: async (req) => {
      sameStateDir(req);
      await devices.unmap(parseDevice(String(req.device)), req.force === true);
      return { device: `/dev/nbd${parseDevice(String(req.device))}` };
    },
    reload: async () => {
      const o = await reload();
      if (o.refused) throw new ConfigError('ECONFIG', `reload refused, the running exports are kept: ${o.refused}`);
      return o;
    },
    'list-mapped': (req) => {
      sameStateDir(req);
      return { mappings: devices.list(), problems: devices.storeProblems.map((p) => p.message) };
    },
  };
  const controlSrv = await startControlServer(control, handlers).catch((err) => {
    log.warn({ err }, 'control socket not available; `iscsi-nbd status` will not reach this daemon');
    return undefined;
  });
  return {
    manager,
    server,
    devices,
    initiatorName: iname,
    status,
    ready,
    stop(reason = 'stop') {
      if (!stopping) {
        stopping = (async () => {
          log.info({ reason }, 'stopping: draining NBD clients, flushing and logging out; mapped devices stay for the next daemon');
          // Mapped devices first: answer what the kernel sent, read nothing more.
          await devices.handOver();
          await Promise.all([server.close({ drainMs: 30_000 }), kernelServer.close({ drainMs: 0 })]);
          await Promise.all([manager.closeAll(), mapped.closeAll()]);
          if (owner) releaseStateDir(stateDir);
          controlSrv?.close();
          metricsSrv?.close();
          log.info('stopped');
        })();
      }
      return stopping;
    },
    reload,
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
    daemon.reload().catch(() => undefined).finally(() => notifySystemd('READY=1'));
  });
}
