import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type client from 'prom-client';

// prom-client costs about 30 ms to load: only a daemon with metrics on makes a Metrics.
const prom = (): typeof client => require('prom-client') as typeof client;
import type { ScsiRequest, ScsiResponse, ScsiTransport } from './scsi/transport';
import { SAM_STAT_CHECK_CONDITION } from './scsi/transport';
import { parseSense, senseKeyName } from './scsi/sense';
import { NBD_EINVAL, NBD_EIO, NBD_ENOMEM, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM, NBD_ESHUTDOWN } from './errors';

/** What a scrape reads from the running daemon (gauges that are sampled, not pushed). */
export interface SessionSample {
  index: number;
  state: string;
  portal: string;
  target: string;
  window: number;
  cmdSn: number;
  maxCmdSn: number;
  digestErrors: number;
  inFlight: number;
  /** The path's ALUA state, when the target has ALUA. */
  alua?: string;
}

/** The `state` label of iscsi_nbd_iscsi_path_alua_state (SPC-4 asymmetric access states). */
export const ALUA_STATE_LABELS = ['active_optimized', 'active_non_optimized', 'standby', 'unavailable', 'logical_block_dependent', 'offline', 'transitioning'] as const;

/** 'active/non-optimized' -> 'active_non_optimized': label values without spaces or slashes. */
const aluaLabel = (state: string | undefined): string | undefined => state?.replace(/[/ -]/g, '_');
export interface ExportSample {
  name: string;
  /** The export's state (EXPORT_STATES); absent: every state series at 0. */
  state?: string;
  queued: number;
  sessions: SessionSample[];
}

/** The `state` label of iscsi_nbd_export_state (the export state machine in bridge/manager.ts). */
export const EXPORT_STATES = ['starting', 'ready', 'degraded', 'recovering', 'failed', 'draining', 'closed'] as const;

export const SESSION_STATES = ['idle', 'connecting', 'logged-in', 'recovering', 'failed', 'closing', 'closed'] as const;

/** The `op` label of the NBD families, one per NBD command the bridge runs. */
export const NBD_OPS = ['read', 'write', 'flush', 'trim', 'write_zeroes', 'block_status', 'cache'] as const;
export type NbdOp = (typeof NBD_OPS)[number];

