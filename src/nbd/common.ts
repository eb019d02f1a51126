// Helpers shared by the handshake and transmission engines.
import type { Export } from '../bridge/export';
import {
  FLAG_HAS_FLAGS, FLAG_READ_ONLY, FLAG_SEND_FLUSH, FLAG_SEND_FUA, FLAG_ROTATIONAL, FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES, FLAG_SEND_DF, FLAG_CAN_MULTI_CONN, FLAG_SEND_CACHE, FLAG_SEND_FAST_ZERO,
} from './constants';

/** Where the NBD server finds its exports. */
export interface ExportRegistry {
  get(name: string): Export | undefined;
  list(): Export[];
  /** The export an empty name selects; the first of list() when unset. */
  defaultName?: string;
}

/** Resolve a client-supplied name ('' = the default export). */
export function resolveExport(reg: ExportRegistry, name: string): Export | undefined {
  if (name === '') {
    const def = reg.defaultName ?? reg.list()[0]?.name;
    return def === undefined ? undefined : reg.get(def);
  }
  return reg.get(name);
}

/** Default cap on a READ reply / WRITE payload: the largest request the Linux kernel sends. */
export const DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024;

/**
 * Default bytes a connection holds (WRITE payloads, READ replies, unsent
 * output) before it stops reading requests: 16 MiB, sixteen 1-MiB requests,
 * like qemu-nbd's 16 requests per connection. Deeper queues only made the
 * target slower (tgtd, 1-MiB writes at QD128: 32 MiB in flight ~540 MiB/s,
 * 16 MiB ~630-690, 8 MiB ~680) and cost memory. One request larger than this
 * still runs (alone).
 */
export const DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024;

export interface EffectiveBlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
  /** Requests must be aligned to this (at most minimum; below it the export does read-modify-write). */
  align: number;
}

/** The block sizes we advertise and enforce: the export's, with maximum capped to maxPayload. */
export function effectiveBlockSizes(exp: Export, maxPayload = DEFAULT_MAX_PAYLOAD): EffectiveBlockSizes {
  const min = Math.max(1, exp.blockSizes.minimum | 0);
  const preferred = Math.max(min, exp.blockSizes.preferred | 0);
  // Hard ceiling of 1 GiB: a READ reply is one buffer, and OFFSET_DATA lengths are 32-bit.
  let max = Math.min(exp.blockSizes.maximum >>> 0 || 0xffffffff, maxPayload, 1 << 30);
  max -= max % min; // must be a multiple of the minimum
  const wanted = exp.requestAlignment;
  const align = wanted !== undefined && wanted >= 1 && wanted < min ? wanted | 0 : min;
  return { minimum: min, preferred, maximum: Math.max(max, min), align };
}

/** The 16-bit transmission flags for an export, given whether structured replies were negotiated. */
export function transmissionFlagsFor(exp: Export, structured: boolean): number {
  const f = exp.flags;
  let flags = FLAG_HAS_FLAGS;
  if (f.readOnly) flags |= FLAG_READ_ONLY;
  if (f.flush) flags |= FLAG_SEND_FLUSH;
  if (f.fua) flags |= FLAG_SEND_FUA;
  if (f.rotational) flags |= FLAG_ROTATIONAL;
  if (!f.readOnly && f.trim) flags |= FLAG_SEND_TRIM;
  if (!f.readOnly && f.writeZeroes) {
    flags |= FLAG_SEND_WRITE_ZEROES;
    if (f.fastZero) flags |= FLAG_SEND_FAST_ZERO;
  }
  if (structured) flags |= FLAG_SEND_DF;
  if (f.multiConn) flags |= FLAG_CAN_MULTI_CONN;
  if (f.cache) flags |= FLAG_SEND_CACHE;
  return flags;
}

/** A FIFO of received chunks read with a cursor; views where possible, copies only across chunks. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0; // offset into chunks[0]
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** Remove and return the next n bytes (a view when they lie in one chunk). Caller checks length. */
  take(n: number): Buffer {
    if (n > this.length) throw new RangeError('ByteQueue underflow');
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length - this.head >= n) {
      const v = first.subarray(this.head, this.head + n);
      this.advance(n);
      return v;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length - this.head, n - filled);
      c.copy(out, filled, this.head, this.head + k);
      filled += k;
      this.advance(k);
    }
    return out;
  }

  /** Remove and return up to n bytes as views (no copy). */
  takeViews(n: number): Buffer[] {
    const out: Buffer[] = [];
    let left = Math.min(n, this.length);
    while (left > 0) {
      const c = this.chunks[0];
      const k = Math.min(c.length - this.head, left);
      out.push(c.subarray(this.head, this.head + k));
      this.advance(k);
      left -= k;
    }
    return out;
  }

  /** Drop up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    let left = Math.min(n, this.length);
    const done = left;
    while (left > 0) {
      const c = this.chunks[0];
      const k = Math.min(c.length - this.head, left);
      this.advance(k);
      left -= k;
    }
    return done;
  }

  /** Everything left, as one buffer. */
  drainAll(): Buffer {
    return this.take(this.length);
  }

  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.length = 0;
  }

  private advance(k: number): void {
    this.head += k;
    this.length -= k;
    if (this.head === this.chunks[0].length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
