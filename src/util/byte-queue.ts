// The receive buffer of both protocol engines (NBD handshake and transmission,
// the iSCSI PDU framer): received chunks kept in arrival order and read with a
// cursor. Reads are views into the chunks where the bytes lie in one chunk and
// one copy where they span chunks; nothing is concatenated on arrival.

const EMPTY = Buffer.alloc(0);

export class ByteQueue {
  private chunks: Buffer[] = [];
  private first = 0; // index of the first unread chunk
  private off = 0; // read offset in chunks[first]
  /** Unread bytes. */
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /**
   * Remove and return the next n bytes: a view when they lie in one chunk
   * (unless `copy`), else one new buffer. n must not exceed length.
   */
  take(n: number, copy = false): Buffer {
    if (n > this.length) throw new RangeError(`ByteQueue underflow: ${n} bytes wanted, ${this.length} held`);
    if (n === 0) return EMPTY;
    const c = this.chunks[this.first];
    if (!copy && c.length - this.off >= n) {
      const v = c.subarray(this.off, this.off + n);
      this.advance(n);
      return v;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyTo(out, 0, n);
    return out;
  }

  /** Remove up to n bytes into dest at `at` (placement without buffering); returns how many moved. */
  copyTo(dest: Buffer, at: number, n: number): number {
    let left = Math.min(n, this.length, dest.length - at);
    const done = left;
    while (left > 0) {
      const c = this.chunks[this.first];
      const k = Math.min(c.length - this.off, left);
      c.copy(dest, at, this.off, this.off + k);
      at += k;
      left -= k;
      this.advance(k);
    }
    return done;
  }

  /** Remove and return up to n bytes as views (no copy). */
  takeViews(n: number): Buffer[] {
    const out: Buffer[] = [];
    let left = Math.min(n, this.length);
    while (left > 0) {
      const c = this.chunks[this.first];
      const k = Math.min(c.length - this.off, left);
      out.push(c.subarray(this.off, this.off + k));
      this.advance(k);
      left -= k;
    }
    return out;
  }

  /** Drop up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    let left = Math.min(n, this.length);
    const done = left;
    while (left > 0) {
      const k = Math.min(this.chunks[this.first].length - this.off, left);
      this.advance(k);
      left -= k;
    }
    return done;
  }

  /** Everything left, as one buffer. */
  drainAll(): Buffer {
    return this.take(this.length);
  }

  /**
   * The pusher is about to reuse its buffers (a socket read buffer): replace
   * what is still unread by our own copies.
   */
  ownRemainder(): void {
    if (this.length === 0) return;
    const rest: Buffer[] = [];
    for (let i = this.first; i < this.chunks.length; i++) {
      const c = this.chunks[i];
      const from = i === this.first ? this.off : 0;
      if (from < c.length) rest.push(Buffer.from(c.subarray(from)));
    }
    this.chunks = rest;
    this.first = 0;
    this.off = 0;
  }

  clear(): void {
    this.chunks = [];
    this.first = 0;
    this.off = 0;
    this.length = 0;
  }

  private advance(k: number): void {
    this.off += k;
    this.length -= k;
    if (this.off < this.chunks[this.first].length) return;
    this.chunks[this.first] = EMPTY; // let the chunk be collected
    this.first++;
    this.off = 0;
    if (this.first === this.chunks.length) {
      this.chunks = [];
      this.first = 0;
    } else if (this.first >= 1024) {
      // Compact now and then rather than shift() on every chunk.
      this.chunks = this.chunks.slice(this.first);
      this.first = 0;
    }
  }
}
