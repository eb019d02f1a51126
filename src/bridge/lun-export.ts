import { EXTENT_HOLE, EXTENT_ZERO, MAX_REQUEST_BYTES as NBD_MAX_PAYLOAD, Export, ExportFlags, BlockSizes, Extent, ZeroOptions } from './export';
import { RangeLock } from './range-lock';
import type { LogicalUnit, LunInfo } from '../scsi/lun';
import { rootLogger, Logger } from '../log';
import { RequestError } from '../errors';


export interface LunExportOptions {
  name: string;
  description?: string;
  readOnly?: boolean;
  log?: Logger;
}

/** What LunExport needs of a logical unit; LogicalUnit provides it. */
export type BlockLun = Pick<LogicalUnit, 'read' | 'write' | 'flush' | 'unmap' | 'writeZeroes' | 'lbaStatus'> & { readonly info: LunInfo };

/**
 * An NBD export over one SCSI logical unit. Byte requests that are not
 * aligned to the LUN's logical block are served by read-modify-write under a
 * range lock; aligned ones go straight through as views of the NBD buffers.
 */
export class LunExport implements Export {
  readonly name: string;
  readonly description: string;
  /** Grows (grow()) when the LUN does; never shrinks, so what a client was told stays valid. */
  size: bigint;
  readonly flags: ExportFlags;
  readonly blockSizes: BlockSizes;
  readonly requestAlignment: number;
  private readonly bs: number;
  private readonly bsBig: bigint;
  private readonly locks = new RangeLock();
  private readonly log: Logger;

  /** The LUN grew: serve up to `bytes` from now on (new clients see it; a mapped device is told). */
  grow(bytes: bigint): void {
    if (bytes < this.size) throw new RangeError(`an export never shrinks (${this.size} -> ${bytes})`);
    this.size = bytes;
  }

  constructor(readonly lun: BlockLun, opts: LunExportOptions) {
    const info = lun.info;
    this.name = opts.name;
    this.bs = info.blockSize;
    this.bsBig = BigInt(info.blockSize);
    this.size = info.sizeBytes;
    this.log = (opts.log ?? rootLogger()).child({ export: opts.name });
    this.description = opts.description ?? `${info.vendor} ${info.product}`.trim();
    const caps = info.capabilities;
    const readOnly = Boolean(opts.readOnly) || info.writeProtect;
    // A read-only export offers no write-side features (as nbdkit and
    // qemu-nbd do): clients then do not plan trims or zeroing they cannot use.
    const writable = !readOnly;
    this.flags = {
      readOnly,
      // Always advertised: without SEND_FLUSH the kernel never flushes, and
      // SYNCHRONIZE CACHE is harmless on a LUN without a write cache.
      flush: true,
      fua: writable,
      trim: writable && caps.unmap,
      // Falls back to writing zero blocks when WRITE SAME is refused.
      writeZeroes: writable,
      fastZero: writable && caps.writeSame,
      rotational: info.rotational,
      // Every connection to this export reaches the same LUN (over a pool of
      // sessions to one target), and flush is SYNCHRONIZE CACHE on the target,
      // which covers writes completed on any connection. So a flush on one
      // connection makes writes acknowledged on all of them durable.
      multiConn: true,
      cache: true,
      blockStatus: info.provisioning.lbpme && caps.getLbaStatus,
    };
    const maxXfer = info.limits.maxTransferBytes > 0 ? info.limits.maxTransferBytes : NBD_MAX_PAYLOAD;
    const maximum = Math.max(this.bs, Math.min(NBD_MAX_PAYLOAD, maxXfer));
    const preferred = Math.min(maximum, Math.max(4096, info.limits.optimalGranularityBytes || 0, this.bs));
    this.blockSizes = { minimum: this.bs, preferred, maximum };
    // Sector-aligned requests are served even on 4 KiB-block LUNs (by
    // read-modify-write): the kernel ignores INFO_BLOCK_SIZE and sends 512.
    this.requestAlignment = Math.min(512, this.bs);
  }

  private alignDown(n: bigint): bigint {
    return n - (n % this.bsBig);
  }

  private alignUp(n: bigint): bigint {
    const r = n % this.bsBig;
    return r === 0n ? n : n + (this.bsBig - r);
  }

  private aligned(offset: bigint, length: number): boolean {
    return offset % this.bsBig === 0n && length % this.bs === 0;
  }

  read(offset: bigint, length: number, into: Buffer): Promise<void> {
    // The aligned case hands the LUN's own promise back, no extra promise per
    // request (it resolves to a view of `into`, which the contract ignores).
    if (length > 0 && this.aligned(offset, length)) return this.lun.read(offset, length, into) as Promise<unknown> as Promise<void>;
    return this.readUnaligned(offset, length, into);
  }

  private async readUnaligned(offset: bigint, length: number, into: Buffer): Promise<void> {
    if (length === 0) return;
    const start = this.alignDown(offset);
    const end = this.alignUp(offset + BigInt(length));
    const tmp = await this.lun.read(start, Number(end - start));
    const skip = Number(offset - start);
    tmp.copy(into, 0, skip, skip + length);
  }

