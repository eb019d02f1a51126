// Pure CDB builders (SPC-4 / SBC-3 layouts). Every function returns a fresh
// Buffer; LBAs are bigint, counts are numbers. Nothing here does I/O.

export const OP = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  INQUIRY: 0x12,
  MODE_SENSE_6: 0x1a,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  SYNCHRONIZE_CACHE_10: 0x35,
  WRITE_SAME_10: 0x41,
  UNMAP: 0x42,
  MODE_SENSE_10: 0x5a,
  READ_16: 0x88,
  WRITE_16: 0x8a,
  SYNCHRONIZE_CACHE_16: 0x91,
  WRITE_SAME_16: 0x93,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
  MAINTENANCE_IN: 0xa3,
} as const;

/** MAINTENANCE IN service action: REPORT TARGET PORT GROUPS (SPC-4 6.36). */
export const MI_REPORT_TARGET_PGS = 0x0a;

export const SAI_READ_CAPACITY_16 = 0x10;
export const SAI_GET_LBA_STATUS = 0x12;

export const MAX_LBA_32 = 0xffffffffn;
export const MAX_LBA_64 = 0xffffffffffffffffn;

/** Human name of a CDB's command, for logs and error messages. */
export function cdbName(cdb: Buffer): string {
  const op = cdb.length > 0 ? cdb[0] : -1;
  switch (op) {
    case OP.TEST_UNIT_READY: return 'TEST UNIT READY';
    case OP.REQUEST_SENSE: return 'REQUEST SENSE';
    case OP.INQUIRY: return cdb.length > 1 && (cdb[1] & 1) ? `INQUIRY VPD 0x${hex2(cdb[2] ?? 0)}` : 'INQUIRY';
    case OP.MODE_SENSE_6: return 'MODE SENSE(6)';
    case OP.MODE_SENSE_10: return 'MODE SENSE(10)';
    case OP.READ_CAPACITY_10: return 'READ CAPACITY(10)';
    case OP.READ_10: return 'READ(10)';
    case OP.WRITE_10: return 'WRITE(10)';
    case OP.SYNCHRONIZE_CACHE_10: return 'SYNCHRONIZE CACHE(10)';
    case OP.WRITE_SAME_10: return 'WRITE SAME(10)';
    case OP.UNMAP: return 'UNMAP';
    case OP.READ_16: return 'READ(16)';
    case OP.WRITE_16: return 'WRITE(16)';
    case OP.SYNCHRONIZE_CACHE_16: return 'SYNCHRONIZE CACHE(16)';
    case OP.WRITE_SAME_16: return 'WRITE SAME(16)';
    case OP.SERVICE_ACTION_IN_16: {
      const sa = (cdb[1] ?? 0) & 0x1f;
      if (sa === SAI_READ_CAPACITY_16) return 'READ CAPACITY(16)';
      if (sa === SAI_GET_LBA_STATUS) return 'GET LBA STATUS';
      return `SERVICE ACTION IN(16)/0x${hex2(sa)}`;
    }
    case OP.REPORT_LUNS: return 'REPORT LUNS';
    case OP.MAINTENANCE_IN:
      return ((cdb[1] ?? 0) & 0x1f) === MI_REPORT_TARGET_PGS ? 'REPORT TARGET PORT GROUPS' : `MAINTENANCE IN/0x${hex2((cdb[1] ?? 0) & 0x1f)}`;
    default: return `opcode 0x${hex2(op & 0xff)}`;
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}

function checkU(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${name} ${v} out of range 0..${max}`);
}

function checkLba(lba: bigint, max: bigint): void {
  if (lba < 0n || lba > max) throw new RangeError(`LBA ${lba} out of range 0..${max}`);
}

/** TEST UNIT READY: 6 bytes, all zero. */
export function testUnitReady(): Buffer {
  return Buffer.alloc(6);
}

/**
 * REQUEST SENSE(6)
 * byte 1 bit 0 DESC; byte 4 ALLOCATION LENGTH; byte 5 CONTROL.
 */
export function requestSense(allocLen = 252, desc = false): Buffer {
  checkU('allocation length', allocLen, 0xff);
  const b = Buffer.alloc(6);
  b[0] = OP.REQUEST_SENSE;
  b[1] = desc ? 1 : 0;
  b[4] = allocLen;
  return b;
}

/**
 * INQUIRY
 * byte 1 bit 0 EVPD; byte 2 PAGE CODE; bytes 3-4 ALLOCATION LENGTH (BE); byte 5 CONTROL.
 * `page` undefined asks for standard data.
 */
export function inquiry(allocLen = 255, page?: number): Buffer {
  checkU('allocation length', allocLen, 0xffff);
  const b = Buffer.alloc(6);
  b[0] = OP.INQUIRY;
  if (page !== undefined) {
    checkU('VPD page', page, 0xff);
    b[1] = 1;
    b[2] = page;
  }
  b.writeUInt16BE(allocLen, 3);
  return b;
}

/**
 * REPORT TARGET PORT GROUPS: MAINTENANCE IN, 12 bytes.
 * byte 1: PARAMETER DATA FORMAT 7-5 (001: extended header), SERVICE ACTION 4-0 (0x0A);
 * bytes 6-9 ALLOCATION LENGTH (BE); byte 11 CONTROL.
 */
export function reportTargetPortGroups(allocLen = 1024, extended = true): Buffer {
  checkU('allocation length', allocLen, 0xffffffff);
  const b = Buffer.alloc(12);
  b[0] = OP.MAINTENANCE_IN;
  b[1] = (extended ? 0x20 : 0) | MI_REPORT_TARGET_PGS;
  b.writeUInt32BE(allocLen, 6);
  return b;
}

/** READ CAPACITY(10): 10 bytes; LBA and PMI left zero. */
export function readCapacity10(): Buffer {
  const b = Buffer.alloc(10);
  b[0] = OP.READ_CAPACITY_10;
  return b;
}

/**
 * READ CAPACITY(16) = SERVICE ACTION IN(16) / 0x10
 * byte 1 bits 4-0 SERVICE ACTION; bytes 2-9 LBA (0); bytes 10-13 ALLOCATION LENGTH; byte 14 PMI.
 */
export function readCapacity16(allocLen = 32): Buffer {
  checkU('allocation length', allocLen, 0xffffffff);
  const b = Buffer.alloc(16);
  b[0] = OP.SERVICE_ACTION_IN_16;
  b[1] = SAI_READ_CAPACITY_16;
  b.writeUInt32BE(allocLen, 10);
  return b;
}

/**
 * GET LBA STATUS = SERVICE ACTION IN(16) / 0x12
 * bytes 2-9 STARTING LBA; bytes 10-13 ALLOCATION LENGTH; byte 14 REPORT TYPE (SBC-4; 0 = all).
 */
export function getLbaStatus(lba: bigint, allocLen: number): Buffer {
  checkLba(lba, MAX_LBA_64);
  checkU('allocation length', allocLen, 0xffffffff);
  const b = Buffer.alloc(16);
  b[0] = OP.SERVICE_ACTION_IN_16;
  b[1] = SAI_GET_LBA_STATUS;
  b.writeBigUInt64BE(lba, 2);
  b.writeUInt32BE(allocLen, 10);
  return b;
}

export interface RwFlags {
  fua?: boolean;
  dpo?: boolean;
}

// byte 1 of READ/WRITE(10/16): RD/WRPROTECT 7-5, DPO 4, FUA 3.
function rwByte1(f?: RwFlags): number {
  return (f?.dpo ? 0x10 : 0) | (f?.fua ? 0x08 : 0);
}

/** READ(10)/WRITE(10): byte 1 flags; bytes 2-5 LBA; byte 6 GROUP; bytes 7-8 TRANSFER LENGTH. */
function rw10(op: number, lba: bigint, blocks: number, f?: RwFlags): Buffer {
  checkLba(lba, MAX_LBA_32);
  checkU('transfer length', blocks, 0xffff);
  const b = Buffer.alloc(10);
  b[0] = op;
  b[1] = rwByte1(f);
  b.writeUInt32BE(Number(lba), 2);
  b.writeUInt16BE(blocks, 7);
  return b;
}

/** READ(16)/WRITE(16): byte 1 flags; bytes 2-9 LBA; bytes 10-13 TRANSFER LENGTH; byte 14 GROUP. */
function rw16(op: number, lba: bigint, blocks: number, f?: RwFlags): Buffer {
  checkLba(lba, MAX_LBA_64);
  checkU('transfer length', blocks, 0xffffffff);
  const b = Buffer.alloc(16);
  b[0] = op;
  b[1] = rwByte1(f);
  b.writeBigUInt64BE(lba, 2);
  b.writeUInt32BE(blocks, 10);
  return b;
}

export const read10 = (lba: bigint, blocks: number, f?: RwFlags): Buffer => rw10(OP.READ_10, lba, blocks, f);
export const read16 = (lba: bigint, blocks: number, f?: RwFlags): Buffer => rw16(OP.READ_16, lba, blocks, f);
export const write10 = (lba: bigint, blocks: number, f?: RwFlags): Buffer => rw10(OP.WRITE_10, lba, blocks, f);
export const write16 = (lba: bigint, blocks: number, f?: RwFlags): Buffer => rw16(OP.WRITE_16, lba, blocks, f);

/** True when a 10-byte READ/WRITE cannot address this request. */
export function needs16(lba: bigint, blocks: number): boolean {
  return lba > MAX_LBA_32 || blocks > 0xffff;
}

/** READ(10) when it fits, READ(16) otherwise (or always when `force16`). */
export function readCdb(lba: bigint, blocks: number, f?: RwFlags, force16 = false): Buffer {
  return force16 || needs16(lba, blocks) ? read16(lba, blocks, f) : read10(lba, blocks, f);
}

/** WRITE(10) when it fits, WRITE(16) otherwise (or always when `force16`). */
export function writeCdb(lba: bigint, blocks: number, f?: RwFlags, force16 = false): Buffer {
  return force16 || needs16(lba, blocks) ? write16(lba, blocks, f) : write10(lba, blocks, f);
}

/**
 * SYNCHRONIZE CACHE(10): byte 1 bit 1 IMMED; bytes 2-5 LBA; bytes 7-8 NUMBER OF BLOCKS
 * (0 = through the last LBA).
 */
export function synchronizeCache10(lba = 0n, blocks = 0, immed = false): Buffer {
  checkLba(lba, MAX_LBA_32);
  checkU('number of blocks', blocks, 0xffff);
  const b = Buffer.alloc(10);
  b[0] = OP.SYNCHRONIZE_CACHE_10;
  b[1] = immed ? 0x02 : 0;
  b.writeUInt32BE(Number(lba), 2);
  b.writeUInt16BE(blocks, 7);
  return b;
}

/** SYNCHRONIZE CACHE(16): byte 1 bit 1 IMMED; bytes 2-9 LBA; bytes 10-13 NUMBER OF BLOCKS. */
export function synchronizeCache16(lba = 0n, blocks = 0, immed = false): Buffer {
  checkLba(lba, MAX_LBA_64);
  checkU('number of blocks', blocks, 0xffffffff);
  const b = Buffer.alloc(16);
  b[0] = OP.SYNCHRONIZE_CACHE_16;
  b[1] = immed ? 0x02 : 0;
  b.writeBigUInt64BE(lba, 2);
  b.writeUInt32BE(blocks, 10);
  return b;
}

/** UNMAP: byte 1 bit 0 ANCHOR; byte 6 GROUP; bytes 7-8 PARAMETER LIST LENGTH. */
export function unmap(paramLen: number, anchor = false): Buffer {
  checkU('parameter list length', paramLen, 0xffff);
  const b = Buffer.alloc(10);
  b[0] = OP.UNMAP;
  b[1] = anchor ? 1 : 0;
  b.writeUInt16BE(paramLen, 7);
  return b;
}

export interface UnmapDescriptor {
  lba: bigint;
  blocks: number;
}

/** Largest descriptor count whose parameter list still fits the 16-bit length field. */
export const UNMAP_MAX_DESCRIPTORS_PER_LIST = Math.floor((0xffff - 8) / 16);

/**
 * UNMAP parameter list
 * bytes 0-1 UNMAP DATA LENGTH (n - 1); bytes 2-3 BLOCK DESCRIPTOR DATA LENGTH (n - 7);
 * bytes 4-7 reserved; then 16-byte descriptors: bytes 0-7 LBA, 8-11 NUMBER OF BLOCKS, 12-15 reserved.
 */
export function unmapParameterList(descs: readonly UnmapDescriptor[]): Buffer {
  if (descs.length > UNMAP_MAX_DESCRIPTORS_PER_LIST) throw new RangeError(`too many UNMAP descriptors: ${descs.length}`);
  const len = 8 + 16 * descs.length;
  const b = Buffer.alloc(len);
  b.writeUInt16BE(len - 2, 0);
  b.writeUInt16BE(len - 8, 2);
  let o = 8;
  for (const d of descs) {
    checkLba(d.lba, MAX_LBA_64);
    checkU('unmap block count', d.blocks, 0xffffffff);
    b.writeBigUInt64BE(d.lba, o);
    b.writeUInt32BE(d.blocks, o + 8);
    o += 16;
  }
  return b;
}

export interface WriteSameFlags {
  unmap?: boolean;
  anchor?: boolean;
  /** NDOB (WRITE SAME(16) only): no Data-Out buffer, the device writes zeros. */
  ndob?: boolean;
}

// byte 1 of WRITE SAME: WRPROTECT 7-5, ANCHOR 4, UNMAP 3, obsolete 2-1, NDOB 0 (16 only).
function wsByte1(f?: WriteSameFlags): number {
  return (f?.anchor ? 0x10 : 0) | (f?.unmap ? 0x08 : 0);
}

/** WRITE SAME(10): byte 1 flags; bytes 2-5 LBA; byte 6 GROUP; bytes 7-8 NUMBER OF BLOCKS. */
export function writeSame10(lba: bigint, blocks: number, f?: WriteSameFlags): Buffer {
  checkLba(lba, MAX_LBA_32);
  checkU('number of blocks', blocks, 0xffff);
  if (f?.ndob) throw new RangeError('NDOB exists only in WRITE SAME(16)');
  const b = Buffer.alloc(10);
  b[0] = OP.WRITE_SAME_10;
  b[1] = wsByte1(f);
  b.writeUInt32BE(Number(lba), 2);
  b.writeUInt16BE(blocks, 7);
  return b;
}

/** WRITE SAME(16): byte 1 flags (+NDOB bit 0); bytes 2-9 LBA; bytes 10-13 NUMBER OF BLOCKS; byte 14 GROUP. */
export function writeSame16(lba: bigint, blocks: number, f?: WriteSameFlags): Buffer {
  checkLba(lba, MAX_LBA_64);
  checkU('number of blocks', blocks, 0xffffffff);
  const b = Buffer.alloc(16);
  b[0] = OP.WRITE_SAME_16;
  b[1] = wsByte1(f) | (f?.ndob ? 0x01 : 0);
  b.writeBigUInt64BE(lba, 2);
  b.writeUInt32BE(blocks, 10);
  return b;
}

export const MODE_PAGE_CACHING = 0x08;
export const MODE_PAGE_ALL = 0x3f;

export interface ModeSenseOptions {
  dbd?: boolean;
  /** Page control: 0 current, 1 changeable, 2 default, 3 saved. */
  pc?: number;
  subpage?: number;
}

/** MODE SENSE(6): byte 1 bit 3 DBD; byte 2 PC 7-6 | PAGE CODE 5-0; byte 3 SUBPAGE; byte 4 ALLOCATION LENGTH. */
export function modeSense6(page: number, allocLen = 255, o: ModeSenseOptions = {}): Buffer {
  checkU('page code', page, 0x3f);
  checkU('allocation length', allocLen, 0xff);
  const b = Buffer.alloc(6);
  b[0] = OP.MODE_SENSE_6;
  b[1] = o.dbd ? 0x08 : 0;
  b[2] = (((o.pc ?? 0) & 3) << 6) | page;
  b[3] = (o.subpage ?? 0) & 0xff;
  b[4] = allocLen;
  return b;
}

/** MODE SENSE(10): byte 1 bit 4 LLBAA, bit 3 DBD; byte 2 PC|PAGE; byte 3 SUBPAGE; bytes 7-8 ALLOCATION LENGTH. */
export function modeSense10(page: number, allocLen = 4096, o: ModeSenseOptions & { llbaa?: boolean } = {}): Buffer {
  checkU('page code', page, 0x3f);
  checkU('allocation length', allocLen, 0xffff);
  const b = Buffer.alloc(10);
  b[0] = OP.MODE_SENSE_10;
  b[1] = (o.dbd ? 0x08 : 0) | (o.llbaa ? 0x10 : 0);
  b[2] = (((o.pc ?? 0) & 3) << 6) | page;
  b[3] = (o.subpage ?? 0) & 0xff;
  b.writeUInt16BE(allocLen, 7);
  return b;
}

/** REPORT LUNS: byte 2 SELECT REPORT; bytes 6-9 ALLOCATION LENGTH (>= 16); byte 11 CONTROL. */
export function reportLuns(allocLen = 4096, selectReport = 0): Buffer {
  checkU('allocation length', allocLen, 0xffffffff);
  checkU('select report', selectReport, 0xff);
  const b = Buffer.alloc(12);
  b[0] = OP.REPORT_LUNS;
  b[2] = selectReport;
  b.writeUInt32BE(allocLen, 6);
  return b;
}
