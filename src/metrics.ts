import http from 'node:http';
import client from 'prom-client';
import type { ScsiRequest, ScsiResponse, ScsiTransport } from './scsi/transport';
import { SAM_STAT_CHECK_CONDITION } from './scsi/transport';
import { parseSense, senseKeyName } from './scsi/sense';

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
}
export interface ExportSample {
  name: string;
  queued: number;
  sessions: SessionSample[];
}

export const SESSION_STATES = ['idle', 'connecting', 'logged-in', 'recovering', 'failed', 'closing', 'closed'] as const;

// Prometheus metrics. Every series is prefixed iscsi_nbd_. Labels never carry
// secrets: exports are named by their export name, sessions by portal and
// target IQN only.

export class Metrics {
  readonly registry = new client.Registry();

  readonly nbdRequests = new client.Counter({
    name: 'iscsi_nbd_nbd_requests_total',
    help: 'NBD requests completed, by export, operation and result errno (0 = success)',
    labelNames: ['export', 'op', 'errno'] as const,
    registers: [this.registry],
  });
  readonly nbdBytes = new client.Counter({
    name: 'iscsi_nbd_nbd_bytes_total',
    help: 'Bytes moved by NBD READ and WRITE, by export and operation',
    labelNames: ['export', 'op'] as const,
    registers: [this.registry],
  });
  readonly nbdErrors = new client.Counter({
    name: 'iscsi_nbd_nbd_errors_total',
    help: 'NBD requests that failed, by export, operation and NBD errno name',
    labelNames: ['export', 'op', 'errno'] as const,
    registers: [this.registry],
  });
  readonly nbdLatency = new client.Histogram({
    name: 'iscsi_nbd_nbd_request_duration_seconds',
    help: 'NBD request latency from receipt to reply, by export and operation',
    labelNames: ['export', 'op'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly nbdInFlight = new client.Gauge({
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
    return new client.Gauge({
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
    return new client.Gauge({
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
  readonly nbdConnections = new client.Gauge({
    name: 'iscsi_nbd_nbd_connections',
    help: 'Open NBD client connections, by export ("" while still negotiating)',
    labelNames: ['export'] as const,
    registers: [this.registry],
  });
  readonly sessionState: client.Gauge<'export' | 'session' | 'portal' | 'target'> = (() => {
    const self = this;
    return new client.Gauge({
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
  readonly sessionStateInfo: client.Gauge<'export' | 'session' | 'portal' | 'state'> = (() => {
    const self = this;
    return new client.Gauge({
      name: 'iscsi_nbd_iscsi_session_state',
      help: 'The iSCSI session state: 1 for the current state, 0 for the others',
      labelNames: ['export', 'session', 'portal', 'state'] as const,
      registers: [this.registry],
      collect() {
        if (!self.source) return;
        this.reset();
        for (const e of self.sample()) {
          for (const ss of e.sessions) {
            for (const st of SESSION_STATES) this.set({ export: e.name, session: String(ss.index), portal: ss.portal, state: st }, ss.state === st ? 1 : 0);
          }
        }
      },
    });
  })();
  readonly sessionReconnects = new client.Counter({
    name: 'iscsi_nbd_iscsi_reconnects_total',
    help: 'Times an iSCSI session was re-established after losing its connection',
    labelNames: ['export', 'session', 'portal'] as const,
    registers: [this.registry],
  });
  readonly sessionWindow: client.Gauge<'export' | 'session' | 'portal'> = (() => {
    const self = this;
    return new client.Gauge({
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
    return new client.Counter({
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
  readonly senseKeys = new client.Counter({
    name: 'iscsi_nbd_scsi_sense_total',
    help: 'SCSI CHECK CONDITIONs seen, by export and sense key name',
    labelNames: ['export', 'sense_key'] as const,
    registers: [this.registry],
  });

  constructor(collectProcess = true) {
    if (collectProcess) client.collectDefaultMetrics({ register: this.registry, prefix: 'iscsi_nbd_' });
  }

  /** Where scrapes read session gauges (state, CmdSN window, digest errors, in flight, queued) from. */
  setSource(fn: () => ExportSample[]): void {
    this.source = fn;
  }

  /** Forget the pushed series of an export that was removed (counters restart if it comes back). */
  async forgetExport(name: string): Promise<void> {
    const pushed = [this.nbdRequests, this.nbdBytes, this.nbdErrors, this.nbdLatency, this.nbdInFlight, this.nbdConnections, this.sessionReconnects, this.senseKeys] as unknown as Array<{
      get(): Promise<{ values: Array<{ labels: Record<string, string | number> }> }> | { values: Array<{ labels: Record<string, string | number> }> };
      remove(labels: Record<string, string | number>): void;
    }>;
    for (const m of pushed) {
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
        metrics.senseKeys.inc({ export: exportName, sense_key: sd ? senseKeyName(sd.senseKey) : 'NO SENSE DATA' });
      }
      return r;
    },
  };
}

export interface MetricsServerOptions {
  host: string;
  port: number;
  metrics: Metrics;
  /** /readyz: true when every export has at least one logged-in session. */
  ready: () => boolean;
  /** Extra detail for /readyz. */
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
