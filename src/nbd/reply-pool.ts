/**
 * Large READ reply buffers, reused once the socket has sent them.
 *
 * Every new Buffer over a few KiB is a fresh external allocation, and V8
 * answers external memory growth with garbage collections: serving 1 MiB
 * reads at ~800 MiB/s ran ~20 mark-compacts a second ("external memory
 * pressure" in --trace-gc), about a tenth of the process's time. Reusing the
 * buffers takes that away. A buffer comes back only through the release
 * callback the transport calls after the write completed (or failed), so its
 * bytes are never overwritten while the kernel may still read them.
 *
 * Buffers are kept per exact size (clients use a handful of request sizes),
 * up to maxCachedBytes in all. They are not zeroed: a reused buffer holds an
 * earlier reply, possibly another client's, so a reply may only be sent once
 * the export has filled every byte of it (Export.read resolves only then; a
 * short or failed read throws and its buffer is dropped).
 */
export class ReplyBufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private cached = 0;

  constructor(
    /** Smaller buffers are cheap to allocate: not pooled. */
    readonly minBytes = 64 * 1024,
    readonly maxCachedBytes = 16 * 1024 * 1024,
  ) {}

  /** A buffer of exactly n bytes (contents undefined); `pooled` says whether to give() it back. */
  take(n: number): { buf: Buffer; pooled: boolean } {
    if (n < this.minBytes) return { buf: Buffer.allocUnsafe(n), pooled: false };
    const list = this.free.get(n);
    const buf = list?.pop();
    if (buf) {
      this.cached -= n;
      return { buf, pooled: true };
    }
    return { buf: Buffer.allocUnsafeSlow(n), pooled: true };
  }

  /** Return a buffer from take() that nothing references any more. */
  give(buf: Buffer): void {
    const n = buf.length;
    if (n < this.minBytes || this.cached + n > this.maxCachedBytes) return;
    let list = this.free.get(n);
    if (!list) {
      list = [];
      this.free.set(n, list);
    }
    list.push(buf);
    this.cached += n;
  }

  get cachedBytes(): number {
    return this.cached;
  }
}
