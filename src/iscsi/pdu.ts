// iSCSI PDU codec (RFC 7143 section 11), both directions, pure functions.
//
// Every PDU starts with a 48-byte Basic Header Segment (BHS):
//   byte 0      .|I|opcode(6)          I = immediate (initiator PDUs only)
//   byte 1      F + opcode-specific flags
//   bytes 2-3   opcode-specific
//   byte 4      TotalAHSLength (in 4-byte words)
//   bytes 5-7   DataSegmentLength (bytes, without padding)
//   bytes 8-15  LUN or opcode-specific
//   bytes 16-19 Initiator Task Tag
//   bytes 20-47 opcode-specific
// then the AHS (if any), [header digest], data segment padded to 4 bytes,
// [data digest]. Integers are big-endian; sequence numbers are uint32.
//
// Decoded payloads are views (subarray) of the input, never copies.

import { ProtocolError } from '../errors';
import {
  AhsType, ATTR_MASK, BHS_LENGTH, FLAG_ACK, FLAG_BIDI_OVERFLOW, FLAG_BIDI_UNDERFLOW, FLAG_CONTINUE, FLAG_FINAL,
  FLAG_IMMEDIATE, FLAG_OVERFLOW, FLAG_READ, FLAG_STATUS, FLAG_TRANSIT, FLAG_UNDERFLOW, FLAG_WRITE, Opcode,
  OPCODE_MASK, opcodeName, RESERVED_TAG,
} from './constants';
import { crc32c, DigestError, digestBytes, readDigest } from './crc32c';

export const EMPTY: Buffer = Buffer.alloc(0);
const PADS = [EMPTY, Buffer.alloc(1), Buffer.alloc(2), Buffer.alloc(3)];
export const MAX_DATA_SEGMENT_LENGTH = 0xffffff;

// ---------------------------------------------------------------- PDU types

/** Initiator -> target. */
export interface NopOutPdu {
  opcode: 0x00;
  immediate: boolean;
  lun: bigint;
  itt: number;
  ttt: number;
  cmdSN: number;
  expStatSN: number;
  data: Buffer;
}

export interface ScsiCommandPdu {
  opcode: 0x01;
  immediate: boolean;
  final: boolean;
  read: boolean;
  write: boolean;
  /** TaskAttr value (0..7). */
  attr: number;
  lun: bigint;
  itt: number;
  expectedDataTransferLength: number;
  cmdSN: number;
  expStatSN: number;
  /** Any length >= 1; bytes beyond 16 travel in an Extended CDB AHS. */
  cdb: Buffer;
  /** Bidirectional commands: Expected Bidirectional Read Data Length AHS. */
  bidiReadLength?: number;
  /** Immediate data. */
  data: Buffer;
}

export interface TaskMgmtRequestPdu {
  opcode: 0x02;
  immediate: boolean;
  /** TmfFunction value. */
  func: number;
  lun: bigint;
  itt: number;
  referencedTaskTag: number;
  cmdSN: number;
  expStatSN: number;
  refCmdSN: number;
  expDataSN: number;
}

export interface LoginRequestPdu {
  opcode: 0x03;
  transit: boolean;
  continue: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionMin: number;
  /** 48-bit ISID as a number. */
  isid: number;
  tsih: number;
  itt: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
  data: Buffer;
}

export interface TextRequestPdu {
  opcode: 0x04;
  immediate: boolean;
  final: boolean;
  continue: boolean;
  lun: bigint;
  itt: number;
  ttt: number;
  cmdSN: number;
  expStatSN: number;
  data: Buffer;
}

export interface DataOutPdu {
  opcode: 0x05;
  final: boolean;
  lun: bigint;
  itt: number;
  ttt: number;
  expStatSN: number;
  dataSN: number;
  bufferOffset: number;
  data: Buffer;
}

export interface LogoutRequestPdu {
  opcode: 0x06;
  immediate: boolean;
  /** LogoutReason value. */
  reason: number;
  itt: number;
  cid: number;
  cmdSN: number;
  expStatSN: number;
}

export interface SnackRequestPdu {
  opcode: 0x10;
  /** SnackType value. */
  type: number;
  lun: bigint;
  itt: number;
  /** Target Transfer Tag, SNACK Tag, or 0xffffffff. */
  ttt: number;
  expStatSN: number;
  begRun: number;
  runLength: number;
}

/** Target -> initiator. */
export interface NopInPdu {
  opcode: 0x20;
  lun: bigint;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  data: Buffer;
}

export interface ScsiResponsePdu {
  opcode: 0x21;
  bidiOverflow: boolean;
  bidiUnderflow: boolean;
  overflow: boolean;
  underflow: boolean;
  /** ScsiResponseCode value. */
  response: number;
  /** SAM status. */
  status: number;
  itt: number;
  snackTag: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  expDataSN: number;
  bidiReadResidualCount: number;
  residualCount: number;
  /** Sense data without its 2-byte SenseLength prefix (empty if none). */
  sense: Buffer;
  /** Response data following the sense data (rare; empty if none). */
  responseData: Buffer;
}

