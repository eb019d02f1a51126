// SCSI block device emulation (SPC-4 / SBC-3 subset) over a LunBackend.
// Nothing iSCSI here: a CDB and optional Data-Out in, status + sense +
// Data-In out. The transport trims Data-In to the initiator's expected
// length and computes residuals; `dataOutNeeded` tells it how many bytes a
// write-type command consumes.

import { aluaRefusal, type AluaPort } from './alua';
import { createHash } from 'node:crypto';
import { OP, SAI_GET_LBA_STATUS, SAI_READ_CAPACITY_16 } from '../scsi/cdb';
import { SK } from '../scsi/sense';
import { SAM_STAT_CHECK_CONDITION, SAM_STAT_GOOD } from '../scsi/transport';
import { encodeLun } from '../iscsi/pdu';
import type { LunBackend } from './backend';

export interface ScsiResult {
  status: number;
  /** Fixed-format sense data for CHECK CONDITION. */
  sense?: Buffer;
  /** Data-In the command produced (already limited by its allocation length). */
  data?: Buffer;
  /** Bytes of Data-Out the command needed (write-type commands). */
  dataOutNeeded?: number;
}

// Opcodes the emulation knows beyond ../scsi/cdb's OP table.
const READ_6 = 0x08;
const WRITE_6 = 0x0a;

export const VENDOR_ID = 'ISCSINBD';
export const PRODUCT_ID = 'EMBEDDED TARGET';
export const PRODUCT_REV = '0001';

/** Largest READ/WRITE in bytes (VPD B0 MAXIMUM TRANSFER LENGTH). */
export const MAX_TRANSFER_BYTES = 32 * 1024 * 1024;
/** WRITE SAME limit in blocks (VPD B0 MAXIMUM WRITE SAME LENGTH). */
export const MAX_WRITE_SAME_BLOCKS = 1 << 22;
export const MAX_UNMAP_DESCRIPTORS = 4095;
/** GET LBA STATUS looks at most this many bytes ahead per call. */
const LBA_STATUS_WINDOW = 1024 * 1024 * 1024;

/**
 * Fixed format sense data (SPC-4 4.5.3), 18 bytes:
 * 0: VALID 7 | 0x70 ; 2: SENSE KEY ; 3-6: INFORMATION ; 7: ADDITIONAL SENSE LENGTH (10)
 * 12: ASC ; 13: ASCQ ; 15-17: SKSV 7 + sense key specific.
 */
export function fixedSense(key: number, asc: number, ascq: number, info?: bigint, sks?: { cdb: boolean; field: number; bit?: number }): Buffer {
  const b = Buffer.alloc(18);
  b[0] = 0x70;
  b[2] = key & 0x0f;
  if (info !== undefined && info <= 0xffffffffn) {
    b[0] |= 0x80;
    b.writeUInt32BE(Number(info), 3);
  }
  b[7] = 10;
  b[12] = asc;
  b[13] = ascq;
  if (sks) {
    b[15] = 0x80 | (sks.cdb ? 0x40 : 0) | (sks.bit !== undefined ? 0x08 | (sks.bit & 7) : 0);
    b.writeUInt16BE(sks.field & 0xffff, 16);
  }
  return b;
}

export function checkCondition(key: number, asc: number, ascq: number, info?: bigint, sks?: { cdb: boolean; field: number; bit?: number }): ScsiResult {
  return { status: SAM_STAT_CHECK_CONDITION, sense: fixedSense(key, asc, ascq, info, sks) };
}

