// SCSI tasks of the session engine: the PendingTask handed between engines
// and parked by the owner, and the Task that one engine keeps on the wire
// for it (ITT, CmdSN, Data-In and R2T progress).

import type { ScsiRequest, ScsiResponse } from '../../scsi/transport';

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

/** A PendingTask on one engine: its wire state. */
export interface Task {
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
  /** Data-In payload bytes taken so far; with the data in order, also the next BufferOffset. */
  received: number;
  /** Out of order only (DataPDUInOrder=No): the [start, end) ranges received, to refuse overlap. */
  inRanges?: number[];
  nextR2TSN: number;
  /** Task-level failure: already rejected; the ITT stays reserved until the target ends the task. */
  failed?: Error;
  /** clock time after which the command has timed out; 0 = no timeout (or already handled). */
  deadline: number;
  startedAt: number;
}

/** Take a task out of the shared command-deadline scan (see SessionEngine.armDeadline). */
export function disarmDeadline(t: Task): void {
  t.deadline = 0;
}
