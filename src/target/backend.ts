// LUN backends for the embedded target: where the blocks live.
//
// MemoryBackend: a sparse Map of fixed-size chunks; a chunk absent from the
// map is deallocated and reads as zeros. Allocation is exact at chunk
// granularity.
//
// FileBackend: a sparse file, positional reads/writes on one fd. Holes are
// punched with fallocate(2) (PUNCH_HOLE | KEEP_SIZE) through koffi (punch.ts;
// Node has no fallocate); where that fails the range is overwritten with
// zeros and stays allocated. Node cannot reach lseek(SEEK_DATA/SEEK_HOLE), so
// the allocation state is kept in memory as a set of mapped granules (4 KiB,
// the usual file system block) updated on every write and punch, and saved
// beside the file (FILE.alloc) on flush and close. On open the sidecar is
// trusted only if it matches the file's size, inode and mtime; otherwise the
// map is rebuilt from the file system's real extents with `filefrag -v`
// (FIEMAP), or, if that fails, by scanning the file for non-zero granules.
// The sidecar is removed before the first change after a save, so a crash
// leaves no stale map behind.

import { execFile } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { ConfigError, IscsiNbdError } from '../errors';
import { punchHole, type PunchHole } from './punch';

export interface Extent {
  /** Byte offset. */
  offset: number;
  /** Byte length. */
  length: number;
  mapped: boolean;
}

export interface LunBackend {
  readonly kind: 'memory' | 'file';
  /** Logical block size: 512 or 4096. */
  readonly blockSize: number;
  /** Size in bytes (a multiple of blockSize); changes only through resize(). */
  readonly size: number;
  readonly readOnly: boolean;
  /** Unit of allocation tracking in bytes (a multiple of blockSize). */
  readonly granularity: number;
  /** Stable text the device derives its serial number and designators from. */
  readonly identitySeed: string;
  /** True when writes are cached and flush() makes them durable. */
  readonly volatileCache: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  /** fua: durable before resolving. */
  write(offset: number, data: Buffer, fua?: boolean): Promise<void>;
  flush(): Promise<void>;
  /** Deallocate; the range reads as zeros afterwards. */
  discard(offset: number, length: number): Promise<void>;
  /** Allocation state of [offset, offset+length), as consecutive extents covering it. */
  mapping(offset: number, length: number): Promise<Extent[]>;
  /** Grow or shrink the LUN (an array admin resizing a volume). */
  resize(size: number): Promise<void>;
  close(): Promise<void>;
}

export const BLOCK_SIZES: readonly number[] = [512, 4096];

function checkGeometry(size: number, blockSize: number): void {
  if (!BLOCK_SIZES.includes(blockSize)) throw new ConfigError('ECONFIG', `block size must be 512 or 4096, got ${blockSize}`);
  if (!Number.isSafeInteger(size) || size <= 0 || size % blockSize !== 0) {
    throw new ConfigError('ECONFIG', `LUN size ${size} must be a positive multiple of the block size ${blockSize}`);
  }
}

/** The sizes parseSize accepts, for messages. */
export const SIZE_FORMS = 'a number of bytes (4096), or a number with K, M, G or T, optionally followed by iB or B (512M, 1.5G, 2GiB, 10gb; any case, all powers of 1024)';

/**
 * Parse a size into bytes: "4096" (or "4096B") is bytes; "512M", "1.5G",
 * "2GiB", "10gb" are multiples of 1024: K, M, G, T in either case,
 * optionally followed by "iB" or "B" (any case). Anything else (an unknown
 * unit such as "12Q", a fraction of a byte, zero) is refused.
 */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?b)?|(b)?)$/i.exec(s.trim());
  if (!m) throw new ConfigError('ECONFIG', `bad size "${s}": use ${SIZE_FORMS}`);
  const unit = (m[2] ?? '').toLowerCase();
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[unit]!;
  if (unit === '' && m[1].includes('.')) throw new ConfigError('ECONFIG', `bad size "${s}": a number of bytes must be whole (or use ${SIZE_FORMS})`);
  const n = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(n) || n <= 0) throw new ConfigError('ECONFIG', `bad size "${s}": it must be more than 0 and at most 2^53 bytes`);
  return n;
}

