// Helpers shared by the handshake and transmission engines.
import { MAX_REQUEST_BYTES, type Export } from '../bridge/export';
import {
  FLAG_HAS_FLAGS, FLAG_READ_ONLY, FLAG_SEND_FLUSH, FLAG_SEND_FUA, FLAG_ROTATIONAL, FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES, FLAG_SEND_DF, FLAG_CAN_MULTI_CONN, FLAG_SEND_CACHE, FLAG_SEND_FAST_ZERO,
} from './constants';

/** Where the NBD server finds its exports. */
export interface ExportRegistry {
  get(name: string): Export | undefined;
  list(): Export[];
  /** The export an empty name selects; the first of list() when unset. */
  defaultName?: string;
}

/** Resolve a client-supplied name ('' = the default export). */
export function resolveExport(reg: ExportRegistry, name: string): Export | undefined {
  if (name === '') {
    const def = reg.defaultName ?? reg.list()[0]?.name;
    return def === undefined ? undefined : reg.get(def);
  }
  return reg.get(name);
}

/** Default cap on a READ reply / WRITE payload: the largest request the Linux kernel sends. */
export const DEFAULT_MAX_PAYLOAD = MAX_REQUEST_BYTES;

/**
 * Default bytes a connection holds (WRITE payloads, READ replies, unsent
 * output) before it stops reading requests: 16 MiB, sixteen 1-MiB requests,
 * like qemu-nbd's 16 requests per connection. Deeper queues only made the
 * target slower (tgtd, 1-MiB writes at QD128: 32 MiB in flight ~540 MiB/s,
 * 16 MiB ~630-690, 8 MiB ~680) and cost memory. One request larger than this
 * still runs (alone).
 */
export const DEFAULT_MAX_BUFFERED = 16 * 1024 * 1024;

export interface EffectiveBlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
  /** Requests must be aligned to this (at most minimum; below it the export does read-modify-write). */
  align: number;
}

/** The block sizes we advertise and enforce: the export's, with maximum capped to maxPayload. */
export function effectiveBlockSizes(exp: Export, maxPayload = DEFAULT_MAX_PAYLOAD): EffectiveBlockSizes {
  const min = Math.max(1, exp.blockSizes.minimum | 0);
  const preferred = Math.max(min, exp.blockSizes.preferred | 0);
  // Hard ceiling of 1 GiB: a READ reply is one buffer, and OFFSET_DATA lengths are 32-bit.
  let max = Math.min(exp.blockSizes.maximum >>> 0 || 0xffffffff, maxPayload, 1 << 30);
  max -= max % min; // must be a multiple of the minimum
  const wanted = exp.requestAlignment;
  const align = wanted !== undefined && wanted >= 1 && wanted < min ? wanted | 0 : min;
  return { minimum: min, preferred, maximum: Math.max(max, min), align };
}

/** The 16-bit transmission flags for an export, given whether structured replies were negotiated. */
export function transmissionFlagsFor(exp: Export, structured: boolean): number {
  const f = exp.flags;
  let flags = FLAG_HAS_FLAGS;
  if (f.readOnly) flags |= FLAG_READ_ONLY;
  if (f.flush) flags |= FLAG_SEND_FLUSH;
  if (f.fua) flags |= FLAG_SEND_FUA;
  if (f.rotational) flags |= FLAG_ROTATIONAL;
  if (!f.readOnly && f.trim) flags |= FLAG_SEND_TRIM;
  if (!f.readOnly && f.writeZeroes) {
    flags |= FLAG_SEND_WRITE_ZEROES;
    if (f.fastZero) flags |= FLAG_SEND_FAST_ZERO;
  }
  if (structured) flags |= FLAG_SEND_DF;
  if (f.multiConn) flags |= FLAG_CAN_MULTI_CONN;
  if (f.cache) flags |= FLAG_SEND_CACHE;
  return flags;
}