export interface TaskMgmtResponsePdu {
  opcode: 0x22;
  /** TmfResponse value. */
  response: number;
  itt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
}

export interface LoginResponsePdu {
  opcode: 0x23;
  transit: boolean;
  continue: boolean;
  csg: number;
  nsg: number;
  versionMax: number;
  versionActive: number;
  isid: number;
  tsih: number;
  itt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  statusClass: number;
  statusDetail: number;
  data: Buffer;
}

export interface TextResponsePdu {
  opcode: 0x24;
  final: boolean;
  continue: boolean;
  lun: bigint;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  data: Buffer;
}

export interface DataInPdu {
  opcode: 0x25;
  final: boolean;
  ack: boolean;
  overflow: boolean;
  underflow: boolean;
  /** S bit: status (and statSN, residual) are valid. */
  statusPresent: boolean;
  status: number;
  lun: bigint;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  dataSN: number;
  bufferOffset: number;
  residualCount: number;
  data: Buffer;
  /** `data` is already where the engine wanted it (its task's buffer at bufferOffset): nothing to copy. */
  placed?: boolean;
}

export interface LogoutResponsePdu {
  opcode: 0x26;
  /** LogoutResponseCode value. */
  response: number;
  itt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  time2Wait: number;
  time2Retain: number;
}

export interface R2tPdu {
  opcode: 0x31;
  lun: bigint;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  r2tSN: number;
  bufferOffset: number;
  desiredDataTransferLength: number;
}

export interface AsyncMessagePdu {
  opcode: 0x32;
  lun: bigint;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  /** AsyncEvent value. */
  asyncEvent: number;
  asyncVCode: number;
  parameter1: number;
  parameter2: number;
  parameter3: number;
  /** Raw data segment: SenseLength + sense + iSCSI event data (see splitSenseData). */
  data: Buffer;
}

export interface RejectPdu {
  opcode: 0x3f;
  /** RejectReason value. */
  reason: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  /** DataSN/R2TSN (for SNACK rejects), else 0. */
  dataSN: number;
  /** The rejected PDU's header (BHS, 48 bytes, normally). */
  data: Buffer;
}

export type InitiatorPdu =
  | NopOutPdu | ScsiCommandPdu | TaskMgmtRequestPdu | LoginRequestPdu | TextRequestPdu | DataOutPdu
  | LogoutRequestPdu | SnackRequestPdu;
export type TargetPdu =
  | NopInPdu | ScsiResponsePdu | TaskMgmtResponsePdu | LoginResponsePdu | TextResponsePdu | DataInPdu
  | LogoutResponsePdu | R2tPdu | AsyncMessagePdu | RejectPdu;
export type Pdu = InitiatorPdu | TargetPdu;

/** A framed PDU: views of the BHS, AHS and data segment (without padding/digests). */
export interface Frame {
  bhs: Buffer;
  ahs: Buffer;
  data: Buffer;
  /** The data segment was streamed into the buffer the engine named for this PDU (PduFramer.placeData). */
  placed?: boolean;
}

export interface DigestOptions {
  headerDigest: boolean;
  dataDigest: boolean;
}

const NO_DIGESTS: DigestOptions = { headerDigest: false, dataDigest: false };

// ---------------------------------------------------------------- LUN

/**
 * SAM LUN encoding (SAM-5 4.7), as libiscsi does it: LUN < 256 uses
 * peripheral device addressing (00 nn), < 16384 flat space (01 + 14 bits),
 * < 2^24 extended flat space (D2 + 24 bits).
 */
export function encodeLun(n: number): bigint {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffff) throw new RangeError(`LUN out of range: ${n}`);
  if (n < 256) return BigInt(n) << 48n;
  if (n < 0x4000) return BigInt(0x4000 | n) << 48n;
  return BigInt(0xd2000000 + n) << 32n;
}

/** Inverse of encodeLun; throws ProtocolError for addressing methods we do not map to a number. */
export function decodeLun(raw: bigint | Buffer): number {
  const v = typeof raw === 'bigint' ? raw : raw.readBigUInt64BE(0);
  const top = Number(v >> 32n);
  const b0 = top >>> 24;
  const method = b0 >> 6;
  if (method === 0 || method === 1) return (top >>> 16) & 0x3fff;
  if (b0 === 0xd2) return top & 0xffffff;
  throw new ProtocolError(`unsupported LUN addressing 0x${v.toString(16).padStart(16, '0')}`);
}

export function lunToBuffer(lun: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt.asUintN(64, lun));
  return b;
}

// ---------------------------------------------------------------- ISID

