import type { Readable, Writable } from 'node:stream';
import { ConfigError, IscsiNbdError, RequestError } from '../errors';
import { rootLogger } from '../log';
import type { SecretOptions } from '../credentials';
import type { DigestPref } from '../config';
import { initiatorName as resolveInitiatorName } from '../daemon/paths';
import { detectImageFormat, HEAD_BYTES, notRawError } from './format';
import { runLimited } from '../util/limit';
import { FileSide, isStream, isUrl, LunSide, openLocalDest, openLocalSource, pathKind, Side, StreamSink, StreamSource } from './sides';

// The copy engine behind `iscsi-nbd copy SRC DST`: an image file to a LUN, a
// LUN to an image file (or LUN to LUN), a stream (stdin, a pipe, a FIFO) to a
// LUN or a LUN to a stream (stdout, a pipe, /dev/null), straight over iSCSI. Sparse-aware both ways: zero runs in the source become
// WRITE SAME/UNMAP on a LUN or holes in a file, and a LUN's deallocated
// extents (GET LBA STATUS, when reads of them return zeros) are never read.

export interface CopyProgress {
  phase: 'copy' | 'verify';
  /** Bytes done in this phase. */
  done: number;
  /** Bytes this phase moves; undefined when the source is a stream (its size is known at its end). */
  total: number | undefined;
}

export interface CopyOptions {
  /** An image file or block device, an iscsi:// URL, `-` for stdin, or any other readable path (a FIFO, /dev/stdin). */
  src: string;
  /** An image file or block device, an iscsi:// URL, `-` for stdout, or any other writable path (a FIFO, /dev/null). */
  dst: string;
  /** Read both sides back and compare them after copying. */
  verify?: boolean;
  /** KiB per request (default 1024). */
  chunk?: number;
  /** Requests in flight (default 8). */
  parallel?: number;
  /** Zero runs become holes / WRITE SAME (default true). */
  sparse?: boolean;
  /**
   * A stream source (no size: read until its end) may end before the
   * destination LUN does; without this that is an error (ShortSource), since
   * the end of a pipe cannot tell a complete image from a producer that died.
   */
  allowShort?: boolean;
  /** 'raw' copies an image container's bytes as they are; 'auto' (default) refuses qcow2, VMDK, VHD... */
  format?: 'auto' | 'raw';
  /** Our iSCSI initiator name (else the system's or a generated, persisted one). */
  initiatorName?: string;
  digest?: DigestPref;
  /** Where CHAP secrets come from when the URL carries none. */
  secrets?: SecretOptions;
  onProgress?: (p: CopyProgress) => void;
  /** Aborting stops the copy after the requests in flight: copy() rejects with CopyInterrupted. */
  signal?: AbortSignal;
  /** The stream behind `-` as the source (default process.stdin). */
  stdin?: Readable;
  /** The stream behind `-` as the destination (default process.stdout). */
  stdout?: Writable;
}

export interface CopySummary {
  /** Bytes of the source (a stream: what it held). */
  bytes: number;
  dataBytes: number;
  zeroBytes: number;
  skippedReadBytes: number;
  /** Zeros added after the source to fill the destination's last block. */
  paddedBytes: number;
  seconds: number;
  verified: boolean;
  /** The source was a stream (its size was learned at its end). */
  stream: boolean;
  /** What the source was called (`stdin` for `-`). */
  source: string;
  /** Bytes of the destination past the end of a stream source, left as they were (with allowShort). */
  unwrittenBytes: number;
}

/**
 * A stream source ended before the destination LUN did (and allowShort was
 * not given): what it held was written and flushed, the rest of the LUN was not.
 */
export class ShortSource extends IscsiNbdError {
  constructor(
    readonly source: string,
    /** Undefined when the source was found empty before the destination was opened. */
    readonly destination: string | undefined,
    /** Bytes the source held. */
    readonly copied: number,
    /** Bytes of the destination. */
    readonly destinationSize: number,
  ) {
    super(
      'EIO',
      copied === 0
        ? `${source} is empty: nothing was copied${destination ? ` to ${destination}` : ''}`
        : `${source} ended after ${copied} bytes, before the ${destinationSize} bytes of ${destination}: ` +
            `those ${copied} bytes were written, the rest of the LUN was left as it was. ` +
            'If the source is meant to be shorter than the LUN, pass --allow-short',
    );
  }
}

