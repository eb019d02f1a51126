import type { Export, Extent, ZeroOptions } from './export';
import type { Metrics } from '../metrics';
import { nbdErrnoOf, errorCodeOf } from '../errors';
import type { Logger } from '../log';

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };

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
  ) {}

  get name() { return this.inner.name; }
  get description() { return this.inner.description; }
  get size() { return this.inner.size; }
  get flags() { return this.inner.flags; }
  get blockSizes() { return this.inner.blockSizes; }
  get requestAlignment() { return this.inner.requestAlignment; }

  private async run<T>(op: string, bytes: number, detail: () => object, fn: () => Promise<T>): Promise<T> {
    const started = process.hrtime.bigint();
    this.inFlight++;
    this.counters.requests++;
    this.metrics?.nbdInFlight.inc({ export: this.name });
    try {
      const r = await fn();
      if (op === 'read') this.counters.bytesRead += bytes;
      if (op === 'write') this.counters.bytesWritten += bytes;
      if (this.metrics) {
        this.metrics.nbdRequests.inc({ export: this.name, op, errno: '0' });
        if (bytes > 0) this.metrics.nbdBytes.inc({ export: this.name, op }, bytes);
      }
      return r;
    } catch (err) {
      this.counters.errors++;
      const errno = nbdErrnoOf(err);
      const name = ERRNO_NAMES[errno] ?? String(errno);
      this.metrics?.nbdRequests.inc({ export: this.name, op, errno: String(errno) });
      this.metrics?.nbdErrors.inc({ export: this.name, op, errno: name });
      this.log.warn({ op, ...detail(), errno: name, code: errorCodeOf(err), err: (err as Error).message }, `NBD ${op} failed`);
      throw err;
    } finally {
      this.inFlight--;
      this.metrics?.nbdInFlight.dec({ export: this.name });
      this.metrics?.nbdLatency.observe({ export: this.name, op }, Number(process.hrtime.bigint() - started) / 1e9);
    }
  }

  read(offset: bigint, length: number, into?: Buffer): Promise<Buffer> {
    return this.run('read', length, () => ({ offset: offset.toString(), length }), () => this.inner.read(offset, length, into));
  }
  write(offset: bigint, data: Buffer, fua: boolean): Promise<void> {
    return this.run('write', data.length, () => ({ offset: offset.toString(), length: data.length, fua }), () => this.inner.write(offset, data, fua));
  }
  flush(): Promise<void> {
    return this.run('flush', 0, () => ({}), () => this.inner.flush());
  }
  trim(offset: bigint, length: number, fua: boolean): Promise<void> {
    return this.run('trim', 0, () => ({ offset: offset.toString(), length }), () => this.inner.trim(offset, length, fua));
  }
  zero(offset: bigint, length: number, opts: ZeroOptions): Promise<void> {
    return this.run('write_zeroes', 0, () => ({ offset: offset.toString(), length, ...opts }), () => this.inner.zero(offset, length, opts));
  }
  blockStatus(offset: bigint, length: number): Promise<Extent[]> {
    return this.run('block_status', 0, () => ({ offset: offset.toString(), length }), () => this.inner.blockStatus(offset, length));
  }
  cache(offset: bigint, length: number): Promise<void> {
    return this.run('cache', 0, () => ({ offset: offset.toString(), length }), () => this.inner.cache(offset, length));
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