/** ISID from its parts (RFC 7143 11.12.5): T(2)|A(6), B(16), C(8), D(16). */
export function makeIsid(type: number, a: number, b: number, c: number, d: number): number {
  return (((type & 3) << 6) | (a & 0x3f)) * 2 ** 40 + (b & 0xffff) * 2 ** 24 + (c & 0xff) * 2 ** 16 + (d & 0xffff);
}

/** A random ISID of the "random" type (T=10b), as open-iscsi and libiscsi use. */
export function randomIsid(random: (n: number) => Buffer = defaultRandom): number {
  const r = random(5);
  return makeIsid(2, 0, r.readUInt16BE(0), r[2], r.readUInt16BE(3));
}

function defaultRandom(n: number): Buffer {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return require('node:crypto').randomBytes(n);
}

// ---------------------------------------------------------------- helpers

function w32(b: Buffer, off: number, v: number): void {
  b.writeUInt32BE(v >>> 0, off);
}

function paddingOf(len: number): number {
  return (4 - (len & 3)) & 3;
}

/**
 * Split "SenseLength(2) + sense + response data" (SCSI Response and Async
 * Message data segments). Throws ProtocolError if SenseLength overruns.
 */
export function splitSenseData(data: Buffer): { sense: Buffer; rest: Buffer } {
  if (data.length === 0) return { sense: EMPTY, rest: EMPTY };
  if (data.length < 2) throw new ProtocolError(`data segment of ${data.length} byte(s) too short for SenseLength`);
  const senseLength = data.readUInt16BE(0);
  if (senseLength + 2 > data.length) {
    throw new ProtocolError(`SenseLength ${senseLength} exceeds data segment of ${data.length} bytes`);
  }
  return { sense: data.subarray(2, 2 + senseLength), rest: data.subarray(2 + senseLength) };
}

/** Build "SenseLength + sense + rest" (used when encoding). */
export function joinSenseData(sense: Buffer, rest: Buffer = EMPTY): Buffer {
  if (sense.length === 0 && rest.length === 0) return EMPTY;
  if (sense.length > 0xffff) throw new RangeError('sense data too long');
  const out = Buffer.allocUnsafe(2 + sense.length + rest.length);
  out.writeUInt16BE(sense.length, 0);
  sense.copy(out, 2);
  rest.copy(out, 2 + sense.length);
  return out;
}

/** The data segment a PDU carries (SCSI Response builds it from sense + response data). */
export function dataSegmentOf(pdu: Pdu): Buffer {
  switch (pdu.opcode) {
    case 0x21:
      return joinSenseData(pdu.sense, pdu.responseData);
    case 0x02: case 0x06: case 0x10: case 0x22: case 0x26: case 0x31:
      return EMPTY;
    default:
      return pdu.data ?? EMPTY;
  }
}

// ---------------------------------------------------------------- AHS

// AHS (RFC 7143 11.2.2), each padded to 4 bytes:
//   bytes 0-1 AHSLength (counts from byte 3 on), byte 2 AHSType, byte 3 reserved
//   Extended CDB (type 1): AHSLength = CDB length - 16 + 1; CDB bytes 16.. at byte 4
//   Bidirectional read length (type 2): AHSLength = 5; uint32 length at byte 4

/** Encode the AHS of a PDU, or EMPTY. Only SCSI Command has AHS here. */
export function encodeAhs(pdu: Pdu): Buffer {
  if (pdu.opcode !== 0x01) return EMPTY;
  const extra = pdu.cdb.length > 16 ? pdu.cdb.length - 16 : 0;
  const bidi = pdu.bidiReadLength !== undefined;
  if (extra === 0 && !bidi) return EMPTY;
  const extLen = extra > 0 ? 4 + extra + paddingOf(extra) : 0;
  const out = Buffer.alloc(extLen + (bidi ? 8 : 0));
  if (extra > 0) {
    if (extra + 1 > 0xffff) throw new RangeError('CDB too long');
    out.writeUInt16BE(extra + 1, 0);
    out[2] = AhsType.EXTENDED_CDB;
    pdu.cdb.copy(out, 4, 16);
  }
  if (bidi) {
    out.writeUInt16BE(5, extLen);
    out[extLen + 2] = AhsType.BIDI_READ_LENGTH;
    w32(out, extLen + 4, pdu.bidiReadLength!);
  }
  if (out.length > 255 * 4) throw new RangeError('AHS too long');
  return out;
}

interface ParsedAhs {
  cdbTail?: Buffer;
  bidiReadLength?: number;
}