// ------------------------------------------------------------ granule set

/**
 * A set of granule indexes, kept as sparse pages of bits (one page = 32768
 * granules = 128 MiB at 4 KiB), so a huge thin LUN costs nothing until used.
 */
export class GranuleSet {
  private static readonly PAGE_BITS = 32768;
  private pages = new Map<number, Uint8Array>();

  has(i: number): boolean {
    const p = this.pages.get(Math.floor(i / GranuleSet.PAGE_BITS));
    if (!p) return false;
    const b = i % GranuleSet.PAGE_BITS;
    return (p[b >> 3] & (1 << (b & 7))) !== 0;
  }

  setRange(start: number, end: number, on: boolean): void {
    for (let i = start; i < end; ) {
      const pi = Math.floor(i / GranuleSet.PAGE_BITS);
      const pageEnd = Math.min(end, (pi + 1) * GranuleSet.PAGE_BITS);
      let p = this.pages.get(pi);
      if (!p) {
        if (!on) {
          i = pageEnd;
          continue;
        }
        p = new Uint8Array(GranuleSet.PAGE_BITS / 8);
        this.pages.set(pi, p);
      }
      for (; i < pageEnd; i++) {
        const b = i % GranuleSet.PAGE_BITS;
        if (on) p[b >> 3] |= 1 << (b & 7);
        else p[b >> 3] &= ~(1 << (b & 7));
      }
      if (!on && p.every((x) => x === 0)) this.pages.delete(pi);
    }
  }

  /** Runs of [start, count) of set granules, ascending. */
  runs(): [number, number][] {
    const out: [number, number][] = [];
    for (const pi of [...this.pages.keys()].sort((a, b) => a - b)) {
      const p = this.pages.get(pi)!;
      for (let b = 0; b < GranuleSet.PAGE_BITS; b++) {
        if ((p[b >> 3] & (1 << (b & 7))) === 0) continue;
        const i = pi * GranuleSet.PAGE_BITS + b;
        const last = out[out.length - 1];
        if (last && last[0] + last[1] === i) last[1]++;
        else out.push([i, 1]);
      }
    }
    return out;
  }

  clear(): void {
    this.pages.clear();
  }
}

/** Extents over [offset, end) from a per-granule predicate, merged. */
function extentsFrom(offset: number, length: number, granule: number, mapped: (g: number) => boolean): Extent[] {
  const out: Extent[] = [];
  const end = offset + length;
  let o = offset;
  while (o < end) {
    const g = Math.floor(o / granule);
    const next = Math.min(end, (g + 1) * granule);
    const m = mapped(g);
    const last = out[out.length - 1];
    if (last && last.mapped === m) last.length += next - o;
    else out.push({ offset: o, length: next - o, mapped: m });
    o = next;
  }
  return out;
}

// ------------------------------------------------------------ range lock

interface Lock {
  start: number;
  end: number;
  exclusive: boolean;
  done: Promise<void>;
}

/** Shared/exclusive byte-range lock: a punch excludes I/O on its range. */
class RangeGate {
  private held = new Set<Lock>();

  async run<T>(start: number, end: number, exclusive: boolean, fn: () => Promise<T>): Promise<T> {
    for (;;) {
      const conflict = [...this.held].find((h) => h.start < end && start < h.end && (exclusive || h.exclusive));
      if (!conflict) break;
      await conflict.done;
    }
    let release!: () => void;
    const lock: Lock = { start, end, exclusive, done: new Promise<void>((r) => (release = r)) };
    this.held.add(lock);
    try {
      return await fn();
    } finally {
      this.held.delete(lock);
      release();
    }
  }
}

// ------------------------------------------------------------ memory

export interface MemoryBackendOptions {
  size: number;
  blockSize?: number;
  readOnly?: boolean;
  /** Chunk size in bytes (allocation granularity); 4096 by default. */
  chunkSize?: number;
  /** Seed for the LUN identity; random by default (a memory LUN lives as long as the process). */
  identitySeed?: string;
}