const GOOD: ScsiResult = { status: SAM_STAT_GOOD };
const invalidOpcode = (): ScsiResult => checkCondition(SK.ILLEGAL_REQUEST, 0x20, 0x00, undefined, { cdb: true, field: 0 });
const invalidField = (field: number, bit?: number): ScsiResult => checkCondition(SK.ILLEGAL_REQUEST, 0x24, 0x00, undefined, { cdb: true, field, bit });
const lbaOutOfRange = (): ScsiResult => checkCondition(SK.ILLEGAL_REQUEST, 0x21, 0x00);
const invalidParam = (field: number): ScsiResult => checkCondition(SK.ILLEGAL_REQUEST, 0x26, 0x00, undefined, { cdb: false, field });
const writeProtected = (): ScsiResult => checkCondition(SK.DATA_PROTECT, 0x27, 0x00);
const paramListLengthError = (): ScsiResult => checkCondition(SK.ILLEGAL_REQUEST, 0x1a, 0x00);
const luNotSupported = (): ScsiResult => checkCondition(SK.ILLEGAL_REQUEST, 0x25, 0x00);

function limit(data: Buffer, allocLen: number): ScsiResult {
  return { status: SAM_STAT_GOOD, data: data.length > allocLen ? data.subarray(0, allocLen) : data };
}

function padAscii(s: string, n: number): Buffer {
  return Buffer.from(s.padEnd(n, ' ').slice(0, n), 'ascii');
}

export interface DeviceIdentity {
  /** VPD 0x80 serial (ASCII, 16 hex digits). */
  serial: string;
  /** 8-byte NAA locally assigned designator (NAA type 3). */
  naa: Buffer;
}

/** Stable identity from a seed: same seed, same serial and NAA. */
export function identityFromSeed(seed: string): DeviceIdentity {
  const h = createHash('sha256').update(seed).digest();
  const naa = Buffer.from(h.subarray(0, 8));
  naa[0] = 0x30 | (naa[0] & 0x0f); // NAA 3: locally assigned
  return { serial: h.subarray(8, 16).toString('hex').toUpperCase(), naa };
}

export interface ScsiDeviceOptions {
  backend: LunBackend;
  /** Overrides backend.identitySeed. */
  identitySeed?: string;
  /** Consulted on every read: the first LBA of [lba, lba+blocks) that must fail with MEDIUM ERROR, if any. */
  mediumError?: (lba: bigint, blocks: number) => bigint | undefined;
  /** Implicit ALUA: the port this device is reached through and its group's state. */
  alua?: AluaPort;
}

/** One logical unit. */
const MAINTENANCE_IN = 0xa3;

export class ScsiDevice {
  readonly backend: LunBackend;
  readonly blockSize: number;
  blocks: bigint;
  /** Bumped by resize(): each connection that has not seen it gets CAPACITY DATA HAS CHANGED once. */
  capacityGeneration = 0;
  private identity: DeviceIdentity;
  private identitySeed: string;
  private generation = 0;
  mediumError?: (lba: bigint, blocks: number) => bigint | undefined;
  readonly alua?: AluaPort;

  constructor(opts: ScsiDeviceOptions) {
    this.backend = opts.backend;
    this.blockSize = opts.backend.blockSize;
    this.blocks = BigInt(opts.backend.size / opts.backend.blockSize);
    this.identitySeed = opts.identitySeed ?? opts.backend.identitySeed;
    this.identity = identityFromSeed(this.identitySeed);
    this.mediumError = opts.mediumError;
    this.alua = opts.alua;
  }

  get serial(): string {
    return this.identity.serial;
  }

  get naa(): Buffer {
    return this.identity.naa;
  }

  /** Another capacity, as an array admin grows or shrinks a volume. */
  async resize(bytes: number): Promise<void> {
    await this.backend.resize(bytes);
    this.blocks = BigInt(this.backend.size / this.blockSize);
    this.capacityGeneration++;
  }

  /** Become "another device": new serial and designator (not persisted). */
  swapIdentity(): void {
    this.generation++;
    this.identity = identityFromSeed(`${this.identitySeed}#${this.generation}`);
  }

  async execute(cdb: Buffer, dataOut?: Buffer): Promise<ScsiResult> {
    try {
      return await this.dispatch(cdb, dataOut ?? Buffer.alloc(0));
    } catch {
      // Backend failure: the host sees a medium/hardware error, not a dropped connection.
      return checkCondition(SK.MEDIUM_ERROR, 0x11, 0x00);
    }
  }

