/**
 * Hands out short-lived buffers carved from large slabs, like Buffer's own
 * 8 KiB pool but for the 4–64 KiB sizes of I/O replies: Buffer.allocUnsafe
 * mallocs a fresh backing store for anything over 4 KiB, and that malloc, the
 * external-memory accounting and the sweeping of each one cost more than the
 * I/O itself at small block sizes. Memory is never handed out twice: a slab is
 * freed by the GC once no buffer carved from it is alive, so a slow reader can
 * only hold slabs, never see its bytes reused.
 */
export class SlabAllocator {
  private slab: Buffer | undefined;
  private used = 0;

  constructor(
    private readonly slabBytes = 256 * 1024,
    /** Larger requests get a buffer of their own. */
    private readonly maxCarve = 64 * 1024,
  ) {}

  alloc(n: number): Buffer {
    if (n > this.maxCarve) return Buffer.allocUnsafe(n);
    let s = this.slab;
    if (!s || this.used + n > s.length) {
      s = this.slab = Buffer.allocUnsafeSlow(this.slabBytes);
      this.used = 0;
    }
    const out = s.subarray(this.used, this.used + n);
    this.used += (n + 7) & ~7; // keep every buffer 8-byte aligned
    return out;
  }
}
