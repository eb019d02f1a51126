// Hand-written PDU byte fixtures, laid out from the RFC 7143 section 11
// diagrams (one line = one 4-byte word of the BHS), each with the object the
// decoder must produce. They are independent of the encoder.

import type { Pdu } from '../../src/iscsi/pdu';
import { crc32c, digestBytes } from '../../src/iscsi/crc32c';

export function hex(s: string): Buffer {
  const clean = s.replace(/#[^\n]*/g, '').replace(/\s+/g, '');
  if (clean.length % 2) throw new Error('odd hex');
  return Buffer.from(clean, 'hex');
}

const Z16 = '00000000 00000000 00000000 00000000';

export interface Fixture {
  name: string;
  /** The whole PDU without digests. */
  bytes: Buffer;
  /** Length of BHS + AHS (where a header digest would go). */
  headerLength: number;
  /** Data segment length without padding. */
  dataLength: number;
  pdu: Pdu;
}

function fx(name: string, words: string, data: string, pdu: Pdu): Fixture {
  const header = hex(words);
  const d = hex(data);
  const pad = Buffer.alloc((4 - (d.length % 4)) % 4);
  return { name, bytes: Buffer.concat([header, d, pad]), headerLength: header.length, dataLength: d.length, pdu };
}

const CDB32 = Buffer.from(Array.from({ length: 32 }, (_, i) => (i === 0 ? 0x7f : i)));
const SENSE = hex('70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 00 00 00');
const REJECTED_BHS = hex(`01 c1 00 00 ${'00'.repeat(44)}`);

export const FIXTURES: Fixture[] = [
  fx('NOP-Out ping with data', `
    40 80 00 00   # I, NOP-Out; F
    00 00 00 04   # AHS 0, DSL 4
    00 01 00 00
    00 00 00 00   # LUN 1
    00 00 00 0a   # ITT
    ff ff ff ff   # TTT
    00 00 00 05   # CmdSN
    00 00 00 07   # ExpStatSN
    ${Z16}`, '70 69 6e 67', {
    opcode: 0x00, immediate: true, lun: 0x0001000000000000n, itt: 10, ttt: 0xffffffff, cmdSN: 5, expStatSN: 7,
    data: Buffer.from('ping'),
  }),
  fx('NOP-In reply to NOP-Out, max sequence numbers', `
    20 80 00 00
    00 00 00 00
    00 00 00 00 00 00 00 00
    00 00 00 0a   # ITT
    ff ff ff ff   # TTT
    ff ff ff ff   # StatSN
    00 00 00 00   # ExpCmdSN
    80 00 00 00   # MaxCmdSN
    00 00 00 00 00 00 00 00 00 00 00 00`, '', {
    opcode: 0x20, lun: 0n, itt: 10, ttt: 0xffffffff, statSN: 0xffffffff, expCmdSN: 0, maxCmdSN: 0x80000000,
    data: Buffer.alloc(0),
  }),
  fx('SCSI Command READ(10)', `
    01 c1 00 00   # SCSI Command; F R ATTR=simple
    00 00 00 00
    00 00 00 00 00 00 00 00
    00 00 00 01   # ITT
    00 00 10 00   # EDTL 4096
    00 00 00 02   # CmdSN
    00 00 00 03   # ExpStatSN
    28 00 00 00 00 10 00 00 08 00 00 00 00 00 00 00`, '', {
    opcode: 0x01, immediate: false, final: true, read: true, write: false, attr: 1, lun: 0n, itt: 1,
    expectedDataTransferLength: 4096, cmdSN: 2, expStatSN: 3,
    cdb: hex('28 00 00 00 00 10 00 00 08 00 00 00 00 00 00 00'), data: Buffer.alloc(0),
  }),
  fx('SCSI Command 32-byte CDB, bidi, immediate data', `
    01 e2 00 00   # F R W ATTR=ordered
    07 00 00 05   # TotalAHSLength 7 words, DSL 5
    00 02 00 00 00 00 00 00
    12 34 56 78
    00 00 02 00
    fe dc ba 98
    00 00 00 00
    ${CDB32.subarray(0, 16).toString('hex')}
    00 11 01 00   # AHSLength 17, extended CDB
    ${CDB32.subarray(16).toString('hex')}
    00 05 02 00   # AHSLength 5, bidi read length
    00 00 04 00`, '68 65 6c 6c 6f', {
    opcode: 0x01, immediate: false, final: true, read: true, write: true, attr: 2, lun: 0x0002000000000000n,
    itt: 0x12345678, expectedDataTransferLength: 512, cmdSN: 0xfedcba98, expStatSN: 0, cdb: CDB32,
    bidiReadLength: 1024, data: Buffer.from('hello'),
  }),
  fx('SCSI Response CHECK CONDITION with sense', `
    21 80 00 02   # F, response 0, status 2
    00 00 00 14   # DSL 20
    00 00 00 00 00 00 00 00
    00 00 00 01   # ITT
    00 00 00 00   # SNACK tag
    00 00 00 10   # StatSN
    00 00 00 11
    00 00 00 20
    00 00 00 00
    00 00 00 00
    00 00 00 00`, `00 12 ${SENSE.toString('hex')}`, {
    opcode: 0x21, bidiOverflow: false, bidiUnderflow: false, overflow: false, underflow: false, response: 0,
    status: 2, itt: 1, snackTag: 0, statSN: 0x10, expCmdSN: 0x11, maxCmdSN: 0x20, expDataSN: 0,
    bidiReadResidualCount: 0, residualCount: 0, sense: SENSE, responseData: Buffer.alloc(0),
  }),
  fx('SCSI Response underflow + bidi overflow', `
    21 92 00 00   # F o U
    00 00 00 00
    00 00 00 00 00 00 00 00
    00 00 00 02
    00 00 00 00
    00 00 00 10
    00 00 00 11
    00 00 00 20
    00 00 00 03   # ExpDataSN
    00 00 00 40   # bidi residual
    00 00 02 00   # residual`, '', {
    opcode: 0x21, bidiOverflow: true, bidiUnderflow: false, overflow: false, underflow: true, response: 0,
    status: 0, itt: 2, snackTag: 0, statSN: 0x10, expCmdSN: 0x11, maxCmdSN: 0x20, expDataSN: 3,
    bidiReadResidualCount: 0x40, residualCount: 0x200, sense: Buffer.alloc(0), responseData: Buffer.alloc(0),
  }),
  fx('Task Management ABORT TASK', `
    42 81 00 00   # I, TMF; F function 1
    00 00 00 00
    00 02 00 00 00 00 00 00
    00 00 00 09   # ITT
    00 00 00 04   # RTT
    00 00 00 0c
    00 00 00 0d
    00 00 00 0b   # RefCmdSN
    00 00 00 00   # ExpDataSN
    00 00 00 00 00 00 00 00`, '', {
    opcode: 0x02, immediate: true, func: 1, lun: 0x0002000000000000n, itt: 9, referencedTaskTag: 4, cmdSN: 12,
    expStatSN: 13, refCmdSN: 11, expDataSN: 0,
  }),
  fx('Task Management Response', `
    22 80 01 00   # response 1: task does not exist
    00 00 00 00
    00 00 00 00 00 00 00 00
    00 00 00 09
    00 00 00 00
    00 00 00 0e
    00 00 00 0d
    00 00 00 2d
    ${'00'.repeat(12)}`, '', {
    opcode: 0x22, response: 1, itt: 9, statSN: 14, expCmdSN: 13, maxCmdSN: 45,
  }),
  fx('Login Request operational -> full feature', `
    43 87 00 00   # I, Login; T, CSG 1, NSG 3; version 0..0
    00 00 00 13   # DSL 19
    80 12 34 56 78 9a   # ISID
    00 00         # TSIH
    00 00 00 00   # ITT
    00 01 00 00   # CID 1
    00 00 00 00   # CmdSN
    00 00 00 00   # ExpStatSN
    ${Z16}`, Buffer.from('SessionType=Normal\0').toString('hex'), {
    opcode: 0x03, transit: true, continue: false, csg: 1, nsg: 3, versionMax: 0, versionMin: 0,
    isid: 0x80123456789a, tsih: 0, itt: 0, cid: 1, cmdSN: 0, expStatSN: 0, data: Buffer.from('SessionType=Normal\0'),
  }),
  fx('Login Response success', `
    23 87 00 00
    00 00 00 00
    80 12 34 56 78 9a
    00 05         # TSIH 5
    00 00 00 00
    00 00 00 00
    00 00 00 01   # StatSN
    00 00 00 00
    00 00 00 40
    00 00 00 00   # status 0/0
    00 00 00 00 00 00 00 00`, '', {
    opcode: 0x23, transit: true, continue: false, csg: 1, nsg: 3, versionMax: 0, versionActive: 0,
    isid: 0x80123456789a, tsih: 5, itt: 0, statSN: 1, expCmdSN: 0, maxCmdSN: 0x40, statusClass: 0,
    statusDetail: 0, data: Buffer.alloc(0),
  }),
  fx('Login Response authentication failure, C bit', `
    23 40 00 00   # C, CSG 0 NSG 0
    00 00 00 00
    40 00 00 00 00 01
    00 00
    00 00 00 07
    00 00 00 00
    00 00 00 00
    00 00 00 01
    00 00 00 01
    02 01 00 00
    00 00 00 00 00 00 00 00`, '', {
    opcode: 0x23, transit: false, continue: true, csg: 0, nsg: 0, versionMax: 0, versionActive: 0,
    isid: 0x400000000001, tsih: 0, itt: 7, statSN: 0, expCmdSN: 1, maxCmdSN: 1, statusClass: 2,
    statusDetail: 1, data: Buffer.alloc(0),
  }),
  fx('Text Request SendTargets', `
    44 80 00 00   # I, Text; F
    00 00 00 10
    00 00 00 00 00 00 00 00
    00 00 00 03
    ff ff ff ff
    00 00 00 01
    00 00 00 01
    ${Z16}`, Buffer.from('SendTargets=All\0').toString('hex'), {
    opcode: 0x04, immediate: true, final: true, continue: false, lun: 0n, itt: 3, ttt: 0xffffffff, cmdSN: 1,
    expStatSN: 1, data: Buffer.from('SendTargets=All\0'),
  }),
  fx('Text Response with C bit', `
    24 40 00 00   # C, not F
    00 00 00 06
    00 00 00 00 00 00 00 00
    00 00 00 03
    00 00 00 99   # TTT
    00 00 00 01
    00 00 00 02
    00 00 00 09
    ${'00'.repeat(12)}`, Buffer.from('Target').toString('hex'), {
    opcode: 0x24, final: false, continue: true, lun: 0n, itt: 3, ttt: 0x99, statSN: 1, expCmdSN: 2, maxCmdSN: 9,
    data: Buffer.from('Target'),
  }),
  fx('Data-Out', `
    05 80 00 00
    00 00 00 07
    00 01 00 00 00 00 00 00
    00 00 00 21
    00 00 70 00   # TTT
    00 00 00 00
    00 00 00 05   # ExpStatSN
    00 00 00 00
    00 00 00 02   # DataSN
    00 01 00 00   # Buffer Offset
    00 00 00 00`, '01 02 03 04 05 06 07', {
    opcode: 0x05, final: true, lun: 0x0001000000000000n, itt: 0x21, ttt: 0x7000, expStatSN: 5, dataSN: 2,
    bufferOffset: 0x10000, data: hex('01 02 03 04 05 06 07'),
  }),
  fx('Data-In with status', `
    25 83 00 00   # F U S, status GOOD
    00 00 00 08
    00 00 00 00 00 00 00 00
    00 00 00 21
    ff ff ff ff
    00 00 00 30   # StatSN
    00 00 00 31
    00 00 00 50
    00 00 00 00   # DataSN
    00 00 00 00   # offset
    00 00 01 f8   # residual 504`, '00 11 22 33 44 55 66 77', {
    opcode: 0x25, final: true, ack: false, overflow: false, underflow: true, statusPresent: true, status: 0,
    lun: 0n, itt: 0x21, ttt: 0xffffffff, statSN: 0x30, expCmdSN: 0x31, maxCmdSN: 0x50, dataSN: 0,
    bufferOffset: 0, residualCount: 504, data: hex('00 11 22 33 44 55 66 77'),
  }),
  fx('Data-In middle PDU with A bit', `
    25 40 00 00   # A
    00 00 00 03
    00 03 00 00 00 00 00 00
    00 00 00 22
    00 00 00 44
    00 00 00 00
    00 00 00 31
    00 00 00 50
    00 00 00 01
    00 00 20 00
    00 00 00 00`, 'aa bb cc', {
    opcode: 0x25, final: false, ack: true, overflow: false, underflow: false, statusPresent: false, status: 0,
    lun: 0x0003000000000000n, itt: 0x22, ttt: 0x44, statSN: 0, expCmdSN: 0x31, maxCmdSN: 0x50, dataSN: 1,
    bufferOffset: 0x2000, residualCount: 0, data: hex('aa bb cc'),
  }),
  fx('R2T', `
    31 80 00 00
    00 00 00 00
    00 01 00 00 00 00 00 00
    00 00 00 21
    00 00 70 00
    00 00 00 30
    00 00 00 31
    00 00 00 50
    00 00 00 00   # R2TSN
    00 00 00 00   # offset
    00 04 00 00   # desired 256 KiB`, '', {
    opcode: 0x31, lun: 0x0001000000000000n, itt: 0x21, ttt: 0x7000, statSN: 0x30, expCmdSN: 0x31, maxCmdSN: 0x50,
    r2tSN: 0, bufferOffset: 0, desiredDataTransferLength: 0x40000,
  }),
  fx('Logout Request close session', `
    46 80 00 00
    00 00 00 00
    00 00 00 00 00 00 00 00
    00 00 00 0f
    00 02 00 00   # CID 2
    00 00 00 40
    00 00 00 33
    ${Z16}`, '', {
    opcode: 0x06, immediate: true, reason: 0, itt: 15, cid: 2, cmdSN: 0x40, expStatSN: 0x33,
  }),
  fx('Logout Response', `
    26 80 00 00
    00 00 00 00
    00 00 00 00 00 00 00 00
    00 00 00 0f
    00 00 00 00
    00 00 00 33
    00 00 00 41
    00 00 00 60
    00 00 00 00
    00 02 00 14   # Time2Wait 2, Time2Retain 20
    00 00 00 00`, '', {
    opcode: 0x26, response: 0, itt: 15, statSN: 0x33, expCmdSN: 0x41, maxCmdSN: 0x60, time2Wait: 2, time2Retain: 20,
  }),
  fx('SNACK status', `
    10 81 00 00   # F, type 1
    00 00 00 00
    00 00 00 00 00 00 00 00
    ff ff ff ff
    ff ff ff ff
    00 00 00 00
    00 00 00 33
    00 00 00 00 00 00 00 00
    00 00 00 30   # BegRun
    00 00 00 02   # RunLength`, '', {
    opcode: 0x10, type: 1, lun: 0n, itt: 0xffffffff, ttt: 0xffffffff, expStatSN: 0x33, begRun: 0x30, runLength: 2,
  }),
  fx('Async Message logout request', `
    32 80 00 00
    00 00 00 00
    00 00 00 00 00 00 00 00
    ff ff ff ff
    00 00 00 00
    00 00 00 34
    00 00 00 41
    00 00 00 60
    01 00 00 00   # event 1, vcode 0, param1 0
    00 05 00 14   # param2 5 (Time2Wait), param3 20
    00 00 00 00`, '', {
    opcode: 0x32, lun: 0n, statSN: 0x34, expCmdSN: 0x41, maxCmdSN: 0x60, asyncEvent: 1, asyncVCode: 0,
    parameter1: 0, parameter2: 5, parameter3: 20, data: Buffer.alloc(0),
  }),
  fx('Reject protocol error', `
    3f 80 04 00
    00 00 00 30
    00 00 00 00 00 00 00 00
    ff ff ff ff
    00 00 00 00
    00 00 00 35
    00 00 00 41
    00 00 00 60
    00 00 00 00
    00 00 00 00 00 00 00 00`, REJECTED_BHS.toString('hex'), {
    opcode: 0x3f, reason: 4, statSN: 0x35, expCmdSN: 0x41, maxCmdSN: 0x60, dataSN: 0, data: REJECTED_BHS,
  }),
];

/** Insert digests into a fixture, computed over the fixture bytes directly. */
export function withDigests(bytes: Buffer, headerLength: number, dataLength: number, hd: boolean, dd: boolean): Buffer {
  const header = bytes.subarray(0, headerLength);
  const seg = bytes.subarray(headerLength);
  const parts = [header];
  if (hd) parts.push(digestBytes(crc32c(header)));
  parts.push(seg);
  if (dd && dataLength > 0) parts.push(digestBytes(crc32c(seg)));
  return Buffer.concat(parts);
}
