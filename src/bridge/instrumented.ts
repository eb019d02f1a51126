import type { Export, Extent, ZeroOptions } from './export';
import { errnoLabel, type Metrics, type NbdOp } from '../metrics';
import { nbdErrnoOf, errorCodeOf } from '../errors';
import type { Logger } from '../log';

interface OpMetrics {
  requests: { inc(v?: number): void };
  bytes: { inc(v?: number): void };
  latency: { observe(v: number): void };
  inFlight: { inc(v?: number): void; dec(v?: number): void };
}

/**
 * Wraps an Export to count requests, bytes, errors and latency per operation,
 * and to log every failure with what really happened underneath.
 */
export class InstrumentedExport implements Export {
  inFlight = 0;
  readonly counters = { requests: 0, errors: 0, bytesRead: 0, bytesWritten: 0 };

  constructor(
    private readonly inner: Export,
    private readonly metrics: Metrics | undefined,
    private readonly log: Logger,
  ) {
    // Every series with a known label set starts at 0, so rate() sees the first request or error.
    metrics?.addExport(inner.name);
  }

  get name() { return this.inner.name; }
  get description() { return this.inner.description; }
  get size() { return this.inner.size; }
  /** The LUN grew (see LunExport.grow). */
  grow(bytes: bigint): void {
    const g = (this.inner as Export & { grow?: (b: bigint) => void }).grow;
    if (!g) throw new RangeError(`export ${this.inner.name} cannot grow`);
    g.call(this.inner, bytes);
  }
  get flags() { return this.inner.flags; }
  get blockSizes() { return this.inner.blockSizes; }
  get requestAlignment() { return this.inner.requestAlignment; }

  // prom-client hashes a label object on every call; the children for each
  // operation are looked up once.
  private readonly children = new Map<string, OpMetrics>();

  private opMetrics(op: NbdOp): OpMetrics | undefined {
    const m = this.metrics;
    if (!m) return undefined;
    let c = this.children.get(op);
    if (!c) {
      const l = { export: this.name, op };
      c = {
        requests: m.nbdRequests.labels(l),
        bytes: m.nbdBytes.labels(l),
        latency: m.nbdLatency.labels(l),
        inFlight: m.nbdInFlight.labels({ export: this.name }),
      };
      this.children.set(op, c);
    }
    return c;
  }

  // No closures per request: the caller passes what a failure log needs.
  private async run<T>(op: NbdOp, bytes: number, p: Promise<T>, offset?: bigint, length?: number, more?: object): Promise<T> {
    const om = this.opMetrics(op);
    const started = om ? process.hrtime.bigint() : 0n;
    this.inFlight++;
    this.counters.requests++;
    om?.inFlight.inc();
    try {
      const r = await p;
      if (op === 'read') this.counters.bytesRead += bytes;
      else if (op === 'write') this.counters.bytesWritten += bytes;
      if (om && bytes > 0) om.bytes.inc(bytes);
      return r;
    } catch (err) {
      this.counters.errors++;
      const errno = nbdErrnoOf(err);
      const name = errnoLabel(errno);
      this.metrics?.nbdErrors.inc({ export: this.name, op, errno: name });
      const where = offset === undefined ? {} : { offset: offset.toString(), length };
      this.log.warn({ op, ...where, ...more, errno: name, code: errorCodeOf(err), err }, `NBD ${op} failed`);
      throw err;
    } finally {
      this.inFlight--;
      if (om) {
        om.requests.inc();
        om.inFlight.dec();
        om.latency.observe(Number(process.hrtime.bigint() - started) / 1e9);
      }
    }
  }

  read(offset: bigint, length: number, into: Buffer): Promise<void> {
    return this.run('read', length, this.inner.read(offset, length, into), offset, length);
  }
  write(offset: bigint, data: Buffer, fua: boolean): Promise<void> {
    return this.run('write', data.length, this.inner.write(offset, data, fua), offset, data.length, { fua });
  }
  flush(): Promise<void> {
    return this.run('flush', 0, this.inner.flush());
  }
  trim(offset: bigint, length: number, fua: boolean): Promise<void> {
    return this.run('trim', 0, this.inner.trim(offset, length, fua), offset, length);
  }
  zero(offset: bigint, length: number, opts: ZeroOptions): Promise<void> {
    return this.run('write_zeroes', 0, this.inner.zero(offset, length, opts), offset, length, opts);
  }
  blockStatus(offset: bigint, length: number): Promise<Extent[]> {
    return this.run('block_status', 0, this.inner.blockStatus(offset, length), offset, length);
  }
  cache(offset: bigint, length: number): Promise<void> {
    return this.run('cache', 0, this.inner.cache(offset, length), offset, length);
  }
  /** NBD connections currently using this export. */
  clients = 0;
  attach(): void {
    this.clients++;
    this.metrics?.nbdConnections.inc({ export: this.name });
    this.inner.attach?.();
  }
  detach(): void {
    this.clients = Math.max(0, this.clients - 1);
    this.metrics?.nbdConnections.dec({ export: this.name });
    this.inner.detach?.();
  }
}
