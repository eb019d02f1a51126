import fs from 'node:fs';
import tty from 'node:tty';
import type { Readable, Writable } from 'node:stream';
import { IscsiSession } from '../iscsi/initiator';
import { formatHostPort, parseLunUrl } from '../iscsi/url';
import { LogicalUnit } from '../scsi/lun';
import { ConfigError, IscsiNbdError, RequestError } from '../errors';
import { rootLogger } from '../log';
import { authFor, SecretOptions } from '../credentials';
import type { DigestPref } from '../config';
import { HEAD_BYTES, VHD_FOOTER_BYTES } from './format';
import { withContext } from '../util/context';

// The two ends of a copy: an image file (or block device), a LUN over iSCSI,
// or a stream: `-` (stdin as a source, stdout as a destination), or any path
// that is not a regular file or a block device (a pipe, a FIFO, /dev/stdin,
// <(...), /dev/null, a character device). A stream has no size and no
// offsets: it is read or written front to back, once.

/** A byte range and whether it is known to read back as zeros without reading it. */
export interface Extent {
  offset: number;
  length: number;
  zero: boolean;
}

/** A side with a size that can be read or written anywhere. */
export interface Side {
  readonly label: string;
  readonly size: number;
  /** Alignment the side needs for I/O (a LUN's block size; 1 for files). */
  readonly blockSize: number;
  /** Extents covering [offset, offset+length). */
  extents(offset: number, length: number): Promise<Extent[]>;
  read(offset: number, length: number, into: Buffer): Promise<void>;
  write(offset: number, data: Buffer): Promise<void>;
  /** Make the range read back as zeros (a hole, UNMAP or WRITE SAME). */
  zero(offset: number, length: number): Promise<void>;
  /** Make what was written durable (fsync, SYNCHRONIZE CACHE). */
  finish(): Promise<void>;
  /** The copy failed: wake whatever waits inside the side (a stream writer waiting for its turn). */
  abort?(err: unknown): void;
  close(): Promise<void>;
}

export const isUrl = (s: string): boolean => /^iscsi:\/\//i.test(s);
/** `-`: stdin as the source, stdout as the destination (like dd and nbdcopy). */
export const isStream = (s: string): boolean => s === '-';

/**
 * What a local path names, without opening it (opening a FIFO waits for its
 * other end): `file` (a regular file, or a name to create), `block` (a block
 * device: a size, any offset), or `stream` (anything else: no size, front to back).
 */
export type PathKind = 'file' | 'block' | 'stream';

export function pathKind(p: string): PathKind {
  if (isStream(p)) return 'stream';
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    return 'file'; // missing (a destination to create) or unreadable: opening it says why
  }
  if (st.isDirectory()) throw new ConfigError('ECONFIG', `${p} is a directory`);
  if (st.isBlockDevice()) return 'block';
  return st.isFile() ? 'file' : 'stream';
}

/**
 * Open a local source: a FileSide for a regular file or block device, a
 * StreamSource for anything else (read front to back until its end).
 */
export async function openLocalSource(p: string): Promise<FileSide | StreamSource> {
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(p, 'r');
  } catch (err) {
    throw new ConfigError('ECONFIG', `cannot open ${p}: ${(err as Error).message}`);
  }
  const st = await fh.stat();
  if (st.isDirectory()) {
    await fh.close();
    throw new ConfigError('ECONFIG', `${p} is a directory`);
  }
  if (st.isFile() || st.isBlockDevice()) return FileSide.fromHandle(p, fh, st);
  if (tty.isatty(fh.fd)) {
    await fh.close();
    throw new ConfigError('ECONFIG', `SRC ${p} is a terminal: pipe or redirect an image into it`);
  }
  return new StreamSource(fh.createReadStream({ highWaterMark: 1 << 20 }), p);
}

/**
 * Open a local destination of `size` bytes: a FileSide for a regular file
 * (created or truncated to `size`) or a block device, a StreamSink for
 * anything else (a pipe, a FIFO, /dev/null, >(...)): never truncated,
 * written front to back, zeros written as zeros.
 */
export async function openLocalDest(p: string, size: number): Promise<FileSide | StreamSink> {
  if (pathKind(p) !== 'stream') return FileSide.openDest(p, size);
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(p, 'w');
  } catch (err) {
    throw new ConfigError('ECONFIG', `cannot open ${p}: ${(err as Error).message}`);
  }
  if (tty.isatty(fh.fd)) {
    await fh.close();
    throw new ConfigError('ECONFIG', `DST ${p} is a terminal: redirect it to a file or a pipe`);
  }
  return new StreamSink(fh.createWriteStream({ highWaterMark: 1 << 20 }), size, p, true);
}

