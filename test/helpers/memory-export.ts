// An in-memory, sparse Export for tests: 64 KiB chunks allocated on first
// write, real holes for block status, configurable flags and block sizes,
// fault injection and per-operation hooks (to control completion order).
import type { Export, ExportFlags, BlockSizes, Extent, ZeroOptions } from '../../src/bridge/export';
import { RequestError } from '../../src/errors';

export type MemoryOp = 'read' | 'write' | 'flush' | 'trim' | 'zero' | 'blockStatus' | 'cache';

export interface MemoryExportOptions {
  name?: string;
  description?: string;
  size?: bigint | number;
  flags?: Partial<ExportFlags>;
  blockSizes?: Partial<BlockSizes>;
  /** Whether a FAST_ZERO request can be honoured (else ENOTSUP). Default true. */
  fastZeroWorks?: boolean;
  /** Awaited before every operation (e.g. a gate promise to reorder completions). */
  before?: (op: MemoryOp, offset: bigint, length: number) => Promise<void> | void;
}

export const CHUNK = 64 * 1024;

export interface Fault {
  op: MemoryOp;
  error: Error;
  /** Only for requests touching [offset, offset+length) when given. */
  offset?: bigint;
  length?: number;
  /** How many times to fail; Infinity by default. */
  times?: number;
}

export class MemoryExport implements Export {
  readonly name: string;
  readonly description: string;
  readonly size: bigint;
  readonly flags: ExportFlags;
  readonly blockSizes: BlockSizes;
  fastZeroWorks: boolean;
  before?: MemoryExportOptions['before'];
  readonly chunks = new Map<number, Buffer>();
  readonly faults: Fault[] = [];
  readonly calls: Array<{ op: MemoryOp; offset: bigint; length: number; fua?: boolean; opts?: ZeroOptions }> = [];
  attached = 0;
  flushes = 0;

  constructor(o: MemoryExportOptions = {}) {
    this.name = o.name ?? 'mem';
    this.description = o.description ?? '';
    this.size = BigInt(o.size ?? 16 * 1024 * 1024);
    this.flags = {
      readOnly: false, flush: true, fua: true, trim: true, writeZeroes: true, fastZero: true,
      rotational: false, multiConn: true, cache: true, blockStatus: true, ...o.flags,
    };
    this.blockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024, ...o.blockSizes };
    this.fastZeroWorks = o.fastZeroWorks ?? true;
    this.before = o.before;
  }

  fail(f: Fault): void {
    this.faults.push(f);
  }

  attach(): void {
    this.attached++;
  }

  detach(): void {
    this.attached--;
  }

  private async enter(op: MemoryOp, offset: bigint, length: number): Promise<void> {
    if (this.before) await this.before(op, offset, length);
    for (let i = 0; i < this.faults.length; i++) {
      const f = this.faults[i];
      if (f.op !== op) continue;
      if (f.offset !== undefined) {
        const end = f.offset + BigInt(f.length ?? 1);
        if (offset >= end || offset + BigInt(length) <= f.offset) continue;
      }
      if (f.times !== undefined && --f.times <= 0) this.faults.splice(i, 1);
      throw f.error;
    }
  }

  async read(offset: bigint, length: number, into: Buffer): Promise<void> {
    this.calls.push({ op: 'read', offset, length });
    await this.enter('read', offset, length);
    this.copyOut(Number(offset), length, into);
  }

  async write(offset: bigint, data: Buffer, fua: boolean): Promise<void> {
    this.calls.push({ op: 'write', offset, length: data.length, fua });
    await this.enter('write', offset, data.length);
    this.copyIn(Number(offset), data);
  }

  async flush(): Promise<void> {
    this.calls.push({ op: 'flush', offset: 0n, length: 0 });
    await this.enter('flush', 0n, 0);
    this.flushes++;
  }

  async trim(offset: bigint, length: number, fua: boolean): Promise<void> {
    this.calls.push({ op: 'trim', offset, length, fua });
    await this.enter('trim', offset, length);
    this.punch(Number(offset), length);
  }

  async zero(offset: bigint, length: number, opts: ZeroOptions): Promise<void> {
    this.calls.push({ op: 'zero', offset, length, opts });
    if (opts.fastZero && !this.fastZeroWorks) throw new RequestError('ENOTSUP', 'fast zero not possible');
    await this.enter('zero', offset, length);
    if (opts.noHole) this.copyIn(Number(offset), Buffer.alloc(length));
    else this.punch(Number(offset), length);
  }

  async blockStatus(offset: bigint, length: number): Promise<Extent[]> {
    this.calls.push({ op: 'blockStatus', offset, length });
    await this.enter('blockStatus', offset, length);
    const out: Extent[] = [];
    let pos = Number(offset);
    const end = Math.min(Number(offset) + length, Number(this.size));
    while (pos < end) {
      const idx = Math.floor(pos / CHUNK);
      const n = Math.min(CHUNK - (pos % CHUNK), end - pos);
      const flags = this.chunks.has(idx) ? 0 : 3; // HOLE|ZERO
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += n;
      else out.push({ length: n, flags });
      pos += n;
    }
    return out;
  }

  async cache(offset: bigint, length: number): Promise<void> {
    this.calls.push({ op: 'cache', offset, length });
    await this.enter('cache', offset, length);
  }

  /** Synchronous helpers for tests. */
  peek(offset: number, length: number): Buffer {
    const b = Buffer.alloc(length);
    this.copyOut(offset, length, b);
    return b;
  }

  poke(offset: number, data: Buffer): void {
    this.copyIn(offset, data);
  }

  private copyOut(pos: number, length: number, out: Buffer): void {
    let done = 0;
    while (done < length) {
      const idx = Math.floor((pos + done) / CHUNK);
      const within = (pos + done) % CHUNK;
      const n = Math.min(CHUNK - within, length - done);
      const c = this.chunks.get(idx);
      if (c) c.copy(out, done, within, within + n);
      else out.fill(0, done, done + n);
      done += n;
    }
  }

  private copyIn(pos: number, data: Buffer): void {
    let done = 0;
    while (done < data.length) {
      const idx = Math.floor((pos + done) / CHUNK);
      const within = (pos + done) % CHUNK;
      const n = Math.min(CHUNK - within, data.length - done);
      let c = this.chunks.get(idx);
      if (!c) {
        c = Buffer.alloc(CHUNK);
        this.chunks.set(idx, c);
      }
      data.copy(c, within, done, done + n);
      done += n;
    }
  }

  /** Deallocate whole chunks in the range; zero the partial ones. */
  private punch(pos: number, length: number): void {
    let done = 0;
    while (done < length) {
      const idx = Math.floor((pos + done) / CHUNK);
      const within = (pos + done) % CHUNK;
      const n = Math.min(CHUNK - within, length - done);
      if (within === 0 && n === CHUNK) this.chunks.delete(idx);
      else this.chunks.get(idx)?.fill(0, within, within + n);
      done += n;
    }
  }
}

/** A registry over MemoryExports (the first is the default). */
export function memoryRegistry(...exps: MemoryExport[]): { get(n: string): MemoryExport | undefined; list(): MemoryExport[]; defaultName?: string } {
  return {
    get: (n: string) => exps.find((e) => e.name === n),
    list: () => exps,
  };
}
