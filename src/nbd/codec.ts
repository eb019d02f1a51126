// Pure encoders and parsers for the NBD wire format (doc/proto.md). No I/O.
import {
  NBDMAGIC, IHAVEOPT, OPTION_REPLY_MAGIC, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
  FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT,
  INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, OPTION_HEADER_SIZE, REQUEST_HEADER_SIZE,
  SIMPLE_REPLY_HEADER_SIZE, STRUCTURED_REPLY_HEADER_SIZE, REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA,
  REPLY_TYPE_OFFSET_HOLE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET, REPLY_FLAG_DONE,
  MAX_STRING,
} from './constants';

/** Longest human-readable message we put in an option or structured error (nbd-client caps replies at 4096). */
export const MAX_ERROR_MESSAGE = 256;

/** UTF-8 bytes of `s`, cut to at most `max` bytes on a character boundary. */
export function utf8Truncated(s: string, max: number): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length <= max) return b;
  let end = max;
  // Step back over continuation bytes (10xxxxxx) so no character is split.
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return b.subarray(0, end);
}

// ---- handshake ----------------------------------------------------------

// S: 64 NBDMAGIC, 64 IHAVEOPT, 16 handshake flags
export function encodeGreeting(flags = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(flags, 16);
  return b;
}

export interface OptionHeader {
  magicOk: boolean;
  option: number;
  length: number;
}

// C: 64 IHAVEOPT, 32 option, 32 length of option data
export function parseOptionHeader(b: Buffer, off = 0): OptionHeader {
  if (b.length - off < OPTION_HEADER_SIZE) throw new RangeError('option header needs 16 bytes');
  return {
    magicOk: b.readBigUInt64BE(off) === IHAVEOPT,
    option: b.readUInt32BE(off + 8),
    length: b.readUInt32BE(off + 12),
  };
}

// S: 64 reply magic, 32 option, 32 reply type, 32 length, data
export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, 20);
  return b;
}

export function encodeAck(option: number): Buffer {
  return encodeOptionReply(option, REP_ACK);
}

/** An error reply (type has bit 31 set) with a short message. */
export function encodeOptionError(option: number, type: number, message = ''): Buffer {
  return encodeOptionReply(option, type, message ? utf8Truncated(message, MAX_ERROR_MESSAGE) : undefined);
}

// NBD_REP_SERVER data: 32 name length, name, then optional human-readable details
export function encodeRepServer(option: number, name: string, description = ''): Buffer {
  const n = utf8Truncated(name, MAX_STRING - 4);
  // Keep the whole reply within 4096 bytes (nbd-client >= 3.26 refuses longer ones).
  const d = utf8Truncated(description, Math.min(MAX_ERROR_MESSAGE, MAX_STRING - 4 - n.length));
  const data = Buffer.allocUnsafe(4 + n.length + d.length);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  d.copy(data, 4 + n.length);
  return encodeOptionReply(option, REP_SERVER, data);
}

// NBD_REP_INFO / NBD_INFO_EXPORT: 16 type, 64 size, 16 transmission flags
export function encodeInfoExport(option: number, size: bigint, flags: number): Buffer {
  const d = Buffer.allocUnsafe(12);
  d.writeUInt16BE(INFO_EXPORT, 0);
  d.writeBigUInt64BE(size, 2);
  d.writeUInt16BE(flags, 10);
  return encodeOptionReply(option, REP_INFO, d);
}

// NBD_INFO_NAME / NBD_INFO_DESCRIPTION: 16 type, string
export function encodeInfoString(option: number, infoType: typeof INFO_NAME | typeof INFO_DESCRIPTION, s: string): Buffer {
  const str = utf8Truncated(s, MAX_STRING);
  const d = Buffer.allocUnsafe(2 + str.length);
  d.writeUInt16BE(infoType, 0);
  str.copy(d, 2);
  return encodeOptionReply(option, REP_INFO, d);
}

// NBD_INFO_BLOCK_SIZE: 16 type, 32 minimum, 32 preferred, 32 maximum
export function encodeInfoBlockSize(option: number, min: number, preferred: number, max: number): Buffer {
  const d = Buffer.allocUnsafe(14);
  d.writeUInt16BE(INFO_BLOCK_SIZE, 0);
  d.writeUInt32BE(min >>> 0, 2);
  d.writeUInt32BE(preferred >>> 0, 6);
  d.writeUInt32BE(max >>> 0, 10);
  return encodeOptionReply(option, REP_INFO, d);
}

