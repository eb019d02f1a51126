// Parsers for SCSI response data (SPC-4 / SBC-3). Every parser tolerates a
// buffer cut short by the allocation length: fields that did not arrive are
// reported as 0/false/''/undefined, and nothing reads past the buffer. Data too
// short to be meaningful at all raises a ScsiError (ESCSI_IO) - never a
// RangeError.

import { ScsiError } from '../errors';
import { SAM_STAT_GOOD } from './transport';

function short(what: string, got: number, need: number): ScsiError {
  return new ScsiError('ESCSI_IO', `${what}: short response (${got} bytes, need ${need})`, SAM_STAT_GOOD);
}

// Bounds-checked readers: out-of-range reads yield 0.
const u8 = (b: Buffer, o: number): number => (o >= 0 && o < b.length ? b[o] : 0);
const be16 = (b: Buffer, o: number): number => (o + 2 <= b.length ? b.readUInt16BE(o) : 0);
const be32 = (b: Buffer, o: number): number => (o + 4 <= b.length ? b.readUInt32BE(o) : 0);
const be64 = (b: Buffer, o: number): bigint => (o + 8 <= b.length ? b.readBigUInt64BE(o) : 0n);
const has = (b: Buffer, o: number, n: number): boolean => o + n <= b.length;

function ascii(b: Buffer, start: number, end: number): string {
  const s = b.subarray(Math.min(start, b.length), Math.min(end, b.length));
  // printable ASCII only; NULs and control bytes become spaces then trimmed
  let out = '';
  for (const c of s) out += c >= 0x20 && c < 0x7f ? String.fromCharCode(c) : ' ';
  return out.trim();
}

/** Clamp a declared length to what the buffer really holds. */
function bodyEnd(b: Buffer, start: number, declared: number): number {
  return Math.min(b.length, start + declared);
}

// ---------------------------------------------------------------- INQUIRY

export const PDT_DISK = 0x00;

export interface StandardInquiry {
  peripheralQualifier: number;
  deviceType: number;
  removable: boolean;
  version: number;
  normAca: boolean;
  hiSup: boolean;
  responseDataFormat: number;
  additionalLength: number;
  sccs: boolean;
  acc: boolean;
  /** 0 none, 1 implicit ALUA, 2 explicit, 3 both. */
  tpgs: number;
  threePc: boolean;
  protect: boolean;
  encServ: boolean;
  multiP: boolean;
  cmdQue: boolean;
  vendor: string;
  product: string;
  revision: string;
}

/**
 * Standard INQUIRY data
 * 0: PQ 7-5, PDT 4-0 | 1: RMB 7 | 2: VERSION | 3: NORMACA 5, HISUP 4, RDF 3-0 | 4: ADDITIONAL LENGTH
 * 5: SCCS 7, ACC 6, TPGS 5-4, 3PC 3, PROTECT 0 | 6: ENCSERV 6, MULTIP 4 | 7: CMDQUE 1
 * 8-15 VENDOR | 16-31 PRODUCT | 32-35 REVISION
 */
export function parseStandardInquiry(b: Buffer): StandardInquiry {
  if (b.length < 1) throw short('INQUIRY', b.length, 1);
  return {
    peripheralQualifier: b[0] >> 5,
    deviceType: b[0] & 0x1f,
    removable: (u8(b, 1) & 0x80) !== 0,
    version: u8(b, 2),
    normAca: (u8(b, 3) & 0x20) !== 0,
    hiSup: (u8(b, 3) & 0x10) !== 0,
    responseDataFormat: u8(b, 3) & 0x0f,
    additionalLength: u8(b, 4),
    sccs: (u8(b, 5) & 0x80) !== 0,
    acc: (u8(b, 5) & 0x40) !== 0,
    tpgs: (u8(b, 5) >> 4) & 3,
    threePc: (u8(b, 5) & 0x08) !== 0,
    protect: (u8(b, 5) & 0x01) !== 0,
    encServ: (u8(b, 6) & 0x40) !== 0,
    multiP: (u8(b, 6) & 0x10) !== 0,
    cmdQue: (u8(b, 7) & 0x02) !== 0,
    vendor: ascii(b, 8, 16),
    product: ascii(b, 16, 32),
    revision: ascii(b, 32, 36),
  };
}

