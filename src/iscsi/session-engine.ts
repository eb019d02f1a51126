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

import { EventEmitter } from 'node:events';
import { ProtocolError, RequestError, ScsiError, TransportError } from '../errors';
import { rootLogger, type Logger } from '../log';
import type { ScsiRequest, ScsiResponse } from '../scsi/transport';
import {
  AsyncEvent, BHS_LENGTH, LogoutReason, Opcode, OPCODE_MASK, opcodeName, RejectReason, RESERVED_TAG, ScsiResponseCode,
  TaskAttr, TmfFunction, TmfResponse,
} from './constants';
import type { NegotiatedParams } from './negotiation';
import {
  AsyncMessagePdu, DataInPdu, DataOutPdu, decodeLun, DigestOptions, EMPTY, encodeLun, encodePduVectors,
  LogoutResponsePdu, NopInPdu, Pdu, R2tPdu, RejectPdu, ScsiCommandPdu, ScsiResponsePdu, splitSenseData,
  TaskMgmtResponsePdu, TextResponsePdu,
} from './pdu';
import { snAdd, snDiff, snGt, snLte } from './serial';
import { IttAllocator } from './itt';
import { TagTable } from '../tag-table';
import { systemClock, type EngineClock, type TimerHandle } from './clock';
import type { CtlInit, CtlOp, CtlResult, LogoutOp, PingOp, TextOp, TmfOp } from './ctl-op';
import { SEND_TARGETS_REPEATABLE, TextCollector, TextPair, encodeText } from './text';

// ---------------------------------------------------------------- clock

export { systemClock } from './clock';
export type { EngineClock, TimerHandle } from './clock';

// ---------------------------------------------------------------- options

/** The negotiated parameters the engine uses. */
export type EngineParams = Pick<
  NegotiatedParams,
  | 'headerDigest' | 'dataDigest' | 'immediateData' | 'initialR2T' | 'maxXmitDataSegmentLength' | 'maxBurstLength'
  | 'firstBurstLength' | 'maxOutstandingR2T' | 'errorRecoveryLevel'
>;

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

export type EngineState = 'full-feature' | 'logging-out' | 'logged-out' | 'dead';

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

/** What 'timeout' reports: the owner decides what to do (abort, reset, drop). */
export interface CommandTimeoutInfo {
  itt: number;
  lun: number;
  /** False while the command still waits for the CmdSN window. */
  sent: boolean;
  ageMs: number;
  cdbOpcode: number;
}

/**
 * A SCSI task as handed between engines (drainTasks/adopt) and parked by
 * the owner during an outage: the request and its promise, no wire state.
 */
export interface PendingTask {
  readonly req: ScsiRequest;
  readonly submittedAt: number;
  readonly resolve: (r: ScsiResponse) => void;
  readonly reject: (e: Error) => void;
  /** True once its promise has settled. */
  settled: boolean;
  /** How many times it has been issued on a connection. */
  attempts: number;
}

/** A PendingTask and its promise (the promise settles once). */
export function createPendingTask(req: ScsiRequest, now = Date.now()): { task: PendingTask; promise: Promise<ScsiResponse> } {
  let res!: (r: ScsiResponse) => void;
  let rej!: (e: Error) => void;
  const promise = new Promise<ScsiResponse>((a, b) => {
    res = a;
    rej = b;
  });
  const task: PendingTask = {
    req,
    submittedAt: now,
    settled: false,
    attempts: 0,
    resolve: (r) => {
      if (task.settled) return;
      task.settled = true;
      res(r);
    },
    reject: (e) => {
      if (task.settled) return;
      task.settled = true;
      rej(e);
    },
  };
  return { task, promise };
}

// ---------------------------------------------------------------- internal state

interface Task {
  pending: PendingTask;
  lun: bigint;
  lunNumber: number;
  itt: number;
  cmdSN: number;
  sent: boolean;
  dataOut: Buffer;
  writeLen: number;
  readLen: number;
  inBuf?: Buffer;
  nextDataSN: number;
  received: number;
  nextR2TSN: number;
  /** Task-level failure: already rejected; the ITT stays reserved until the target ends the task. */
  failed?: Error;
  /** clock time after which the command has timed out; 0 = no timeout (or already handled). */
  deadline: number;
  startedAt: number;
}

type Queued = { kind: 'scsi'; task: Task } | { kind: 'text'; op: TextOp; ttt: number; data: Buffer };

const ATTR: Record<string, number> = {
  simple: TaskAttr.SIMPLE,
  ordered: TaskAttr.ORDERED,
  head: TaskAttr.HEAD_OF_QUEUE,
  aca: TaskAttr.ACA,
};

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