/** The copy was stopped through its AbortSignal; the destination holds part of the source. */
export class CopyInterrupted extends Error {
  constructor(
    readonly phase: 'copy' | 'verify',
    /** Bytes of the phase that were done (complete requests). */
    readonly done: number,
    /** Bytes the phase had to do; undefined for a stream source. */
    readonly total: number | undefined,
  ) {
    super(`interrupted after ${done} bytes${total !== undefined ? ` of ${total}` : ''}`);
    this.name = 'CopyInterrupted';
  }
}

/** Zero runs of at least `grain` bytes (grain-aligned) in buf, as [start, end) pairs. */
export function zeroRuns(buf: Buffer, grain: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let start = -1;
  for (let pos = 0; pos < buf.length; pos += grain) {
    const end = Math.min(pos + grain, buf.length);
    const zero = isZero(buf, pos, end);
    if (zero && start < 0) start = pos;
    if (!zero && start >= 0) {
      runs.push([start, pos]);
      start = -1;
    }
  }
  if (start >= 0) runs.push([start, buf.length]);
  return runs;
}

const ZERO_CMP = Buffer.alloc(64 * 1024);
function isZero(buf: Buffer, start: number, end: number): boolean {
  for (let p = start; p < end; p += ZERO_CMP.length) {
    const n = Math.min(ZERO_CMP.length, end - p);
    if (buf.compare(ZERO_CMP, 0, n, p, p + n) !== 0) return false;
  }
  return true;
}

interface ChunkControl {
  signal?: AbortSignal;
  /** Told of the first failure (so a side can wake requests waiting on it). */
  onFail?: (err: unknown) => void;
}

/**
 * Run fn over [0, total) in `chunk`-sized pieces, `parallel` at a time; stops
 * at the first error, or takes no new piece once the signal is aborted.
 */
export async function forChunks(
  total: number,
  chunk: number,
  parallel: number,
  fn: (offset: number, length: number, buf: Buffer) => Promise<void>,
  bufs: number,
  ctl: ChunkControl = {},
): Promise<void> {
  let next = 0;
  const slotBufs: Buffer[] = [];
  await runLimited(
    (): [number, number] | undefined => {
      if (next >= total || ctl.signal?.aborted) return undefined;
      const off = next;
      const len = Math.min(chunk, total - off);
      next += len;
      return [off, len];
    },
    parallel,
    ([off, len], slot) => fn(off, len, (slotBufs[slot] ??= Buffer.allocUnsafe(chunk * bufs))),
    ctl.onFail,
  );
}

/** Read a range, skipping the read where the side knows it is zeros. */
export async function readOrZero(side: Side, off: number, len: number, into: Buffer, readableEnd: number): Promise<void> {
  for (const ex of await side.extents(off, len)) {
    const v = into.subarray(ex.offset - off, ex.offset - off + ex.length);
    if (ex.zero) {
      v.fill(0);
      continue;
    }
    const n = Math.max(0, Math.min(ex.length, readableEnd - ex.offset));
    if (n > 0) await side.read(ex.offset, n, v);
    if (n < ex.length) v.fill(0, n);
  }
}

export function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}
export function lcm(a: number, b: number): number {
  return (a / gcd(a, b)) * b;
}
export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** Write data read from the source at `off`: zero runs (with sparse) become dst.zero(). */
async function putData(dst: Side, off: number, view: Buffer, sparse: boolean, grain: number, s: CopySummary): Promise<void> {
  let pos = 0;
  for (const [a, b] of sparse ? zeroRuns(view, grain) : []) {
    if (a > pos) await dst.write(off + pos, view.subarray(pos, a));
    await dst.zero(off + a, b - a);
    s.zeroBytes += b - a;
    s.dataBytes += a - pos;
    pos = b;
  }
  if (pos < view.length) {
    await dst.write(off + pos, view.subarray(pos));
    s.dataBytes += view.length - pos;
  }
}

interface Tuning {
  chunkKiB: number;
  parallel: number;
  sparse: boolean;
}

