// WRITE data: what goes with the SCSI Command (immediate data, unsolicited
// Data-Out) and the Data-Out sequences that answer R2Ts. Every payload is a
// view of the caller's buffer: written data is never copied on the way out.

import { ProtocolError } from '../../errors';
import { BHS_LENGTH, Opcode, RESERVED_TAG } from '../constants';
import { type DataOutPdu, EMPTY, encodePduVectors, type R2tPdu } from '../pdu';
import { snAdd } from '../serial';
import { type EngineCore, type EngineParams, hex32 } from './core';
import type { Task } from './task';

// RFC 7143 11.3: a SCSI Command carries immediate data up to
// min(FirstBurstLength, MaxRecvDataSegmentLength(target)) and, when
// InitialR2T=No, is followed by unsolicited Data-Out up to FirstBurstLength.

/** The immediate data of a command (EMPTY when ImmediateData=No or nothing is written). */
export function immediateData(p: EngineParams, t: Task): Buffer {
  if (t.writeLen === 0 || !p.immediateData) return EMPTY;
  return t.dataOut.subarray(0, Math.min(t.writeLen, p.firstBurstLength, p.maxXmitDataSegmentLength));
}

/** Where the unsolicited data (immediate, then Data-Out) of a command ends. */
export function unsolicitedEnd(p: EngineParams, t: Task, immediateLength: number): number {
  if (t.writeLen === 0) return 0;
  return p.initialR2T ? immediateLength : Math.max(immediateLength, Math.min(t.writeLen, p.firstBurstLength));
}

// A Data-Out sequence (RFC 7143 11.7): PDUs of at most the target's
// MaxRecvDataSegmentLength, DataSN from 0, F on the last, payloads are views
// of the caller's buffer. Headers come from one slab per sequence.
export function dataOutSequence(c: EngineCore, t: Task, ttt: number, offset: number, length: number, out: Buffer[]): void {
  const mx = c.params.maxXmitDataSegmentLength;
  const count = Math.ceil(length / mx);
  const slab = Buffer.allocUnsafe(count * BHS_LENGTH);
  const end = offset + length;
  let sn = 0;
  for (let o = offset; o < end; o += mx) {
    const e = Math.min(end, o + mx);
    const pdu: DataOutPdu = {
      opcode: Opcode.DATA_OUT,
      final: e === end,
      lun: t.lun,
      itt: t.itt,
      ttt,
      expStatSN: c.expStatSN,
      dataSN: sn,
      bufferOffset: o,
      data: t.dataOut.subarray(o, e),
    };
    const vec = encodePduVectors(pdu, c.digests, slab.subarray(sn * BHS_LENGTH, (sn + 1) * BHS_LENGTH));
    for (const b of vec) out.push(b);
    sn++;
  }
}

// R2T (RFC 7143 11.8): answer with a Data-Out sequence of
// DesiredDataTransferLength bytes at BufferOffset, echoing the TTT.
export function onR2t(c: EngineCore, pdu: R2tPdu): void {
  const t = c.taskFor(pdu.itt, 'R2T');
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  if (t.writeLen === 0) throw new ProtocolError(`R2T for a command that writes nothing (ITT ${hex32(t.itt)})`);
  if (pdu.ttt === RESERVED_TAG) throw new ProtocolError('R2T with the reserved Target Transfer Tag');
  const len = pdu.desiredDataTransferLength;
  if (len === 0 || pdu.bufferOffset + len > t.writeLen) {
    throw new ProtocolError(`R2T for ${len} bytes at offset ${pdu.bufferOffset} outside the ${t.writeLen}-byte write`);
  }
  if (len > c.params.maxBurstLength) {
    c.log.warn({ len, maxBurstLength: c.params.maxBurstLength }, 'R2T longer than MaxBurstLength; serving it');
  }
  if (pdu.r2tSN !== t.nextR2TSN) {
    c.log.debug({ r2tSN: pdu.r2tSN, expected: t.nextR2TSN, itt: t.itt }, 'R2TSN out of order');
  }
  t.nextR2TSN = snAdd(pdu.r2tSN, 1);
  if (t.failed) return; // the target will end the task; do not feed it
  // Answered at once, so at most one of our R2Ts is ever outstanding,
  // which is within any MaxOutstandingR2T.
  const out: Buffer[] = [];
  dataOutSequence(c, t, pdu.ttt, pdu.bufferOffset, len, out);
  c.send(out);
}