function parseAhs(ahs: Buffer): ParsedAhs {
  const r: ParsedAhs = {};
  let off = 0;
  while (off < ahs.length) {
    if (ahs.length - off < 4) throw new ProtocolError('truncated AHS');
    const len = ahs.readUInt16BE(off);
    const type = ahs[off + 2];
    const total = 3 + len + paddingOf(3 + len);
    if (len < 1 || off + total > ahs.length) throw new ProtocolError(`bad AHSLength ${len}`);
    if (type === AhsType.EXTENDED_CDB) {
      if (r.cdbTail) throw new ProtocolError('duplicate extended CDB AHS');
      r.cdbTail = ahs.subarray(off + 4, off + 3 + len);
    } else if (type === AhsType.BIDI_READ_LENGTH) {
      if (len !== 5) throw new ProtocolError(`bad bidirectional read length AHSLength ${len}`);
      r.bidiReadLength = ahs.readUInt32BE(off + 4);
    } // other types: ignored (not defined by RFC 7143)
    off += total;
  }
  return r;
}

// ---------------------------------------------------------------- layouts
//
// Opcode-specific BHS fields by byte offset (RFC 7143 section 11; "-" reserved):
//
//  PDU          b1 flags           b2      b3      8-15       20          24         28         32         36          40            44
//  NOP-Out      F                  -       -       LUN        TTT         CmdSN      ExpStatSN  -          -           -             -
//  SCSI Cmd     F R W ATTR(3)      -       -       LUN        ExpDataLen  CmdSN      ExpStatSN  CDB bytes 32..47 (16)
//  TMF Req      F Function(7)      -       -       LUN        RefTaskTag  CmdSN      ExpStatSN  RefCmdSN   ExpDataSN   -             -
//  Login Req    T C CSG(2) NSG(2)  VerMax  VerMin  ISID(6) TSIH(2)  CID(2)  CmdSN    ExpStatSN  -          -           -             -
//  Text Req     F C                -       -       LUN        TTT         CmdSN      ExpStatSN  -          -           -             -
//  Data-Out     F                  -       -       LUN        TTT         -          ExpStatSN  -          DataSN      BufferOffset  -
//  Logout Req   F Reason(7)        -       -       -          CID(2)      CmdSN      ExpStatSN  -          -           -             -
//  SNACK        F Type(4)          -       -       LUN        TTT/Tag     -          ExpStatSN  -          -           BegRun        RunLength
//  NOP-In       F                  -       -       LUN        TTT         StatSN     ExpCmdSN   MaxCmdSN   -           -             -
//  SCSI Rsp     F o u O U          Resp    Status  -          SNACKTag    StatSN     ExpCmdSN   MaxCmdSN   ExpDataSN   BidiResidual  Residual
//  TMF Rsp      F                  Resp    -       -          -           StatSN     ExpCmdSN   MaxCmdSN   -           -             -
//  Login Rsp    T C CSG NSG        VerMax  VerAct  ISID TSIH  -           StatSN     ExpCmdSN   MaxCmdSN   Class Detail  -           -
//  Text Rsp     F C                -       -       LUN        TTT         StatSN     ExpCmdSN   MaxCmdSN   -           -             -
//  Data-In      F A O U S          -       Status  LUN        TTT         StatSN     ExpCmdSN   MaxCmdSN   DataSN      BufferOffset  Residual
//  Logout Rsp   F                  Resp    -       -          -           StatSN     ExpCmdSN   MaxCmdSN   -           T2Wait T2Retain -
//  R2T          F                  -       -       LUN        TTT         StatSN     ExpCmdSN   MaxCmdSN   R2TSN       BufferOffset  DesiredLen
//  Async Msg    F                  -       -       LUN        -           StatSN     ExpCmdSN   MaxCmdSN   Event VCode P1  P2 P3        -
//  Reject       F                  Reason  -       -          -           StatSN     ExpCmdSN   MaxCmdSN   DataSN/R2TSN -            -
// ITT is at 16 in all of them (0xffffffff in Async Message and Reject).

// ---------------------------------------------------------------- encode

/**
 * Write the 48-byte BHS of `pdu` into `out` (zeroed first) and return it.
 * TotalAHSLength and DataSegmentLength are computed from the PDU; pass them if
 * already known to avoid recomputing the AHS/data segment.
 */
