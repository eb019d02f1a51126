// What the PDU handlers of the session engine share (engine/data-in.ts,
// data-out.ts, nop.ts, async-reject.ts, control.ts): the task table, the
// command window, the control operations and the send queue, with the few
// primitives that change them. SessionEngine owns one SessionCore and passes
// it to each handler, a plain function: no per-PDU closure or lookup.
//
// Sequence numbers are RFC 1982 serials (serial.ts).

import type { EventEmitter } from 'node:events';
import { ProtocolError, TransportError } from '../../errors';
import type { Logger } from '../../log';
import { TagTable } from '../../tag-table';
import type { CtlOp, TextOp } from '../ctl-op';
import type { NegotiatedParams } from '../negotiation';
import type { DigestOptions } from '../pdu';
import { snAdd, snDiff, snGt, snLte } from '../serial';
import { disarmDeadline, type PendingTask, type Task } from './task';

/** The negotiated parameters the engine uses. */
export type EngineParams = Pick<
  NegotiatedParams,
  | 'headerDigest' | 'dataDigest' | 'immediateData' | 'initialR2T' | 'maxXmitDataSegmentLength' | 'maxBurstLength'
  | 'firstBurstLength' | 'maxOutstandingR2T' | 'errorRecoveryLevel' | 'dataPDUInOrder' | 'dataSequenceInOrder'
>;

export type EngineState = 'full-feature' | 'logging-out' | 'logged-out' | 'dead';

/** What waits for the CmdSN window, in order. */
export type Queued = { kind: 'scsi'; task: Task } | { kind: 'text'; op: TextOp; ttt: number; data: Buffer };

/** The two things only the engine itself does, reached from the control handlers (LUN reset requeue, logout). */
export interface EngineHost {
  adopt(pending: readonly PendingTask[]): void;
  stopTimers(): void;
}

/** What the handler modules use of the engine; SessionCore is the one implementation. */
export interface EngineCore {
  readonly params: EngineParams;
  readonly digests: DigestOptions;
  readonly log: Logger;
  /** The engine, for 'async' (and the events the core emits itself). */
  readonly events: EventEmitter;
  readonly state: EngineState;
  readonly tasks: TagTable<Task>;
  readonly ctl: ReadonlyMap<number, CtlOp>;
  /** Waits for the CmdSN window; the text handler puts continuations at its head. */
  readonly queue: Queued[];
  /** The task whose buffer the framer is streaming a Data-In payload into (see SessionCore.placing). */
  placing: Task | undefined;
  /** Carried, without advancing it, by immediate PDUs. */
  readonly cmdSN: number;
  readonly expStatSN: number;
  /** The CmdSN of a non-immediate PDU: the current one, then advanced. */
  takeCmdSN(): number;
  updateWindow(expCmdSN: number, maxCmdSN: number): void;
  updateStatSN(statSN: number): void;
  send(out: Buffer[]): void;
  /** The task with this ITT; throws on an unknown one (loss of sync). */
  taskFor(itt: number, what: string): Task;
  failTask(t: Task, err: Error): void;
  removeTask(t: Task): void;
  requeueing(fn: () => void): void;
  setState(to: EngineState): void;
  adopt(pending: readonly PendingTask[]): void;
  stopTimers(): void;
}