/** --chunk (KiB) and --parallel: what is accepted, rather than silently raised or capped. */
export const CHUNK_KIB_RANGE: readonly [number, number] = [64, 32 * 1024];
export const PARALLEL_RANGE: readonly [number, number] = [1, 64];

/** Refuse a chunk size or request count out of range (a ConfigError naming the flag), before anything connects. */
export function checkTuning(o: Pick<CopyOptions, 'chunk' | 'parallel'>): void {
  const check = (v: number | undefined, flag: string, [lo, hi]: readonly [number, number], unit: string): void => {
    if (v === undefined) return;
    if (!Number.isInteger(v) || v < lo || v > hi) throw new ConfigError('ECONFIG', `${flag} must be a whole number ${lo}..${hi}${unit} (got ${v})`);
  };
  check(o.chunk, '--chunk', CHUNK_KIB_RANGE, ' (KiB)');
  check(o.parallel, '--parallel', PARALLEL_RANGE, '');
}

function tuning(o: CopyOptions): Tuning {
  checkTuning(o);
  return {
    chunkKiB: o.chunk ?? 1024,
    parallel: o.parallel ?? 8,
    sparse: o.sparse !== false,
  };
}

/** Refuse a source that holds an image container rather than a disk's bytes. */
async function checkRaw(src: FileSide | StreamSource): Promise<void> {
  if (src instanceof StreamSource) {
    const fmt = detectImageFormat(await src.peek(HEAD_BYTES));
    if (fmt) throw notRawError(src.label, fmt, true);
    return;
  }
  const { head, tail } = await src.probe();
  const fmt = detectImageFormat(head, tail);
  if (fmt) throw notRawError(src.label, fmt);
}

function checkWritable(dst: Side): void {
  if (dst instanceof LunSide && dst.info.writeProtect) throw new RequestError('EPERM', `${dst.label} is write-protected`);
}

/** The copy itself, for the CLI and for tests. */
export async function copy(o: CopyOptions): Promise<CopySummary> {
  if (!isUrl(o.src) && !isUrl(o.dst)) throw new ConfigError('ECONFIG', 'one of SRC and DST must be an iscsi:// URL (use cp for file to file)');
  checkTuning(o);
  // A path that is neither a regular file nor a block device is a stream (a pipe, a FIFO, /dev/null).
  const srcKind = isUrl(o.src) ? undefined : pathKind(o.src);
  const dstKind = isUrl(o.dst) ? undefined : pathKind(o.dst);
  if (o.verify && (srcKind === 'stream' || dstKind === 'stream')) {
    const which = srcKind === 'stream' ? o.src : o.dst;
    const what = isStream(which) ? '`-` (stdin/stdout)' : `${which} (a pipe, FIFO or device, not a file)`;
    throw new ConfigError('ECONFIG', `--verify reads both sides back, and ${what} cannot be read twice: copy to or from a file to verify`);
  }
  if (o.signal?.aborted) throw new CopyInterrupted('copy', 0, undefined);
  const stdin = o.stdin ?? process.stdin;
  const stdout = o.stdout ?? process.stdout;
  if (isStream(o.src) && (stdin as { isTTY?: boolean }).isTTY) throw new ConfigError('ECONFIG', 'SRC is `-` but stdin is a terminal: pipe or redirect an image into it');
  if (isStream(o.dst) && (stdout as { isTTY?: boolean }).isTTY) throw new ConfigError('ECONFIG', 'DST is `-` but stdout is a terminal: redirect it to a file or a pipe');
  const lunOpts = { initiatorName: resolveInitiatorName(o.initiatorName), digest: o.digest, secrets: o.secrets };
  const closers: Array<{ close(): Promise<void> }> = [];
  try {
    let src: Side | StreamSource;
    if (isUrl(o.src)) src = await LunSide.open(o.src, lunOpts);
    else if (isStream(o.src)) src = new StreamSource(stdin);
    else src = await openLocalSource(o.src);
    closers.push(src);
    if (src instanceof FileSide && src.size === 0) throw new ShortSource(src.label, undefined, 0, 0);
    if (o.format !== 'raw' && (src instanceof FileSide || src instanceof StreamSource)) await checkRaw(src);
    if (o.signal?.aborted) throw new CopyInterrupted('copy', 0, src instanceof StreamSource ? undefined : src.size);
    if (src instanceof StreamSource) {
      const dst = await LunSide.open(o.dst, lunOpts); // one side is a URL, and it is not the source
      closers.push(dst);
      return await copyStream(src, dst, o);
    }
    const total = src.size;
    const dst: Side = isUrl(o.dst) ? await LunSide.open(o.dst, lunOpts) : isStream(o.dst) ? new StreamSink(stdout, total) : await openLocalDest(o.dst, total);
    closers.push(dst);
    return await copySized(src, dst, o);
  } finally {
    for (const side of closers.reverse()) await side.close();
  }
}

