// Serialises writes whose block ranges overlap. A read-modify-write of a
// partial block rewrites bytes outside the client's request, so any other
// write touching the same blocks must not run between its read and its write.

interface Held {
  start: bigint;
  end: bigint; // exclusive
}

interface Waiter extends Held {
  resolve: (release: () => void) => void;
}

export class RangeLock {
  private held: Held[] = [];
  private waiting: Waiter[] = [];

  get heldCount(): number {
    return this.held.length;
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Resolves with a release function once [start, end) overlaps nothing held or queued before it. */
  acquire(start: bigint, end: bigint): Promise<() => void> {
    return new Promise((resolve) => {
      const w: Waiter = { start, end, resolve };
      // FIFO among overlapping requests: a waiter also yields to earlier waiters it overlaps.
      if (!this.blocked(w, this.waiting.length)) this.grant(w);
      else this.waiting.push(w);
    });
  }

  private blocked(r: Held, waitersBefore: number): boolean {
    for (const h of this.held) if (h.start < r.end && r.start < h.end) return true;
    for (let i = 0; i < waitersBefore; i++) {
      const h = this.waiting[i];
      if (h.start < r.end && r.start < h.end) return true;
    }
    return false;
  }

  private grant(w: Waiter): void {
    const entry: Held = { start: w.start, end: w.end };
    this.held.push(entry);
    let released = false;
    w.resolve(() => {
      if (released) return;
      released = true;
      this.held.splice(this.held.indexOf(entry), 1);
      this.wake();
    });
  }

  private wake(): void {
    for (let i = 0; i < this.waiting.length; ) {
      const w = this.waiting[i];
      if (!this.blocked(w, i)) {
        this.waiting.splice(i, 1);
        this.grant(w);
      } else {
        i++;
      }
    }
  }
}