export interface VpdHeader {
  peripheralQualifier: number;
  deviceType: number;
  pageCode: number;
  pageLength: number;
  /** The page body (bytes from 4), limited to what arrived. */
  body: Buffer;
  /** The page did not fully arrive (allocation length too small). */
  truncated: boolean;
}

/**
 * VPD page header: 0: PQ|PDT, 1: PAGE CODE, 2-3: PAGE LENGTH (n - 3).
 * `expect` checks the page code.
 */
export function parseVpdHeader(b: Buffer, expect?: number): VpdHeader {
  if (b.length < 4) throw short('VPD page', b.length, 4);
  const pageCode = b[1];
  if (expect !== undefined && pageCode !== expect) {
    throw new ScsiError('ESCSI_IO', `VPD page 0x${expect.toString(16)} asked, 0x${pageCode.toString(16)} returned`, SAM_STAT_GOOD);
  }
  const pageLength = b.readUInt16BE(2);
  const end = bodyEnd(b, 4, pageLength);
  return {
    peripheralQualifier: b[0] >> 5,
    deviceType: b[0] & 0x1f,
    pageCode,
    pageLength,
    body: b.subarray(4, end),
    truncated: 4 + pageLength > b.length,
  };
}

/** VPD 0x00: list of supported page codes. */
export function parseVpdSupportedPages(b: Buffer): number[] {
  return [...parseVpdHeader(b, 0x00).body];
}

/** VPD 0x80: PRODUCT SERIAL NUMBER (ASCII) from byte 4. */
export function parseVpdUnitSerial(b: Buffer): string {
  return ascii(parseVpdHeader(b, 0x80).body, 0, Infinity);
}

export const CODE_SET = { BINARY: 1, ASCII: 2, UTF8: 3 } as const;
export const ASSOC = { LU: 0, TARGET_PORT: 1, TARGET_DEVICE: 2 } as const;
export const DESIG = {
  VENDOR: 0, T10: 1, EUI64: 2, NAA: 3, RELATIVE_PORT: 4, TPG: 5, LU_GROUP: 6, MD5: 7, SCSI_NAME: 8,
  PROTOCOL_PORT: 9, UUID: 0xa,
} as const;

export interface Designator {
  protocolId: number;
  codeSet: number;
  piv: boolean;
  association: number;
  type: number;
  /** The raw identifier bytes (a copy: safe to keep). */
  raw: Buffer;
  /** Readable form: hex for binary identifiers, trimmed text for ASCII/UTF-8. */
  value: string;
}

/**
 * VPD 0x83 designation descriptors, from byte 4:
 * 0: PROTOCOL IDENTIFIER 7-4, CODE SET 3-0 | 1: PIV 7, ASSOCIATION 5-4, TYPE 3-0 | 2: reserved
 * 3: DESIGNATOR LENGTH | 4..: DESIGNATOR. A descriptor cut short is dropped.
 */
export function parseVpdDeviceId(b: Buffer): Designator[] {
  const body = parseVpdHeader(b, 0x83).body;
  const out: Designator[] = [];
  let o = 0;
  while (o + 4 <= body.length) {
    const len = body[o + 3];
    if (o + 4 + len > body.length) break;
    const codeSet = body[o] & 0x0f;
    const raw = Buffer.from(body.subarray(o + 4, o + 4 + len));
    const text = codeSet === CODE_SET.ASCII || codeSet === CODE_SET.UTF8;
    out.push({
      protocolId: body[o] >> 4,
      codeSet,
      piv: (body[o + 1] & 0x80) !== 0,
      association: (body[o + 1] >> 4) & 3,
      type: body[o + 1] & 0x0f,
      raw,
      value: text ? raw.toString(codeSet === CODE_SET.UTF8 ? 'utf8' : 'latin1').replace(/\0+$/, '').trim() : raw.toString('hex'),
    });
    o += 4 + len;
  }
  return out;
}

export interface BlockLimits {
  wsnz: boolean;
  maxCompareAndWriteLength: number;
  optimalTransferLengthGranularity: number;
  maxTransferLength: number;
  optimalTransferLength: number;
  maxPrefetchLength: number;
  maxUnmapLbaCount: number;
  maxUnmapBlockDescriptorCount: number;
  optimalUnmapGranularity: number;
  ugaValid: boolean;
  unmapGranularityAlignment: number;
  maxWriteSameLength: bigint;
}