  private dispatch(cdb: Buffer, out: Buffer): Promise<ScsiResult> | ScsiResult {
    const refused = this.alua && aluaRefusal(this.alua, cdb);
    if (refused !== undefined) return checkCondition(SK.NOT_READY, 0x04, refused);
    switch (cdb[0]) {
      case MAINTENANCE_IN:
        if ((cdb[1] & 0x1f) === 0x0a && this.alua) return limit(this.alua.topology.report((cdb[1] & 0xe0) === 0x20), cdb.readUInt32BE(6));
        return invalidOpcode();
      case OP.TEST_UNIT_READY: return GOOD;
      case OP.REQUEST_SENSE: return requestSense(cdb);
      case OP.INQUIRY: return this.inquiry(cdb);
      case OP.MODE_SENSE_6: return this.modeSense(cdb, false);
      case OP.MODE_SENSE_10: return this.modeSense(cdb, true);
      case OP.READ_CAPACITY_10: return this.readCapacity10();
      case OP.SERVICE_ACTION_IN_16: {
        const sa = cdb[1] & 0x1f;
        if (sa === SAI_READ_CAPACITY_16) return this.readCapacity16(cdb);
        if (sa === SAI_GET_LBA_STATUS) return this.getLbaStatus(cdb);
        return invalidField(1, 4);
      }
      case READ_6: {
        const lba = BigInt(((cdb[1] & 0x1f) << 16) | cdb.readUInt16BE(2));
        return this.read(lba, cdb[4] === 0 ? 256 : cdb[4], false);
      }
      case OP.READ_10: return this.rw10or16(cdb, false, false, out);
      case OP.READ_16: return this.rw10or16(cdb, true, false, out);
      case WRITE_6: {
        const lba = BigInt(((cdb[1] & 0x1f) << 16) | cdb.readUInt16BE(2));
        return this.write(lba, cdb[4] === 0 ? 256 : cdb[4], false, out);
      }
      case OP.WRITE_10: return this.rw10or16(cdb, false, true, out);
      case OP.WRITE_16: return this.rw10or16(cdb, true, true, out);
      case OP.SYNCHRONIZE_CACHE_10:
      case OP.SYNCHRONIZE_CACHE_16: return this.synchronizeCache(cdb);
      case OP.WRITE_SAME_10: return this.writeSame(cdb, false, out);
      case OP.WRITE_SAME_16: return this.writeSame(cdb, true, out);
      case OP.UNMAP: return this.unmap(cdb, out);
      default: return invalidOpcode();
    }
  }

  // ------------------------------------------------------------ INQUIRY

  private inquiry(cdb: Buffer): ScsiResult {
    const evpd = (cdb[1] & 1) !== 0;
    const page = cdb[2];
    const alloc = cdb.readUInt16BE(3);
    if (cdb[1] & 0x02) return invalidField(1, 1); // CMDDT
    if (!evpd) {
      if (page !== 0) return invalidField(2);
      return limit(this.standardInquiry(), alloc);
    }
    const body = this.vpd(page);
    if (!body) return invalidField(2);
    const b = Buffer.alloc(4 + body.length);
    b[0] = 0x00; // PQ 0, PDT disk
    b[1] = page;
    b.writeUInt16BE(body.length, 2);
    body.copy(b, 4);
    return limit(b, alloc);
  }

  // Standard INQUIRY data (SPC-4 6.6.2): 0 PQ|PDT, 2 VERSION, 3 HISUP|RDF, 4 ADDITIONAL LENGTH,
  // 7 CMDQUE, 8-15 vendor, 16-31 product, 32-35 revision, 58-73 version descriptors.
  private standardInquiry(): Buffer {
    const b = Buffer.alloc(96);
    b[0] = 0x00;
    b[2] = 0x06; // SPC-4
    b[3] = 0x12; // HISUP, response data format 2
    b[4] = b.length - 5;
    if (this.alua) b[5] = 0x10; // TPGS 01: implicit ALUA
    b[7] = 0x02; // CMDQUE
    padAscii(VENDOR_ID, 8).copy(b, 8);
    padAscii(PRODUCT_ID, 16).copy(b, 16);
    padAscii(PRODUCT_REV, 4).copy(b, 32);
    // SAM-5, iSCSI, SPC-4, SBC-3
    [0x00a0, 0x0960, 0x0460, 0x04c0].forEach((v, i) => b.writeUInt16BE(v, 58 + 2 * i));
    return b;
  }

