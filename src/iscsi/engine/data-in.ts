// READ completion: Data-In (placed by the framer or copied here), the SCSI
// Response, and the residuals that decide how much of the buffer is data.

import { ProtocolError, ScsiError } from '../../errors';
import type { ScsiResponse } from '../../scsi/transport';
import { Opcode, OPCODE_MASK, ScsiResponseCode } from '../constants';
import { type DataInPdu, EMPTY, type ScsiResponsePdu } from '../pdu';
import { snAdd } from '../serial';
import { type EngineCore, hex32 } from './core';
import type { Task } from './task';

/**
 * Where a Data-In's payload should land, asked by the framer before the
 * bytes arrive: the reader's own buffer at the PDU's Buffer Offset, so the
 * data is copied once, socket chunk to destination. Anything doubtful
 * returns undefined and takes the ordinary checked path in onDataIn.
 */
export function placeDataIn(c: EngineCore, bhs: Buffer, dsl: number): Buffer | undefined {
  // The framer asks once per PDU and hands that PDU to receive() (marked
  // `placed` when its payload went to the buffer named here) before it asks again.
  c.placing = undefined;
  if ((bhs[0] & OPCODE_MASK) !== Opcode.DATA_IN) return undefined;
  // Data-In BHS (RFC 7143 11.7): ITT at bytes 16-19, Buffer Offset at 40-43.
  const itt = bhs.readUInt32BE(16);
  const t = c.tasks.get(itt);
  if (!t || t.failed || t.readLen === 0) return undefined;
  const off = bhs.readUInt32BE(40);
  if (off + dsl > t.readLen || (inOrder(c) && off !== t.received)) return undefined;
  t.inBuf ??= t.pending.req.dataIn ?? Buffer.allocUnsafe(t.readLen);
  c.placing = t;
  return t.inBuf.subarray(off, off + dsl);
}

/** DataPDUInOrder=Yes and DataSequenceInOrder=Yes (what we always offer; the result is OR): one run of data from offset 0. */
function inOrder(c: EngineCore): boolean {
  return c.params.dataPDUInOrder && c.params.dataSequenceInOrder;
}

/**
 * Whether n bytes at off may be taken: the data must never cover a byte twice,
 * for completeness is judged by the count of bytes received (a repeated
 * offset would leave a gap the count does not show, and hand out bytes the
 * target never sent). In order (RFC 7143 13.19, 13.20), each PDU starts where
 * the last ended; out of order, it overlaps none of those before.
 */
function takesRange(c: EngineCore, t: Task, off: number, n: number): string | undefined {
  if (inOrder(c)) {
    return off === t.received ? undefined : `Data-In at offset ${off}, expected ${t.received}: with DataPDUInOrder=Yes the data follows on without gap or overlap`;
  }
  const r = (t.inRanges ??= []);
  for (let i = 0; i < r.length; i += 2) {
    if (off < r[i + 1] && r[i] < off + n) return `Data-In at offset ${off} + ${n} bytes overlaps data already received at ${r[i]}-${r[i + 1]}`;
  }
  r.push(off, off + n);
  return undefined;
}

// SCSI Data-In (RFC 7143 11.7): data at BufferOffset, DataSN in order
// from 0 per command, status with the last one when S is set.
export function onDataIn(c: EngineCore, pdu: DataInPdu): void {
  c.placing = undefined;
  const t = c.taskFor(pdu.itt, 'Data-In');
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  if (pdu.statusPresent) c.updateStatSN(pdu.statSN);
  if (!t.failed) {
    const n = pdu.data.length;
    let bad: string | undefined;
    if (t.readLen === 0 && n > 0) {
      c.failTask(t, new ProtocolError(`Data-In for a command that reads nothing (ITT ${hex32(t.itt)})`));
    } else if (pdu.dataSN !== t.nextDataSN) {
      c.failTask(t, new ProtocolError(`Data-In DataSN ${pdu.dataSN}, expected ${t.nextDataSN} (ITT ${hex32(t.itt)})`));
    } else if (pdu.bufferOffset + n > t.readLen) {
      c.failTask(t, new ProtocolError(
        `Data-In at offset ${pdu.bufferOffset} + ${n} bytes overflows the expected ${t.readLen} (ITT ${hex32(t.itt)})`,
      ));
    } else if (n > 0 && (bad = takesRange(c, t, pdu.bufferOffset, n)) !== undefined) {
      c.failTask(t, new ProtocolError(`${bad} (ITT ${hex32(t.itt)})`));
    } else {
      t.nextDataSN = snAdd(t.nextDataSN, 1);
      if (n > 0) {
        t.inBuf ??= t.pending.req.dataIn ?? Buffer.allocUnsafe(t.readLen);
        // Placed: the framer streamed it into t.inBuf at this offset (placeDataIn, for this very header).
        if (!pdu.placed) pdu.data.copy(t.inBuf, pdu.bufferOffset);
        t.received += n;
      }
    }
  }
  // A bit (DataACK) only matters at ERL > 0, where SNACK exists.
  if (pdu.statusPresent) {
    if (!pdu.final) throw new ProtocolError(`Data-In with S but not F (ITT ${hex32(t.itt)})`);
    complete(c, t, pdu.status, EMPTY, pdu.underflow, pdu.overflow, pdu.residualCount);
  }
}

export function onScsiResponse(c: EngineCore, pdu: ScsiResponsePdu): void {
  const t = c.taskFor(pdu.itt, 'SCSI Response');
  c.updateStatSN(pdu.statSN);
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  if (pdu.response !== ScsiResponseCode.COMMAND_COMPLETED && !t.failed) {
    c.failTask(t, new ScsiError('ESCSI_IO', `iSCSI target failure (response 0x${pdu.response.toString(16)}) for ITT ${hex32(t.itt)}`, pdu.status));
  }
  complete(c, t, pdu.status, pdu.sense, pdu.underflow, pdu.overflow, pdu.residualCount);
}

function complete(
  c: EngineCore, t: Task, status: number, sense: Buffer, underflow: boolean, overflow: boolean, residualCount: number,
): void {
  c.removeTask(t);
  if (t.failed || t.pending.settled) return;
  let residual = 0;
  if (underflow) residual = residualCount;
  else if (overflow) residual = -residualCount;
  const resp: ScsiResponse = { status, residual };
  if (sense.length > 0) resp.sense = Buffer.from(sense); // the frame is a view of a socket chunk
  if (t.readLen > 0) {
    let n = t.readLen - (residual > 0 ? Math.min(residual, t.readLen) : 0);
    if (t.received < n) {
      // Less data than announced: never hand out bytes the target did not send.
      if (status === 0) {
        t.pending.reject(new ProtocolError(
          `target sent ${t.received} of ${n} bytes without reporting an underflow (ITT ${hex32(t.itt)})`,
        ));
        return;
      }
      n = t.received;
    }
    const buf = t.inBuf ?? t.pending.req.dataIn ?? EMPTY;
    resp.data = buf.subarray(0, n);
  }
  t.pending.resolve(resp);
}