export function encodeBhs(
  pdu: Pdu,
  out: Buffer = Buffer.allocUnsafe(BHS_LENGTH),
  ahsLength = encodeAhs(pdu).length,
  dataLength = dataSegmentOf(pdu).length,
): Buffer {
  if (out.length < BHS_LENGTH) throw new RangeError('BHS buffer shorter than 48 bytes');
  if (dataLength > MAX_DATA_SEGMENT_LENGTH) throw new RangeError(`data segment of ${dataLength} bytes too long`);
  out.fill(0, 0, BHS_LENGTH);
  out[0] = pdu.opcode;
  out[4] = ahsLength >>> 2;
  out[5] = (dataLength >>> 16) & 0xff;
  out.writeUInt16BE(dataLength & 0xffff, 6);
  switch (pdu.opcode) {
    case 0x00: // NOP-Out
      if (pdu.immediate) out[0] |= FLAG_IMMEDIATE;
      out[1] = FLAG_FINAL;
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.ttt);
      w32(out, 24, pdu.cmdSN);
      w32(out, 28, pdu.expStatSN);
      break;
    case 0x01: // SCSI Command
      if (pdu.immediate) out[0] |= FLAG_IMMEDIATE;
      out[1] = (pdu.final ? FLAG_FINAL : 0) | (pdu.read ? FLAG_READ : 0) | (pdu.write ? FLAG_WRITE : 0) |
        (pdu.attr & ATTR_MASK);
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.expectedDataTransferLength);
      w32(out, 24, pdu.cmdSN);
      w32(out, 28, pdu.expStatSN);
      if (pdu.cdb.length === 0) throw new RangeError('empty CDB');
      pdu.cdb.copy(out, 32, 0, Math.min(16, pdu.cdb.length));
      break;
    case 0x02: // Task Management Function Request
      if (pdu.immediate) out[0] |= FLAG_IMMEDIATE;
      out[1] = FLAG_FINAL | (pdu.func & 0x7f);
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.referencedTaskTag);
      w32(out, 24, pdu.cmdSN);
      w32(out, 28, pdu.expStatSN);
      w32(out, 32, pdu.refCmdSN);
      w32(out, 36, pdu.expDataSN);
      break;
    case 0x03: // Login Request (always immediate)
      out[0] |= FLAG_IMMEDIATE;
      out[1] = (pdu.transit ? FLAG_TRANSIT : 0) | (pdu.continue ? FLAG_CONTINUE : 0) |
        ((pdu.csg & 3) << 2) | (pdu.nsg & 3);
      out[2] = pdu.versionMax;
      out[3] = pdu.versionMin;
      out.writeUIntBE(pdu.isid, 8, 6);
      out.writeUInt16BE(pdu.tsih, 14);
      w32(out, 16, pdu.itt);
      out.writeUInt16BE(pdu.cid, 20);
      w32(out, 24, pdu.cmdSN);
      w32(out, 28, pdu.expStatSN);
      break;
    case 0x04: // Text Request
      if (pdu.immediate) out[0] |= FLAG_IMMEDIATE;
      out[1] = (pdu.final ? FLAG_FINAL : 0) | (pdu.continue ? FLAG_CONTINUE : 0);
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.ttt);
      w32(out, 24, pdu.cmdSN);
      w32(out, 28, pdu.expStatSN);
      break;
    case 0x05: // SCSI Data-Out
      out[1] = pdu.final ? FLAG_FINAL : 0;
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.ttt);
      w32(out, 28, pdu.expStatSN);
      w32(out, 36, pdu.dataSN);
      w32(out, 40, pdu.bufferOffset);
      break;
    case 0x06: // Logout Request
      if (pdu.immediate) out[0] |= FLAG_IMMEDIATE;
      out[1] = FLAG_FINAL | (pdu.reason & 0x7f);
      w32(out, 16, pdu.itt);
      out.writeUInt16BE(pdu.cid, 20);
      w32(out, 24, pdu.cmdSN);
      w32(out, 28, pdu.expStatSN);
      break;
    case 0x10: // SNACK Request
      out[1] = FLAG_FINAL | (pdu.type & 0x0f);
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.ttt);
      w32(out, 28, pdu.expStatSN);
      w32(out, 40, pdu.begRun);
      w32(out, 44, pdu.runLength);
      break;
    case 0x20: // NOP-In
      out[1] = FLAG_FINAL;
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.ttt);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      break;
    case 0x21: // SCSI Response
      out[1] = FLAG_FINAL | (pdu.bidiOverflow ? FLAG_BIDI_OVERFLOW : 0) | (pdu.bidiUnderflow ? FLAG_BIDI_UNDERFLOW : 0) |
        (pdu.overflow ? FLAG_OVERFLOW : 0) | (pdu.underflow ? FLAG_UNDERFLOW : 0);
      out[2] = pdu.response;
      out[3] = pdu.status;
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.snackTag);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      w32(out, 36, pdu.expDataSN);
      w32(out, 40, pdu.bidiReadResidualCount);
      w32(out, 44, pdu.residualCount);
      break;
    case 0x22: // Task Management Function Response
      out[1] = FLAG_FINAL;
      out[2] = pdu.response;
      w32(out, 16, pdu.itt);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      break;
    case 0x23: // Login Response
      out[1] = (pdu.transit ? FLAG_TRANSIT : 0) | (pdu.continue ? FLAG_CONTINUE : 0) |
        ((pdu.csg & 3) << 2) | (pdu.nsg & 3);
      out[2] = pdu.versionMax;
      out[3] = pdu.versionActive;
      out.writeUIntBE(pdu.isid, 8, 6);
      out.writeUInt16BE(pdu.tsih, 14);
      w32(out, 16, pdu.itt);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      out[36] = pdu.statusClass;
      out[37] = pdu.statusDetail;
      break;
    case 0x24: // Text Response
      out[1] = (pdu.final ? FLAG_FINAL : 0) | (pdu.continue ? FLAG_CONTINUE : 0);
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.ttt);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      break;
    case 0x25: // SCSI Data-In
      out[1] = (pdu.final ? FLAG_FINAL : 0) | (pdu.ack ? FLAG_ACK : 0) | (pdu.overflow ? FLAG_OVERFLOW : 0) |
        (pdu.underflow ? FLAG_UNDERFLOW : 0) | (pdu.statusPresent ? FLAG_STATUS : 0);
      out[3] = pdu.statusPresent ? pdu.status : 0;
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.ttt);
      w32(out, 24, pdu.statusPresent ? pdu.statSN : 0);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      w32(out, 36, pdu.dataSN);
      w32(out, 40, pdu.bufferOffset);
      w32(out, 44, pdu.residualCount);
      break;
    case 0x26: // Logout Response
      out[1] = FLAG_FINAL;
      out[2] = pdu.response;
      w32(out, 16, pdu.itt);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      out.writeUInt16BE(pdu.time2Wait, 40);
      out.writeUInt16BE(pdu.time2Retain, 42);
      break;
    case 0x31: // R2T
      out[1] = FLAG_FINAL;
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, pdu.itt);
      w32(out, 20, pdu.ttt);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      w32(out, 36, pdu.r2tSN);
      w32(out, 40, pdu.bufferOffset);
      w32(out, 44, pdu.desiredDataTransferLength);
      break;
    case 0x32: // Asynchronous Message
      out[1] = FLAG_FINAL;
      out.writeBigUInt64BE(pdu.lun, 8);
      w32(out, 16, RESERVED_TAG);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      out[36] = pdu.asyncEvent;
      out[37] = pdu.asyncVCode;
      out.writeUInt16BE(pdu.parameter1, 38);
      out.writeUInt16BE(pdu.parameter2, 40);
      out.writeUInt16BE(pdu.parameter3, 42);
      break;
    case 0x3f: // Reject
      out[1] = FLAG_FINAL;
      out[2] = pdu.reason;
      w32(out, 16, RESERVED_TAG);
      w32(out, 24, pdu.statSN);
      w32(out, 28, pdu.expCmdSN);
      w32(out, 32, pdu.maxCmdSN);
      w32(out, 36, pdu.dataSN);
      break;
    default:
      throw new RangeError(`cannot encode opcode ${opcodeName((pdu as { opcode: number }).opcode)}`);
  }
  return out;
}