  private vpd(page: number): Buffer | undefined {
    switch (page) {
      case 0x00: return Buffer.from([0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
      case 0x80: return Buffer.from(this.identity.serial, 'ascii');
      case 0x83: return this.deviceIdentification();
      case 0xb0: return this.blockLimits();
      case 0xb1: {
        const b = Buffer.alloc(60);
        b.writeUInt16BE(1, 0); // non-rotating medium
        return b;
      }
      case 0xb2: {
        const b = Buffer.alloc(4);
        // LBPU, LBPWS, LBPWS10, LBPRZ=1 (bits 4-2 = 001)
        b[1] = 0x80 | 0x40 | 0x20 | 0x04;
        b[2] = 0x02; // thin provisioned
        return b;
      }
      default: return undefined;
    }
  }

  // Designation descriptors: 0 PROTOCOL ID|CODE SET, 1 PIV|ASSOC|TYPE, 3 LENGTH, 4.. designator.
  private deviceIdentification(): Buffer {
    const naa = this.identity.naa;
    const t10 = Buffer.concat([padAscii(VENDOR_ID, 8), Buffer.from(this.identity.serial, 'ascii')]);
    const parts = [
      Buffer.from([0x01, 0x03, 0x00, naa.length]), naa, // binary, LU, NAA
      Buffer.from([0x02, 0x01, 0x00, t10.length]), t10, // ASCII, LU, T10 vendor ID
    ];
    if (this.alua) {
      const u16 = (v: number): Buffer => Buffer.from([0, 0, v >> 8, v & 0xff]);
      // iSCSI, binary; PIV, target port: relative target port (4), target port group (5).
      parts.push(Buffer.from([0x51, 0x94, 0x00, 4]), u16(this.alua.relativePort), Buffer.from([0x51, 0x95, 0x00, 4]), u16(this.alua.group));
    }
    return Buffer.concat(parts);
  }

  // Block Limits (SBC-3 6.6.3), page length 0x3C, offsets relative to the page start.
  private blockLimits(): Buffer {
    const b = Buffer.alloc(60);
    const p = (o: number): number => o - 4;
    b[p(4)] = 0x01; // WSNZ: WRITE SAME with 0 blocks is not supported
    b.writeUInt16BE(Math.max(1, this.backend.granularity / this.blockSize), p(6));
    b.writeUInt32BE(MAX_TRANSFER_BYTES / this.blockSize, p(8));
    b.writeUInt32BE(Math.min(MAX_TRANSFER_BYTES, 1024 * 1024) / this.blockSize, p(12));
    b.writeUInt32BE(0xffffffff, p(20)); // MAX UNMAP LBA COUNT
    b.writeUInt32BE(MAX_UNMAP_DESCRIPTORS, p(24));
    b.writeUInt32BE(this.backend.granularity / this.blockSize, p(28));
    b.writeUInt32BE(0x80000000, p(32)); // UGAVALID, alignment 0
    b.writeBigUInt64BE(BigInt(MAX_WRITE_SAME_BLOCKS), p(36));
    return b;
  }

  // ------------------------------------------------------------ capacity

  private readCapacity10(): ScsiResult {
    const b = Buffer.alloc(8);
    const last = this.blocks - 1n;
    b.writeUInt32BE(last > 0xffffffffn ? 0xffffffff : Number(last), 0);
    b.writeUInt32BE(this.blockSize, 4);
    return { status: SAM_STAT_GOOD, data: b };
  }

  // 0-7 RETURNED LBA, 8-11 BLOCK LENGTH, 13 LBPPBE, 14 LBPME|LBPRZ|lowest aligned
  private readCapacity16(cdb: Buffer): ScsiResult {
    const alloc = cdb.readUInt32BE(10);
    const b = Buffer.alloc(32);
    b.writeBigUInt64BE(this.blocks - 1n, 0);
    b.writeUInt32BE(this.blockSize, 8);
    b[14] = 0x80 | 0x40;
    return limit(b, alloc);
  }

  // GET LBA STATUS (SBC-3 5.6): 2-9 STARTING LBA, 10-13 ALLOCATION LENGTH.
  // Reply: 0-3 PARAMETER DATA LENGTH, 8.. descriptors (LBA 8, blocks 4, status 1, 3 reserved).
  private async getLbaStatus(cdb: Buffer): Promise<ScsiResult> {
    const lba = cdb.readBigUInt64BE(2);
    const alloc = cdb.readUInt32BE(10);
    if (lba >= this.blocks) return lbaOutOfRange();
    if (alloc < 24) return limit(Buffer.alloc(0), 0); // room for nothing: SBC allows returning no descriptor
    const maxDesc = Math.floor((alloc - 8) / 16);
    const bs = this.blockSize;
    const start = Number(lba) * bs;
    const len = Math.min(this.backend.size - start, LBA_STATUS_WINDOW);
    const extents = await this.backend.mapping(start, len);
    const descs: Buffer[] = [];
    for (const e of extents) {
      if (descs.length >= maxDesc) break;
      let blocks = e.length / bs;
      let at = e.offset / bs;
      while (blocks > 0 && descs.length < maxDesc) {
        const n = Math.min(blocks, 0xffffffff);
        const d = Buffer.alloc(16);
        d.writeBigUInt64BE(BigInt(at), 0);
        d.writeUInt32BE(n, 8);
        d[12] = e.mapped ? 0 : 1;
        descs.push(d);
        blocks -= n;
        at += n;
      }
    }
    const head = Buffer.alloc(8);
    head.writeUInt32BE(4 + descs.length * 16, 0);
    return limit(Buffer.concat([head, ...descs]), alloc);
  }

  // ------------------------------------------------------------ MODE SENSE

  // MODE SENSE(6): 1 DBD 3, 2 PC 7-6 | PAGE CODE, 3 SUBPAGE, 4 ALLOC. (10): 1 LLBAA 4 | DBD 3, 7-8 ALLOC.
  private modeSense(cdb: Buffer, ten: boolean): ScsiResult {
    const dbd = (cdb[1] & 0x08) !== 0;
    const llbaa = ten && (cdb[1] & 0x10) !== 0;
    const pc = cdb[2] >> 6;
    const page = cdb[2] & 0x3f;
    const subpage = cdb[3];
    const alloc = ten ? cdb.readUInt16BE(7) : cdb[4];
    if (pc === 3) return checkCondition(SK.ILLEGAL_REQUEST, 0x39, 0x00); // saving parameters not supported
    if (subpage !== 0 && subpage !== 0xff) return invalidField(3);
    const pages: Buffer[] = [];
    const changeable = pc === 1;
    if (page === 0x08 || page === 0x3f) {
      // Caching page: 2 WCE 2 | RCD 0
      const p = Buffer.alloc(20);
      p[0] = 0x08;
      p[1] = 0x12;
      if (!changeable && this.backend.volatileCache) p[2] = 0x04;
      pages.push(p);
    }
    if (page === 0x0a || page === 0x3f) {
      // Control page: all defaults (descriptor sense off, QERR 0).
      const p = Buffer.alloc(12);
      p[0] = 0x0a;
      p[1] = 0x0a;
      pages.push(p);
    }
    if (pages.length === 0) return invalidField(2);
    let desc = Buffer.alloc(0);
    if (!dbd) {
      if (llbaa) {
        desc = Buffer.alloc(16);
        desc.writeBigUInt64BE(this.blocks, 0);
        desc.writeUInt32BE(this.blockSize, 12);
      } else {
        desc = Buffer.alloc(8);
        desc.writeUInt32BE(this.blocks > 0xffffffffn ? 0xffffffff : Number(this.blocks), 0);
        desc.writeUInt32BE(this.blockSize & 0xffffff, 4);
      }
    }
    // Device-specific parameter: WP 7, DPOFUA 4.
    const dsp = (this.backend.readOnly ? 0x80 : 0) | 0x10;
    const body = Buffer.concat(pages);
    let head: Buffer;
    if (ten) {
      head = Buffer.alloc(8);
      head.writeUInt16BE(6 + desc.length + body.length, 0);
      head[3] = dsp;
      if (llbaa && desc.length) head[4] = 0x01;
      head.writeUInt16BE(desc.length, 6);
    } else {
      head = Buffer.alloc(4);
      head[0] = Math.min(255, 3 + desc.length + body.length);
      head[2] = dsp;
      head[3] = desc.length;
    }
    return limit(Buffer.concat([head, desc, body]), alloc);
  }

  // ------------------------------------------------------------ I/O

  private checkRange(lba: bigint, blocks: number): boolean {
    return lba + BigInt(blocks) <= this.blocks;
  }

  // (10): 1 RDPROTECT 7-5 | DPO 4 | FUA 3, 2-5 LBA, 7-8 LENGTH. (16): 2-9 LBA, 10-13 LENGTH.
  private rw10or16(cdb: Buffer, sixteen: boolean, write: boolean, out: Buffer): Promise<ScsiResult> | ScsiResult {
    if (cdb[1] & 0xe0) return invalidField(1, 7); // protection information not supported
    const lba = sixteen ? cdb.readBigUInt64BE(2) : BigInt(cdb.readUInt32BE(2));
    const blocks = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
    const fua = (cdb[1] & 0x08) !== 0;
    return write ? this.write(lba, blocks, fua, out) : this.read(lba, blocks, fua);
  }

  private async read(lba: bigint, blocks: number, _fua: boolean): Promise<ScsiResult> {
    if (!this.checkRange(lba, blocks)) return lbaOutOfRange();
    if (blocks * this.blockSize > MAX_TRANSFER_BYTES) return invalidField(sixteenLenField(blocks));
    if (blocks === 0) return GOOD;
    const bad = this.mediumError?.(lba, blocks);
    if (bad !== undefined) return checkCondition(SK.MEDIUM_ERROR, 0x11, 0x00, bad);
    const data = await this.backend.read(Number(lba) * this.blockSize, blocks * this.blockSize);
    return { status: SAM_STAT_GOOD, data };
  }

  private async write(lba: bigint, blocks: number, fua: boolean, out: Buffer): Promise<ScsiResult> {
    const need = blocks * this.blockSize;
    if (this.backend.readOnly) return { ...writeProtected(), dataOutNeeded: need };
    if (!this.checkRange(lba, blocks)) return { ...lbaOutOfRange(), dataOutNeeded: need };
    if (need > MAX_TRANSFER_BYTES) return { ...invalidField(sixteenLenField(blocks)), dataOutNeeded: need };
    // Expected transfer length shorter than the CDB's (overflow): write the whole blocks that
    // came (as LIO does); a partial block is an INVALID FIELD IN INFORMATION UNIT.
    const whole = Math.min(blocks, Math.floor(out.length / this.blockSize));
    if (whole > 0) await this.backend.write(Number(lba) * this.blockSize, out.subarray(0, whole * this.blockSize), fua);
    if (whole < blocks && out.length % this.blockSize !== 0) {
      return { ...checkCondition(SK.ILLEGAL_REQUEST, 0x0e, 0x03), dataOutNeeded: need };
    }
    return { status: SAM_STAT_GOOD, dataOutNeeded: need };
  }

  // SYNCHRONIZE CACHE (10): 2-5 LBA, 7-8 blocks; (16): 2-9 LBA, 10-13 blocks.
  private async synchronizeCache(cdb: Buffer): Promise<ScsiResult> {
    const sixteen = cdb[0] === OP.SYNCHRONIZE_CACHE_16;
    const lba = sixteen ? cdb.readBigUInt64BE(2) : BigInt(cdb.readUInt32BE(2));
    const blocks = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
    if (lba > this.blocks || (blocks !== 0 && !this.checkRange(lba, blocks))) return lbaOutOfRange();
    await this.backend.flush();
    return GOOD;
  }

  // WRITE SAME (10): 1 WRPROTECT 7-5 | ANCHOR 4 | UNMAP 3 | PBDATA 2 | LBDATA 1, 2-5 LBA, 7-8 blocks.
  // (16): same byte 1 plus NDOB 0, 2-9 LBA, 10-13 blocks.
  private async writeSame(cdb: Buffer, sixteen: boolean, out: Buffer): Promise<ScsiResult> {
    const f = cdb[1];
    const ndob = sixteen && (f & 0x01) !== 0;
    const need = ndob ? 0 : this.blockSize;
    const fail = (r: ScsiResult): ScsiResult => ({ ...r, dataOutNeeded: need });
    if (f & 0xe0) return fail(invalidField(1, 7));
    if (f & 0x06) return fail(invalidField(1, (f & 0x04) ? 2 : 1)); // PBDATA/LBDATA
    if (f & 0x10) return fail(invalidField(1, 4)); // ANCHOR: ANC_SUP is 0
    const lba = sixteen ? cdb.readBigUInt64BE(2) : BigInt(cdb.readUInt32BE(2));
    const blocks = sixteen ? cdb.readUInt32BE(10) : cdb.readUInt16BE(7);
    if (this.backend.readOnly) return fail(writeProtected());
    if (blocks === 0) return fail(invalidField(sixteen ? 10 : 7)); // WSNZ
    if (blocks > MAX_WRITE_SAME_BLOCKS) return fail(invalidField(sixteen ? 10 : 7));
    if (!this.checkRange(lba, blocks)) return fail(lbaOutOfRange());
    if (out.length < need) return fail(checkCondition(SK.ILLEGAL_REQUEST, 0x4b, 0x00));
    const pattern = ndob ? Buffer.alloc(this.blockSize) : out.subarray(0, this.blockSize);
    const off = Number(lba) * this.blockSize;
    const len = blocks * this.blockSize;
    const zero = pattern.every((x) => x === 0);
    if ((f & 0x08) && zero) {
      // UNMAP with a zero pattern: deallocate (LBPRZ: reads return zeros).
      await this.backend.discard(off, len);
      return { status: SAM_STAT_GOOD, dataOutNeeded: need };
    }
    const per = Math.max(1, Math.floor((1024 * 1024) / this.blockSize));
    const chunk = Buffer.allocUnsafe(Math.min(blocks, per) * this.blockSize);
    for (let i = 0; i < chunk.length; i += this.blockSize) pattern.copy(chunk, i);
    for (let o = 0; o < len; o += chunk.length) {
      await this.backend.write(off + o, chunk.subarray(0, Math.min(chunk.length, len - o)));
    }
    return { status: SAM_STAT_GOOD, dataOutNeeded: need };
  }

  // UNMAP: CDB 1 ANCHOR 0, 7-8 PARAMETER LIST LENGTH. List: 0-1 DATA LENGTH, 2-3 BLOCK DESCRIPTOR
  // DATA LENGTH, 8.. descriptors (0-7 LBA, 8-11 blocks, 12-15 reserved).
  private async unmap(cdb: Buffer, out: Buffer): Promise<ScsiResult> {
    const plen = cdb.readUInt16BE(7);
    const fail = (r: ScsiResult): ScsiResult => ({ ...r, dataOutNeeded: plen });
    if (cdb[1] & 0x01) return fail(invalidField(1, 0));
    if (this.backend.readOnly) return fail(writeProtected());
    if (plen === 0) return { status: SAM_STAT_GOOD, dataOutNeeded: 0 };
    if (plen < 8 || out.length < plen) return fail(paramListLengthError());
    const p = out.subarray(0, plen);
    const bdl = p.readUInt16BE(2);
    if (bdl % 16 !== 0 || 8 + bdl > plen) return fail(invalidParam(2));
    const n = bdl / 16;
    if (n > MAX_UNMAP_DESCRIPTORS) return fail(invalidParam(2));
    const ranges: [bigint, number][] = [];
    for (let i = 0; i < n; i++) {
      const o = 8 + 16 * i;
      const lba = p.readBigUInt64BE(o);
      const blocks = p.readUInt32BE(o + 8);
      if (!this.checkRange(lba, blocks)) return fail(lbaOutOfRange());
      ranges.push([lba, blocks]);
    }
    for (const [lba, blocks] of ranges) {
      if (blocks > 0) await this.backend.discard(Number(lba) * this.blockSize, blocks * this.blockSize);
    }
    return { status: SAM_STAT_GOOD, dataOutNeeded: plen };
  }
}

function sixteenLenField(_blocks: number): number {
  return 7;
}

// REQUEST SENSE: 1 DESC 0, 4 ALLOCATION LENGTH. Errors are reported with the command
// (autosense), so there is never pending sense: NO SENSE.
function requestSense(cdb: Buffer): ScsiResult {
  const desc = (cdb[1] & 1) !== 0;
  const alloc = cdb[4];
  if (desc) return limit(Buffer.from([0x72, 0, 0, 0, 0, 0, 0, 0]), alloc);
  return limit(fixedSense(SK.NO_SENSE, 0, 0), alloc);
}

/** The LUNs of one target, plus what SPC asks of an I_T nexus for LUNs that do not exist. */
export class LogicalUnits {
  constructor(readonly devices: ReadonlyMap<number, ScsiDevice>) {}

  get(lun: number): ScsiDevice | undefined {
    return this.devices.get(lun);
  }

  async execute(lun: number, cdb: Buffer, dataOut?: Buffer): Promise<ScsiResult> {
    if (cdb[0] === OP.REPORT_LUNS) return this.reportLuns(cdb);
    const dev = this.devices.get(lun);
    if (dev) return dev.execute(cdb, dataOut);
    switch (cdb[0]) {
      case OP.INQUIRY: {
        if (cdb[1] & 1) return invalidField(2);
        const b = Buffer.alloc(36);
        b[0] = 0x7f; // PQ 3: no LU here
        b[2] = 0x06;
        b[3] = 0x12;
        b[4] = 31;
        padAscii(VENDOR_ID, 8).copy(b, 8);
        padAscii(PRODUCT_ID, 16).copy(b, 16);
        padAscii(PRODUCT_REV, 4).copy(b, 32);
        return limit(b, cdb.readUInt16BE(3));
      }
      case OP.REQUEST_SENSE:
        return limit(fixedSense(SK.ILLEGAL_REQUEST, 0x25, 0x00), cdb[4]);
      default:
        return luNotSupported();
    }
  }

  // REPORT LUNS: 2 SELECT REPORT, 6-9 ALLOCATION LENGTH. Reply: 0-3 LUN LIST LENGTH, 8.. 8-byte LUNs.
  private reportLuns(cdb: Buffer): ScsiResult {
    const select = cdb[2];
    const alloc = cdb.readUInt32BE(6);
    if (select > 2 && !(select >= 0x10 && select <= 0x12)) return invalidField(2);
    if (alloc < 16) return invalidField(6);
    const luns = [...this.devices.keys()].sort((a, b) => a - b);
    const b = Buffer.alloc(8 + 8 * luns.length);
    b.writeUInt32BE(8 * luns.length, 0);
    luns.forEach((l, i) => b.writeBigUInt64BE(encodeLun(l), 8 + 8 * i));
    return limit(b, alloc);
  }
}
