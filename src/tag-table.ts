/**
 * In-flight work keyed by a 32-bit tag (an iSCSI ITT, an NBD request id), for
 * the hot path where a Map would be set and deleted on every I/O.
 *
 * Why not Map: with a Map set and deleted on every I/O (session tasks, NBD
 * requests), server processes would settle, at random, into promoting
 * megabytes of finished requests per scavenge (measured: p99 ~5 ms instead of
 * ~1.2 ms at 4K QD32, 20% fewer IOPS); with this table they do not. Our
 * reading: V8 rehashes a churning Map into new tables linked from the old
 * ones, so one table in the old generation keeps every newer one, and the
 * requests in it, alive through scavenges. Here a deleted slot is cleared at
 * once and a table that grows is wiped, so nothing dead points at live work.
 *
 * Open addressing with linear probing and backward-shift deletion (no
 * tombstones). Tags are mostly sequential, so the low bits (folded with the
 * high half, for tags that differ only there) spread them well. values()
 * keeps insertion order, like a Map.
 */
export class TagTable<T> {
  private keys: number[];
  private vals: Array<T | undefined>;
  private seqs: number[];
  private mask: number;
  private nextSeq = 0;
  size = 0;

  constructor(initialCapacity = 64) {
    let cap = 8;
    while (cap < initialCapacity) cap *= 2;
    this.mask = cap - 1;
    this.keys = new Array<number>(cap).fill(0);
    this.vals = new Array<T | undefined>(cap).fill(undefined);
    this.seqs = new Array<number>(cap).fill(0);
  }

  private slot(tag: number): number {
    return (tag ^ (tag >>> 16)) & this.mask;
  }

  get(tag: number): T | undefined {
    let i = this.slot(tag);
    for (;;) {
      const v = this.vals[i];
      if (v === undefined) return undefined;
      if (this.keys[i] === tag) return v;
      i = (i + 1) & this.mask;
    }
  }

  has(tag: number): boolean {
    return this.get(tag) !== undefined;
  }

  /** Add or replace; `value` must not be undefined. */
  set(tag: number, value: T): this {
    if ((this.size + 1) * 2 > this.mask + 1) this.grow();
    let i = this.slot(tag);
    while (this.vals[i] !== undefined) {
      if (this.keys[i] === tag) {
        this.vals[i] = value;
        return this;
      }
      i = (i + 1) & this.mask;
    }
    this.keys[i] = tag;
    this.vals[i] = value;
    this.seqs[i] = this.nextSeq++;
    this.size++;
    return this;
  }

  delete(tag: number): boolean {
    const mask = this.mask;
    let i = this.slot(tag);
    for (;;) {
      if (this.vals[i] === undefined) return false;
      if (this.keys[i] === tag) break;
      i = (i + 1) & mask;
    }
    this.vals[i] = undefined;
    this.size--;
    // Backward shift: pull later members of the probe run into the hole.
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      if (this.vals[j] === undefined) return true;
      const home = this.slot(this.keys[j]);
      // Move j back to i unless its home lies cyclically in (i, j].
      const inRange = i <= j ? home > i && home <= j : home > i || home <= j;
      if (inRange) continue;
      this.keys[i] = this.keys[j];
      this.vals[i] = this.vals[j];
      this.seqs[i] = this.seqs[j];
      this.vals[j] = undefined;
      i = j;
    }
  }

  clear(): void {
    this.vals.fill(undefined);
    this.size = 0;
  }

  /** Values in insertion order (a snapshot: safe to modify the table while using it). */
  values(): T[] {
    const idx: number[] = [];
    for (let i = 0; i <= this.mask; i++) if (this.vals[i] !== undefined) idx.push(i);
    idx.sort((a, b) => this.seqs[a] - this.seqs[b]);
    return idx.map((i) => this.vals[i] as T);
  }

  private grow(): void {
    const { keys, vals, seqs } = this;
    const order: number[] = [];
    for (let i = 0; i < vals.length; i++) if (vals[i] !== undefined) order.push(i);
    order.sort((a, b) => seqs[a] - seqs[b]);
    const cap = vals.length * 2;
    this.mask = cap - 1;
    this.keys = new Array<number>(cap).fill(0);
    this.vals = new Array<T | undefined>(cap).fill(undefined);
    this.seqs = new Array<number>(cap).fill(0);
    this.size = 0;
    for (const i of order) this.set(keys[i], vals[i] as T); // new seqs, same order
    vals.fill(undefined); // the old table may be old-generation: leave it pointing at nothing
  }
}