/**
 * Hot-path encoder: fills `header` (a reusable buffer of >= 48 bytes; a
 * fresh one is allocated when the PDU has an AHS that does not fit) and
 * returns the buffers to write in order: header(+AHS) [, header digest],
 * data [, padding] [, data digest]. The data buffer is passed through
 * without copying; `header` must not be reused until the write completes.
 */
export function encodePduVectors(pdu: Pdu, opts: DigestOptions = NO_DIGESTS, header?: Buffer): Buffer[] {
  const ahs = encodeAhs(pdu);
  const data = dataSegmentOf(pdu);
  const hlen = BHS_LENGTH + ahs.length;
  const hbuf = header && header.length >= hlen ? header.subarray(0, hlen) : Buffer.allocUnsafe(hlen);
  encodeBhs(pdu, hbuf, ahs.length, data.length);
  if (ahs.length > 0) ahs.copy(hbuf, BHS_LENGTH);
  const out: Buffer[] = [hbuf];
  if (opts.headerDigest) out.push(digestBytes(crc32c(hbuf)));
  if (data.length > 0) {
    out.push(data);
    const pad = PADS[paddingOf(data.length)];
    if (pad.length > 0) out.push(pad);
    if (opts.dataDigest) out.push(digestBytes(crc32c(pad, crc32c(data))));
  }
  return out;
}

/** Encode a whole PDU into one new Buffer (login, tests, rare PDUs). */
export function encodePdu(pdu: Pdu, opts: DigestOptions = NO_DIGESTS): Buffer {
  return Buffer.concat(encodePduVectors(pdu, opts));
}

// ---------------------------------------------------------------- decode

/** Fields common to every BHS, read without interpreting the opcode. */
export interface BhsCommon {
  opcode: number;
  immediate: boolean;
  totalAhsLength: number; // bytes
  dataSegmentLength: number;
  itt: number;
}

export function peekBhs(bhs: Buffer): BhsCommon {
  if (bhs.length < BHS_LENGTH) throw new ProtocolError(`BHS of ${bhs.length} bytes`);
  return {
    opcode: bhs[0] & OPCODE_MASK,
    immediate: (bhs[0] & FLAG_IMMEDIATE) !== 0,
    totalAhsLength: bhs[4] * 4,
    dataSegmentLength: (bhs[5] << 16) | bhs.readUInt16BE(6),
    itt: bhs.readUInt32BE(16),
  };
}