/**
 * VPD 0xB0 Block Limits (all counts in logical blocks, 0 = not reported)
 * 4: WSNZ 0 | 5: MAX COMPARE AND WRITE | 6-7: OPTIMAL TRANSFER LENGTH GRANULARITY
 * 8-11: MAX TRANSFER LENGTH | 12-15: OPTIMAL TRANSFER LENGTH | 16-19: MAX PREFETCH
 * 20-23: MAX UNMAP LBA COUNT | 24-27: MAX UNMAP BLOCK DESCRIPTOR COUNT
 * 28-31: OPTIMAL UNMAP GRANULARITY | 32-35: UGAVALID 31, UNMAP GRANULARITY ALIGNMENT 30-0
 * 36-43: MAX WRITE SAME LENGTH
 */
export function parseVpdBlockLimits(b: Buffer): BlockLimits {
  const h = parseVpdHeader(b, 0xb0);
  const p = b.subarray(0, 4 + h.body.length);
  return {
    wsnz: (u8(p, 4) & 1) !== 0,
    maxCompareAndWriteLength: u8(p, 5),
    optimalTransferLengthGranularity: be16(p, 6),
    maxTransferLength: be32(p, 8),
    optimalTransferLength: be32(p, 12),
    maxPrefetchLength: be32(p, 16),
    maxUnmapLbaCount: be32(p, 20),
    maxUnmapBlockDescriptorCount: be32(p, 24),
    optimalUnmapGranularity: be32(p, 28),
    ugaValid: has(p, 32, 4) && (p[32] & 0x80) !== 0,
    unmapGranularityAlignment: be32(p, 32) & 0x7fffffff,
    maxWriteSameLength: be64(p, 36),
  };
}

export interface BlockDeviceCharacteristics {
  /** 0 not reported, 1 non-rotating (SSD), 0x401..0xfffe rpm. */
  mediumRotationRate: number;
  productType: number;
  nominalFormFactor: number;
}

/** VPD 0xB1: 4-5 MEDIUM ROTATION RATE | 6 PRODUCT TYPE | 7: WABEREQ 7-6, WACEREQ 5-4, NOMINAL FORM FACTOR 3-0 */
export function parseVpdBlockCharacteristics(b: Buffer): BlockDeviceCharacteristics {
  const h = parseVpdHeader(b, 0xb1);
  const p = b.subarray(0, 4 + h.body.length);
  return { mediumRotationRate: be16(p, 4), productType: u8(p, 6), nominalFormFactor: u8(p, 7) & 0x0f };
}

export interface LogicalBlockProvisioning {
  thresholdExponent: number;
  lbpu: boolean;
  lbpws: boolean;
  lbpws10: boolean;
  /** LBPRZ field (SBC-4: 3 bits); bit 0 set means unmapped blocks read as zeros. */
  lbprzField: number;
  lbprz: boolean;
  ancSup: boolean;
  dp: boolean;
  minimumPercentage: number;
  /** 0 not reported, 1 resource provisioned, 2 thin provisioned. */
  provisioningType: number;
  thresholdPercentage: number;
}

/**
 * VPD 0xB2 Logical Block Provisioning
 * 4: THRESHOLD EXPONENT | 5: LBPU 7, LBPWS 6, LBPWS10 5, LBPRZ 4-2, ANC_SUP 1, DP 0
 * 6: MINIMUM PERCENTAGE 7-3, PROVISIONING TYPE 2-0 | 7: THRESHOLD PERCENTAGE
 */
export function parseVpdLbp(b: Buffer): LogicalBlockProvisioning {
  const h = parseVpdHeader(b, 0xb2);
  const p = b.subarray(0, 4 + h.body.length);
  const f = u8(p, 5);
  const lbprzField = (f >> 2) & 7;
  return {
    thresholdExponent: u8(p, 4),
    lbpu: (f & 0x80) !== 0,
    lbpws: (f & 0x40) !== 0,
    lbpws10: (f & 0x20) !== 0,
    lbprzField,
    lbprz: (lbprzField & 1) !== 0,
    ancSup: (f & 0x02) !== 0,
    dp: (f & 0x01) !== 0,
    minimumPercentage: u8(p, 6) >> 3,
    provisioningType: u8(p, 6) & 7,
    thresholdPercentage: u8(p, 7),
  };
}

