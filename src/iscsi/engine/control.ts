// Task management, Text and Logout (RFC 7143 11.5, 11.6, 11.10-11.15):
// the requests the engine's control operations send and the responses that
// settle them (ctl-op.ts). A LUN reset ends the tasks of its LUN here.

import { ProtocolError, ScsiError } from '../../errors';
import { Opcode, TmfFunction, TmfResponse } from '../constants';
import type { LogoutOp, TextOp, TmfOp } from '../ctl-op';
import { EMPTY, encodePduVectors, type LogoutResponsePdu, type TaskMgmtResponsePdu, type TextResponsePdu } from '../pdu';
import type { TextPair } from '../text';
import { type EngineCore, hex32 } from './core';
import type { PendingTask, Task } from './task';

const MAX_TEXT_ROUNDS = 1024;
/** A task sent this many times is not requeued after a LUN reset any more. */
const MAX_REQUEUE_ATTEMPTS = 5;

/** Task Management Function Request (immediate) for the operation's function, LUN and referenced task. */
export function sendTmf(c: EngineCore, op: TmfOp, refCmdSN: number, expDataSN: number): void {
  c.send(encodePduVectors({
    opcode: Opcode.TASK_MGMT_REQUEST, immediate: true, func: op.func, lun: op.lun, itt: op.itt, referencedTaskTag: op.refItt,
    cmdSN: c.cmdSN, expStatSN: c.expStatSN, refCmdSN, expDataSN,
  }, c.digests));
}

export function onTmfResponse(c: EngineCore, pdu: TaskMgmtResponsePdu): void {
  const op = c.ctl.get(pdu.itt);
  if (!op || op.kind !== 'tmf') throw new ProtocolError(`Task Management Response for unknown ITT ${hex32(pdu.itt)} (loss of sync)`);
  c.updateStatSN(pdu.statSN);
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  const ok = pdu.response === TmfResponse.FUNCTION_COMPLETE;
  c.log.info({ func: op.func, response: pdu.response }, 'task management response');
  if (op.func === TmfFunction.ABORT_TASK) {
    // After the response the target sends nothing more for that task.
    if (ok || pdu.response === TmfResponse.TASK_DOES_NOT_EXIST) {
      const t = c.tasks.get(op.refItt);
      if (t) abortLocal(c, t, op.abortError);
    }
  } else if (op.func === TmfFunction.LOGICAL_UNIT_RESET && ok) {
    c.requeueing(() => {
      const again: PendingTask[] = [];
      for (const t of [...c.tasks.values()]) {
        if (t.lun !== op.lun) continue;
        if (op.requeue && !t.failed && !t.pending.settled && t.pending.attempts < MAX_REQUEUE_ATTEMPTS) {
          c.removeTask(t);
          again.push(t.pending);
        } else {
          abortLocal(c, t);
        }
      }
      if (again.length > 0) {
        c.log.info({ count: again.length }, 'reissuing the commands the LUN reset aborted');
        c.adopt(again);
      }
    });
  }
  op.resolve(pdu.response);
}

function abortLocal(c: EngineCore, t: Task, err?: Error): void {
  c.removeTask(t);
  if (!t.failed) t.pending.reject(err ?? new ScsiError('ESCSI_ABORTED', `SCSI command (ITT ${hex32(t.itt)}) aborted`, 0x40));
}

/** A Text Request (not immediate: it takes a CmdSN), unless the operation ended meanwhile. */
export function issueText(c: EngineCore, op: TextOp, ttt: number, data: Buffer, out: Buffer[]): void {
  if (!c.ctl.has(op.itt)) return; // timed out meanwhile
  const cmdSN = c.takeCmdSN();
  for (const b of encodePduVectors({
    opcode: Opcode.TEXT_REQUEST, immediate: false, final: true, continue: false, lun: 0n, itt: op.itt, ttt, cmdSN,
    expStatSN: c.expStatSN, data,
  }, c.digests)) out.push(b);
}

export function onTextResponse(c: EngineCore, pdu: TextResponsePdu): void {
  const op = c.ctl.get(pdu.itt);
  if (!op || op.kind !== 'text') throw new ProtocolError(`Text Response for unknown ITT ${hex32(pdu.itt)} (loss of sync)`);
  c.updateStatSN(pdu.statSN);
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  if (pdu.final && pdu.continue) throw new ProtocolError('Text Response with both F and C set');
  let pairs: TextPair[] | undefined;
  try {
    // C=1: the text continues in the next response. F=0: more responses follow.
    op.collector.add(pdu.data, true);
    if (!pdu.continue && pdu.final) pairs = op.collector.add(EMPTY, false);
  } catch (e) {
    op.reject(e as Error);
    return;
  }
  if (pairs) {
    op.resolve(pairs);
    return;
  }
  if (++op.rounds > MAX_TEXT_ROUNDS) {
    op.reject(new ProtocolError(`Text exchange did not end within ${MAX_TEXT_ROUNDS} responses`));
    return;
  }
  // Ask for the rest: an empty Text Request echoing the TTT.
  c.queue.unshift({ kind: 'text', op, ttt: pdu.ttt, data: EMPTY });
}

/** Logout Request (immediate). */
export function sendLogout(c: EngineCore, op: LogoutOp, reason: number, cid: number): void {
  c.send(encodePduVectors({
    opcode: Opcode.LOGOUT_REQUEST, immediate: true, reason, itt: op.itt, cid, cmdSN: c.cmdSN, expStatSN: c.expStatSN,
  }, c.digests));
}

export function onLogoutResponse(c: EngineCore, pdu: LogoutResponsePdu): void {
  const op = c.ctl.get(pdu.itt);
  if (!op || op.kind !== 'logout') throw new ProtocolError(`Logout Response for unknown ITT ${hex32(pdu.itt)} (loss of sync)`);
  c.updateStatSN(pdu.statSN);
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  c.log.debug({ response: pdu.response, time2Wait: pdu.time2Wait, time2Retain: pdu.time2Retain }, 'logout response');
  c.stopTimers();
  c.setState('logged-out');
  op.resolve(pdu);
}