/** Decode a BHS alone (data/AHS treated as empty). */
export function decodeBhs(bhs: Buffer): Pdu {
  return decodeFrame({ bhs, ahs: EMPTY, data: EMPTY });
}

/**
 * Decode a framed PDU. Payloads are views of frame.data. Reserved fields are
 * ignored (RFC 7143: receivers ignore them); unknown opcodes and malformed
 * AHS/sense lengths are ProtocolErrors.
 */
export function decodeFrame(frame: Frame): Pdu {
  const { bhs, ahs, data } = frame;
  if (bhs.length < BHS_LENGTH) throw new ProtocolError(`BHS of ${bhs.length} bytes`);
  const op = bhs[0] & OPCODE_MASK;
  const imm = (bhs[0] & FLAG_IMMEDIATE) !== 0;
  const f1 = bhs[1];
  const lun = (): bigint => bhs.readBigUInt64BE(8);
  const u32 = (o: number): number => bhs.readUInt32BE(o);
  const itt = u32(16);
  switch (op) {
    case Opcode.NOP_OUT:
      return { opcode: 0x00, immediate: imm, lun: lun(), itt, ttt: u32(20), cmdSN: u32(24), expStatSN: u32(28), data };
    case Opcode.SCSI_COMMAND: {
      const a = parseAhs(ahs);
      let cdb = bhs.subarray(32, 48);
      if (a.cdbTail) cdb = Buffer.concat([cdb, a.cdbTail]);
      const pdu: ScsiCommandPdu = {
        opcode: 0x01, immediate: imm, final: (f1 & FLAG_FINAL) !== 0, read: (f1 & FLAG_READ) !== 0,
        write: (f1 & FLAG_WRITE) !== 0, attr: f1 & ATTR_MASK, lun: lun(), itt,
        expectedDataTransferLength: u32(20), cmdSN: u32(24), expStatSN: u32(28), cdb, data,
      };
      if (a.bidiReadLength !== undefined) pdu.bidiReadLength = a.bidiReadLength;
      return pdu;
    }
    case Opcode.TASK_MGMT_REQUEST:
      return {
        opcode: 0x02, immediate: imm, func: f1 & 0x7f, lun: lun(), itt, referencedTaskTag: u32(20),
        cmdSN: u32(24), expStatSN: u32(28), refCmdSN: u32(32), expDataSN: u32(36),
      };
    case Opcode.LOGIN_REQUEST:
      return {
        opcode: 0x03, transit: (f1 & FLAG_TRANSIT) !== 0, continue: (f1 & FLAG_CONTINUE) !== 0,
        csg: (f1 >> 2) & 3, nsg: f1 & 3, versionMax: bhs[2], versionMin: bhs[3], isid: bhs.readUIntBE(8, 6),
        tsih: bhs.readUInt16BE(14), itt, cid: bhs.readUInt16BE(20), cmdSN: u32(24), expStatSN: u32(28), data,
      };
    case Opcode.TEXT_REQUEST:
      return {
        opcode: 0x04, immediate: imm, final: (f1 & FLAG_FINAL) !== 0, continue: (f1 & FLAG_CONTINUE) !== 0,
        lun: lun(), itt, ttt: u32(20), cmdSN: u32(24), expStatSN: u32(28), data,
      };
    case Opcode.DATA_OUT:
      return {
        opcode: 0x05, final: (f1 & FLAG_FINAL) !== 0, lun: lun(), itt, ttt: u32(20), expStatSN: u32(28),
        dataSN: u32(36), bufferOffset: u32(40), data,
      };
    case Opcode.LOGOUT_REQUEST:
      return {
        opcode: 0x06, immediate: imm, reason: f1 & 0x7f, itt, cid: bhs.readUInt16BE(20), cmdSN: u32(24),
        expStatSN: u32(28),
      };
    case Opcode.SNACK_REQUEST:
      return {
        opcode: 0x10, type: f1 & 0x0f, lun: lun(), itt, ttt: u32(20), expStatSN: u32(28), begRun: u32(40),
        runLength: u32(44),
      };
    case Opcode.NOP_IN:
      return {
        opcode: 0x20, lun: lun(), itt, ttt: u32(20), statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32), data,
      };
    case Opcode.SCSI_RESPONSE: {
      const { sense, rest } = splitSenseData(data);
      return {
        opcode: 0x21, bidiOverflow: (f1 & FLAG_BIDI_OVERFLOW) !== 0, bidiUnderflow: (f1 & FLAG_BIDI_UNDERFLOW) !== 0,
        overflow: (f1 & FLAG_OVERFLOW) !== 0, underflow: (f1 & FLAG_UNDERFLOW) !== 0, response: bhs[2],
        status: bhs[3], itt, snackTag: u32(20), statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32),
        expDataSN: u32(36), bidiReadResidualCount: u32(40), residualCount: u32(44), sense, responseData: rest,
      };
    }
    case Opcode.TASK_MGMT_RESPONSE:
      return {
        opcode: 0x22, response: bhs[2], itt, statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32),
      };
    case Opcode.LOGIN_RESPONSE:
      return {
        opcode: 0x23, transit: (f1 & FLAG_TRANSIT) !== 0, continue: (f1 & FLAG_CONTINUE) !== 0,
        csg: (f1 >> 2) & 3, nsg: f1 & 3, versionMax: bhs[2], versionActive: bhs[3], isid: bhs.readUIntBE(8, 6),
        tsih: bhs.readUInt16BE(14), itt, statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32),
        statusClass: bhs[36], statusDetail: bhs[37], data,
      };
    case Opcode.TEXT_RESPONSE:
      return {
        opcode: 0x24, final: (f1 & FLAG_FINAL) !== 0, continue: (f1 & FLAG_CONTINUE) !== 0, lun: lun(), itt,
        ttt: u32(20), statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32), data,
      };
    case Opcode.DATA_IN: {
      const s = (f1 & FLAG_STATUS) !== 0;
      return {
        opcode: 0x25, final: (f1 & FLAG_FINAL) !== 0, ack: (f1 & FLAG_ACK) !== 0,
        overflow: (f1 & FLAG_OVERFLOW) !== 0, underflow: (f1 & FLAG_UNDERFLOW) !== 0, statusPresent: s,
        status: s ? bhs[3] : 0, lun: lun(), itt, ttt: u32(20), statSN: s ? u32(24) : 0, expCmdSN: u32(28),
        maxCmdSN: u32(32), dataSN: u32(36), bufferOffset: u32(40), residualCount: u32(44), data,
        ...(frame.placed ? { placed: true } : {}),
      };
    }
    case Opcode.LOGOUT_RESPONSE:
      return {
        opcode: 0x26, response: bhs[2], itt, statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32),
        time2Wait: bhs.readUInt16BE(40), time2Retain: bhs.readUInt16BE(42),
      };
    case Opcode.R2T:
      return {
        opcode: 0x31, lun: lun(), itt, ttt: u32(20), statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32),
        r2tSN: u32(36), bufferOffset: u32(40), desiredDataTransferLength: u32(44),
      };
    case Opcode.ASYNC_MESSAGE:
      return {
        opcode: 0x32, lun: lun(), statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32), asyncEvent: bhs[36],
        asyncVCode: bhs[37], parameter1: bhs.readUInt16BE(38), parameter2: bhs.readUInt16BE(40),
        parameter3: bhs.readUInt16BE(42), data,
      };
    case Opcode.REJECT:
      return {
        opcode: 0x3f, reason: bhs[2], statSN: u32(24), expCmdSN: u32(28), maxCmdSN: u32(32), dataSN: u32(36), data,
      };
    default:
      throw new ProtocolError(`unknown opcode ${opcodeName(op)}`);
  }
}

