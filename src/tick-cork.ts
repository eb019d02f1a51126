import type { Writable } from 'node:stream';

/**
 * Batches every write made to a socket within one tick into a single writev:
 * the first write of a tick corks the socket and the next tick uncorks it.
 * Used by both protocol adapters (NBD replies, iSCSI PDUs).
 */
export class TickCork {
  private corked: Writable | undefined;

  /** `done` runs once the stream is finished with the buffers (written, or failed). */
  write(s: Writable, bufs: readonly Buffer[], done?: () => void): void {
    if (this.corked !== s) {
      this.flush();
      this.corked = s;
      s.cork();
      process.nextTick(() => {
        if (this.corked !== s) return;
        this.corked = undefined;
        s.uncork();
      });
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
    s.uncork();
  }
}
