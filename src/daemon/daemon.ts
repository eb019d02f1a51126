import fs from 'node:fs';
import { NbdServer, NbdTlsOptions } from '../nbd/server';
import { ExportManager, ManagerOptions } from '../bridge/manager';
import { TargetRegistry } from '../bridge/targets';
import { DaemonConfig, parseListen, readSecret } from '../config';
import { ConfigError } from '../errors';
import { Metrics, packageVersion, startMetricsServer } from '../metrics';
import { rootLogger } from '../log';
import { authFor, SecretOptions } from '../credentials';
import { formatHostPort } from '../iscsi/url';
import { notifySystemd } from './notify';
import { startControlServer } from './control';
import { controlHandlers } from './control-handlers';
import { defaultControlPath, defaultStateDir, initiatorName, NO_CONTROL } from './paths';
import { DeviceManager, KernelNbd } from './devices';
import { mapSpecOfDevice } from './map-spec';
import { MappingStore } from './mapping-store';
import { claimStateDir, releaseStateDir } from './owner';
import { applyReload, exportStates, type ReloadOutcome } from './reload';
import { UndoStack } from './undo';
import { parseDevice } from '../nbd/netlink/kernel';
import type { ResizeResult } from './status';

export type { ResizeResult } from './status';
import { parseHandover } from '../nbd/handover';
import { closeStoredSocket, closeUntaken, NO_FD_STORE, SystemdFdStore, type FdKeeper } from './fd-store';

/** How long a stop waits for one NBD client's requests in flight before giving up its hand-over. */
const CLIENT_HANDOVER_MS = 20_000;
import { clientStatus, DaemonStatus, exportsStatus, targetsStatus } from './status';

export type { ReloadOutcome } from './reload';

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
  /** Where kernel sockets wait across a restart; default: systemd's fd store when run by systemd. */
  fdStore?: FdKeeper;
  /**
   * The old behaviour (`serve --strict`): an export that cannot be opened at
   * the start aborts the start with its error. Otherwise it is reported
   * `failed` and retried with backoff while the others are served.
   */
  strict?: boolean;
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
  /** `iscsi-nbd resize`: rescan one mapped device or export, or all. */
  resize(what?: string): Promise<ResizeResult[]>;
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
 * One daemon process. Its start is a sequence of steps, each pushing its undo
 * onto one stack: a failed start undoes exactly what ran, and stop() undoes
 * everything, newest first.
 */
export class Daemon implements RunningDaemon {
  readonly manager: ExportManager;
  private nbd?: NbdServer;
  readonly devices: DeviceManager;
  readonly initiatorName: string;
  private readonly log = rootLogger();
  private readonly metrics?: Metrics;
  private readonly stateDir: string;
  private readonly control: string;
  private readonly managerOptions: ManagerOptions;
  /** Opens the LUNs of mapped devices (never served over TCP). */
  private readonly mapped: ExportManager;
  private readonly targets: TargetRegistry;
  /** Serves the kernel's sockets (no listeners). */
  private readonly kernelServer: NbdServer;
  private readonly undo: UndoStack;
  private readonly fdStore: FdKeeper;
  private owner = false;
  private stopping?: Promise<void>;
  private reloading: Promise<unknown> = Promise.resolve();

  /**
   * Start everything a config describes. Every export is tried once before a
   * single client is accepted; one that fails stays `failed` and is retried
   * in the background (unless opts.strict: then the start fails).
   */
  static async start(cfg: DaemonConfig, opts: DaemonOptions = {}): Promise<Daemon> {
    const d = new Daemon(cfg, opts);
    try {
      await d.openExports();
      await d.listenNbd();
      await d.restoreDevices();
      closeUntaken(d.fdStore, d.log);
      await d.serveMetrics();
      await d.serveControl();
    } catch (err) {
      await d.undo.unwind('rollback');
      throw err;
    }
    return d;
  }

