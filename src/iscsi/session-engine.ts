// Full-feature-phase engine of one iSCSI connection (RFC 7143 sections 3-4,
// 11), with no socket: receive() takes decoded target PDUs, onSend() gets
// the encoded initiator PDUs (digests included), timers come from a clock.
//
// Sequence numbers are RFC 1982 serials. Commands wait in a FIFO while the
// CmdSN window is closed (CmdSN > MaxCmdSN, which covers the "MaxCmdSN =
// ExpCmdSN - 1" closed window); immediate PDUs (NOP-Out, TMF, Logout) carry
// the current CmdSN without advancing it.
//
// An unknown ITT on a PDU that must match one of ours is loss of sync: the
// engine dies ('fatal') and the owner drops the connection. A task-level
// fault (Data-In overflow, DataSN gap, Reject of the command) fails that task
// only. At ERL 0 recovery is a new session: drainTasks() hands back every
// SCSI task so another engine can reissue it with a new ITT and CmdSN.
//
// This class is the public API and the dispatcher: submission, the CmdSN
// window's queue, command deadlines and teardown. The task table and the
// command window are its SessionCore (engine/core.ts); the PDU handlers are
// per concern in engine/: data-in.ts (READ data, SCSI Response), data-out.ts
// (immediate data, unsolicited Data-Out, R2T), nop.ts (pings, keepalive),
// async-reject.ts, control.ts (TMF, Text, Logout).

import { EventEmitter } from 'node:events';
import { ProtocolError, RequestError, TransportError } from '../errors';
import { rootLogger, type Logger } from '../log';
import type { ScsiRequest, ScsiResponse } from '../scsi/transport';
import { LogoutReason, Opcode, opcodeName, RESERVED_TAG, TaskAttr, TmfFunction, TmfResponse } from './constants';
import { EMPTY, encodeLun, encodePduVectors, LogoutResponsePdu, Pdu, ScsiCommandPdu } from './pdu';
import { snDiff } from './serial';
import { IttAllocator } from './itt';
import { systemClock, type EngineClock, type TimerHandle } from './clock';
import type { CtlInit, CtlOp, CtlResult, LogoutOp, PingOp, TextOp, TmfOp } from './ctl-op';
import { SEND_TARGETS_REPEATABLE, TextCollector, TextPair, encodeText } from './text';
import { connLost, hex32, SessionCore, type EngineParams, type EngineState, type Queued } from './engine/core';
import { createPendingTask, disarmDeadline, type PendingTask, type Task } from './engine/task';
import { onDataIn, onScsiResponse, placeDataIn } from './engine/data-in';
import { dataOutSequence, immediateData, onR2t, unsolicitedEnd } from './engine/data-out';
import { Keepalive, onNopIn, sendNopOut } from './engine/nop';
import { onAsync, onReject } from './engine/async-reject';
import { issueText, onLogoutResponse, onTextResponse, onTmfResponse, sendLogout, sendTmf } from './engine/control';

// ---------------------------------------------------------------- re-exports

export { systemClock } from './clock';
export type { EngineClock, TimerHandle } from './clock';
export type { EngineParams, EngineState } from './engine/core';
export { createPendingTask, type PendingTask } from './engine/task';
export type { AsyncEventInfo } from './engine/async-reject';

// ---------------------------------------------------------------- options

export interface SessionEngineOptions {
  params: EngineParams;
  /** From the final Login Response (LoginResult). */
  cmdSN: number;
  expStatSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  cid?: number;
  /** Encoded PDUs to write, in order (write them as one batch). */
  onSend: (buffers: Buffer[]) => void;
  clock?: EngineClock;
  log?: Logger;
  /** Default per-command timeout (ms); 0 = none. Expiry emits 'timeout'. */
  commandTimeoutMs?: number;
  /** Ping the target after this much silence (ms); 0 = never. */
  nopIntervalMs?: number;
  /** A ping unanswered this long kills the engine (ms). */
  nopTimeoutMs?: number;
  /** First ITT to try (tests). */
  firstItt?: number;
}

/** What 'timeout' reports: the owner decides what to do (abort, reset, drop). */
export interface CommandTimeoutInfo {
  itt: number;
  lun: number;
  /** False while the command still waits for the CmdSN window. */
  sent: boolean;
  ageMs: number;
  cdbOpcode: number;
}