/**
 * Decode exactly one contiguous PDU (BHS, AHS, digests, padded data) from
 * `buf`. Throws DigestError on digest mismatch, ProtocolError on length
 * errors or trailing bytes.
 */
export function decodePdu(buf: Buffer, opts: DigestOptions = NO_DIGESTS): Pdu {
  if (buf.length < BHS_LENGTH) throw new ProtocolError(`PDU of ${buf.length} bytes is shorter than a BHS`);
  const c = peekBhs(buf);
  const hd = opts.headerDigest ? 4 : 0;
  const dd = opts.dataDigest && c.dataSegmentLength > 0 ? 4 : 0;
  const hEnd = BHS_LENGTH + c.totalAhsLength;
  const dStart = hEnd + hd;
  const dEnd = dStart + c.dataSegmentLength + paddingOf(c.dataSegmentLength);
  if (buf.length !== dEnd + dd) {
    throw new ProtocolError(`PDU length ${buf.length} does not match its header (${dEnd + dd})`);
  }
  if (hd && crc32c(buf.subarray(0, hEnd)) !== readDigest(buf, hEnd)) {
    throw new DigestError('header', undefined, undefined, 'header digest mismatch');
  }
  if (dd && crc32c(buf.subarray(dStart, dEnd)) !== readDigest(buf, dEnd)) {
    throw new DigestError('data', c.itt, c.opcode, `data digest mismatch (ITT 0x${c.itt.toString(16)})`);
  }
  return decodeFrame({
    bhs: buf.subarray(0, BHS_LENGTH),
    ahs: buf.subarray(BHS_LENGTH, hEnd),
    data: buf.subarray(dStart, dStart + c.dataSegmentLength),
  });
}
