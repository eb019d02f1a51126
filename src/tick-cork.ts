import type { Writable } from 'node:stream';

/** Corks holding a stream, flushed together once the event loop's poll phase is over. */
const held = new Set<TickCork>();
let flushScheduled = false;

function flushHeld(): void {
  flushScheduled = false;
  for (const c of held) c.flush();
}

/**
 * Batches every write made to a socket within one turn of the event loop into
 * a single writev: the first write corks the socket, and it is uncorked in the
 * check phase (setImmediate), after every socket that was readable in this
 * turn has been read. So the requests of several NBD connections leave in one
 * iSCSI write, and the replies from both sessions of a pool in one NBD write,
 * where a nextTick would uncork after each read. Used by both protocol
 * adapters (NBD replies, iSCSI PDUs).
 */
export class TickCork {
  private corked: Writable | undefined;

  /** `done` runs once the stream is finished with the buffers (written, or failed). */
  write(s: Writable, bufs: readonly Buffer[], done?: () => void): void {
    if (this.corked !== s) {
      this.flush();
      this.corked = s;
      s.cork();
      held.add(this);
      if (!flushScheduled) {
        flushScheduled = true;
        setImmediate(flushHeld);
      }
    }
    const last = bufs.length - 1;
    for (let i = 0; i < last; i++) s.write(bufs[i]);
    if (last >= 0) {
      s.write(bufs[last], done);
    } else {
      done?.();
    }
  }

  /** Send what is held now (e.g. an ACK that must leave before a TLS upgrade). */
  flush(): void {
    const s = this.corked;
    if (!s) return;
    this.corked = undefined;
    held.delete(this);
    s.uncork();
  }
}