const ATTR: Record<string, number> = {
  simple: TaskAttr.SIMPLE,
  ordered: TaskAttr.ORDERED,
  head: TaskAttr.HEAD_OF_QUEUE,
  aca: TaskAttr.ACA,
};

// ---------------------------------------------------------------- engine

/**
 * Events:
 *  - 'fatal' (err: Error): the connection must be dropped; emitted once.
 *  - 'async' (info: AsyncEventInfo)
 *  - 'timeout' (info: CommandTimeoutInfo)
 *  - 'idle': no SCSI task in flight or queued any more.
 *  - 'taskDone': a sent SCSI task ended (any outcome).
 *  - 'state' (from: EngineState, to: EngineState)
 */
export class SessionEngine extends EventEmitter {
  private readonly core: SessionCore;
  private readonly clock: EngineClock;
  private readonly cid: number;
  private readonly commandTimeoutMs: number;
  private readonly nopTimeoutMs: number;

  private readonly itts: IttAllocator;
  /** One timer for every command timeout: armed for the earliest deadline. */
  private deadlineTimer: TimerHandle | undefined;
  private deadlineAt = 0;
  private paused = false;
  private readonly keepalive: Keepalive;
  private fatalError: Error | undefined;

  constructor(opts: SessionEngineOptions) {
    super();
    const params = { ...opts.params };
    if (params.maxXmitDataSegmentLength < 1) throw new RangeError('maxXmitDataSegmentLength must be positive');
    this.clock = opts.clock ?? systemClock;
    this.core = new SessionCore(
      params,
      { headerDigest: opts.params.headerDigest, dataDigest: opts.params.dataDigest },
      (opts.log ?? rootLogger()).child({ component: 'iscsi-session' }),
      this,
      { adopt: (p) => this.adopt(p), stopTimers: () => this.stopTimers() },
      opts.onSend,
      opts,
    );
    this.cid = opts.cid ?? 0;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 0;
    this.nopTimeoutMs = opts.nopTimeoutMs ?? 10000;
    this.itts = new IttAllocator(opts.firstItt);
    this.keepalive = new Keepalive(this.core, this.clock, opts.nopIntervalMs ?? 0, this.nopTimeoutMs, (ms) => this.ping(ms));
  }

  // ------------------------------------------------------------ accessors

  get state(): EngineState {
    return this.core.st;
  }

  /** SCSI tasks sent and not finished, plus those waiting for the window. */
  get inFlight(): number {
    return this.core.inFlight;
  }

  /** SCSI tasks waiting for the CmdSN window. */
  get queued(): number {
    return this.core.queuedScsi;
  }

  get error(): Error | undefined {
    return this.fatalError;
  }

  get sequence(): { cmdSN: number; expCmdSN: number; maxCmdSN: number; expStatSN: number; window: number } {
    const c = this.core;
    return {
      cmdSN: c.cmdSN,
      expCmdSN: c.expCmdSN,
      maxCmdSN: c.maxCmdSN,
      expStatSN: c.expStatSN,
      window: Math.max(0, snDiff(c.maxCmdSN, c.cmdSN) + 1),
    };
  }

  /** The ITT a pending task currently has on this engine (tests, timeouts). */
  ittOf(p: PendingTask): number | undefined {
    for (const t of this.core.tasks.values()) if (t.pending === p) return t.itt;
    return undefined;
  }

  // ------------------------------------------------------------ submission

  /** Queue a SCSI command; resolves with the device's status, rejects on transport/protocol failure. */
  submit(req: ScsiRequest): Promise<ScsiResponse> {
    const { task, promise } = createPendingTask(req, this.clock.now());
    this.adopt([task]);
    return promise;
  }

  /**
   * Take over pending tasks (from a previous engine's drainTasks() or parked
   * by the owner): they go ahead of anything queued later, in order.
   */
  adopt(pending: readonly PendingTask[]): void {
    const c = this.core;
    const add: Queued[] = [];
    for (const p of pending) {
      if (p.settled) continue;
      if (c.st !== 'full-feature') {
        p.reject(this.notReady());
        continue;
      }
      const t = this.makeTask(p);
      if (t) add.push({ kind: 'scsi', task: t });
    }
    // Tasks adopted in one call keep their relative order; they are queued
    // after what is already waiting (owner adopts drained tasks first).
    for (const q of add) c.queue.push(q);
    c.queuedScsi += add.length;
    this.dispatch();
  }