  private constructor(private readonly cfg: DaemonConfig, private readonly opts: DaemonOptions) {
    const log = this.log;
    this.undo = new UndoStack(log);
    this.fdStore = opts.fdStore ?? (process.env.NOTIFY_SOCKET || process.env.LISTEN_FDS ? new SystemdFdStore(log.child({ component: 'devices' })) : NO_FD_STORE);
    this.metrics = cfg.metrics ? new Metrics() : undefined;
    this.stateDir = cfg.stateDir ?? defaultStateDir();
    this.control = cfg.control ?? defaultControlPath();
    this.initiatorName = initiatorName(cfg.initiatorName, this.stateDir);
    log.info({ version: packageVersion(), control: this.control, stateDir: this.stateDir, metrics: cfg.metrics ?? 'off' }, 'iscsi-nbd starting');
    log.info({ initiatorName: this.initiatorName }, 'initiator name');
    const secrets = opts.secrets ?? {};
    this.managerOptions = {
      initiatorName: this.initiatorName,
      sessions: cfg.sessions,
      digest: cfg.digest,
      readOnly: cfg.readOnly,
      timeouts: cfg.timeouts,
      ...(cfg.ifaces ? { ifaces: cfg.ifaces } : {}),
      metrics: this.metrics,
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
    // One pool of sessions per target, shared by the exports and the mapped devices.
    this.targets = new TargetRegistry(log.child({ component: 'targets' }));
    this.managerOptions.targets = this.targets;
    this.manager = new ExportManager(this.managerOptions);
    // Mapped devices: their LUNs are not NBD exports anyone may connect to; the
    // kernel reaches them only through the socketpairs handed to it.
    this.mapped = new ExportManager({ ...this.managerOptions, log: log.child({ component: 'devices' }) });
    this.kernelServer = new NbdServer({ exports: this.mapped, log: log.child({ component: 'devices' }) });
    this.devices = new DeviceManager({
      kernel: opts.kernel ?? (async () => (await import('./kernel')).openKernel()),
      store: new MappingStore(this.stateDir),
      exports: this.mapped,
      server: this.kernelServer,
      defaults: { connections: cfg.connections ?? 1, ioTimeout: cfg.timeouts.io, reattachTimeout: cfg.timeouts.reattach },
      configExport: (name) => this.cfg.exports.find((e) => e.name === name),
      onAttach: (device, how) => this.metrics?.recordAttach(device, how),
      fdStore: this.fdStore,
      onExportClosed: (name) => void this.metrics?.forgetExport(name),
      log: log.child({ component: 'devices' }),
    });
  }

  /** Step 1: log in to every export's target. */
  private async openExports(): Promise<void> {
    const { manager, opts } = this;
    this.undo.push('exports', () => manager.closeAll());
    const results = await Promise.allSettled(this.cfg.exports.map((e) => (opts.strict ? manager.add(e) : manager.start(e))));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const notOpen = [...manager.exports.values()].filter((e) => e.state === 'failed');
    if (notOpen.length > 0) {
      this.log.warn({ exports: notOpen.map((e) => e.name) }, 'starting without the exports that could not be opened; they are retried in the background');
    }
  }

  /** The NBD server of the exports (made in step 2). */
  get server(): NbdServer {
    if (!this.nbd) throw new Error('the NBD server is not started yet');
    return this.nbd;
  }

  /** Step 2: the NBD listeners. */
  private async listenNbd(): Promise<void> {
    const { fdStore, cfg } = this;
    // Made only now, after the logins: a TLS file that does not parse is reported after a login that fails, as before.
    const server = (this.nbd = new NbdServer({ exports: this.manager, tls: tlsOptions(cfg), handshakeTimeoutMs: cfg.timeouts.handshake * 1000, log: this.log.child({ component: 'exports' }) }));
    this.undo.push('nbd-listeners', async (how) => {
      // Plain clients in transmission go to the fd store, as the kernel's sockets do; the rest drain.
      if (fdStore.enabled) await server.handOverClients(CLIENT_HANDOVER_MS, (fd, record) => this.keepClient(fd, record));
      await server.close({ drainMs: how === 'stop' ? 30_000 : 0 });
    });
    for (const l of this.cfg.listen) {
      const addr = parseListen(l);
      try {
        await server.listen(addr);
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        const where = 'path' in addr ? addr.path : formatHostPort(addr.host, addr.port);
        if (e.code === 'EADDRINUSE') throw new ConfigError('ECONFIG', `cannot listen on ${where}: the address is in use (another iscsi-nbd or nbd-server?). Pick another with --listen HOST:PORT`);
        throw new ConfigError('ECONFIG', `cannot listen on ${where}: ${e.message}`);
      }
    }
    // One line per listener, once every listener is up (NbdServer.listen() itself does not log it).
    for (const a of server.addresses()) this.log.info({ address: typeof a === 'string' ? a : formatHostPort(a.address, a.port) }, 'serving NBD');
    this.adoptClients();
  }

  private keptClients = 0;

  private keepClient(fd: number, record: Buffer): void {
    const name = `client.${this.keptClients++}`;
    try {
      this.fdStore.put(name, fd);
      this.fdStore.putBytes(`${name}.state`, record);
    } catch (err) {
      this.log.warn({ err }, 'cannot keep an NBD client connection in the fd store; it ends with this daemon');
    }
  }

  /**
   * NBD clients the last daemon handed over: each carries on from where it
   * stopped reading, once its export serves (its requests wait meanwhile).
   */
  private adoptClients(): void {
    const { fdStore, log } = this;
    for (const name of fdStore.untaken()) {
      if (!/^client\.\d+$/.test(name) || !fdStore.has(`${name}.state`)) continue;
      const record = fdStore.takeBytes(`${name}.state`)!;
      const fd = fdStore.take(name)!;
      let exportName: string;
      try {
        exportName = parseHandover(record).state.exportName;
      } catch (err) {
        log.warn({ name, err }, 'an NBD client handed over by the last daemon has an unreadable record; closing it');
        closeStoredSocket(fd);
        continue;
      }
      let lastError: unknown;
      const attempt = (): boolean => {
        try {
          const id = this.server.adoptClient(fd, record);
          log.info({ conn: id, export: exportName, path: 'adopted' }, 'NBD client adopted from the systemd fd store: it carries on unseen');
          return true;
        } catch (err) {
          lastError = err;
          return false;
        }
      };
      if (!this.manager.exports.has(exportName)) {
        log.warn({ export: exportName }, 'an NBD client handed over by the last daemon used an export that is gone; closing it');
        closeStoredSocket(fd);
        continue;
      }
      if (attempt()) continue;
      // Its export is not serving yet (still logging in), or is gone: wait a while, then let the client go.
      const deadline = Date.now() + this.cfg.timeouts.reattach * 1000;
      const timer = setInterval(() => {
        if (attempt()) clearInterval(timer);
        else if (Date.now() > deadline || this.stopping) {
          clearInterval(timer);
          log.warn({ export: exportName, err: lastError }, 'an NBD client handed over by the last daemon cannot be served; closing it');
          closeStoredSocket(fd);
        }
      }, 200);
    }
  }

  /** The state dir is ours from the first mapping on; released after the devices are handed over. */
  private own(): void {
    if (this.owner) return;
    claimStateDir(this.stateDir, this.control);
    this.owner = true;
  }

  /** Step 3: the kernel's devices, recorded ones reattached and declared ones mapped. */
  private async restoreDevices(): Promise<void> {
    const { devices, kernelServer, mapped } = this;
    this.undo.push('devices', async () => {
      // Answer what the kernel sent, read nothing more; no device is detached.
      await devices.handOver();
      await kernelServer.close({ drainMs: 0 });
      await mapped.closeAll();
      if (this.owner) releaseStateDir(this.stateDir);
    });
    if (devices.storeRecords() === 0 && this.cfg.devices.length === 0) return;
    this.own();
    await devices.restore();
    await devices.ensure(this.cfg.devices.map(mapSpecOfDevice));
  }

  /** /readyz: every export ready or degraded, every mapped device attached. */
  ready(): { ready: boolean; detail: ReadyDetail } {
    const mappings = this.devices.list();
    const detail: ReadyDetail = {
      exports: [...this.manager.exports.values()].map((e) => ({ name: e.name, state: e.state, ...(e.lastError ? { error: e.lastError.message } : {}) })),
      devices: mappings.map((d) => ({ device: d.device, state: d.state, ...(d.error ? { error: d.error } : {}) })),
    };
    return { ready: this.manager.ready() && mappings.every((d) => d.state === 'attached'), detail };
  }

  /** Step 4: /metrics and /readyz. */
  private async serveMetrics(): Promise<void> {
    const { metrics, cfg } = this;
    if (!metrics || !cfg.metrics) return;
    metrics.setSource(() => {
      metrics.setDevices(this.devices.list());
      return [...this.manager.exports.values(), ...this.mapped.exports.values()].map((e) => ({
        name: e.name,
        state: e.state,
        queued: e.pool?.queued ?? 0,
        sessions: e.sessions.map((ss, index) => {
          const st = ss.stats;
          const alua = e.pool?.aluaOf(ss)?.state;
          return {
            index, state: ss.state, portal: st.portal, target: e.url.target ?? '', window: st.window, cmdSn: st.cmdSn, maxCmdSn: st.maxCmdSn,
            digestErrors: st.digestErrors, inFlight: ss.inFlight, ...(alua ? { alua } : {}),
          };
        }),
      }));
    });
    const m = parseListen(cfg.metrics, 9810);
    if ('path' in m) throw new ConfigError('ECONFIG', '--metrics wants HOST:PORT');
    const srv = await startMetricsServer({ host: m.host, port: m.port, metrics, ready: () => this.ready().ready, readyDetail: () => this.ready().detail }).catch(
      (err: NodeJS.ErrnoException) => {
        const where = formatHostPort(m.host, m.port);
        throw new ConfigError('ECONFIG', err.code === 'EADDRINUSE'
          ? `cannot serve metrics on ${where}: the address is in use (another iscsi-nbd?). Pick another with --metrics HOST:PORT`
          : `cannot serve metrics on ${where}: ${err.message}`);
      },
    );
    this.undo.push('metrics', () => void srv.close());
  }

  /** Step 5: the control socket (status, map, unmap, reload, list-mapped). */
  private async serveControl(): Promise<void> {
    const handlers = controlHandlers({
      status: () => this.status(),
      devices: this.devices,
      stateDir: this.stateDir,
      control: this.control,
      own: () => this.own(),
      reload: () => this.reload(),
      resize: (what) => this.resize(what),
    });
    if (this.control === NO_CONTROL) {
      this.log.warn('no control socket (--control none): iscsi-nbd status, map, unmap, list-mapped and reload cannot reach this daemon; SIGHUP still reloads');
      // The control socket is what keeps a daemon with no listener alive: without one, a timer does.
      const alive = setInterval(() => undefined, 1 << 30);
      this.undo.push('control', () => clearInterval(alive));
      return;
    }
    // A daemon nobody can reach would be worse than none: one whose socket is taken does not start (exit 6).
    const srv = await startControlServer(this.control, handlers);
    this.undo.push('control', () => void srv.close());
  }

  status(): DaemonStatus {
    return {
      pid: process.pid,
      initiatorName: this.initiatorName,
      listen: this.server.addresses().map((a) => (typeof a === 'string' ? a : formatHostPort(a.address, a.port))),
      exports: exportsStatus(this.manager),
      clients: this.server.connections().map(clientStatus),
      stateDir: this.stateDir,
      mappings: this.devices.list(),
      targets: targetsStatus(this.targets),
    };
  }

  /**
   * `iscsi-nbd resize [/dev/nbdN | EXPORT]`: read the capacity of that
   * mapped device's or export's LUN again, or of every one, and grow what
   * grew. NBD clients already connected keep the size they were told (NBD
   * has no way to tell them); new ones get the new size.
   */
  async resize(what?: string): Promise<ResizeResult[]> {
    const device = what === undefined ? undefined : /^(\/dev\/)?nbd\d+$/.test(what) ? parseDevice(what) : undefined;
    const out: ResizeResult[] = [];
    if (what === undefined || device !== undefined) out.push(...(await this.devices.resize(device)));
    if (device === undefined) {
      const exps = [...this.manager.exports.values()].filter((e) => what === undefined || e.name === what);
      if (what !== undefined && exps.length === 0) throw new ConfigError('ECONFIG', `"${what}" is neither a mapped /dev/nbdN nor an export of this daemon`);
      for (const e of exps) {
        if (!e.isServing) {
          out.push({ export: e.name, was: '0', now: '0', changed: false, refused: `not open (${e.state})` });
          continue;
        }
        out.push(await e.rescan('command'));
      }
    }
    return out;
  }

  private async doReload(): Promise<ReloadOutcome> {
    const { log, metrics } = this;
    if (!this.opts.reloadConfig) {
      log.info('reload: the daemon was started without --config; nothing to re-read');
      return { ok: false, refused: 'the daemon was started without --config: there is no file to re-read', errors: [], exports: exportStates(this.manager) };
    }
    let next: DaemonConfig;
    try {
      next = this.opts.reloadConfig();
    } catch (err) {
      log.error({ err }, 'reload refused: the config file is not valid; keeping the running exports');
      metrics?.recordReload(false);
      return { ok: false, refused: (err as Error)?.message ?? String(err), errors: [], exports: exportStates(this.manager) };
    }
    return applyReload(next, { exports: this.manager, server: this.server, metrics, log, running: this.cfg });
  }

  reload(): Promise<ReloadOutcome> {
    // One reload at a time: a second SIGHUP (or `iscsi-nbd reload`) waits for the first.
    const run = this.reloading.then(() => this.doReload());
    this.reloading = run.catch((err) => {
      this.log.error({ err }, 'reload failed');
      this.metrics?.recordReload(false);
    });
    return run;
  }

  stop(reason = 'stop'): Promise<void> {
    if (!this.stopping) {
      this.stopping = (async () => {
        this.log.info({ reason }, 'stopping: draining NBD clients, flushing and logging out; mapped devices stay for the next daemon');
        await this.undo.unwind('stop');
        this.log.info('stopped');
      })();
    }
    return this.stopping;
  }
}

/** The programmatic way to run what `iscsi-nbd serve` runs. */
export function startDaemon(cfg: DaemonConfig, opts: DaemonOptions = {}): Promise<RunningDaemon> {
  return Daemon.start(cfg, opts);
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