// ---------------------------------------------------------- READ CAPACITY

export interface Capacity10 {
  returnedLba: number;
  blockLength: number;
}

/** READ CAPACITY(10): 0-3 RETURNED LOGICAL BLOCK ADDRESS | 4-7 BLOCK LENGTH IN BYTES */
export function parseReadCapacity10(b: Buffer): Capacity10 {
  if (b.length < 8) throw short('READ CAPACITY(10)', b.length, 8);
  return { returnedLba: b.readUInt32BE(0), blockLength: b.readUInt32BE(4) };
}

export interface Capacity16 {
  returnedLba: bigint;
  blockLength: number;
  pType: number;
  protEn: boolean;
  pIExponent: number;
  logicalPerPhysicalExponent: number;
  lbpme: boolean;
  lbprz: boolean;
  lowestAlignedLba: number;
}

/**
 * READ CAPACITY(16): 0-7 RETURNED LBA | 8-11 BLOCK LENGTH | 12: P_TYPE 3-1, PROT_EN 0
 * 13: P_I_EXPONENT 7-4, LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 3-0
 * 14-15: LBPME 15, LBPRZ 14, LOWEST ALIGNED LBA 13-0
 */
export function parseReadCapacity16(b: Buffer): Capacity16 {
  if (b.length < 12) throw short('READ CAPACITY(16)', b.length, 12);
  return {
    returnedLba: b.readBigUInt64BE(0),
    blockLength: b.readUInt32BE(8),
    pType: (u8(b, 12) >> 1) & 7,
    protEn: (u8(b, 12) & 1) !== 0,
    pIExponent: u8(b, 13) >> 4,
    logicalPerPhysicalExponent: u8(b, 13) & 0x0f,
    lbpme: (u8(b, 14) & 0x80) !== 0,
    lbprz: (u8(b, 14) & 0x40) !== 0,
    lowestAlignedLba: be16(b, 14) & 0x3fff,
  };
}

// -------------------------------------------------------------- MODE SENSE

export interface ModePage {
  pageCode: number;
  subpage: number;
  spf: boolean;
  ps: boolean;
  /** Page bytes including its header, limited to what arrived. */
  data: Buffer;
  truncated: boolean;
}

export interface ModeSenseData {
  modeDataLength: number;
  mediumType: number;
  deviceSpecific: number;
  writeProtect: boolean;
  dpoFua: boolean;
  longLba: boolean;
  blockDescriptorLength: number;
  pages: ModePage[];
  /** The answer was cut by the allocation length. */
  truncated: boolean;
}

/**
 * Mode parameter header (6): 0 MODE DATA LENGTH | 1 MEDIUM TYPE | 2 DEVICE-SPECIFIC (WP 7, DPOFUA 4)
 * | 3 BLOCK DESCRIPTOR LENGTH.
 * Mode parameter header (10): 0-1 MODE DATA LENGTH | 2 MEDIUM TYPE | 3 DEVICE-SPECIFIC
 * | 4 LONGLBA 0 | 6-7 BLOCK DESCRIPTOR LENGTH.
 * Then block descriptors, then pages: 0: PS 7, SPF 6, PAGE CODE 5-0; SPF=0: 1 PAGE LENGTH;
 * SPF=1: 1 SUBPAGE, 2-3 PAGE LENGTH.
 */
export function parseModeSense(b: Buffer, ten: boolean): ModeSenseData {
  const hdr = ten ? 8 : 4;
  const what = ten ? 'MODE SENSE(10)' : 'MODE SENSE(6)';
  if (b.length < (ten ? 4 : 3)) throw short(what, b.length, ten ? 4 : 3);
  const modeDataLength = ten ? b.readUInt16BE(0) : b[0];
  const total = modeDataLength + (ten ? 2 : 1);
  const end = Math.min(b.length, total);
  const deviceSpecific = ten ? b[3] : b[2];
  const bdl = ten ? be16(b, 6) : u8(b, 3);
  const pages: ModePage[] = [];
  let o = hdr + bdl;
  while (o + 2 <= end) {
    const spf = (b[o] & 0x40) !== 0;
    const hl = spf ? 4 : 2;
    if (o + hl > end) break;
    const plen = spf ? b.readUInt16BE(o + 2) : b[o + 1];
    const pEnd = o + hl + plen;
    pages.push({
      pageCode: b[o] & 0x3f,
      subpage: spf ? b[o + 1] : 0,
      spf,
      ps: (b[o] & 0x80) !== 0,
      data: b.subarray(o, Math.min(pEnd, end)),
      truncated: pEnd > end,
    });
    o = pEnd;
  }
  return {
    modeDataLength,
    mediumType: ten ? b[2] : b[1],
    deviceSpecific,
    writeProtect: (deviceSpecific & 0x80) !== 0,
    dpoFua: (deviceSpecific & 0x10) !== 0,
    longLba: ten && (u8(b, 4) & 1) !== 0,
    blockDescriptorLength: bdl,
    pages,
    truncated: total > b.length,
  };
}

