import http from 'node:http';
import client from 'prom-client';

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
  readonly nbdQueued = new client.Gauge({
    name: 'iscsi_nbd_scsi_commands_queued',
    help: 'SCSI commands waiting for a slot in the export session pool',
    labelNames: ['export'] as const,
    registers: [this.registry],
  });
  readonly nbdConnections = new client.Gauge({
    name: 'iscsi_nbd_nbd_connections',
    help: 'Open NBD client connections, by export ("" while still negotiating)',
    labelNames: ['export'] as const,
    registers: [this.registry],
  });
  readonly sessionState = new client.Gauge({
    name: 'iscsi_nbd_iscsi_session_up',
    help: '1 when the iSCSI session is logged in, else 0',
    labelNames: ['export', 'session', 'portal', 'target'] as const,
    registers: [this.registry],
  });
  readonly sessionReconnects = new client.Counter({
    name: 'iscsi_nbd_iscsi_reconnects_total',
    help: 'Times an iSCSI session was re-established after losing its connection',
    labelNames: ['export', 'session', 'portal'] as const,
    registers: [this.registry],
  });
  readonly sessionWindow = new client.Gauge({
    name: 'iscsi_nbd_iscsi_cmdsn_window',
    help: 'Commands the target currently allows us to send (MaxCmdSN - CmdSN + 1)',
    labelNames: ['export', 'session', 'portal'] as const,
    registers: [this.registry],
  });
  readonly digestErrors = new client.Counter({
    name: 'iscsi_nbd_iscsi_digest_errors_total',
    help: 'Header or data digest mismatches seen on received PDUs',
    labelNames: ['export', 'session', 'portal'] as const,
    registers: [this.registry],
  });
  readonly senseKeys = new client.Counter({
    name: 'iscsi_nbd_scsi_sense_total',
    help: 'SCSI CHECK CONDITIONs seen, by export and sense key name',
    labelNames: ['export', 'sense_key'] as const,
    registers: [this.registry],
  });

  constructor(collectProcess = true) {
    if (collectProcess) client.collectDefaultMetrics({ register: this.registry, prefix: 'iscsi_nbd_' });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
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
