// Text key=value data of Login and Text PDUs (RFC 7143 6.1).
//
//   data segment := ( key "=" value NUL )*
//   key          := [A-Z][A-Za-z0-9.+@_-]*, at most 63 bytes
//   value        := UTF-8 without NUL, at most 255 bytes, except the binary
//                   CHAP values (0x hex / 0b base64), which may be long
//
// A logical text data segment may span several PDUs (C bit set on all but
// the last); key=value pairs may be cut anywhere, so TextCollector joins the
// pieces and parses only once the final piece has arrived.

import { ProtocolError } from '../errors';

export type TextPair = [key: string, value: string];

export const MAX_KEY_LENGTH = 63;
export const MAX_VALUE_LENGTH = 255;
/** Bound on a long binary value (CHAP_C/CHAP_R), in encoded bytes. */
export const MAX_LARGE_VALUE_LENGTH = 65536;
/** Default bound on a whole logical text data segment. */
export const MAX_TEXT_LENGTH = 256 * 1024;

/** Keys whose values may exceed 255 bytes (large-binary-values). */
export const LARGE_VALUE_KEYS: ReadonlySet<string> = new Set(['CHAP_C', 'CHAP_R']);

// X# (IANA-registered extension keys) is the one "#" allowed.
// RFC 7143 6.1: letters, digits, dot, minus, plus, at and underscore; RFC 7144 added
// iSCSIProtocolLevel, so a key may start with a lower-case letter too.
const KEY_RE = /^(?:[A-Za-z][A-Za-z0-9.+@_-]*|X#[A-Za-z0-9.+@_-]+)$/;

export function isValidKey(key: string): boolean {
  return key.length > 0 && key.length <= MAX_KEY_LENGTH && KEY_RE.test(key);
}

function maxValueLength(key: string): number {
  // Vendor extension keys (X-, X#) are tolerated up to the large bound: we only answer NotUnderstood.
  return LARGE_VALUE_KEYS.has(key) || key.startsWith('X-') || key.startsWith('X#') ? MAX_LARGE_VALUE_LENGTH : MAX_VALUE_LENGTH;
}

/** Encode pairs (in order) as key=value\0... Throws RangeError on invalid keys/values (our bug). */
export function encodeText(pairs: Iterable<TextPair> | Readonly<Record<string, string>>): Buffer {
  const list: Iterable<TextPair> = Symbol.iterator in Object(pairs)
    ? (pairs as Iterable<TextPair>)
    : Object.entries(pairs as Record<string, string>);
  const parts: Buffer[] = [];
  for (const [key, value] of list) {
    if (!isValidKey(key)) throw new RangeError(`invalid text key ${JSON.stringify(key)}`);
    const v = Buffer.from(value, 'utf8');
    if (v.includes(0)) throw new RangeError(`NUL in value of ${key}`);
    if (v.length > maxValueLength(key)) throw new RangeError(`value of ${key} is ${v.length} bytes long`);
    parts.push(Buffer.from(`${key}=`, 'utf8'), v, Buffer.alloc(1));
  }
  return Buffer.concat(parts);
}

export interface DecodeTextOptions {
  /**
   * Keys allowed to appear more than once (e.g. TargetName/TargetAddress in
   * a SendTargets response), or true for all. Otherwise a repeated key is a
   * ProtocolError (RFC 7143 6.1: a key sent twice is a protocol error).
   */
  allowDuplicates?: boolean | ReadonlySet<string>;
}

/** Keys that legitimately repeat in a SendTargets response. */
export const SEND_TARGETS_REPEATABLE: ReadonlySet<string> = new Set(['TargetName', 'TargetAddress', 'TargetAlias']);

/**
 * Decode a complete logical text data segment. Empty strings between NULs
 * (padding-like stray NULs some targets send) are skipped. Throws
 * ProtocolError on a missing final NUL, a missing "=", a bad key, an
 * oversized value or a duplicate key.
 */
export function decodeText(buf: Buffer, opts: DecodeTextOptions = {}): TextPair[] {
  const out: TextPair[] = [];
  const seen = new Set<string>();
  const dup = opts.allowDuplicates ?? false;
  let start = 0;
  while (start < buf.length) {
    const end = buf.indexOf(0, start);
    if (end < 0) throw new ProtocolError('text data does not end with a NUL');
    if (end === start) {
      start++;
      continue;
    }
    const eq = buf.indexOf(0x3d, start);
    if (eq < 0 || eq > end) throw new ProtocolError(`text item without "=": ${printable(buf.subarray(start, end))}`);
    const key = buf.toString('latin1', start, eq);
    if (!isValidKey(key)) throw new ProtocolError(`invalid text key ${printable(buf.subarray(start, eq))}`);
    if (end - eq - 1 > maxValueLength(key)) {
      throw new ProtocolError(`value of ${key} is ${end - eq - 1} bytes long`);
    }
    if (seen.has(key) && !(dup === true || (dup !== false && dup.has(key)))) {
      throw new ProtocolError(`text key ${key} repeated`);
    }
    seen.add(key);
    out.push([key, buf.toString('utf8', eq + 1, end)]);
    start = end + 1;
  }
  return out;
}

function printable(b: Buffer): string {
  return JSON.stringify(b.subarray(0, 64).toString('latin1'));
}

/** Pairs to a Map (last one wins; decodeText already refused duplicates). */
export function textToMap(pairs: readonly TextPair[]): Map<string, string> {
  return new Map(pairs);
}

/**
 * Split an encoded text segment into pieces of at most `maxLength` bytes
 * (the peer's MaxRecvDataSegmentLength); every piece but the last is sent
 * with C=1. Cuts may fall inside a pair, as RFC 7143 allows.
 */
export function splitText(buf: Buffer, maxLength: number): Buffer[] {
  if (maxLength < 1) throw new RangeError('maxLength must be positive');
  if (buf.length <= maxLength) return [buf];
  const out: Buffer[] = [];
  for (let o = 0; o < buf.length; o += maxLength) out.push(buf.subarray(o, Math.min(buf.length, o + maxLength)));
  return out;
}

/**
 * Joins the data segments of a C-bit sequence. add() returns undefined while
 * more pieces are expected (C=1) and the decoded pairs once the last piece
 * (C=0) arrives, then resets. Exceeding `maxLength` is a ProtocolError.
 */
export class TextCollector {
  private parts: Buffer[] = [];
  private length = 0;

  constructor(
    readonly maxLength: number = MAX_TEXT_LENGTH,
    private readonly decodeOptions: DecodeTextOptions = {},
  ) {}

  /** True while a C-bit sequence is incomplete. */
  get pending(): boolean {
    return this.parts.length > 0;
  }

  add(data: Buffer, continues: boolean): TextPair[] | undefined {
    this.length += data.length;
    if (this.length > this.maxLength) {
      this.reset();
      throw new ProtocolError(`text data longer than ${this.maxLength} bytes`);
    }
    if (data.length > 0) this.parts.push(data);
    if (continues) return undefined;
    const all = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
    this.reset();
    return decodeText(all, this.decodeOptions);
  }

  reset(): void {
    this.parts = [];
    this.length = 0;
  }
}