export interface CachingPage {
  wce: boolean;
  rcd: boolean;
}

/** Caching mode page 0x08: byte 2: WCE 2, RCD 0. Undefined if absent or too short. */
export function findCachingPage(m: ModeSenseData): CachingPage | undefined {
  const p = m.pages.find((x) => x.pageCode === 0x08 && x.subpage === 0 && !x.spf);
  if (!p || p.data.length < 3) return undefined;
  return { wce: (p.data[2] & 0x04) !== 0, rcd: (p.data[2] & 0x01) !== 0 };
}

// -------------------------------------------------------------- REPORT LUNS

export type LunAddressing = 'peripheral' | 'flat' | 'logical-unit' | 'extended';

export interface ReportedLun {
  /** The LUN number for peripheral (bus 0) and flat addressing; -1 otherwise. */
  lun: number;
  addressing: LunAddressing;
  bus: number;
  /** The 8-byte LUN as hex. */
  raw: string;
}

/** Decode the first level of an 8-byte SAM LUN (SAM-5 4.7): byte 0 bits 7-6 ADDRESS METHOD. */
export function decodeLun(b: Buffer): ReportedLun {
  const raw = b.toString('hex').padEnd(16, '0');
  const b0 = u8(b, 0);
  const b1 = u8(b, 1);
  const method = b0 >> 6;
  switch (method) {
    case 0: return { lun: (b0 & 0x3f) === 0 ? b1 : -1, addressing: 'peripheral', bus: b0 & 0x3f, raw };
    case 1: return { lun: ((b0 & 0x3f) << 8) | b1, addressing: 'flat', bus: 0, raw };
    case 2: return { lun: -1, addressing: 'logical-unit', bus: (b1 >> 5) & 7, raw };
    default: return { lun: -1, addressing: 'extended', bus: 0, raw };
  }
}

/** REPORT LUNS: 0-3 LUN LIST LENGTH | 4-7 reserved | 8..: 8-byte LUNs. */
export function parseReportLuns(b: Buffer): { listLength: number; luns: ReportedLun[]; truncated: boolean } {
  if (b.length < 4) throw short('REPORT LUNS', b.length, 4);
  const listLength = b.readUInt32BE(0);
  const end = Math.min(b.length, 8 + listLength);
  const luns: ReportedLun[] = [];
  for (let o = 8; o + 8 <= end; o += 8) luns.push(decodeLun(b.subarray(o, o + 8)));
  return { listLength, luns, truncated: 8 + listLength > b.length };
}

// ---------------------------------------------------------- GET LBA STATUS

export type ProvisioningState = 'mapped' | 'deallocated' | 'anchored';

export interface LbaStatusDescriptor {
  lba: bigint;
  blocks: number;
  /** Raw PROVISIONING STATUS. */
  status: number;
  state: ProvisioningState;
}

/**
 * GET LBA STATUS parameter data: 0-3 PARAMETER DATA LENGTH (n - 3) | 4-7 reserved
 * then 16-byte descriptors: 0-7 LBA | 8-11 NUMBER OF BLOCKS | 12: PROVISIONING STATUS 3-0.
 * Status 1 = deallocated, 2 = anchored; 0, 3 (SBC-4 "mapped or unknown") and anything else = mapped.
 */
