// Asynchronous Message (RFC 7143 11.9), reported to the owner as 'async',
// and Reject (RFC 7143 11.17), which ends the rejected task or operation.

import { ProtocolError } from '../../errors';
import { AsyncEvent, BHS_LENGTH, Opcode, OPCODE_MASK, opcodeName, RejectReason } from '../constants';
import { type AsyncMessagePdu, decodeLun, EMPTY, type RejectPdu, splitSenseData } from '../pdu';
import { type EngineCore, hex32 } from './core';

/** What 'async' reports (RFC 7143 11.9). */
export interface AsyncEventInfo {
  event: number;
  name: string;
  vcode: number;
  /** LUN as a number, or -1 if its addressing is not one we map. */
  lun: number;
  parameter1: number;
  parameter2: number;
  parameter3: number;
  /** SCSI async event (event 0): sense data. */
  sense?: Buffer;
  /** iSCSI event data following the sense data. */
  data: Buffer;
}

const ASYNC_NAMES: Record<number, string> = {
  [AsyncEvent.SCSI_ASYNC_EVENT]: 'scsi-async-event',
  [AsyncEvent.LOGOUT_REQUEST]: 'logout-request',
  [AsyncEvent.CONNECTION_DROP]: 'connection-drop',
  [AsyncEvent.SESSION_DROP]: 'session-drop',
  [AsyncEvent.NEGOTIATION_REQUEST]: 'negotiation-request',
  [AsyncEvent.TASK_TERMINATION]: 'task-termination',
  [AsyncEvent.VENDOR_SPECIFIC]: 'vendor-specific',
};

const REJECT_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(RejectReason).map(([k, v]) => [v, k.toLowerCase().replace(/_/g, ' ')]),
);

export function onAsync(c: EngineCore, pdu: AsyncMessagePdu): void {
  c.updateStatSN(pdu.statSN);
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  let lun = -1;
  try {
    lun = decodeLun(pdu.lun);
  } catch {
    // not an addressing we map; keep -1
  }
  const info: AsyncEventInfo = {
    event: pdu.asyncEvent,
    name: ASYNC_NAMES[pdu.asyncEvent] ?? `reserved-${pdu.asyncEvent}`,
    vcode: pdu.asyncVCode,
    lun,
    parameter1: pdu.parameter1,
    parameter2: pdu.parameter2,
    parameter3: pdu.parameter3,
    data: EMPTY,
  };
  try {
    const { sense, rest } = splitSenseData(pdu.data);
    if (sense.length > 0) info.sense = Buffer.from(sense);
    info.data = Buffer.from(rest);
  } catch {
    info.data = Buffer.from(pdu.data);
  }
  const level = pdu.asyncEvent === AsyncEvent.SCSI_ASYNC_EVENT || pdu.asyncEvent === AsyncEvent.VENDOR_SPECIFIC ? 'info' : 'warn';
  c.log[level]({ event: info.name, lun, p1: info.parameter1, p2: info.parameter2, p3: info.parameter3 }, 'iSCSI async message');
  c.events.emit('async', info);
}

// Reject (RFC 7143 11.17): the data segment is the rejected PDU's header.
export function onReject(c: EngineCore, pdu: RejectPdu): void {
  c.updateStatSN(pdu.statSN);
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  const reason = REJECT_NAMES[pdu.reason] ?? `reason 0x${pdu.reason.toString(16)}`;
  if (pdu.data.length < BHS_LENGTH) {
    c.log.error({ reason }, 'target rejected a PDU (no header returned)');
    return;
  }
  const op = pdu.data[0] & OPCODE_MASK;
  const itt = pdu.data.readUInt32BE(16);
  c.log.error({ reason, rejected: opcodeName(op), itt: hex32(itt) }, 'target rejected a PDU');
  const msg = `target rejected ${opcodeName(op)} (ITT ${hex32(itt)}): ${reason}`;
  switch (op) {
    case Opcode.SCSI_COMMAND: {
      const t = c.tasks.get(itt);
      if (!t) return;
      // The target drops a rejected command: nothing more comes for the ITT.
      c.removeTask(t);
      if (!t.failed) t.pending.reject(new ProtocolError(msg));
      return;
    }
    case Opcode.DATA_OUT:
      // At ERL 0 lost data cannot be resent on this connection.
      throw new ProtocolError(msg);
    case Opcode.NOP_OUT: case Opcode.TASK_MGMT_REQUEST: case Opcode.TEXT_REQUEST: case Opcode.LOGOUT_REQUEST: {
      const ctl = c.ctl.get(itt);
      if (!ctl) return;
      if (ctl.kind === 'logout') c.setState('full-feature');
      ctl.reject(new ProtocolError(msg));
      return;
    }
    default:
      return;
  }
}