const MAX_TEXT_ROUNDS = 1024;
/** A task sent this many times is not requeued after a LUN reset any more. */
const MAX_REQUEUE_ATTEMPTS = 5;

function hex32(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

function connLost(msg: string): TransportError {
  return new TransportError('ECONNLOST', msg);
}

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
  private st: EngineState = 'full-feature';
  private readonly params: EngineParams;
  private readonly digests: DigestOptions;
  private readonly onSend: (buffers: Buffer[]) => void;
  private readonly clock: EngineClock;
  private readonly log: Logger;
  private readonly cid: number;
  private readonly commandTimeoutMs: number;
  private readonly nopIntervalMs: number;
  private readonly nopTimeoutMs: number;

  private cmdSN: number;
  private expCmdSN: number;
  private maxCmdSN: number;
  private expStatSN: number;

  private readonly itts: IttAllocator;
  private readonly tasks = new TagTable<Task>();
  /**
   * The task whose buffer the framer is streaming a Data-In payload into
   * (placeDataIn), until that PDU arrives. If the task ends first (failed,
   * aborted), its buffer goes back to its owner: `divert` takes it back
   * from the framer first.
   */
  private placing: Task | undefined;
  private divert: (() => void) | undefined;
  private readonly ctl = new Map<number, CtlOp>();
  private queue: Queued[] = [];
  /** SCSI entries in queue, and tasks in `tasks` that have failed: inFlight without a scan. */
  private queuedScsi = 0;
  private failedTasks = 0;
  /** One timer for every command timeout: armed for the earliest deadline. */
  private deadlineTimer: TimerHandle | undefined;
  private deadlineAt = 0;
  private paused = false;
  private nopTimer: TimerHandle | undefined;
  private lastRx: number;
  private fatalError: Error | undefined;

  constructor(opts: SessionEngineOptions) {
    super();
    this.params = { ...opts.params };
    if (this.params.maxXmitDataSegmentLength < 1) throw new RangeError('maxXmitDataSegmentLength must be positive');
    this.digests = { headerDigest: opts.params.headerDigest, dataDigest: opts.params.dataDigest };
    this.onSend = opts.onSend;
    this.clock = opts.clock ?? systemClock;
    this.log = (opts.log ?? rootLogger()).child({ component: 'iscsi-session' });
    this.cid = opts.cid ?? 0;
    this.commandTimeoutMs = opts.commandTimeoutMs ?? 0;
    this.nopIntervalMs = opts.nopIntervalMs ?? 0;
    this.nopTimeoutMs = opts.nopTimeoutMs ?? 10000;
    this.cmdSN = opts.cmdSN >>> 0;
    this.expCmdSN = opts.expCmdSN >>> 0;
    this.maxCmdSN = opts.maxCmdSN >>> 0;
    this.expStatSN = opts.expStatSN >>> 0;
    this.itts = new IttAllocator(opts.firstItt);
    this.lastRx = this.clock.now();
    if (this.nopIntervalMs > 0) this.armNop();
  }

  // ------------------------------------------------------------ accessors

  get state(): EngineState {
    return this.st;
  }

  /** SCSI tasks sent and not finished, plus those waiting for the window. */
  get inFlight(): number {
    return this.tasks.size - this.failedTasks + this.queuedScsi;
  }

  /** SCSI tasks waiting for the CmdSN window. */
  get queued(): number {
    return this.queuedScsi;
  }

  get error(): Error | undefined {
    return this.fatalError;
  }

  get sequence(): { cmdSN: number; expCmdSN: number; maxCmdSN: number; expStatSN: number; window: number } {
    return {
      cmdSN: this.cmdSN,
      expCmdSN: this.expCmdSN,
      maxCmdSN: this.maxCmdSN,
      expStatSN: this.expStatSN,
      window: Math.max(0, snDiff(this.maxCmdSN, this.cmdSN) + 1),
    };
  }

  /** The ITT a pending task currently has on this engine (tests, timeouts). */
  ittOf(p: PendingTask): number | undefined {
    for (const t of this.tasks.values()) if (t.pending === p) return t.itt;
    return undefined;
  }

  private setState(to: EngineState): void {
    if (to === this.st) return;
    const from = this.st;
    this.st = to;
    this.log.debug({ from, to }, 'session engine state');
    this.emit('state', from, to);
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
    const add: Queued[] = [];
    for (const p of pending) {
      if (p.settled) continue;
      if (this.st !== 'full-feature') {
        p.reject(this.st === 'dead' ? connLost('iSCSI connection lost') : connLost(`iSCSI session is ${this.st}`));
        continue;
      }
      const t = this.makeTask(p);
      if (t) add.push({ kind: 'scsi', task: t });
    }
    // Tasks adopted in one call keep their relative order; they are queued
    // after what is already waiting (owner adopts drained tasks first).
    for (const q of add) this.queue.push(q);
    this.queuedScsi += add.length;
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
    if (this.st === 'dead') return;
    const now = this.clock.now();
    const expired: Task[] = [];
    let next = Infinity;
    const consider = (t: Task): void => {
      if (t.deadline === 0) return;
      if (t.deadline <= now) expired.push(t);
      else if (t.deadline < next) next = t.deadline;
    };
    for (const t of this.tasks.values()) consider(t);
    for (const q of this.queue) if (q.kind === 'scsi') consider(q.task);
    if (next !== Infinity) this.armDeadline(next);
    for (const t of expired) this.onCommandTimeout(t);
  }

  private onCommandTimeout(t: Task): void {
    t.deadline = 0;
    if (t.pending.settled || this.st === 'dead') return;
    const info: CommandTimeoutInfo = {
      itt: t.itt,
      lun: t.lunNumber,
      sent: t.sent,
      ageMs: this.clock.now() - t.startedAt,
      cdbOpcode: t.pending.req.cdb[0],
    };
    this.log.warn(info, 'SCSI command timed out');
    if (this.listenerCount('timeout') === 0) {
      // Nobody to escalate: fail it here (the ITT stays reserved until the target answers).
      this.failTask(t, new TransportError('ETIMEOUT', `SCSI command 0x${info.cdbOpcode.toString(16)} timed out after ${info.ageMs} ms`));
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

  private windowOpen(): boolean {
    return snLte(this.cmdSN, this.maxCmdSN);
  }

  private dispatch(): void {
    if (this.st !== 'full-feature') return;
    let out: Buffer[] | undefined;
    while (this.queue.length > 0 && this.windowOpen()) {
      const q = this.queue[0];
      if (q.kind === 'scsi' && this.paused) break;
      this.queue.shift();
      out ??= [];
      if (q.kind === 'scsi') {
        this.queuedScsi--;
        if (q.task.pending.settled) {
          this.disarmDeadline(q.task);
          continue;
        }
        this.issue(q.task, out);
      } else {
        this.issueText(q.op, q.ttt, q.data, out);
      }
    }
    if (out && out.length > 0) this.send(out);
  }

  private send(out: Buffer[]): void {
    this.onSend(out);
  }

  private allocItt(): number {
    return this.itts.next(this.ittInUse);
  }

  private readonly ittInUse = (itt: number): boolean => this.tasks.has(itt) || this.ctl.has(itt);

  // RFC 7143 11.3: SCSI Command, with immediate data up to
  // min(FirstBurstLength, MaxRecvDataSegmentLength(target)) and, when
  // InitialR2T=No, unsolicited Data-Out up to FirstBurstLength.
  private issue(t: Task, out: Buffer[]): void {
    const p = this.params;
    t.itt = this.allocItt();
    t.cmdSN = this.cmdSN;
    this.cmdSN = snAdd(this.cmdSN, 1);
    t.sent = true;
    t.pending.attempts++;
    t.nextDataSN = 0;
    t.received = 0;
    t.nextR2TSN = 0;
    let imm = EMPTY;
    let unsolEnd = 0;
    if (t.writeLen > 0) {
      const fbl = p.firstBurstLength;
      if (p.immediateData) imm = t.dataOut.subarray(0, Math.min(t.writeLen, fbl, p.maxXmitDataSegmentLength));
      unsolEnd = p.initialR2T ? imm.length : Math.max(imm.length, Math.min(t.writeLen, fbl));
    }
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
      expStatSN: this.expStatSN,
      cdb: t.pending.req.cdb,
      data: imm,
    };
    this.tasks.set(t.itt, t);
    for (const b of encodePduVectors(cmd, this.digests)) out.push(b);
    if (unsolicitedPdus) this.dataOutSequence(t, RESERVED_TAG, imm.length, unsolEnd - imm.length, out);
  }

  // A Data-Out sequence (RFC 7143 11.7): PDUs of at most the target's
  // MaxRecvDataSegmentLength, DataSN from 0, F on the last, payloads are views
  // of the caller's buffer. Headers come from one slab per sequence.
  private dataOutSequence(t: Task, ttt: number, offset: number, length: number, out: Buffer[]): void {
    const mx = this.params.maxXmitDataSegmentLength;
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
        expStatSN: this.expStatSN,
        dataSN: sn,
        bufferOffset: o,
        data: t.dataOut.subarray(o, e),
      };
      const vec = encodePduVectors(pdu, this.digests, slab.subarray(sn * BHS_LENGTH, (sn + 1) * BHS_LENGTH));
      for (const b of vec) out.push(b);
      sn++;
    }
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
    this.ctl.set(op.itt, op);
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
    if (this.ctl.get(op.itt) === op) this.ctl.delete(op.itt);
  }

  private notReady(): Error {
    return this.st === 'dead' ? connLost('iSCSI connection lost') : connLost(`iSCSI session is ${this.st}`);
  }

  /** NOP-Out ping (immediate). An unanswered ping kills the engine. */
  ping(timeoutMs = this.nopTimeoutMs, data: Buffer = EMPTY): Promise<void> {
    if (this.st !== 'full-feature' && this.st !== 'logging-out') return Promise.reject(this.notReady());
    const { op, promise } = this.addCtl<PingOp>({ kind: 'ping' }, timeoutMs, () => {
      this.fail(new TransportError('ETIMEOUT', `target did not answer a NOP-Out ping within ${timeoutMs} ms`));
    });
    this.send(encodePduVectors({
      opcode: Opcode.NOP_OUT, immediate: true, lun: 0n, itt: op.itt, ttt: RESERVED_TAG, cmdSN: this.cmdSN,
      expStatSN: this.expStatSN, data,
    }, this.digests));
    return promise;
  }

  /**
   * ABORT TASK for the task with this ITT. Resolves with the TMF response
   * code; on "function complete" or "task does not exist" the task's promise
   * rejects with ESCSI_ABORTED.
   */
  abortTask(itt: number, timeoutMs = 10000, abortError?: Error): Promise<number> {
    const t = this.tasks.get(itt);
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
    return this.tmf(TmfFunction.LOGICAL_UNIT_RESET, raw, RESERVED_TAG, this.cmdSN, 0, timeoutMs, { requeue });
  }

  private tmf(
    func: number, lun: bigint, refItt: number, refCmdSN: number, expDataSN: number, timeoutMs: number,
    extra: { abortError?: Error; requeue?: boolean } = {},
  ): Promise<number> {
    if (this.st !== 'full-feature') return Promise.reject(this.notReady());
    const { op, promise } = this.addCtl<TmfOp>({ kind: 'tmf', func, refItt, lun, abortError: extra.abortError, requeue: extra.requeue }, timeoutMs);
    this.log.info({ func, itt: op.itt, refItt: refItt === RESERVED_TAG ? undefined : refItt }, 'sending task management request');
    this.send(encodePduVectors({
      opcode: Opcode.TASK_MGMT_REQUEST, immediate: true, func, lun, itt: op.itt, referencedTaskTag: refItt, cmdSN: this.cmdSN,
      expStatSN: this.expStatSN, refCmdSN, expDataSN,
    }, this.digests));
    return promise;
  }

  /**
   * A Text Request/Response exchange (e.g. SendTargets=All), following C-bit
   * and TTT continuations until the target's final response.
   */
  text(pairs: Iterable<TextPair> | Record<string, string>, timeoutMs = 30000): Promise<TextPair[]> {
    if (this.st !== 'full-feature') return Promise.reject(this.notReady());
    const data = encodeText(pairs);
    if (data.length > this.params.maxXmitDataSegmentLength) {
      return Promise.reject(new RequestError('EINVAL', 'text request longer than the target accepts in one PDU'));
    }
    const collector = new TextCollector(1024 * 1024, { allowDuplicates: SEND_TARGETS_REPEATABLE });
    const { op, promise } = this.addCtl<TextOp>({ kind: 'text', collector, rounds: 0 }, timeoutMs);
    this.queue.push({ kind: 'text', op, ttt: RESERVED_TAG, data });
    this.dispatch();
    return promise;
  }

  private issueText(op: TextOp, ttt: number, data: Buffer, out: Buffer[]): void {
    if (!this.ctl.has(op.itt)) return; // timed out meanwhile
    const cmdSN = this.cmdSN;
    this.cmdSN = snAdd(this.cmdSN, 1);
    for (const b of encodePduVectors({
      opcode: Opcode.TEXT_REQUEST, immediate: false, final: true, continue: false, lun: 0n, itt: op.itt, ttt, cmdSN,
      expStatSN: this.expStatSN, data,
    }, this.digests)) out.push(b);
  }

  /** Logout Request (immediate). Resolves with the Logout Response. */
  logout(reason: number = LogoutReason.CLOSE_SESSION, timeoutMs = 10000): Promise<LogoutResponsePdu> {
    if (this.st !== 'full-feature') return Promise.reject(this.notReady());
    this.setState('logging-out');
    const { op, promise } = this.addCtl<LogoutOp>({ kind: 'logout' }, timeoutMs);
    this.send(encodePduVectors({
      opcode: Opcode.LOGOUT_REQUEST, immediate: true, reason, itt: op.itt, cid: this.cid, cmdSN: this.cmdSN, expStatSN: this.expStatSN,
    }, this.digests));
    return promise;
  }

  // ------------------------------------------------------------ teardown and recovery

  /** Kill the engine (protocol error, socket loss). Tasks stay for drainTasks()/failAll(). */
  fail(err: Error): void {
    if (this.st === 'dead') return;
    this.fatalError = err;
    this.setState('dead');
    this.stopTimers();
    for (const op of [...this.ctl.values()]) op.reject(connLost(`iSCSI connection lost: ${err.message}`));
    for (const q of this.queue) if (q.kind === 'text') q.op.reject(connLost('iSCSI connection lost'));
    this.queue = this.queue.filter((q) => q.kind === 'scsi');
    this.emit('fatal', err);
  }

  /** Stop timers; the engine is not used any more (after logout or fail). */
  shutdown(): void {
    this.stopTimers();
    if (this.st !== 'dead' && this.st !== 'logged-out') this.setState('dead');
  }

  private stopTimers(): void {
    if (this.nopTimer !== undefined) this.clock.clearTimeout(this.nopTimer);
    this.nopTimer = undefined;
    if (this.deadlineTimer !== undefined) this.clock.clearTimeout(this.deadlineTimer);
    this.deadlineTimer = undefined;
    for (const t of this.tasks.values()) this.disarmDeadline(t);
    for (const q of this.queue) if (q.kind === 'scsi') this.disarmDeadline(q.task);
  }

  /**
   * Hand back every unfinished SCSI task (in flight, in CmdSN order, then
   * queued) for reissue on a new connection. NOP, TMF and Text operations are
   * not carried over. The engine holds no tasks afterwards.
   */
  drainTasks(): PendingTask[] {
    const out: PendingTask[] = [];
    for (const t of this.tasks.values()) {
      this.disarmDeadline(t);
      if (!t.pending.settled && !t.failed) out.push(t.pending);
    }
    this.tasks.clear();
    this.failedTasks = 0;
    for (const q of this.queue) {
      if (q.kind === 'scsi') {
        this.disarmDeadline(q.task);
        if (!q.task.pending.settled) out.push(q.task.pending);
      } else {
        q.op.reject(connLost('iSCSI connection lost'));
      }
    }
    this.queue = [];
    this.queuedScsi = 0;
    for (const op of [...this.ctl.values()]) op.reject(connLost('iSCSI connection lost'));
    return out;
  }

  /** Reject every task (e.g. close()). */
  failAll(err: Error): void {
    for (const p of this.drainTasks()) p.reject(err);
  }

  /** Take a task out of the shared command-deadline scan (see armDeadline). */
  private disarmDeadline(t: Task): void {
    t.deadline = 0;
  }

  // ------------------------------------------------------------ NOP keepalive

  private armNop(): void {
    this.nopTimer = this.clock.setTimeout(() => this.nopTick(), this.nopIntervalMs);
  }

  private nopTick(): void {
    this.nopTimer = undefined;
    if (this.st !== 'full-feature') return;
    const idle = this.clock.now() - this.lastRx;
    let pinging = false;
    for (const op of this.ctl.values()) if (op.kind === 'ping') pinging = true;
    if (idle >= this.nopIntervalMs && !pinging) {
      this.ping(this.nopTimeoutMs).catch(() => undefined);
    }
    this.armNop();
  }

  // ------------------------------------------------------------ receive

  /** Process one PDU from the target. Never throws: a fault kills the engine ('fatal'). */
  receive(pdu: Pdu): void {
    if (this.st === 'dead' || this.st === 'logged-out') return;
    this.lastRx = this.clock.now();
    try {
      this.dispatchPdu(pdu);
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      this.log.warn({ err, opcode: opcodeName(pdu.opcode) }, 'iSCSI protocol error; dropping the connection');
      this.fail(err);
      return;
    }
    this.dispatch();
  }

  private dispatchPdu(pdu: Pdu): void {
    switch (pdu.opcode) {
      case Opcode.DATA_IN: return this.onDataIn(pdu);
      case Opcode.SCSI_RESPONSE: return this.onScsiResponse(pdu);
      case Opcode.R2T: return this.onR2t(pdu);
      case Opcode.NOP_IN: return this.onNopIn(pdu);
      case Opcode.TASK_MGMT_RESPONSE: return this.onTmfResponse(pdu);
      case Opcode.TEXT_RESPONSE: return this.onTextResponse(pdu);
      case Opcode.LOGOUT_RESPONSE: return this.onLogoutResponse(pdu);
      case Opcode.ASYNC_MESSAGE: return this.onAsync(pdu);
      case Opcode.REJECT: return this.onReject(pdu);
      default:
        throw new ProtocolError(`unexpected ${opcodeName(pdu.opcode)} PDU in full feature phase`);
    }
  }

  // RFC 7143 4.2.2.1: MaxCmdSN/ExpCmdSN from any PDU; ignored when
  // MaxCmdSN < ExpCmdSN - 1, never moved backwards.
  private updateWindow(expCmdSN: number, maxCmdSN: number): void {
    if (snDiff(maxCmdSN, expCmdSN) < -1) {
      this.log.debug({ expCmdSN, maxCmdSN }, 'ignoring invalid CmdSN window');
      return;
    }
    if (snGt(expCmdSN, this.expCmdSN)) this.expCmdSN = expCmdSN;
    if (snGt(maxCmdSN, this.maxCmdSN)) this.maxCmdSN = maxCmdSN;
  }

  private updateStatSN(statSN: number): void {
    const next = snAdd(statSN, 1);
    if (snGt(next, this.expStatSN)) this.expStatSN = next;
  }

  /**
   * Where a Data-In's payload should land, asked by the framer before the
   * bytes arrive: the reader's own buffer at the PDU's Buffer Offset, so the
   * data is copied once, socket chunk to destination. Anything doubtful
   * returns undefined and takes the ordinary checked path in onDataIn.
   */
  placeDataIn(bhs: Buffer, dsl: number): Buffer | undefined {
    // The framer asks once per PDU and hands that PDU to receive() (marked
    // `placed` when its payload went to the buffer named here) before it asks again.
    this.placing = undefined;
    if ((bhs[0] & OPCODE_MASK) !== Opcode.DATA_IN) return undefined;
    const itt = bhs.readUInt32BE(16);
    const t = this.tasks.get(itt);
    if (!t || t.failed || t.readLen === 0) return undefined;
    const off = bhs.readUInt32BE(40);
    if (off + dsl > t.readLen) return undefined;
    t.inBuf ??= t.pending.req.dataIn ?? Buffer.allocUnsafe(t.readLen);
    this.placing = t;
    return t.inBuf.subarray(off, off + dsl);
  }

  /** How to take a buffer back from the framer (PduFramer.divert), given by the connection's link. */
  setDivert(fn: (() => void) | undefined): void {
    this.divert = fn;
  }

  /** A task ends before the Data-In being streamed into its buffer arrived: the framer stops writing there. */
  private release(t: Task): void {
    if (this.placing !== t) return;
    this.placing = undefined;
    this.divert?.();
  }

  private taskFor(itt: number, what: string): Task {
    const t = this.tasks.get(itt);
    if (!t) throw new ProtocolError(`${what} for unknown ITT ${hex32(itt)} (loss of sync)`);
    return t;
  }

  /** A task-level fault: reject now, keep the ITT until the target ends the task. */
  private failTask(t: Task, err: Error): void {
    if (t.failed) return;
    this.release(t);
    t.failed = err;
    if (this.tasks.get(t.itt) === t) this.failedTasks++;
    this.disarmDeadline(t);
    this.log.warn({ itt: t.itt, err }, 'SCSI task failed');
    t.pending.reject(err);
    if (!t.sent) {
      const before = this.queue.length;
      this.queue = this.queue.filter((q) => !(q.kind === 'scsi' && q.task === t));
      this.queuedScsi -= before - this.queue.length;
      this.maybeIdle();
    }
  }

  private removeTask(t: Task): void {
    this.release(t);
    this.disarmDeadline(t);
    if (this.tasks.get(t.itt) === t) {
      this.tasks.delete(t.itt);
      if (t.failed) this.failedTasks--;
    }
    this.emit('taskDone');
    this.maybeIdle();
  }

  private maybeIdle(): void {
    if (this.inFlight === 0) this.emit('idle');
  }

  // SCSI Data-In (RFC 7143 11.7): data at BufferOffset, DataSN in order
  // from 0 per command, status with the last one when S is set.
  private onDataIn(pdu: DataInPdu): void {
    this.placing = undefined;
    const t = this.taskFor(pdu.itt, 'Data-In');
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    if (pdu.statusPresent) this.updateStatSN(pdu.statSN);
    if (!t.failed) {
      const n = pdu.data.length;
      if (t.readLen === 0 && n > 0) {
        this.failTask(t, new ProtocolError(`Data-In for a command that reads nothing (ITT ${hex32(t.itt)})`));
      } else if (pdu.dataSN !== t.nextDataSN) {
        this.failTask(t, new ProtocolError(`Data-In DataSN ${pdu.dataSN}, expected ${t.nextDataSN} (ITT ${hex32(t.itt)})`));
      } else if (pdu.bufferOffset + n > t.readLen) {
        this.failTask(t, new ProtocolError(
          `Data-In at offset ${pdu.bufferOffset} + ${n} bytes overflows the expected ${t.readLen} (ITT ${hex32(t.itt)})`,
        ));
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
      this.complete(t, pdu.status, EMPTY, pdu.underflow, pdu.overflow, pdu.residualCount);
    }
  }

  private onScsiResponse(pdu: ScsiResponsePdu): void {
    const t = this.taskFor(pdu.itt, 'SCSI Response');
    this.updateStatSN(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    if (pdu.response !== ScsiResponseCode.COMMAND_COMPLETED && !t.failed) {
      this.failTask(t, new ScsiError('ESCSI_IO', `iSCSI target failure (response 0x${pdu.response.toString(16)}) for ITT ${hex32(t.itt)}`, pdu.status));
    }
    this.complete(t, pdu.status, pdu.sense, pdu.underflow, pdu.overflow, pdu.residualCount);
  }

  private complete(t: Task, status: number, sense: Buffer, underflow: boolean, overflow: boolean, residualCount: number): void {
    this.removeTask(t);
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

  // R2T (RFC 7143 11.8): answer with a Data-Out sequence of
  // DesiredDataTransferLength bytes at BufferOffset, echoing the TTT.
  private onR2t(pdu: R2tPdu): void {
    const t = this.taskFor(pdu.itt, 'R2T');
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    if (t.writeLen === 0) throw new ProtocolError(`R2T for a command that writes nothing (ITT ${hex32(t.itt)})`);
    if (pdu.ttt === RESERVED_TAG) throw new ProtocolError('R2T with the reserved Target Transfer Tag');
    const len = pdu.desiredDataTransferLength;
    if (len === 0 || pdu.bufferOffset + len > t.writeLen) {
      throw new ProtocolError(`R2T for ${len} bytes at offset ${pdu.bufferOffset} outside the ${t.writeLen}-byte write`);
    }
    if (len > this.params.maxBurstLength) {
      this.log.warn({ len, maxBurstLength: this.params.maxBurstLength }, 'R2T longer than MaxBurstLength; serving it');
    }
    if (pdu.r2tSN !== t.nextR2TSN) {
      this.log.debug({ r2tSN: pdu.r2tSN, expected: t.nextR2TSN, itt: t.itt }, 'R2TSN out of order');
    }
    t.nextR2TSN = snAdd(pdu.r2tSN, 1);
    if (t.failed) return; // the target will end the task; do not feed it
    // Answered at once, so at most one of our R2Ts is ever outstanding,
    // which is within any MaxOutstandingR2T.
    const out: Buffer[] = [];
    this.dataOutSequence(t, pdu.ttt, pdu.bufferOffset, len, out);
    this.send(out);
  }

  private onNopIn(pdu: NopInPdu): void {
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    if (pdu.itt !== RESERVED_TAG) {
      const op = this.ctl.get(pdu.itt);
      if (!op || op.kind !== 'ping') throw new ProtocolError(`NOP-In for unknown ITT ${hex32(pdu.itt)} (loss of sync)`);
      this.updateStatSN(pdu.statSN);
      op.resolve(undefined);
      return;
    }
    // Unsolicited: StatSN is the next one, not advanced.
    if (pdu.ttt !== RESERVED_TAG) {
      // The target pings us: answer with its LUN and TTT (and its data).
      const data = pdu.data.length > 0 ? Buffer.from(pdu.data.subarray(0, this.params.maxXmitDataSegmentLength)) : EMPTY;
      this.send(encodePduVectors({
        opcode: Opcode.NOP_OUT, immediate: true, lun: pdu.lun, itt: RESERVED_TAG, ttt: pdu.ttt, cmdSN: this.cmdSN,
        expStatSN: this.expStatSN, data,
      }, this.digests));
    }
  }

  private onTmfResponse(pdu: TaskMgmtResponsePdu): void {
    const op = this.ctl.get(pdu.itt);
    if (!op || op.kind !== 'tmf') throw new ProtocolError(`Task Management Response for unknown ITT ${hex32(pdu.itt)} (loss of sync)`);
    this.updateStatSN(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    const ok = pdu.response === TmfResponse.FUNCTION_COMPLETE;
    this.log.info({ func: op.func, response: pdu.response }, 'task management response');
    if (op.func === TmfFunction.ABORT_TASK) {
      // After the response the target sends nothing more for that task.
      if (ok || pdu.response === TmfResponse.TASK_DOES_NOT_EXIST) {
        const t = this.tasks.get(op.refItt);
        if (t) this.abortLocal(t, op.abortError);
      }
    } else if (op.func === TmfFunction.LOGICAL_UNIT_RESET && ok) {
      const again: PendingTask[] = [];
      for (const t of [...this.tasks.values()]) {
        if (t.lun !== op.lun) continue;
        if (op.requeue && !t.failed && !t.pending.settled && t.pending.attempts < MAX_REQUEUE_ATTEMPTS) {
          this.removeTask(t);
          again.push(t.pending);
        } else {
          this.abortLocal(t);
        }
      }
      if (again.length > 0) {
        this.log.info({ count: again.length }, 'reissuing the commands the LUN reset aborted');
        this.adopt(again);
      }
    }
    op.resolve(pdu.response);
  }

  private abortLocal(t: Task, err?: Error): void {
    this.removeTask(t);
    if (!t.failed) t.pending.reject(err ?? new ScsiError('ESCSI_ABORTED', `SCSI command (ITT ${hex32(t.itt)}) aborted`, 0x40));
  }

  private onTextResponse(pdu: TextResponsePdu): void {
    const op = this.ctl.get(pdu.itt);
    if (!op || op.kind !== 'text') throw new ProtocolError(`Text Response for unknown ITT ${hex32(pdu.itt)} (loss of sync)`);
    this.updateStatSN(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
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
    this.queue.unshift({ kind: 'text', op, ttt: pdu.ttt, data: EMPTY });
  }

  private onLogoutResponse(pdu: LogoutResponsePdu): void {
    const op = this.ctl.get(pdu.itt);
    if (!op || op.kind !== 'logout') throw new ProtocolError(`Logout Response for unknown ITT ${hex32(pdu.itt)} (loss of sync)`);
    this.updateStatSN(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    this.log.debug({ response: pdu.response, time2Wait: pdu.time2Wait, time2Retain: pdu.time2Retain }, 'logout response');
    this.stopTimers();
    this.setState('logged-out');
    op.resolve(pdu);
  }

  private onAsync(pdu: AsyncMessagePdu): void {
    this.updateStatSN(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
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
    this.log[level]({ event: info.name, lun, p1: info.parameter1, p2: info.parameter2, p3: info.parameter3 }, 'iSCSI async message');
    this.emit('async', info);
  }

  // Reject (RFC 7143 11.17): the data segment is the rejected PDU's header.
  private onReject(pdu: RejectPdu): void {
    this.updateStatSN(pdu.statSN);
    this.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
    const reason = REJECT_NAMES[pdu.reason] ?? `reason 0x${pdu.reason.toString(16)}`;
    if (pdu.data.length < BHS_LENGTH) {
      this.log.error({ reason }, 'target rejected a PDU (no header returned)');
      return;
    }
    const op = pdu.data[0] & OPCODE_MASK;
    const itt = pdu.data.readUInt32BE(16);
    this.log.error({ reason, rejected: opcodeName(op), itt: hex32(itt) }, 'target rejected a PDU');
    const msg = `target rejected ${opcodeName(op)} (ITT ${hex32(itt)}): ${reason}`;
    switch (op) {
      case Opcode.SCSI_COMMAND: {
        const t = this.tasks.get(itt);
        if (!t) return;
        // The target drops a rejected command: nothing more comes for the ITT.
        this.removeTask(t);
        if (!t.failed) t.pending.reject(new ProtocolError(msg));
        return;
      }
      case Opcode.DATA_OUT:
        // At ERL 0 lost data cannot be resent on this connection.
        throw new ProtocolError(msg);
      case Opcode.NOP_OUT: case Opcode.TASK_MGMT_REQUEST: case Opcode.TEXT_REQUEST: case Opcode.LOGOUT_REQUEST: {
        const c = this.ctl.get(itt);
        if (!c) return;
        if (c.kind === 'logout') this.setState('full-feature');
        c.reject(new ProtocolError(msg));
        return;
      }
      default:
        return;
    }
  }
}