export function parseLbaStatus(b: Buffer): { descriptors: LbaStatusDescriptor[]; truncated: boolean } {
  if (b.length < 4) throw short('GET LBA STATUS', b.length, 4);
  const total = b.readUInt32BE(0) + 4;
  const end = Math.min(b.length, total);
  const descriptors: LbaStatusDescriptor[] = [];
  for (let o = 8; o + 16 <= end; o += 16) {
    const status = b[o + 12] & 0x0f;
    descriptors.push({
      lba: b.readBigUInt64BE(o),
      blocks: b.readUInt32BE(o + 8),
      status,
      state: status === 1 ? 'deallocated' : status === 2 ? 'anchored' : 'mapped',
    });
  }
  return { descriptors, truncated: total > b.length };
}

/** Asymmetric access states (SPC-4 6.36, table 229). */
export const ALUA_STATES: Record<number, AluaState> = {
  0x0: 'active/optimized', 0x1: 'active/non-optimized', 0x2: 'standby', 0x3: 'unavailable',
  0x4: 'logical block dependent', 0xe: 'offline', 0xf: 'transitioning',
};
export type AluaState =
  | 'active/optimized' | 'active/non-optimized' | 'standby' | 'unavailable' | 'logical block dependent' | 'offline' | 'transitioning' | 'reserved';

export interface TargetPortGroup {
  id: number;
  state: AluaState;
  /** PREF: the array prefers this group. */
  preferred: boolean;
  statusCode: number;
  /** Relative target port identifiers in the group. */
  ports: number[];
}

/**
 * REPORT TARGET PORT GROUPS parameter data.
 * 0-3 RETURN DATA LENGTH (bytes after these 4). With the extended header
 * (byte 4 FORMAT TYPE 6-4 = 1): 5 IMPLICIT TRANSITION TIME (s), 6-7 reserved;
 * descriptors from byte 8, else from byte 4. Each descriptor:
 * 0: PREF 7, ASYMMETRIC ACCESS STATE 3-0 | 1: supported states | 2-3 TARGET PORT GROUP
 * | 4 reserved | 5 STATUS CODE | 6 vendor | 7 TARGET PORT COUNT | then 4 bytes per port:
 * 0-1 obsolete, 2-3 RELATIVE TARGET PORT IDENTIFIER. What the allocation cut off is dropped
 * (and `truncated` says so).
 *
 * LIO (the kernel's target, Linux 6.1) leaves the extended header's 4 bytes out of RETURN
 * DATA LENGTH and sends only that length + 4 bytes, so the last port entry of its last group
 * never arrives. As Linux's scsi_dh_alua does, a descriptor that starts within RETURN DATA
 * LENGTH is read whenever its 8-byte header arrived, with the port entries that did; only
 * data cut short by the allocation length (`truncated`) drops a partial descriptor.
 */
export function parseReportTargetPortGroups(b: Buffer, extended: boolean): { groups: TargetPortGroup[]; transitionTimeSec?: number; truncated: boolean } {
  if (b.length < 4) throw new RangeError('REPORT TARGET PORT GROUPS data shorter than its header');
  const end = 4 + b.readUInt32BE(0);
  const truncated = b.length < end;
  const hasExt = extended && b.length >= 8 && ((b[4] >> 4) & 7) === 1;
  let o = hasExt ? 8 : 4;
  const groups: TargetPortGroup[] = [];
  while (o < end && o + 8 <= b.length) {
    const count = b[o + 7];
    if (truncated && o + 8 + count * 4 > b.length) break;
    const ports: number[] = [];
    for (let i = 0; i < count && o + 8 + i * 4 + 4 <= b.length; i++) ports.push(b.readUInt16BE(o + 8 + i * 4 + 2));
    groups.push({ id: b.readUInt16BE(o + 2), state: ALUA_STATES[b[o] & 0x0f] ?? 'reserved', preferred: (b[o] & 0x80) !== 0, statusCode: b[o + 5], ports });
    o += 8 + count * 4;
  }
  return { groups, ...(hasExt ? { transitionTimeSec: b[5] } : {}), truncated };
}

/** The relative target port and target port group of the port a VPD 0x83 came through (association 1), when given. */
export function targetPortIds(ds: readonly Designator[]): { relativePort?: number; group?: number } {
  const out: { relativePort?: number; group?: number } = {};
  for (const d of ds) {
    if (d.association !== ASSOC.TARGET_PORT || d.raw.length < 4) continue;
    if (d.type === DESIG.RELATIVE_PORT) out.relativePort = d.raw.readUInt16BE(2);
    if (d.type === DESIG.TPG) out.group = d.raw.readUInt16BE(2);
  }
  return out;
}