  private makeTask(p: PendingTask): Task | undefined {
    const req = p.req;
    const writeLen = req.dataOut?.length ?? 0;
    const readLen = req.dataInLength ?? 0;
    let lun: bigint;
    try {
      lun = encodeLun(req.lun);
    } catch {
      p.reject(new RequestError('EINVAL', `LUN ${req.lun} cannot be addressed`));
      return undefined;
    }
    if (!req.cdb || req.cdb.length === 0) {
      p.reject(new RequestError('EINVAL', 'empty CDB'));
      return undefined;
    }
    if (writeLen > 0 && readLen > 0) {
      p.reject(new RequestError('EINVAL', 'bidirectional SCSI commands are not supported'));
      return undefined;
    }
    if (!Number.isInteger(readLen) || readLen < 0 || readLen > 0xffffffff) {
      p.reject(new RequestError('EINVAL', `bad dataInLength ${readLen}`));
      return undefined;
    }
    if (req.dataIn && req.dataIn.length < readLen) {
      p.reject(new RequestError('EINVAL', `dataIn buffer of ${req.dataIn.length} bytes is shorter than dataInLength ${readLen}`));
      return undefined;
    }
    const t: Task = {
      pending: p,
      lun,
      lunNumber: req.lun,
      itt: RESERVED_TAG,
      cmdSN: 0,
      sent: false,
      dataOut: req.dataOut ?? EMPTY,
      writeLen,
      readLen,
      nextDataSN: 0,
      received: 0,
      nextR2TSN: 0,
      deadline: 0,
      startedAt: this.clock.now(),
    };
    const timeout = req.timeoutMs ?? this.commandTimeoutMs;
    if (timeout > 0) {
      t.deadline = t.startedAt + timeout;
      if (this.deadlineTimer === undefined || t.deadline < this.deadlineAt) this.armDeadline(t.deadline);
    }
    return t;
  }

  // Command timeouts share one timer, armed for the earliest deadline: a
  // per-command timer would cost a timer insert and removal on every I/O.
  private armDeadline(at: number): void {
    if (this.deadlineTimer !== undefined) this.clock.clearTimeout(this.deadlineTimer);
    this.deadlineAt = at;
    this.deadlineTimer = this.clock.setTimeout(() => this.onDeadline(), Math.max(0, at - this.clock.now()));
  }

  private onDeadline(): void {
    this.deadlineTimer = undefined;
    if (this.core.st === 'dead') return;
    const now = this.clock.now();
    const expired: Task[] = [];
    let next = Infinity;
    const consider = (t: Task): void => {
      if (t.deadline === 0) return;
      if (t.deadline <= now) expired.push(t);
      else if (t.deadline < next) next = t.deadline;
    };
    for (const t of this.core.tasks.values()) consider(t);
    for (const q of this.core.queue) if (q.kind === 'scsi') consider(q.task);
    if (next !== Infinity) this.armDeadline(next);
    for (const t of expired) this.onCommandTimeout(t);
  }

  private onCommandTimeout(t: Task): void {
    t.deadline = 0;
    if (t.pending.settled || this.core.st === 'dead') return;
    const info: CommandTimeoutInfo = {
      itt: t.itt,
      lun: t.lunNumber,
      sent: t.sent,
      ageMs: this.clock.now() - t.startedAt,
      cdbOpcode: t.pending.req.cdb[0],
    };
    this.core.log.warn(info, 'SCSI command timed out');
    if (this.listenerCount('timeout') === 0) {
      // Nobody to escalate: fail it here (the ITT stays reserved until the target answers).
      this.core.failTask(t, new TransportError('ETIMEOUT', `SCSI command 0x${info.cdbOpcode.toString(16)} timed out after ${info.ageMs} ms`));
      return;
    }
    this.emit('timeout', info);
  }