// NBD_REP_META_CONTEXT: 32 context id, name
export function encodeMetaContext(option: number, id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.allocUnsafe(4 + n.length);
  d.writeUInt32BE(id >>> 0, 0);
  n.copy(d, 4);
  return encodeOptionReply(option, REP_META_CONTEXT, d);
}

// Reply to NBD_OPT_EXPORT_NAME: 64 size, 16 flags, 124 zeroes unless NO_ZEROES
export function encodeExportNameReply(size: bigint, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(size, 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

function decodeString(b: Buffer): string | undefined {
  if (b.includes(0)) return undefined;
  const s = b.toString('utf8');
  // Reject invalid UTF-8 (decoding produced replacement characters not present as such).
  if (s.includes('\ufffd') && !Buffer.from(s, 'utf8').equals(b)) return undefined;
  return s;
}

export interface InfoRequest {
  name: string;
  infos: number[];
}

/**
 * The export name both option layouts start with: 32 name length, name.
 * `after` is how many bytes must follow it at least. Returns the name and
 * where the rest starts.
 */
function parseLeadingName(d: Buffer, after: number): Parsed<{ name: string; next: number }> {
  if (d.length < 4 + after) return { ok: false, error: 'option data too short' };
  const nameLen = d.readUInt32BE(0);
  if (nameLen > d.length - 4 - after) return { ok: false, error: 'name length exceeds option data' };
  if (nameLen > MAX_STRING) return { ok: false, error: 'export name too long' };
  const name = decodeString(d.subarray(4, 4 + nameLen));
  if (name === undefined) return { ok: false, error: 'export name is not valid UTF-8' };
  return { ok: true, value: { name, next: 4 + nameLen } };
}

// NBD_OPT_INFO / NBD_OPT_GO data: 32 name length, name, 16 count, count x 16 info types
export function parseInfoRequest(d: Buffer): Parsed<InfoRequest> {
  const lead = parseLeadingName(d, 2);
  if (!lead.ok) return lead;
  const { name, next } = lead.value;
  const nameLen = next - 4;
  const count = d.readUInt16BE(next);
  if (d.length !== 6 + nameLen + 2 * count) return { ok: false, error: 'information request count does not match length' };
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(d.readUInt16BE(6 + nameLen + 2 * i));
  return { ok: true, value: { name, infos } };
}

export interface MetaContextRequest {
  name: string;
  queries: string[];
}

// NBD_OPT_{LIST,SET}_META_CONTEXT data: 32 name length, name, 32 query count, count x (32 length, query)
export function parseMetaContextRequest(d: Buffer, maxQueries = 256): Parsed<MetaContextRequest> {
  const lead = parseLeadingName(d, 4);
  if (!lead.ok) return lead;
  const { name } = lead.value;
  let p = lead.value.next;
  const count = d.readUInt32BE(p);
  p += 4;
  if (count > maxQueries) return { ok: false, error: 'too many queries' };
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (d.length - p < 4) return { ok: false, error: 'query length exceeds option data' };
    const ql = d.readUInt32BE(p);
    p += 4;
    if (ql > d.length - p) return { ok: false, error: 'query length exceeds option data' };
    if (ql > MAX_STRING) return { ok: false, error: 'query too long' };
    const q = decodeString(d.subarray(p, p + ql));
    if (q === undefined) return { ok: false, error: 'query is not valid UTF-8' };
    queries.push(q);
    p += ql;
  }
  if (p !== d.length) return { ok: false, error: 'trailing bytes after queries' };
  return { ok: true, value: { name, queries } };
}

// ---- transmission -------------------------------------------------------

export interface RequestHeader {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}

/**
 * C: 32 magic 0x25609513, 16 command flags, 16 type, 64 cookie (handle), 64 offset, 32 length.
 * Returns null on a bad magic (loss of sync).
 */
export function parseRequestHeader(b: Buffer, off = 0): RequestHeader | null {
  if (b.length - off < REQUEST_HEADER_SIZE) throw new RangeError('request header needs 28 bytes');
  if (b.readUInt32BE(off) !== REQUEST_MAGIC) return null;
  return {
    flags: b.readUInt16BE(off + 4),
    type: b.readUInt16BE(off + 6),
    cookie: b.readBigUInt64BE(off + 8),
    offset: b.readBigUInt64BE(off + 16),
    length: b.readUInt32BE(off + 24),
  };
}

// S: 32 magic 0x67446698, 32 error, 64 cookie
export function writeSimpleReplyHeader(target: Buffer, off: number, error: number, cookie: bigint): number {
  target.writeUInt32BE(SIMPLE_REPLY_MAGIC, off);
  target.writeUInt32BE(error >>> 0, off + 4);
  target.writeBigUInt64BE(cookie, off + 8);
  return off + SIMPLE_REPLY_HEADER_SIZE;
}

export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_SIZE);
  writeSimpleReplyHeader(b, 0, error, cookie);
  return b;
}