  async write(offset: bigint, data: Buffer, fua: boolean): Promise<void> {
    const length = data.length;
    if (length === 0) return;
    const start = this.alignDown(offset);
    const end = this.alignUp(offset + BigInt(length));
    const release = await this.locks.acquire(start, end);
    try {
      if (this.aligned(offset, length)) {
        await this.writeThrough(offset, data, fua);
        return;
      }
      this.log.debug({ offset: offset.toString(), length }, 'unaligned write: read-modify-write');
      const buf = await this.readEdges(start, end, offset, length);
      data.copy(buf, Number(offset - start));
      await this.writeThrough(start, buf, fua);
    } finally {
      release();
    }
  }

  /**
   * A buffer for [start, end) whose partial first and last blocks hold the
   * device's current bytes (the middle is about to be overwritten).
   */
  private async readEdges(start: bigint, end: bigint, offset: bigint, length: number): Promise<Buffer> {
    const total = Number(end - start);
    const buf = Buffer.alloc(total);
    const bs = this.bs;
    const reads: Promise<unknown>[] = [];
    const headPartial = offset !== start;
    const tailPartial = offset + BigInt(length) !== end;
    if (headPartial) reads.push(this.lun.read(start, bs, buf.subarray(0, bs)));
    if (tailPartial && (!headPartial || total > bs)) reads.push(this.lun.read(end - this.bsBig, bs, buf.subarray(total - bs)));
    await Promise.all(reads);
    return buf;
  }

  private async writeThrough(offset: bigint, data: Buffer, fua: boolean): Promise<void> {
    const native = fua && this.lun.info.dpoFua;
    await this.lun.write(offset, data, { fua: native });
    if (fua && !native) await this.lun.flush();
  }

  async flush(): Promise<void> {
    await this.lun.flush();
  }

  async trim(offset: bigint, length: number, fua: boolean): Promise<void> {
    // Only whole blocks can be unmapped; trimming is advisory, so the
    // partial edges are simply left as they are.
    const start = this.alignUp(offset);
    const end = this.alignDown(offset + BigInt(length));
    if (end > start) {
      const release = await this.locks.acquire(start, end);
      try {
        await this.lun.unmap(start, Number(end - start));
      } finally {
        release();
      }
    }
    if (fua) await this.lun.flush();
  }

  async zero(offset: bigint, length: number, opts: ZeroOptions): Promise<void> {
    if (length === 0) return;
    const startOuter = this.alignDown(offset);
    const endOuter = this.alignUp(offset + BigInt(length));
    if (opts.fastZero && !this.aligned(offset, length)) {
      // A partial block cannot be zeroed without a read-modify-write, which
      // is not fast; refuse before touching anything (the client falls back).
      throw new RequestError('ENOTSUP', 'fast zero of a partial block is not possible');
    }
    const release = await this.locks.acquire(startOuter, endOuter);
    try {
      const startInner = this.alignUp(offset);
      const endInner = this.alignDown(offset + BigInt(length));
      const unmap = !opts.noHole;
      if (endInner > startInner) {
        await this.lun.writeZeroes(startInner, Number(endInner - startInner), { unmap, fast: opts.fastZero });
      }
      // Partial edge blocks: read-modify-write with zeros in the covered bytes.
      const edges: Array<[bigint, bigint]> = [];
      if (startInner > offset || endInner <= startInner) {
        const headEnd = endInner <= startInner ? offset + BigInt(length) : startInner;
        edges.push([offset, headEnd]);
      }
      if (endInner > startInner && endInner < offset + BigInt(length)) edges.push([endInner, offset + BigInt(length)]);
      for (const [from, to] of edges) {
        const bStart = this.alignDown(from);
        const bEnd = this.alignUp(to);
        const buf = await this.lun.read(bStart, Number(bEnd - bStart));
        buf.fill(0, Number(from - bStart), Number(to - bStart));
        await this.lun.write(bStart, buf, { fua: false });
      }
      if (opts.fua) await this.lun.flush();
    } finally {
      release();
    }
  }

  async blockStatus(offset: bigint, length: number): Promise<Extent[]> {
    if (!this.flags.blockStatus) return [{ length, flags: 0 }];
    const start = this.alignDown(offset);
    const end = this.alignUp(offset + BigInt(length));
    const lbprz = this.lun.info.provisioning.lbprz;
    const raw = await this.lun.lbaStatus(start, Number(end - start));
    const out: Extent[] = [];
    let pos = offset;
    const limit = offset + BigInt(length);
    for (const e of raw) {
      const eStart = e.offset < pos ? pos : e.offset;
      const eEnd = e.offset + e.length > limit ? limit : e.offset + e.length;
      if (eEnd <= eStart || eStart !== pos) {
        if (eStart > pos) break; // a gap: report only what is contiguous from the start
        continue;
      }
      const flags = e.state === 'mapped' ? 0 : EXTENT_HOLE | (lbprz ? EXTENT_ZERO : 0);
      let len = eEnd - eStart;
      while (len > 0n) {
        const piece = len > 0x7ffff000n ? 0x7ffff000n : len;
        const last = out[out.length - 1];
        if (last && last.flags === flags && last.length + Number(piece) <= 0xffffffff) last.length += Number(piece);
        else out.push({ length: Number(piece), flags });
        len -= piece;
      }
      pos = eEnd;
      if (pos >= limit) break;
    }
    if (out.length === 0) out.push({ length: Math.min(length, this.bs), flags: 0 });
    return out;
  }

  async cache(): Promise<void> {
    // Advisory: the target has its own cache and we keep none.
  }
}
