// Control operations of the session engine (immediate or non-SCSI requests
// with their own ITT): NOP-Out ping, task management, Text exchange, Logout.
// One variant per kind, each carrying only its own fields and resolving with
// its own result type, so the engine needs no non-null assertions or casts.

import type { TimerHandle } from './clock';
import type { LogoutResponsePdu } from './pdu';
import type { TextCollector, TextPair } from './text';

interface CtlBase<R> {
  readonly itt: number;
  /** Settles the operation's promise and releases its ITT and timer. */
  resolve(v: R): void;
  reject(e: Error): void;
  timer?: TimerHandle;
}

/** NOP-Out ping (immediate); resolves when the NOP-In comes back. */
export interface PingOp extends CtlBase<void> {
  readonly kind: 'ping';
}

/** Task Management Function Request (immediate); resolves with the TMF response code. */
export interface TmfOp extends CtlBase<number> {
  readonly kind: 'tmf';
  readonly func: number;
  /** Referenced task (ABORT TASK) or RESERVED_TAG. */
  readonly refItt: number;
  readonly lun: bigint;
  /** ABORT TASK: reject the aborted task with this instead of ESCSI_ABORTED. */
  readonly abortError?: Error;
  /** LUN RESET: send the aborted tasks again (new ITT/CmdSN) instead of failing them. */
  readonly requeue?: boolean;
}

/** Text Request/Response exchange with continuations; resolves with the pairs. */
export interface TextOp extends CtlBase<TextPair[]> {
  readonly kind: 'text';
  readonly collector: TextCollector;
  /** Responses received so far (bounded). */
  rounds: number;
}

/** Logout Request (immediate); resolves with the Logout Response. */
export interface LogoutOp extends CtlBase<LogoutResponsePdu> {
  readonly kind: 'logout';
}

export type CtlOp = PingOp | TmfOp | TextOp | LogoutOp;

/** What an operation's promise resolves with. */
export type CtlResult<O extends CtlOp> = O extends CtlBase<infer R> ? R : never;

/** The fields a caller supplies; the engine adds ITT, settle functions and timer. */
export type CtlInit<O extends CtlOp> = Omit<O, 'itt' | 'resolve' | 'reject' | 'timer'>;
