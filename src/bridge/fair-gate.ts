/**
 * The command slots of one target's sessions, shared by every LUN that uses
 * them. At most `max` commands are in flight across all of them; beyond
 * that each LUN waits in its own FIFO, and a freed slot goes to the LUNs
 * with waiters in turn (round robin), so one busy LUN cannot starve
 * another: under contention each gets an equal share, and a LUN alone gets
 * every slot.
 */
export class FairGate {
  private outstanding = 0;
  /** Owners with waiters, in the order they get the next slots. */
  private readonly turn: GateOwner[] = [];

  constructor(private limit: number) {}

  get max(): number {
    return this.limit;
  }

  /** More (or fewer) slots: a pool that gains a session gains its share; waiters get the new ones now. */
  setMax(n: number): void {
    this.limit = n;
    while (this.outstanding < this.limit && this.turn.length > 0) {
      this.outstanding++;
      this.handOut();
    }
  }

  /** A new owner (one LUN's pool). */
  owner(): GateOwner {
    return new GateOwner(this);
  }

  get inFlight(): number {
    return this.outstanding;
  }

  /** A slot now, when one is free and nobody waits for one (the common case: no promise). */
  tryTake(o: GateOwner): boolean {
    if (this.outstanding >= this.limit || this.turn.length > 0) return false;
    this.outstanding++;
    o.held++;
    return true;
  }

  /** Wait for a slot, behind this owner's earlier waiters and in turn with the other owners. */
  wait(o: GateOwner): Promise<void> {
    if (this.tryTake(o)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      o.waiters.push(resolve);
      if (o.waiters.length === 1) this.turn.push(o);
    });
  }

  release(o: GateOwner): void {
    o.held--;
    // Hand the slot straight to the next owner in turn, unless the limit shrank below what is out.
    if (this.turn.length === 0 || this.outstanding > this.limit) {
      this.outstanding--;
      return;
    }
    this.handOut();
  }

  /** Give one slot (counted already) to the next owner in turn. */
  private handOut(): void {
    const next = this.turn.shift()!;
    const w = next.waiters.shift()!;
    if (next.waiters.length > 0) this.turn.push(next);
    next.held++;
    w();
  }
}

/** One LUN's side of a FairGate. */
export class GateOwner {
  held = 0;
  readonly waiters: Array<() => void> = [];
  constructor(private readonly gate: FairGate) {}

  get queued(): number {
    return this.waiters.length;
  }

  tryTake(): boolean {
    return this.gate.tryTake(this);
  }

  wait(): Promise<void> {
    return this.gate.wait(this);
  }

  release(): void {
    this.gate.release(this);
  }
}