export class FileSide implements Side {
  readonly blockSize = 1;
  private constructor(readonly label: string, private readonly fh: fs.promises.FileHandle, public size: number, private readonly sparseOut: boolean) {}

  /** A regular file or block device opened for reading (see openLocalSource for other paths). */
  static async fromHandle(p: string, fh: fs.promises.FileHandle, st: fs.Stats): Promise<FileSide> {
    const size = st.isBlockDevice() ? await blockDeviceSize(fh) : st.size;
    return new FileSide(p, fh, size, false);
  }

  /** A regular file is created or truncated to `size` (so all of it is a hole to begin with). */
  static async openDest(p: string, size: number): Promise<FileSide> {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(p);
    } catch {
      st = undefined;
    }
    if (st?.isBlockDevice()) {
      const fh = await fs.promises.open(p, 'r+');
      const devSize = await blockDeviceSize(fh);
      if (devSize < size) {
        await fh.close();
        throw new RequestError('ENOSPC', `${p} has ${devSize} bytes, less than the ${size} bytes to copy`);
      }
      return new FileSide(p, fh, devSize, false);
    }
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(p, 'w+');
    } catch (err) {
      throw new ConfigError('ECONFIG', `cannot create ${p}: ${(err as Error).message}`);
    }
    await fh.truncate(size);
    return new FileSide(p, fh, size, true);
  }

  /** The first bytes, and the last 512 (where a fixed VHD keeps its footer), for format detection. */
  async probe(): Promise<{ head: Buffer; tail?: Buffer }> {
    const head = Buffer.alloc(Math.min(HEAD_BYTES, this.size));
    await this.read(0, head.length, head);
    let tail: Buffer | undefined;
    if (this.size >= 2 * VHD_FOOTER_BYTES) {
      tail = Buffer.alloc(VHD_FOOTER_BYTES);
      await this.read(this.size - VHD_FOOTER_BYTES, VHD_FOOTER_BYTES, tail);
    }
    return { head, tail };
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, zero: false }];
  }

  /** Exactly [offset, offset+length), inside the size the side had when it was opened. */
  async read(offset: number, length: number, into: Buffer): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(into, done, length - done, offset + done);
      if (bytesRead === 0) {
        // Callers never read past `size`: the file shrank while it was being copied.
        throw new IscsiNbdError('EIO', `${this.label} ended at byte ${offset + done}, before the ${this.size} bytes it had when the copy started: it changed during the copy`);
      }
      done += bytesRead;
    }
  }

  async write(offset: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  private zeroBuf?: Buffer;
  async zero(offset: number, length: number): Promise<void> {
    if (this.sparseOut) return; // freshly truncated: already a hole
    if (!this.zeroBuf) this.zeroBuf = Buffer.alloc(1 << 20);
    for (let pos = 0; pos < length; pos += this.zeroBuf.length) {
      await this.write(offset + pos, this.zeroBuf.subarray(0, Math.min(this.zeroBuf.length, length - pos)));
    }
  }

  async finish(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

async function blockDeviceSize(fh: fs.promises.FileHandle): Promise<number> {
  // No BLKGETSIZE64 from node: find the end by reading.
  let lo = 0;
  let hi = 1;
  const b = Buffer.alloc(1);
  const readable = async (pos: number): Promise<boolean> => (await fh.read(b, 0, 1, pos)).bytesRead === 1;
  while (await readable(hi - 1)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await readable(mid - 1)) lo = mid;
    else hi = mid;
  }
  return lo;
}

export interface LunSideOptions {
  initiatorName: string;
  digest?: DigestPref;
  secrets?: SecretOptions;
}

export class LunSide implements Side {
  readonly label: string;
  private constructor(private readonly session: IscsiSession, private readonly lun: LogicalUnit, label: string) {
    this.label = label;
  }

  static async open(url: string, o: LunSideOptions): Promise<LunSide> {
    const u = parseLunUrl(url);
    if (!u.target) throw new ConfigError('EBADURL', `${u.redacted()} names no target (want iscsi://host/<iqn>/<lun>)`);
    const label = u.redacted();
    const session = new IscsiSession({
      portal: { host: u.host, port: u.port },
      targetName: u.target,
      initiatorName: o.initiatorName,
      auth: authFor(u, o.secrets ?? {}),
      digest: o.digest ?? 'prefer-none',
      reconnect: true,
      timeouts: { replacementMs: 60_000 },
      log: rootLogger().child({ session: label }),
    });
    try {
      await session.connect();
    } catch (err) {
      session.close();
      if ((err as IscsiNbdError).code === 'EPROTO') {
        // An HTTP server, an SSH daemon...: its answer to our Login Request does not parse as iSCSI.
        throw new IscsiNbdError('EPROTO', `${label}: cannot log in: ${formatHostPort(u.host, u.port)} is not an iSCSI target (it answered our login with something else: ${(err as Error).message})`, { cause: err });
      }
      throw withContext(err, `${label}: cannot log in`);
    }
    const lun = new LogicalUnit(session, u.lun ?? 0, { log: rootLogger().child({ url: label }) });
    try {
      await lun.open();
    } catch (err) {
      await session.logout().catch(() => undefined);
      session.close();
      throw withContext(err, `${label}`);
    }
    return new LunSide(session, lun, label);
  }

  get size(): number {
    return Number(this.lun.info.sizeBytes);
  }

  get blockSize(): number {
    return this.lun.info.blockSize;
  }

  get info() {
    return this.lun.info;
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const i = this.lun.info;
    // A deallocated extent is only known to read as zeros with LBPRZ.
    if (!i.capabilities.getLbaStatus || !i.provisioning.lbprz) return [{ offset, length, zero: false }];
    const out: Extent[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const before = at;
      const ex = await this.lun.lbaStatus(BigInt(at), BigInt(end - at));
      for (const e of ex) {
        const o = Number(e.offset);
        const l = Math.min(Number(e.length), end - o);
        if (l <= 0) continue;
        out.push({ offset: o, length: l, zero: e.state !== 'mapped' });
        at = o + l;
      }
      if (at <= before) break; // no progress: read the rest
    }
    if (at < end) out.push({ offset: at, length: end - at, zero: false });
    return out;
  }

  async read(offset: number, length: number, into: Buffer): Promise<void> {
    await this.lun.read(BigInt(offset), length, into);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.lun.write(BigInt(offset), data);
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.lun.writeZeroes(BigInt(offset), BigInt(length), { unmap: true });
  }

  async finish(): Promise<void> {
    await this.lun.flush();
  }

  async close(): Promise<void> {
    try {
      if (this.session.state === 'logged-in') await this.session.logout();
    } catch {
      // the session goes away anyway
    } finally {
      this.session.close();
    }
  }
}

/**
 * stdin as a source: no size, read front to back. Data is taken in flowing
 * mode and paused above a high-water mark, so a reader asking for exact
 * chunk sizes never holds more than a few MiB.
 */
export class StreamSource {
  private readonly pending: Buffer[] = [];
  private pendingBytes = 0;
  private ended = false;
  private error: Error | undefined;
  private wake: (() => void) | undefined;
  private readonly highWater: number;

  constructor(private readonly stream: Readable, readonly label = 'stdin', highWater = 8 << 20) {
    this.highWater = highWater;
    stream.on('data', this.onData);
    stream.once('end', this.onEnd);
    stream.once('error', this.onError);
  }

  private readonly onData = (b: Buffer | string): void => {
    const buf = typeof b === 'string' ? Buffer.from(b) : b;
    this.pending.push(buf);
    this.pendingBytes += buf.length;
    if (this.pendingBytes >= this.highWater) this.stream.pause();
    this.poke();
  };

  private readonly onEnd = (): void => {
    this.ended = true;
    this.poke();
  };

  private readonly onError = (err: Error): void => {
    this.error = err;
    this.poke();
  };

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /**
   * Fill into[0, length) from the stream; fewer bytes only at the end of
   * the stream, or when `signal` is aborted (then the count is meaningless).
   */
  async readFull(into: Buffer, length: number, signal?: AbortSignal): Promise<number> {
    let got = 0;
    const onAbort = (): void => this.poke();
    signal?.addEventListener('abort', onAbort);
    try {
      while (got < length && !signal?.aborted) {
        if (this.pending.length > 0) {
          const head = this.pending[0];
          const n = Math.min(head.length, length - got);
          head.copy(into, got, 0, n);
          got += n;
          this.pendingBytes -= n;
          if (n === head.length) this.pending.shift();
          else this.pending[0] = head.subarray(n);
          continue;
        }
        if (this.error) throw new IscsiNbdError('EIO', `reading ${this.label}: ${this.error.message}`, { cause: this.error });
        if (this.ended) break;
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          if (this.stream.isPaused()) this.stream.resume();
        });
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    if (this.pendingBytes < this.highWater && this.stream.isPaused() && !this.ended) this.stream.resume();
    return got;
  }

  /** The first `length` bytes (fewer if the stream is shorter), left in place for readFull. */
  async peek(length: number): Promise<Buffer> {
    const buf = Buffer.alloc(length);
    const n = await this.readFull(buf, length);
    const head = buf.subarray(0, n);
    if (n > 0) {
      this.pending.unshift(Buffer.from(head));
      this.pendingBytes += n;
    }
    return head;
  }

  async close(): Promise<void> {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('error', this.onError);
    this.stream.on('error', () => undefined);
    // Not at its end (an error, an interruption): let go of it, or the process stays alive for it.
    if (!this.ended) this.stream.destroy();
    else this.stream.pause();
  }
}

/**
 * A stream as a destination (stdout, a pipe, a FIFO, /dev/null): bytes must
 * leave in order, so each write waits for its turn (the bytes before it).
 * Zeros are written as zeros: a stream has no holes. An `owned` stream (one
 * this side opened) is ended by finish(), so its reader sees the end.
 */
export class StreamSink implements Side {
  readonly blockSize = 1;
  private pos = 0;
  private failed: unknown;
  private readonly waiters = new Map<number, { resolve: () => void; reject: (e: unknown) => void }>();
  private static readonly ZEROS = Buffer.alloc(1 << 20);

  constructor(private readonly out: Writable, readonly size: number, readonly label = 'stdout', private readonly owned = false) {
    out.on('error', this.onError);
  }

  private readonly onError = (err: Error): void => {
    this.abort(new IscsiNbdError('EIO', `writing to ${this.label}: ${err.message}`, { cause: err }));
  };

  abort(err: unknown): void {
    if (this.failed === undefined) this.failed = err ?? new Error('aborted');
    for (const w of this.waiters.values()) w.reject(this.failed);
    this.waiters.clear();
  }

  private async turn(offset: number): Promise<void> {
    if (this.failed !== undefined) throw this.failed;
    if (this.pos === offset) return;
    if (offset < this.pos) throw new Error(`${this.label}: write at ${offset} after ${this.pos} (a stream only goes forward)`);
    await new Promise<void>((resolve, reject) => this.waiters.set(offset, { resolve, reject }));
  }

  private advance(n: number): void {
    this.pos += n;
    const w = this.waiters.get(this.pos);
    if (w) {
      this.waiters.delete(this.pos);
      w.resolve();
    }
  }

  private put(data: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      // The callback runs once the bytes are handed to the OS: the caller may reuse its buffer.
      this.out.write(data, (err) => {
        if (err) reject(new IscsiNbdError('EIO', `writing to ${this.label}: ${err.message}`, { cause: err }));
        else if (this.failed !== undefined) reject(this.failed);
        else resolve();
      });
    });
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, zero: false }];
  }

  async read(): Promise<void> {
    throw new ConfigError('ECONFIG', `${this.label} is a stream: it cannot be read back`);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.turn(offset);
    await this.put(data);
    this.advance(data.length);
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.turn(offset);
    for (let done = 0; done < length; ) {
      const n = Math.min(StreamSink.ZEROS.length, length - done);
      await this.put(StreamSink.ZEROS.subarray(0, n));
      done += n;
    }
    this.advance(length);
  }

  async finish(): Promise<void> {
    if (this.failed !== undefined) throw this.failed;
    if (!this.owned || this.out.writableFinished) return;
    // Close our end: the reader sees its end of file, and a late write error still fails the copy.
    await new Promise<void>((resolve, reject) => {
      this.out.once('error', reject);
      this.out.end(() => resolve());
    });
    if (this.failed !== undefined) throw this.failed;
  }

  async close(): Promise<void> {
    this.out.off('error', this.onError);
    // A late EPIPE must not become an uncaught 'error'.
    this.out.on('error', () => undefined);
    if (this.owned && !this.out.writableFinished) this.out.destroy();
  }
}