/** Source and destination of known sizes: chunks in parallel, anywhere. */
async function copySized(src: Side, dst: Side, o: CopyOptions): Promise<CopySummary> {
  const log = rootLogger();
  const total = src.size;
  checkWritable(dst);
  if (dst instanceof LunSide) {
    const padded = Math.ceil(total / dst.blockSize) * dst.blockSize;
    if (dst.size < padded) {
      throw new RequestError('ENOSPC', `${dst.label} has ${dst.size} bytes, less than the ${total} bytes of ${src.label}: refusing to truncate the copy`);
    }
    if (dst.size > padded) log.warn({ dst: dst.label, dstSize: dst.size, srcSize: total }, 'the destination LUN is larger than the source; its tail is left as it is');
  }
  const { chunkKiB, parallel, sparse } = tuning(o);
  // The unit of I/O: a multiple of both block sizes, at least 64 KiB.
  const align = lcm(src.blockSize, dst.blockSize);
  const chunk = roundUp(Math.max(64 * 1024, Math.floor(chunkKiB * 1024)), align);
  const grain = roundUp(Math.min(64 * 1024, chunk), align);
  // What we move: the source rounded up to the destination's block size.
  const span = roundUp(total, dst.blockSize);
  const s: CopySummary = {
    bytes: total, dataBytes: 0, zeroBytes: 0, skippedReadBytes: 0, paddedBytes: span - total, seconds: 0, verified: false,
    stream: false, source: src.label, unwrittenBytes: 0,
  };
  log.info({ src: src.label, dst: dst.label, bytes: total, chunk, parallel }, 'copy starting');
  const started = Date.now();
  let done = 0;
  const ctl: ChunkControl = {
    signal: o.signal,
    onFail: (err) => {
      src.abort?.(err);
      dst.abort?.(err);
    },
  };
  o.onProgress?.({ phase: 'copy', done: 0, total: span });
  await forChunks(span, chunk, parallel, async (off, len, buf) => {
    for (const ex of await src.extents(off, len)) {
      if (ex.zero && sparse) {
        s.skippedReadBytes += ex.length;
        s.zeroBytes += ex.length;
        await dst.zero(ex.offset, ex.length);
        continue;
      }
      const view = buf.subarray(0, ex.length);
      // A source that ends inside the last block: read what exists, pad the rest.
      const readable = Math.max(0, Math.min(ex.length, total - ex.offset));
      if (readable > 0) await src.read(ex.offset, readable, view);
      if (readable < ex.length) view.fill(0, readable);
      await putData(dst, ex.offset, view, sparse, grain, s);
    }
    done += len;
    o.onProgress?.({ phase: 'copy', done, total: span });
  }, 1, ctl);
  if (o.signal?.aborted) {
    await dst.finish().catch(() => undefined); // keep what was written
    throw new CopyInterrupted('copy', Math.min(done, total), total);
  }
  await dst.finish();
  s.seconds = (Date.now() - started) / 1000;
  log.info({ ...s }, 'copy done');
  if (o.verify) {
    let checked = 0;
    o.onProgress?.({ phase: 'verify', done: 0, total: span });
    await forChunks(span, chunk, parallel, async (off, len, buf) => {
      const a = buf.subarray(0, len);
      const b = buf.subarray(len, 2 * len);
      await readOrZero(src, off, len, a, total);
      await readOrZero(dst, off, len, b, dst.size);
      if (!a.equals(b)) {
        let i = 0;
        while (i < len && a[i] === b[i]) i++;
        throw new IscsiNbdError('EIO', `verify failed: ${src.label} and ${dst.label} differ at byte ${off + i}`);
      }
      checked += len;
      o.onProgress?.({ phase: 'verify', done: checked, total: span });
    }, 2, { signal: o.signal });
    if (o.signal?.aborted) throw new CopyInterrupted('verify', Math.min(checked, span), span);
    s.verified = true;
  }
  return s;
}