export class MemoryBackend implements LunBackend {
  readonly kind = 'memory' as const;
  readonly blockSize: number;
  size: number;
  readonly readOnly: boolean;
  readonly granularity: number;
  readonly identitySeed: string;
  readonly volatileCache = false;
  private readonly chunks = new Map<number, Buffer>();

  constructor(opts: MemoryBackendOptions) {
    this.blockSize = opts.blockSize ?? 512;
    checkGeometry(opts.size, this.blockSize);
    this.size = opts.size;
    this.readOnly = opts.readOnly ?? false;
    this.granularity = Math.max(opts.chunkSize ?? 4096, this.blockSize);
    if (this.granularity % this.blockSize !== 0) throw new ConfigError('ECONFIG', 'chunk size must be a multiple of the block size');
    this.identitySeed = opts.identitySeed ?? `memory:${process.pid}:${Date.now()}:${Math.random()}`;
  }

  async resize(size: number): Promise<void> {
    checkGeometry(size, this.blockSize);
    for (const k of [...this.chunks.keys()]) if (k * this.granularity >= size) this.chunks.delete(k);
    this.size = size;
  }

  /** Bytes currently allocated. */
  get allocatedBytes(): number {
    return this.chunks.size * this.granularity;
  }

  /** Visit [offset, offset+length) chunk by chunk: chunk index, offset in it, bytes, offset in the range. */
  private eachChunk(offset: number, length: number, visit: (ci: number, co: number, n: number, at: number) => void): void {
    const g = this.granularity;
    for (let o = offset; o < offset + length; ) {
      const ci = Math.floor(o / g);
      const co = o - ci * g;
      const n = Math.min(g - co, offset + length - o);
      visit(ci, co, n, o - offset);
      o += n;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    this.eachChunk(offset, length, (ci, co, n, at) => this.chunks.get(ci)?.copy(out, at, co, co + n));
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    const g = this.granularity;
    this.eachChunk(offset, data.length, (ci, co, n, at) => {
      let c = this.chunks.get(ci);
      if (!c) {
        c = Buffer.alloc(g);
        this.chunks.set(ci, c);
      }
      data.copy(c, co, at, at + n);
    });
  }

  async flush(): Promise<void> {
    /* nothing volatile */
  }

  async discard(offset: number, length: number): Promise<void> {
    const g = this.granularity;
    if (length / g > 4 * this.chunks.size + 16) {
      // A huge range over few chunks: visit the chunks, not the range.
      const end = offset + length;
      for (const ci of [...this.chunks.keys()]) {
        const s = ci * g;
        if (s + g <= offset || s >= end) continue;
        if (s >= offset && s + g <= end) this.chunks.delete(ci);
        else await this.discardSmall(Math.max(s, offset), Math.min(s + g, end) - Math.max(s, offset));
      }
      return;
    }
    await this.discardSmall(offset, length);
  }

  private async discardSmall(offset: number, length: number): Promise<void> {
    const g = this.granularity;
    this.eachChunk(offset, length, (ci, co, n) => {
      const c = this.chunks.get(ci);
      if (!c) return;
      if (n === g) this.chunks.delete(ci);
      else {
        c.fill(0, co, co + n);
        if (isZero(c)) this.chunks.delete(ci);
      }
    });
  }

  async mapping(offset: number, length: number): Promise<Extent[]> {
    return extentsFrom(offset, length, this.granularity, (i) => this.chunks.has(i));
  }

  async close(): Promise<void> {
    /* kept until garbage collected, so a server restart in-process can reuse it */
  }
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

// ------------------------------------------------------------ file

export interface FileBackendOptions {
  path: string;
  /** Size in bytes when the file is created; an existing file keeps its size. */
  size?: number;
  blockSize?: number;
  readOnly?: boolean;
  /** How holes are punched (default fallocate(2) through koffi); override for tests. */
  punchHole?: PunchHole;
  /** Spawned to rebuild the allocation map when the sidecar cannot be trusted; override for tests. */
  filefragBin?: string;
}

const FILE_GRANULE = 4096;
const SIDECAR_VERSION = 1;

interface Sidecar {
  version: number;
  size: number;
  granule: number;
  ino: number;
  mtimeMs: number;
  runs: [number, number][];
}

function run(bin: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: 30000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${bin} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

export class FileBackend implements LunBackend {
  readonly kind = 'file' as const;
  readonly granularity: number;
  readonly volatileCache = true;
  /** How the allocation map was obtained at open, for logs and tests. */
  allocationSource: 'created' | 'sidecar' | 'filefrag' | 'scan' = 'created';
  /** False once a punch failed and zeros were written instead. */
  punchSupported = true;
  /** Why the punch failed, when it did. */
  punchError: string | undefined;
  private readonly gate = new RangeGate();
  private readonly map = new GranuleSet();
  private sidecarValid = false;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    public size: number,
    readonly blockSize: number,
    readonly readOnly: boolean,
    readonly identitySeed: string,
    private readonly punch: PunchHole,
  ) {
    this.granularity = Math.max(FILE_GRANULE, blockSize);
  }

  get sidecarPath(): string {
    return `${this.path}.alloc`;
  }

  /** Open (or create with opts.size) a sparse backing file. */
  static async open(opts: FileBackendOptions): Promise<FileBackend> {
    const blockSize = opts.blockSize ?? 512;
    if (!BLOCK_SIZES.includes(blockSize)) throw new ConfigError('ECONFIG', `block size must be 512 or 4096, got ${blockSize}`);
    const readOnly = opts.readOnly ?? false;
    let fh: FileHandle;
    let created = false;
    try {
      fh = await fsp.open(opts.path, readOnly ? 'r' : 'r+');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || readOnly) {
        throw new ConfigError('ECONFIG', `cannot open LUN file ${opts.path}: ${(e as Error).message}`, { cause: e });
      }
      if (opts.size === undefined) throw new ConfigError('ECONFIG', `LUN file ${opts.path} does not exist and no size was given`);
      checkGeometry(opts.size, blockSize);
      fh = await fsp.open(opts.path, 'wx+');
      await fh.truncate(opts.size);
      created = true;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new ConfigError('ECONFIG', `LUN file ${opts.path} is not a regular file`);
      checkGeometry(st.size, blockSize);
      const real = await fsp.realpath(opts.path);
      const b = new FileBackend(real, fh, st.size, blockSize, readOnly, `file:${real}`, opts.punchHole ?? punchHole);
      if (!created) await b.loadAllocation(st.ino, st.mtimeMs, opts.filefragBin ?? 'filefrag');
      return b;
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e;
    }
  }

  private async loadAllocation(ino: number, mtimeMs: number, filefragBin: string): Promise<void> {
    try {
      const sc = JSON.parse(await fsp.readFile(this.sidecarPath, 'utf8')) as Sidecar;
      if (sc.version === SIDECAR_VERSION && sc.size === this.size && sc.granule === this.granularity && sc.ino === ino && sc.mtimeMs === mtimeMs) {
        for (const [s, n] of sc.runs) this.map.setRange(s, s + n, true);
        this.allocationSource = 'sidecar';
        this.sidecarValid = true;
        return;
      }
    } catch {
      // absent or unreadable: rebuild
    }
    try {
      await this.loadFromFilefrag(filefragBin);
      this.allocationSource = 'filefrag';
    } catch {
      await this.loadByScanning();
      this.allocationSource = 'scan';
    }
  }

  // filefrag -v -b4096 lists extents as
  //   " 0:        5..       7:    5947398..   5947399:      3:             last"
  // with the logical range (in 4096-byte units) first.
  private async loadFromFilefrag(bin: string): Promise<void> {
    const out = await run(bin, ['-v', `-b${this.granularity}`, this.path]);
    if (!/extents? found/.test(out)) throw new Error('unexpected filefrag output');
    this.map.clear();
    for (const line of out.split('\n')) {
      const m = /^\s*\d+:\s*(\d+)\.\.\s*(\d+):/.exec(line);
      if (m) this.map.setRange(Number(m[1]), Number(m[2]) + 1, true);
    }
  }

  private async loadByScanning(): Promise<void> {
    this.map.clear();
    const step = 1024 * 1024;
    const buf = Buffer.alloc(step);
    for (let o = 0; o < this.size; o += step) {
      const { bytesRead } = await this.fh.read(buf, 0, Math.min(step, this.size - o), o);
      for (let g = 0; g * this.granularity < bytesRead; g++) {
        if (!isZero(buf.subarray(g * this.granularity, Math.min(bytesRead, (g + 1) * this.granularity)))) {
          const gi = (o / this.granularity) + g;
          this.map.setRange(gi, gi + 1, true);
        }
      }
    }
  }

  /** Drop the saved map before the first change after a save (crash safety). */
  private async invalidateSidecar(): Promise<void> {
    if (!this.sidecarValid) return;
    this.sidecarValid = false;
    await fsp.unlink(this.sidecarPath).catch(() => undefined);
  }

  private async saveSidecar(): Promise<void> {
    if (this.readOnly) return;
    const st = await this.fh.stat();
    const sc: Sidecar = { version: SIDECAR_VERSION, size: this.size, granule: this.granularity, ino: st.ino, mtimeMs: st.mtimeMs, runs: this.map.runs() };
    const tmp = `${this.sidecarPath}.${process.pid}.tmp`;
    await fsp.writeFile(tmp, JSON.stringify(sc));
    await fsp.rename(tmp, this.sidecarPath);
    this.sidecarValid = true;
  }

  private ioError(op: string, e: unknown): IscsiNbdError {
    return new IscsiNbdError('EIO', `${op} on ${this.path}: ${(e as Error).message}`, { cause: e });
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return this.gate.run(offset, offset + length, false, async () => {
      const out = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await this.fh.read(out, done, length - done, offset + done);
        if (bytesRead === 0) {
          out.fill(0, done);
          break;
        }
        done += bytesRead;
      }
      return out;
    });
  }

