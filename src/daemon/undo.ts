import type { Logger } from '../log';

// The daemon's start is a sequence of steps; each pushes what undoes it. A
// failed start unwinds exactly the steps that ran, and a stop unwinds them
// all, newest first: what was started last (the control socket) goes first,
// what everything else stands on (the iSCSI sessions) goes last.

/** `rollback`: the start failed, nobody was served yet; `stop`: drain what is served. */
export type UndoHow = 'rollback' | 'stop';
export type Undo = (how: UndoHow) => void | Promise<void>;

export class UndoStack {
  private readonly steps: { what: string; undo: Undo }[] = [];

  constructor(private readonly log: Logger) {}

  push(what: string, undo: Undo): void {
    this.steps.push({ what, undo });
  }

  get size(): number {
    return this.steps.length;
  }

  /** Undo every step, newest first; one that fails is logged and the rest still run. */
  async unwind(how: UndoHow): Promise<void> {
    for (let s = this.steps.pop(); s; s = this.steps.pop()) {
      this.log.debug({ step: s.what, how }, 'undo');
      try {
        await s.undo(how);
      } catch (err) {
        this.log.error({ err, step: s.what }, 'undoing a step failed; going on with the rest');
      }
    }
  }
}