/** The `errno` label: the name of every errno the NBD table in errors.ts can return. */
export const NBD_ERRNO_NAMES: Readonly<Record<number, string>> = {
  [NBD_EPERM]: 'EPERM',
  [NBD_EIO]: 'EIO',
  [NBD_ENOMEM]: 'ENOMEM',
  [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW',
  [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

/** The errno label value for an NBD errno: always a name, never a number. */
export function errnoLabel(errno: number): string {
  return NBD_ERRNO_NAMES[errno] ?? `ERRNO_${errno}`;
}

/** The sense_key label value: the SPC name with underscores ("UNIT_ATTENTION"), NO_SENSE_DATA without sense. */
export function senseKeyLabel(senseKey: number | undefined): string {
  if (senseKey === undefined) return 'NO_SENSE_DATA';
  return senseKeyName(senseKey).replace(/[^A-Za-z0-9]+/g, '_').replace(/^_+|_+$/g, '');
}

/** Every sense_key label value there is (each export starts with all of them at 0). */
export const SENSE_KEY_LABELS: readonly string[] = [...Array.from({ length: 16 }, (_, k) => senseKeyLabel(k)), senseKeyLabel(undefined)];

/** The `state` label of iscsi_nbd_device_state. */
export const DEVICE_STATES = ['attaching', 'attached', 'reattaching', 'refused', 'handing-over', 'unmapping', 'detached'] as const;

/** prom-client default metrics that are gauges named *_total (promtool rejects them); nodejs_active_{handles,requests,resources}{type} carry the same numbers. */
const DROPPED_DEFAULT_METRICS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

let version: string | undefined;
/** The version in package.json (dist/src/metrics.js -> ../../package.json), read once; "unknown" if unreadable. */
export function packageVersion(): string {
  if (version === undefined) {
    try {
      const v = (JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: unknown }).version;
      version = typeof v === 'string' && v !== '' ? v : 'unknown';
    } catch {
      version = 'unknown';
    }
  }
  return version;
}

/** What forgetExport needs of a prom-client metric (labelNames is public on prom-client's Metric, though not in its types). */
interface LabelledMetric {
  name: string;
  labelNames?: readonly string[];
  get(): Promise<{ values: Array<{ labels: Record<string, string | number> }> }> | { values: Array<{ labels: Record<string, string | number> }> };
  remove(labels: Record<string, string | number>): void;
}

// Prometheus metrics. Our own families are prefixed iscsi_nbd_; prom-client's
// process and runtime metrics keep their standard process_* / nodejs_* names.
// Labels never carry secrets: exports are named by their export name, sessions
// by portal and target IQN only. Label values never contain spaces; errno
// labels are names. Counters of a known label set exist at 0 from the moment
// the export is added (addExport), so rate() sees the first increase.

export class Metrics {
  readonly registry = new (prom().Registry)();

  readonly buildInfo = new (prom().Gauge)({
    name: 'iscsi_nbd_build_info',
    help: 'Always 1; the labels say which iscsi-nbd version runs on which Node.js',
    labelNames: ['version', 'node_version'] as const,
    registers: [this.registry],
  });

  readonly nbdRequests = new (prom().Counter)({
    name: 'iscsi_nbd_nbd_requests_total',
    help: 'NBD requests completed (successfully or not), by export and operation',
    labelNames: ['export', 'op'] as const,
    registers: [this.registry],
  });
  readonly nbdBytes = new (prom().Counter)({
    name: 'iscsi_nbd_nbd_bytes_total',
    help: 'Bytes moved by NBD READ and WRITE, by export and operation',
    labelNames: ['export', 'op'] as const,
    registers: [this.registry],
  });
  readonly nbdErrors = new (prom().Counter)({
    name: 'iscsi_nbd_nbd_errors_total',
    help: 'NBD requests that failed, by export, operation and NBD errno name',
    labelNames: ['export', 'op', 'errno'] as const,
    registers: [this.registry],
  });
  readonly nbdLatency = new (prom().Histogram)({
    name: 'iscsi_nbd_nbd_request_duration_seconds',
    help: 'NBD request latency from receipt to reply, by export and operation',
    labelNames: ['export', 'op'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly nbdInFlight = new (prom().Gauge)({
    name: 'iscsi_nbd_nbd_requests_in_flight',
    help: 'NBD requests being executed, by export',
    labelNames: ['export'] as const,
    registers: [this.registry],
  });
  private source?: () => ExportSample[];
  private sample(): ExportSample[] {
    try {
      return this.source?.() ?? [];
    } catch {
      return [];
    }
  }

  readonly nbdQueued: client.Gauge<'export'> = (() => {
    const self = this;
    return new (prom().Gauge)({
      name: 'iscsi_nbd_scsi_commands_queued',
      help: 'SCSI commands waiting for a slot in the export session pool (backpressure)',
      labelNames: ['export'] as const,
      registers: [this.registry],
      collect() {
        if (!self.source) return;
        this.reset();
        for (const e of self.sample()) this.set({ export: e.name }, e.queued);
      },
    });
  })();
  readonly scsiInFlight: client.Gauge<'export' | 'session' | 'portal'> = (() => {
    const self = this;
    return new (prom().Gauge)({
      name: 'iscsi_nbd_iscsi_commands_in_flight',
      help: 'SCSI commands sent on (or parked for) an iSCSI session and not yet answered',
      labelNames: ['export', 'session', 'portal'] as const,
      registers: [this.registry],
      collect() {
        if (!self.source) return;
        this.reset();
        for (const e of self.sample()) for (const ss of e.sessions) this.set({ export: e.name, session: String(ss.index), portal: ss.portal }, ss.inFlight);
      },
    });
  })();
  readonly nbdConnections = new (prom().Gauge)({
    name: 'iscsi_nbd_nbd_connections',
    help: 'Open NBD client connections, by export',
    labelNames: ['export'] as const,
    registers: [this.registry],
  });
  readonly sessionState: client.Gauge<'export' | 'session' | 'portal' | 'target'> = (() => {
    const self = this;
    return new (prom().Gauge)({
      name: 'iscsi_nbd_iscsi_session_up',
      help: '1 when the iSCSI session is logged in, else 0',
      labelNames: ['export', 'session', 'portal', 'target'] as const,
      registers: [this.registry],
      collect() {
        if (!self.source) return;
        this.reset();
        for (const e of self.sample()) {
          for (const ss of e.sessions) this.set({ export: e.name, session: String(ss.index), portal: ss.portal, target: ss.target }, ss.state === 'logged-in' ? 1 : 0);
        }
      },
    });
  })();
  readonly sessionStateInfo = this.sessionOneHot(
    'iscsi_nbd_iscsi_session_state', 'The iSCSI session state: 1 for the current state, 0 for the others', SESSION_STATES, (ss) => ss.state);
  readonly pathAlua = this.sessionOneHot(
    'iscsi_nbd_iscsi_path_alua_state',
    'ALUA: the asymmetric access state of each path, 1 for its current state, 0 for the others (only for targets with ALUA)',
    ALUA_STATE_LABELS, (ss) => aluaLabel(ss.alua));

  /** A per-session gauge with one series per state: 1 for the session's current one (none when `of` gives undefined). */
  private sessionOneHot(name: string, help: string, states: readonly string[], of: (ss: SessionSample) => string | undefined): client.Gauge<'export' | 'session' | 'portal' | 'state'> {
    const self = this;
    return new (prom().Gauge)({
      name, help,
      labelNames: ['export', 'session', 'portal', 'state'] as const,
      registers: [this.registry],
      collect() {
        if (!self.source) return;
        this.reset();
        for (const e of self.sample()) {
          for (const ss of e.sessions) {
            const now = of(ss);
            if (now === undefined) continue;
            for (const st of states) this.set({ export: e.name, session: String(ss.index), portal: ss.portal, state: st }, now === st ? 1 : 0);
          }
        }
      },
    });
  }
  readonly exportState: client.Gauge<'export' | 'state'> = (() => {
    const self = this;
    return new (prom().Gauge)({
      name: 'iscsi_nbd_export_state',
      help: 'The export state: 1 for the current state, 0 for the others (starting, ready, degraded, recovering, failed, draining, closed)',
      labelNames: ['export', 'state'] as const,
      registers: [this.registry],
      collect() {
        if (!self.source) return;
        this.reset();
        for (const e of self.sample()) {
          for (const st of EXPORT_STATES) this.set({ export: e.name, state: st }, e.state === st ? 1 : 0);
          if (e.state !== undefined && !(EXPORT_STATES as readonly string[]).includes(e.state)) this.set({ export: e.name, state: e.state }, 1);
        }
      },
    });
  })();
  readonly sessionReconnects: client.Counter<'export' | 'session' | 'portal'> = (() => {
    const self = this;
    return new (prom().Counter)({
      name: 'iscsi_nbd_iscsi_reconnects_total',
      help: 'Times an iSCSI session was re-established after losing its connection',
      labelNames: ['export', 'session', 'portal'] as const,
      registers: [this.registry],
      collect() {
        // Pushed by the session's 'reconnected' event; every known session shows 0 until then.
        for (const e of self.sample()) for (const ss of e.sessions) this.inc({ export: e.name, session: String(ss.index), portal: ss.portal }, 0);
      },
    });
  })();
  readonly sessionWindow: client.Gauge<'export' | 'session' | 'portal'> = (() => {
    const self = this;
    return new (prom().Gauge)({
      name: 'iscsi_nbd_iscsi_cmdsn_window',
      help: 'Commands the target currently allows us to send (MaxCmdSN - CmdSN + 1)',
      labelNames: ['export', 'session', 'portal'] as const,
      registers: [this.registry],
      collect() {
        if (!self.source) return;
        this.reset();
        for (const e of self.sample()) for (const ss of e.sessions) this.set({ export: e.name, session: String(ss.index), portal: ss.portal }, ss.window);
      },
    });
  })();
  readonly digestErrors: client.Counter<'export' | 'session' | 'portal'> = (() => {
    const self = this;
    return new (prom().Counter)({
      name: 'iscsi_nbd_iscsi_digest_errors_total',
      help: 'Header or data digest mismatches seen on received PDUs',
      labelNames: ['export', 'session', 'portal'] as const,
      registers: [this.registry],
      collect() {
        // The session keeps the running count; a removed export's series go away.
        if (!self.source) return;
        this.reset();
        for (const e of self.sample()) for (const ss of e.sessions) this.inc({ export: e.name, session: String(ss.index), portal: ss.portal }, ss.digestErrors);
      },
    });
  })();
  readonly senseKeys = new (prom().Counter)({
    name: 'iscsi_nbd_scsi_sense_total',
    help: 'SCSI CHECK CONDITIONs seen, by export and sense key name (UNIT_ATTENTION, ..., NO_SENSE_DATA)',
    labelNames: ['export', 'sense_key'] as const,
    registers: [this.registry],
  });

  readonly resizes = new (prom().Counter)({
    name: 'iscsi_nbd_resize_total',
    help: 'Times a LUN was seen to change size, by export and result (grown: applied; refused: it shrank, the old size is kept)',
    labelNames: ['export', 'result'] as const,
    registers: [this.registry],
  });
  readonly reloads = new (prom().Counter)({
    name: 'iscsi_nbd_reload_total',
    help: 'Configuration reloads (SIGHUP or control socket), by result (success or failure)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly lastReloadTime = new (prom().Gauge)({
    name: 'iscsi_nbd_last_reload_timestamp_seconds',
    help: 'Unix time of the last configuration reload, successful or not (the start counts as the first load)',
    registers: [this.registry],
  });
  readonly lastReloadSuccess = new (prom().Gauge)({
    name: 'iscsi_nbd_last_reload_success',
    help: '1 when the last configuration reload succeeded (or none was tried since the start), 0 when it failed',
    registers: [this.registry],
  });

  readonly deviceState = new (prom().Gauge)({
    name: 'iscsi_nbd_device_state',
    help: 'State of a mapped /dev/nbdN: 1 for the current state, 0 for the others',
    labelNames: ['device', 'state'] as const,
    registers: [this.registry],
  });
  readonly deviceAdoptions = new (prom().Counter)({
    name: 'iscsi_nbd_device_adopt_total',
    help: 'Times a mapped device was taken over from the previous daemon with its kernel sockets (systemd fd store), unseen by the kernel',
    labelNames: ['device'] as const,
    registers: [this.registry],
  });
  readonly deviceReattaches = new (prom().Counter)({
    name: 'iscsi_nbd_device_reattach_total',
    help: 'Times a mapped device was reattached to the kernel after its connection was lost',
    labelNames: ['device'] as const,
    registers: [this.registry],
  });

  /** Exports whose label sets were created at 0 (addExport); forgetExport forgets them again. */
  private readonly known = new Set<string>();
  private devices = new Set<string>();

  constructor(collectProcess = true) {
    if (collectProcess) {
      // Standard names (no prefix) so stock process and Node.js dashboards work.
      prom().collectDefaultMetrics({ register: this.registry });
      for (const n of DROPPED_DEFAULT_METRICS) this.registry.removeSingleMetric(n);
    }
    this.buildInfo.set({ version: packageVersion(), node_version: process.version }, 1);
    for (const result of ['success', 'failure']) this.reloads.inc({ result }, 0);
    // The configuration was loaded once when the daemon started.
    this.lastReloadTime.set(Date.now() / 1000);
    this.lastReloadSuccess.set(1);
  }

  /** Where scrapes read session gauges (state, CmdSN window, digest errors, in flight, queued) from. */
  setSource(fn: () => ExportSample[]): void {
    this.source = fn;
  }

  /**
   * Create every series of a new export with a known label set at 0 (requests
   * and latency by op, errors by op and errno, bytes, sense keys, in flight,
   * connections). InstrumentedExport calls it; calling it again is harmless.
   */
  addExport(name: string): void {
    if (this.known.has(name)) return;
    this.known.add(name);
    for (const op of NBD_OPS) {
      this.nbdRequests.inc({ export: name, op }, 0);
      this.nbdLatency.zero({ export: name, op });
      for (const errno of Object.values(NBD_ERRNO_NAMES)) this.nbdErrors.inc({ export: name, op, errno }, 0);
    }
    for (const op of ['read', 'write']) this.nbdBytes.inc({ export: name, op }, 0);
    for (const sk of SENSE_KEY_LABELS) this.senseKeys.inc({ export: name, sense_key: sk }, 0);
    this.nbdInFlight.inc({ export: name }, 0);
    this.nbdConnections.inc({ export: name }, 0);
    for (const result of ['grown', 'refused']) this.resizes.inc({ export: name, result }, 0);
  }

  /** Delete every series with this export label, in every family (counters restart if it comes back). */
  async forgetExport(name: string): Promise<void> {
    this.known.delete(name);
    for (const m of this.registry.getMetricsAsArray() as unknown as LabelledMetric[]) {
      if (!m.labelNames?.includes('export')) continue;
      try {
        const { values } = await m.get();
        const seen = new Set<string>();
        for (const v of values) {
          if (v.labels.export !== name) continue;
          // A histogram lists each label set once per bucket (with an le label).
          const { le: _le, ...labels } = v.labels;
          const key = JSON.stringify(labels);
          if (seen.has(key)) continue;
          seen.add(key);
          m.remove(labels);
        }
      } catch {
        // best effort: a stale series is harmless
      }
    }
  }

  /** A configuration reload finished: counts it and sets the last-reload gauges. */
  recordResize(exportName: string, result: 'grown' | 'refused'): void {
    this.resizes.inc({ export: exportName, result });
  }

  recordReload(ok: boolean): void {
    this.reloads.inc({ result: ok ? 'success' : 'failure' });
    this.lastReloadTime.set(Date.now() / 1000);
    this.lastReloadSuccess.set(ok ? 1 : 0);
  }

  /**
   * The mapped devices now: iscsi_nbd_device_state is one-hot over
   * DEVICE_STATES for each listed device; devices no longer listed lose
   * their series (state and reattach count).
   */
  setDevices(list: { device: string; state: string }[]): void {
    const now = new Set(list.map((d) => d.device));
    for (const d of this.devices) {
      if (now.has(d)) continue;
      this.deviceReattaches.remove({ device: d });
      this.deviceAdoptions.remove({ device: d });
    }
    this.devices = now;
    this.deviceState.reset();
    for (const { device, state } of list) {
      for (const st of DEVICE_STATES) this.deviceState.set({ device, state: st }, st === state ? 1 : 0);
      if (!(DEVICE_STATES as readonly string[]).includes(state)) this.deviceState.set({ device, state }, 1);
      this.deviceReattaches.inc({ device }, 0);
      this.deviceAdoptions.inc({ device }, 0);
    }
  }

  /** A mapped device got its kernel sockets back: fresh ones (reattached) or the last daemon's (adopted). */
  recordAttach(device: string, how: 'reattached' | 'adopted'): void {
    (how === 'adopted' ? this.deviceAdoptions : this.deviceReattaches).inc({ device });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/**
 * A transport that counts every CHECK CONDITION by sense key, for
 * iscsi_nbd_scsi_sense_total. Everything else passes straight through.
 */
export function countSense<T extends ScsiTransport>(inner: T, metrics: Metrics | undefined, exportName: string): ScsiTransport {
  if (!metrics) return inner;
  return {
    get maxTransferBytes() {
      return inner.maxTransferBytes;
    },
    async execute(req: ScsiRequest): Promise<ScsiResponse> {
      const r = await inner.execute(req);
      if (r.status === SAM_STAT_CHECK_CONDITION) {
        const sd = parseSense(r.sense);
        metrics.senseKeys.inc({ export: exportName, sense_key: senseKeyLabel(sd?.senseKey) });
      }
      return r;
    },
  };
}

export interface MetricsServerOptions {
  host: string;
  port: number;
  metrics: Metrics;
  /** /readyz: true when every export is ready or degraded and every mapped device attached. */
  ready: () => boolean;
  /** The JSON body's `detail` for /readyz (each export and device with its state). */
  readyDetail?: () => unknown;
}

/** /metrics, /healthz (alive) and /readyz. */
export function startMetricsServer(opts: MetricsServerOptions): Promise<http.Server> {
  const srv = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405).end();
      return;
    }
    if (url === '/metrics') {
      opts.metrics.text().then(
        (body) => res.writeHead(200, { 'content-type': opts.metrics.registry.contentType }).end(body),
        (err) => res.writeHead(500).end(String(err)),
      );
    } else if (url === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (url === '/readyz') {
      const ok = opts.ready();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' }).end(
        JSON.stringify({ ready: ok, detail: opts.readyDetail?.() ?? null }) + '\n',
      );
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(opts.port, opts.host, () => {
      srv.off('error', reject);
      resolve(srv);
    });
  });
}