  /** Stop sending queued commands (e.g. before a requested logout). */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    this.dispatch();
  }

  private dispatch(): void {
    const c = this.core;
    if (c.st !== 'full-feature') return;
    let out: Buffer[] | undefined;
    while (c.queue.length > 0 && c.windowOpen()) {
      const q = c.queue[0];
      if (q.kind === 'scsi' && this.paused) break;
      c.queue.shift();
      out ??= [];
      if (q.kind === 'scsi') {
        c.queuedScsi--;
        if (q.task.pending.settled) {
          disarmDeadline(q.task);
          continue;
        }
        this.issue(q.task, out);
      } else {
        issueText(c, q.op, q.ttt, q.data, out);
      }
    }
    if (out && out.length > 0) c.send(out);
  }

  private allocItt(): number {
    return this.itts.next(this.ittInUse);
  }

  private readonly ittInUse = (itt: number): boolean => this.core.tasks.has(itt) || this.core.ctl.has(itt);

  // RFC 7143 11.3: the SCSI Command, with its immediate and unsolicited data
  // (engine/data-out.ts).
  private issue(t: Task, out: Buffer[]): void {
    const c = this.core;
    t.itt = this.allocItt();
    t.cmdSN = c.takeCmdSN();
    t.sent = true;
    t.pending.attempts++;
    t.nextDataSN = 0;
    t.received = 0;
    t.inRanges = undefined;
    t.nextR2TSN = 0;
    const imm = immediateData(c.params, t);
    const unsolEnd = unsolicitedEnd(c.params, t, imm.length);
    const unsolicitedPdus = unsolEnd > imm.length;
    const cmd: ScsiCommandPdu = {
      opcode: Opcode.SCSI_COMMAND,
      immediate: false,
      final: !unsolicitedPdus,
      read: t.readLen > 0,
      write: t.writeLen > 0,
      attr: ATTR[t.pending.req.attr ?? 'simple'] ?? TaskAttr.SIMPLE,
      lun: t.lun,
      itt: t.itt,
      expectedDataTransferLength: t.writeLen > 0 ? t.writeLen : t.readLen,
      cmdSN: t.cmdSN,
      expStatSN: c.expStatSN,
      cdb: t.pending.req.cdb,
      data: imm,
    };
    c.tasks.set(t.itt, t);
    for (const b of encodePduVectors(cmd, c.digests)) out.push(b);
    if (unsolicitedPdus) dataOutSequence(c, t, RESERVED_TAG, imm.length, unsolEnd - imm.length, out);
  }

  // ------------------------------------------------------------ control operations

  private addCtl<O extends CtlOp>(init: CtlInit<O>, timeoutMs: number, onTimeout?: () => void): { op: O; promise: Promise<CtlResult<O>> } {
    let resolve!: (v: CtlResult<O>) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<CtlResult<O>>((a, b) => {
      resolve = a;
      reject = b;
    });
    // The one place a variant is assembled: init carries its own fields.
    const op = {
      ...init,
      itt: this.allocItt(),
      resolve: (v: CtlResult<O>) => {
        this.finishCtl(op);
        resolve(v);
      },
      reject: (e: Error) => {
        this.finishCtl(op);
        reject(e);
      },
    } as unknown as O;
    this.core.ctl.set(op.itt, op);
    if (timeoutMs > 0) {
      op.timer = this.clock.setTimeout(() => {
        op.timer = undefined;
        if (onTimeout) onTimeout();
        op.reject(new TransportError('ETIMEOUT', `${op.kind} (ITT ${hex32(op.itt)}) not answered within ${timeoutMs} ms`));
      }, timeoutMs);
    }
    return { op, promise };
  }

  private finishCtl(op: CtlOp): void {
    if (op.timer !== undefined) this.clock.clearTimeout(op.timer);
    op.timer = undefined;
    if (this.core.ctl.get(op.itt) === op) this.core.ctl.delete(op.itt);
  }

  private notReady(): Error {
    const st = this.core.st;
    return st === 'dead' ? connLost('iSCSI connection lost') : connLost(`iSCSI session is ${st}`);
  }

  /** NOP-Out ping (immediate). An unanswered ping kills the engine. */
  ping(timeoutMs = this.nopTimeoutMs, data: Buffer = EMPTY): Promise<void> {
    if (this.core.st !== 'full-feature' && this.core.st !== 'logging-out') return Promise.reject(this.notReady());
    const { op, promise } = this.addCtl<PingOp>({ kind: 'ping' }, timeoutMs, () => {
      this.fail(new TransportError('ETIMEOUT', `target did not answer a NOP-Out ping within ${timeoutMs} ms`));
    });
    sendNopOut(this.core, 0n, op.itt, RESERVED_TAG, data);
    return promise;
  }

  /**
   * ABORT TASK for the task with this ITT. Resolves with the TMF response
   * code; on "function complete" or "task does not exist" the task's promise
   * rejects with ESCSI_ABORTED.
   */
  abortTask(itt: number, timeoutMs = 10000, abortError?: Error): Promise<number> {
    const t = this.core.tasks.get(itt);
    if (!t) return Promise.resolve(TmfResponse.TASK_DOES_NOT_EXIST);
    return this.tmf(TmfFunction.ABORT_TASK, t.lun, itt, t.cmdSN, t.readLen > 0 ? t.nextDataSN : 0, timeoutMs, { abortError });
  }

  /**
   * LOGICAL UNIT RESET; on success every task of that LUN rejects with
   * ESCSI_ABORTED, or with `requeue` is sent again with a new ITT and CmdSN
   * (the tasks were innocent bystanders of a reset we chose to do).
   */
  lunReset(lun: number, timeoutMs = 30000, requeue = false): Promise<number> {
    let raw: bigint;
    try {
      raw = encodeLun(lun);
    } catch {
      return Promise.reject(new RequestError('EINVAL', `LUN ${lun} cannot be addressed`));
    }
    return this.tmf(TmfFunction.LOGICAL_UNIT_RESET, raw, RESERVED_TAG, this.core.cmdSN, 0, timeoutMs, { requeue });
  }

  private tmf(
    func: number, lun: bigint, refItt: number, refCmdSN: number, expDataSN: number, timeoutMs: number,
    extra: { abortError?: Error; requeue?: boolean } = {},
  ): Promise<number> {
    if (this.core.st !== 'full-feature') return Promise.reject(this.notReady());
    const { op, promise } = this.addCtl<TmfOp>({ kind: 'tmf', func, refItt, lun, abortError: extra.abortError, requeue: extra.requeue }, timeoutMs);
    this.core.log.info({ func, itt: op.itt, refItt: refItt === RESERVED_TAG ? undefined : refItt }, 'sending task management request');
    sendTmf(this.core, op, refCmdSN, expDataSN);
    return promise;
  }

  /**
   * A Text Request/Response exchange (e.g. SendTargets=All), following C-bit
   * and TTT continuations until the target's final response.
   */
  text(pairs: Iterable<TextPair> | Record<string, string>, timeoutMs = 30000): Promise<TextPair[]> {
    if (this.core.st !== 'full-feature') return Promise.reject(this.notReady());
    const data = encodeText(pairs);
    if (data.length > this.core.params.maxXmitDataSegmentLength) {
      return Promise.reject(new RequestError('EINVAL', 'text request longer than the target accepts in one PDU'));
    }
    const collector = new TextCollector(1024 * 1024, { allowDuplicates: SEND_TARGETS_REPEATABLE });
    const { op, promise } = this.addCtl<TextOp>({ kind: 'text', collector, rounds: 0 }, timeoutMs);
    this.core.queue.push({ kind: 'text', op, ttt: RESERVED_TAG, data });
    this.dispatch();
    return promise;
  }

  /** Logout Request (immediate). Resolves with the Logout Response. */
  logout(reason: number = LogoutReason.CLOSE_SESSION, timeoutMs = 10000): Promise<LogoutResponsePdu> {
    if (this.core.st !== 'full-feature') return Promise.reject(this.notReady());
    this.core.setState('logging-out');
    // Unanswered, the connection is in no known state: nothing more goes on it.
    const { op, promise } = this.addCtl<LogoutOp>({ kind: 'logout' }, timeoutMs, () => this.shutdown());
    sendLogout(this.core, op, reason, this.cid);
    return promise;
  }

  // ------------------------------------------------------------ teardown and recovery

  /** Kill the engine (protocol error, socket loss). Tasks stay for drainTasks()/failAll(). */
  fail(err: Error): void {
    const c = this.core;
    if (c.st === 'dead') return;
    this.fatalError = err;
    c.setState('dead');
    this.stopTimers();
    for (const op of [...c.ctl.values()]) op.reject(connLost(`iSCSI connection lost: ${err.message}`));
    for (const q of c.queue) if (q.kind === 'text') q.op.reject(connLost('iSCSI connection lost'));
    c.queue = c.queue.filter((q) => q.kind === 'scsi');
    this.emit('fatal', err);
  }

  /** Stop timers; the engine is not used any more (after logout or fail). */
  shutdown(): void {
    this.stopTimers();
    if (this.core.st !== 'dead' && this.core.st !== 'logged-out') this.core.setState('dead');
  }

  private stopTimers(): void {
    this.keepalive.stop();
    if (this.deadlineTimer !== undefined) this.clock.clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
    for (const t of this.core.tasks.values()) disarmDeadline(t);
    for (const q of this.core.queue) if (q.kind === 'scsi') disarmDeadline(q.task);
  }

  /**
   * Hand back every unfinished SCSI task (in flight, in CmdSN order, then
   * queued) for reissue on a new connection. NOP, TMF and Text operations are
   * not carried over. The engine holds no tasks afterwards.
   */
  drainTasks(): PendingTask[] {
    const c = this.core;
    const out: PendingTask[] = [];
    for (const t of c.tasks.values()) {
      disarmDeadline(t);
      if (!t.pending.settled && !t.failed) out.push(t.pending);
    }
    c.tasks.clear();
    c.failedTasks = 0;
    for (const q of c.queue) {
      if (q.kind === 'scsi') {
        disarmDeadline(q.task);
        if (!q.task.pending.settled) out.push(q.task.pending);
      } else {
        q.op.reject(connLost('iSCSI connection lost'));
      }
    }
    c.queue = [];
    c.queuedScsi = 0;
    for (const op of [...c.ctl.values()]) op.reject(connLost('iSCSI connection lost'));
    return out;
  }

  /** Reject every task (e.g. close()). */
  failAll(err: Error): void {
    for (const p of this.drainTasks()) p.reject(err);
  }

  // ------------------------------------------------------------ receive

  /**
   * Where a Data-In's payload should land, asked by the framer before the
   * bytes arrive (engine/data-in.ts): the reader's own buffer, or undefined.
   */
  placeDataIn(bhs: Buffer, dsl: number): Buffer | undefined {
    return placeDataIn(this.core, bhs, dsl);
  }

  /** How to take a buffer back from the framer (PduFramer.divert), given by the connection's link. */
  setDivert(fn: (() => void) | undefined): void {
    this.core.divert = fn;
  }

  /** Process one PDU from the target. Never throws: a fault kills the engine ('fatal'). */
  receive(pdu: Pdu): void {
    if (this.core.st === 'dead' || this.core.st === 'logged-out') return;
    this.keepalive.lastRx = this.clock.now();
    try {
      this.dispatchPdu(pdu);
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      this.core.log.warn({ err, opcode: opcodeName(pdu.opcode) }, 'iSCSI protocol error; dropping the connection');
      this.fail(err);
      return;
    }
    this.dispatch();
  }

  private dispatchPdu(pdu: Pdu): void {
    const c = this.core;
    switch (pdu.opcode) {
      case Opcode.DATA_IN: return onDataIn(c, pdu);
      case Opcode.SCSI_RESPONSE: return onScsiResponse(c, pdu);
      case Opcode.R2T: return onR2t(c, pdu);
      case Opcode.NOP_IN: return onNopIn(c, pdu);
      case Opcode.TASK_MGMT_RESPONSE: return onTmfResponse(c, pdu);
      case Opcode.TEXT_RESPONSE: return onTextResponse(c, pdu);
      case Opcode.LOGOUT_RESPONSE: return onLogoutResponse(c, pdu);
      case Opcode.ASYNC_MESSAGE: return onAsync(c, pdu);
      case Opcode.REJECT: return onReject(c, pdu);
      default:
        throw new ProtocolError(`unexpected ${opcodeName(pdu.opcode)} PDU in full feature phase`);
    }
  }
}