// S: 32 magic 0x668e33ef, 16 flags, 16 type, 64 cookie, 32 payload length
export function writeStructuredHeader(
  target: Buffer, off: number, flags: number, type: number, cookie: bigint, length: number,
): number {
  target.writeUInt32BE(STRUCTURED_REPLY_MAGIC, off);
  target.writeUInt16BE(flags, off + 4);
  target.writeUInt16BE(type, off + 6);
  target.writeBigUInt64BE(cookie, off + 8);
  target.writeUInt32BE(length >>> 0, off + 16);
  return off + STRUCTURED_REPLY_HEADER_SIZE;
}

/** NBD_REPLY_TYPE_NONE with DONE: the final chunk of a successful structured reply. */
export function encodeStructuredNone(cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE);
  writeStructuredHeader(b, 0, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0);
  return b;
}

/** Bytes of an OFFSET_DATA chunk before its data: header and 64-bit offset. */
export const OFFSET_DATA_PREFIX = STRUCTURED_REPLY_HEADER_SIZE + 8;

// OFFSET_DATA payload: 64 offset, data (length - 8 bytes)
export function writeOffsetDataHeader(
  target: Buffer, off: number, flags: number, cookie: bigint, offset: bigint, dataLength: number,
): number {
  const p = writeStructuredHeader(target, off, flags, REPLY_TYPE_OFFSET_DATA, cookie, 8 + dataLength);
  target.writeBigUInt64BE(offset, p);
  return p + 8;
}

// OFFSET_HOLE payload: 64 offset, 32 hole size
export function encodeOffsetHole(cookie: bigint, flags: number, offset: bigint, size: number): Buffer {
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 12);
  const p = writeStructuredHeader(b, 0, flags, REPLY_TYPE_OFFSET_HOLE, cookie, 12);
  b.writeBigUInt64BE(offset, p);
  b.writeUInt32BE(size >>> 0, p + 8);
  return b;
}

// BLOCK_STATUS payload: 32 context id, then (32 length, 32 status flags) per extent
export function encodeBlockStatus(
  cookie: bigint, flags: number, contextId: number, extents: ReadonlyArray<{ length: number; flags: number }>,
): Buffer {
  const len = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + len);
  let p = writeStructuredHeader(b, 0, flags, REPLY_TYPE_BLOCK_STATUS, cookie, len);
  b.writeUInt32BE(contextId >>> 0, p);
  p += 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length >>> 0, p);
    b.writeUInt32BE(e.flags >>> 0, p + 4);
    p += 8;
  }
  return b;
}

// ERROR payload: 32 error, 16 message length, message
export function encodeStructuredError(cookie: bigint, flags: number, error: number, message = ''): Buffer {
  const m = utf8Truncated(message, MAX_ERROR_MESSAGE);
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 6 + m.length);
  const p = writeStructuredHeader(b, 0, flags, REPLY_TYPE_ERROR, cookie, 6 + m.length);
  b.writeUInt32BE(error >>> 0, p);
  b.writeUInt16BE(m.length, p + 4);
  m.copy(b, p + 6);
  return b;
}

// ERROR_OFFSET payload: 32 error, 16 message length, message, 64 offset
export function encodeStructuredErrorOffset(
  cookie: bigint, flags: number, error: number, message: string, offset: bigint,
): Buffer {
  const m = utf8Truncated(message, MAX_ERROR_MESSAGE);
  const b = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + 14 + m.length);
  const p = writeStructuredHeader(b, 0, flags, REPLY_TYPE_ERROR_OFFSET, cookie, 14 + m.length);
  b.writeUInt32BE(error >>> 0, p);
  b.writeUInt16BE(m.length, p + 4);
  m.copy(b, p + 6);
  b.writeBigUInt64BE(offset, p + 6 + m.length);
  return b;
}