  async write(offset: number, data: Buffer, fua = false): Promise<void> {
    await this.invalidateSidecar();
    await this.gate.run(offset, offset + data.length, true, async () => {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
      const g = this.granularity;
      this.map.setRange(Math.floor(offset / g), Math.ceil((offset + data.length) / g), true);
      if (fua) await this.fh.datasync();
    });
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.fh.datasync();
    if (!this.sidecarValid) await this.saveSidecar().catch(() => undefined);
  }

  async discard(offset: number, length: number): Promise<void> {
    if (length === 0) return;
    await this.invalidateSidecar();
    await this.gate.run(offset, offset + length, true, async () => {
      if (this.punchSupported) {
        try {
          await this.punch(this.fh.fd, offset, length);
        } catch (e) {
          this.punchSupported = false;
          this.punchError = (e as Error).message;
        }
      }
      const g = this.granularity;
      if (this.punchSupported) {
        // Whole granules inside the range are holes now; partial ones were zeroed but stay allocated.
        this.map.setRange(Math.ceil(offset / g), Math.floor((offset + length) / g), false);
        return;
      }
      const zeros = Buffer.alloc(Math.min(length, 1024 * 1024));
      for (let o = offset; o < offset + length; o += zeros.length) {
        const n = Math.min(zeros.length, offset + length - o);
        await this.fh.write(zeros, 0, n, o);
      }
    });
  }

  async mapping(offset: number, length: number): Promise<Extent[]> {
    return extentsFrom(offset, length, this.granularity, (i) => this.map.has(i));
  }

  async resize(size: number): Promise<void> {
    checkGeometry(size, this.blockSize);
    if (this.readOnly) throw new ConfigError('ECONFIG', `${this.path} is read-only`);
    await this.fh.truncate(size);
    const g = this.granularity;
    if (size < this.size) this.map.setRange(Math.floor(size / g), Math.ceil(this.size / g), false);
    this.size = size;
    this.sidecarValid = false;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.readOnly) {
        await this.fh.datasync().catch(() => undefined);
        if (!this.sidecarValid) await this.saveSidecar().catch(() => undefined);
      }
    } finally {
      await this.fh.close();
    }
  }
}
