// Test helpers for the NBD layer: byte builders (written from the spec
// layouts, independent of src/nbd/codec.ts) and a reply parser. The process
// runner is in test/helpers/process.ts, the TLS fixtures in test/helpers/pki.ts.

export const hex = (s: string): Buffer => Buffer.from(s.replace(/[\s_]/g, ''), 'hex');

export function u16(n: number): Buffer { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; }
export function u32(n: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; }
export function u64(n: bigint | number): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; }

/** C: IHAVEOPT, option, length, data */
export function opt(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([hex('49484156454f5054'), u32(option), u32(data.length), data]);
}

export function infoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  return Buffer.concat([u32(n.length), n, u16(infos.length), ...infos.map(u16)]);
}

export function metaData(name: string, queries: string[]): Buffer {
  const n = Buffer.from(name);
  return Buffer.concat([u32(n.length), n, u32(queries.length), ...queries.flatMap((q) => [u32(Buffer.byteLength(q)), Buffer.from(q)])]);
}

/** C: 0x25609513, flags, type, cookie, offset, length [, payload] */
export function req(type: number, cookie: number | bigint, offset: number | bigint, length: number, flags = 0, payload?: Buffer): Buffer {
  const parts = [u32(0x25609513), u16(flags), u16(type), u64(cookie), u64(offset), u32(length)];
  if (payload) parts.push(payload);
  return Buffer.concat(parts);
}

export interface OptReply { option: number; type: number; data: Buffer }

/** Parse fixed-newstyle option replies from a byte stream; returns replies and the rest. */
export function parseOptReplies(b: Buffer): { replies: OptReply[]; rest: Buffer } {
  const replies: OptReply[] = [];
  let p = 0;
  while (b.length - p >= 20) {
    if (b.readBigUInt64BE(p) !== 0x3e889045565a9n) break;
    const len = b.readUInt32BE(p + 16);
    if (b.length - p < 20 + len) break;
    replies.push({ option: b.readUInt32BE(p + 8), type: b.readUInt32BE(p + 12), data: b.subarray(p + 20, p + 20 + len) });
    p += 20 + len;
  }
  return { replies, rest: b.subarray(p) };
}

export type Reply =
  | { kind: 'simple'; cookie: bigint; error: number; data: Buffer }
  | { kind: 'chunk'; cookie: bigint; flags: number; type: number; payload: Buffer };

/** Parse transmission replies; readLengths tells how much data a successful simple reply carries per cookie. */
export function parseReplies(b: Buffer, readLengths: Map<bigint, number> = new Map()): Reply[] {
  const out: Reply[] = [];
  let p = 0;
  while (p < b.length) {
    const magic = b.readUInt32BE(p);
    if (magic === 0x67446698) {
      const error = b.readUInt32BE(p + 4);
      const cookie = b.readBigUInt64BE(p + 8);
      const n = error === 0 ? readLengths.get(cookie) ?? 0 : 0;
      out.push({ kind: 'simple', cookie, error, data: b.subarray(p + 16, p + 16 + n) });
      p += 16 + n;
    } else if (magic === 0x668e33ef) {
      const len = b.readUInt32BE(p + 16);
      out.push({ kind: 'chunk', flags: b.readUInt16BE(p + 4), type: b.readUInt16BE(p + 6), cookie: b.readBigUInt64BE(p + 8), payload: b.subarray(p + 20, p + 20 + len) });
      p += 20 + len;
    } else {
      throw new Error(`bad reply magic 0x${magic.toString(16)} at ${p}`);
    }
  }
  return out;
}

export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
export async function settle(n = 20): Promise<void> { for (let i = 0; i < n; i++) await tick(); }

/** Splits of a buffer: whole, byte by byte, and at every boundary (two pieces). */
export function splits(b: Buffer): Buffer[][] {
  const out: Buffer[][] = [[b], [...b].map((x) => Buffer.from([x]))];
  for (let i = 1; i < b.length; i++) out.push([b.subarray(0, i), b.subarray(i)]);
  return out;
}
