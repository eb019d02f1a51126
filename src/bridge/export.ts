// The interface between the NBD server (src/nbd/) and whatever stores the
// blocks. The NBD layer validates requests against these properties before it
// calls a method, so implementations may assume in-range, well-formed calls.

export interface ExportFlags {
  readOnly: boolean;
  /** SEND_FLUSH: a flush makes every acknowledged write durable. */
  flush: boolean;
  /** SEND_FUA: FUA is honoured on writes (and accepted everywhere). */
  fua: boolean;
  trim: boolean;
  writeZeroes: boolean;
  fastZero: boolean;
  rotational: boolean;
  /** Every connection reaches the same backing store and flush covers all of them. */
  multiConn: boolean;
  cache: boolean;
  /** base:allocation block status is meaningful (not just "all data"). */
  blockStatus: boolean;
}

export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

/** Extent flags, as base:allocation numbers them (nbd/constants re-exports them as STATE_*). */
export const EXTENT_HOLE = 1 << 0;
export const EXTENT_ZERO = 1 << 1;

/** The largest READ or WRITE a caller of an Export sends: the Linux kernel's 32 MiB (nbd/common's default payload cap). */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;

/** One extent of base:allocation (EXTENT_HOLE, EXTENT_ZERO). */
export interface Extent {
  length: number;
  flags: number;
}

export interface ZeroOptions {
  /** NBD_CMD_FLAG_NO_HOLE: zeros must be allocated (no unmap). */
  noHole: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP rather than write zeros slowly. */
  fastZero: boolean;
  fua: boolean;
}

export interface Export {
  readonly name: string;
  readonly description: string;
  readonly size: bigint;
  readonly flags: ExportFlags;
  readonly blockSizes: BlockSizes;
  /**
   * The alignment the NBD layer enforces on requests (default:
   * blockSizes.minimum). An export that serves smaller requests by
   * read-modify-write sets it lower, so clients that ignore INFO_BLOCK_SIZE
   * (the kernel, at 512) still work.
   */
  readonly requestAlignment?: number;

  /**
   * Fill `into[0, length)` with the `length` bytes at `offset` (the read
   * contract: the data lands in the caller's buffer, and only there; the
   * caller never copies). Resolve only when all of them are the export's
   * data: `into` may be a reused buffer holding an earlier reply (see
   * ReplyBufferPool). On rejection its contents are undefined.
   */
  read(offset: bigint, length: number, into: Buffer): Promise<void>;
  write(offset: bigint, data: Buffer, fua: boolean): Promise<void>;
  flush(): Promise<void>;
  trim(offset: bigint, length: number, fua: boolean): Promise<void>;
  zero(offset: bigint, length: number, opts: ZeroOptions): Promise<void>;
  /** Extents covering at least the first byte of the range and at most `length` bytes. */
  blockStatus(offset: bigint, length: number): Promise<Extent[]>;
  cache(offset: bigint, length: number): Promise<void>;

  /** Called once per NBD connection that selected this export. */
  attach?(): void;
  detach?(): void;
}