export function hex32(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

export function connLost(msg: string): TransportError {
  return new TransportError('ECONNLOST', msg);
}

export class SessionCore implements EngineCore {
  st: EngineState = 'full-feature';
  cmdSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  expStatSN: number;

  readonly tasks = new TagTable<Task>();
  /**
   * The task whose buffer the framer is streaming a Data-In payload into
   * (placeDataIn), until that PDU arrives. If the task ends first (failed,
   * aborted), its buffer goes back to its owner: `divert` takes it back
   * from the framer first.
   */
  placing: Task | undefined;
  divert: (() => void) | undefined;
  readonly ctl = new Map<number, CtlOp>();
  queue: Queued[] = [];
  /** SCSI entries in queue, and tasks in `tasks` that have failed: inFlight without a scan. */
  queuedScsi = 0;
  failedTasks = 0;
  /** Above 0 inside requeueing(). */
  private quiet = 0;

  constructor(
    readonly params: EngineParams,
    readonly digests: DigestOptions,
    readonly log: Logger,
    readonly events: EventEmitter,
    private readonly host: EngineHost,
    private readonly onSend: (buffers: Buffer[]) => void,
    seq: { cmdSN: number; expCmdSN: number; maxCmdSN: number; expStatSN: number },
  ) {
    this.cmdSN = seq.cmdSN >>> 0;
    this.expCmdSN = seq.expCmdSN >>> 0;
    this.maxCmdSN = seq.maxCmdSN >>> 0;
    this.expStatSN = seq.expStatSN >>> 0;
  }

  get state(): EngineState {
    return this.st;
  }

  setState(to: EngineState): void {
    if (to === this.st) return;
    const from = this.st;
    this.st = to;
    this.log.debug({ from, to }, 'session engine state');
    this.events.emit('state', from, to);
  }

  /** SCSI tasks sent and not finished, plus those waiting for the window. */
  get inFlight(): number {
    return this.tasks.size - this.failedTasks + this.queuedScsi;
  }

  // ------------------------------------------------------------ command window

  windowOpen(): boolean {
    return snLte(this.cmdSN, this.maxCmdSN);
  }

  takeCmdSN(): number {
    const sn = this.cmdSN;
    this.cmdSN = snAdd(this.cmdSN, 1);
    return sn;
  }

  // RFC 7143 4.2.2.1: MaxCmdSN/ExpCmdSN from any PDU; ignored when
  // MaxCmdSN < ExpCmdSN - 1, never moved backwards.
  updateWindow(expCmdSN: number, maxCmdSN: number): void {
    if (snDiff(maxCmdSN, expCmdSN) < -1) {
      this.log.debug({ expCmdSN, maxCmdSN }, 'ignoring invalid CmdSN window');
      return;
    }
    if (snGt(expCmdSN, this.expCmdSN)) this.expCmdSN = expCmdSN;
    if (snGt(maxCmdSN, this.maxCmdSN)) this.maxCmdSN = maxCmdSN;
  }

  updateStatSN(statSN: number): void {
    const next = snAdd(statSN, 1);
    if (snGt(next, this.expStatSN)) this.expStatSN = next;
  }

  send(out: Buffer[]): void {
    this.onSend(out);
  }

  // ------------------------------------------------------------ task table

  taskFor(itt: number, what: string): Task {
    const t = this.tasks.get(itt);
    if (!t) throw new ProtocolError(`${what} for unknown ITT ${hex32(itt)} (loss of sync)`);
    return t;
  }

  /** A task ends before the Data-In being streamed into its buffer arrived: the framer stops writing there. */
  private release(t: Task): void {
    if (this.placing !== t) return;
    this.placing = undefined;
    this.divert?.();
  }

  /** A task-level fault: reject now, keep the ITT until the target ends the task. */
  failTask(t: Task, err: Error): void {
    if (t.failed) return;
    this.release(t);
    t.failed = err;
    if (this.tasks.get(t.itt) === t) this.failedTasks++;
    disarmDeadline(t);
    this.log.warn({ itt: t.itt, err }, 'SCSI task failed');
    t.pending.reject(err);
    if (!t.sent) {
      const before = this.queue.length;
      this.queue = this.queue.filter((q) => !(q.kind === 'scsi' && q.task === t));
      this.queuedScsi -= before - this.queue.length;
      this.maybeIdle();
    }
  }

  removeTask(t: Task): void {
    this.release(t);
    disarmDeadline(t);
    if (this.tasks.get(t.itt) === t) {
      this.tasks.delete(t.itt);
      if (t.failed) this.failedTasks--;
    }
    if (this.quiet > 0) return;
    this.events.emit('taskDone');
    this.maybeIdle();
  }

  /**
   * Run fn, in which tasks leave only to be sent again at once (a LUN reset's
   * requeue): 'taskDone' and 'idle' wait until they are back, so nobody that
   * waits for an idle session (a logout) takes the moment between for one.
   */
  requeueing(fn: () => void): void {
    this.quiet++;
    try {
      fn();
    } finally {
      this.quiet--;
    }
    this.events.emit('taskDone');
    this.maybeIdle();
  }

  maybeIdle(): void {
    if (this.quiet === 0 && this.inFlight === 0) this.events.emit('idle');
  }

  // ------------------------------------------------------------ the engine's own

  adopt(pending: readonly PendingTask[]): void {
    this.host.adopt(pending);
  }

  stopTimers(): void {
    this.host.stopTimers();
  }
}