/**
 * A stream (stdin, a pipe, a FIFO) to a LUN: read front to back in
 * chunk-sized pieces, each written while the next is read (up to `parallel`
 * writes in flight), until the stream ends or the LUN is full. The last piece
 * is padded with zeros to a whole block if the LUN needs one; a stream longer
 * than the LUN is refused when its byte LUN-size+1 arrives, and one that ends
 * before the LUN's end is a ShortSource unless allowShort (an empty one always).
 */
async function copyStream(src: StreamSource, dst: LunSide, o: CopyOptions): Promise<CopySummary> {
  const log = rootLogger();
  checkWritable(dst);
  const { chunkKiB, parallel, sparse } = tuning(o);
  const bs = dst.blockSize;
  const chunk = roundUp(Math.max(64 * 1024, Math.floor(chunkKiB * 1024)), bs);
  const grain = roundUp(Math.min(64 * 1024, chunk), bs);
  const limit = dst.size;
  const s: CopySummary = {
    bytes: 0, dataBytes: 0, zeroBytes: 0, skippedReadBytes: 0, paddedBytes: 0, seconds: 0, verified: false,
    stream: true, source: src.label, unwrittenBytes: 0,
  };
  log.info({ src: src.label, dst: dst.label, chunk, parallel }, 'copy starting');
  const started = Date.now();
  const inflight = new Set<Promise<void>>();
  const free: Buffer[] = [];
  let pos = 0;
  let done = 0;
  let failed: unknown;
  let tooLong = false;
  o.onProgress?.({ phase: 'copy', done: 0, total: undefined });
  try {
    for (;;) {
      if (failed !== undefined || o.signal?.aborted) break;
      // Up to the LUN's end; there, one byte more tells whether the stream goes on.
      const want = pos < limit ? Math.min(chunk, limit - pos) : 1;
      const buf = free.pop() ?? Buffer.allocUnsafe(chunk);
      const n = await src.readFull(buf, want, o.signal);
      if (o.signal?.aborted) break; // what was read is dropped: it is not written
      if (n === 0) break;
      if (pos >= limit) {
        tooLong = true;
        break;
      }
      const atEnd = n < want;
      let len = n;
      if (atEnd && n % bs !== 0) {
        len = roundUp(n, bs);
        buf.fill(0, n, len);
        s.paddedBytes = len - n;
      }
      s.bytes += n;
      const off = pos;
      pos += len;
      const task: Promise<void> = putData(dst, off, buf.subarray(0, len), sparse, grain, s)
        .then(
          () => {
            done += len;
            o.onProgress?.({ phase: 'copy', done, total: undefined });
          },
          (err) => {
            if (failed === undefined) failed = err;
          },
        )
        .finally(() => {
          inflight.delete(task);
          free.push(buf);
        });
      inflight.add(task);
      if (inflight.size >= parallel) await Promise.race(inflight);
      if (atEnd) break;
    }
  } finally {
    await Promise.allSettled([...inflight]);
  }
  if (failed !== undefined) throw failed;
  if (tooLong) {
    await dst.finish().catch(() => undefined);
    throw new RequestError(
      'ENOSPC',
      `${src.label} is longer than the ${limit} bytes of ${dst.label}: refusing to truncate the copy (its first ${pos} bytes were written: the destination is partial)`,
    );
  }
  if (o.signal?.aborted) {
    await dst.finish().catch(() => undefined);
    throw new CopyInterrupted('copy', done, undefined);
  }
  await dst.finish();
  if (pos < limit) {
    if (!o.allowShort || s.bytes === 0) throw new ShortSource(src.label, dst.label, s.bytes, limit);
    s.unwrittenBytes = limit - pos;
    log.warn({ dst: dst.label, dstSize: limit, srcSize: s.bytes }, 'the destination LUN is larger than the stream; its tail is left as it is');
  }
  s.seconds = (Date.now() - started) / 1000;
  log.info({ ...s }, 'copy done');
  return s;
}
