// Pure encoders and parsers for generic netlink and the kernel NBD family
// (uapi linux/netlink.h, linux/genetlink.h, linux/nbd-netlink.h). No I/O.
//
// Byte order: netlink headers and attribute payloads are in the host's byte
// order, not network order. Every platform we run on (x86-64, arm64) is
// little-endian, so this file reads and writes little-endian; syscalls.ts
// refuses to open a socket on a big-endian host rather than send wrong bytes.
//
// Every length read from the wire is checked against the buffer before use;
// anything that does not fit throws NetlinkMessageError, never a RangeError.
import { ConfigError } from '../../errors';
import { NetlinkMessageError } from './errors';
import {
  NLMSG_HDRLEN, NLA_HDRLEN, GENL_HDRLEN, NLMSG_ERROR, NLMSG_DONE, NLM_F_REQUEST, NLM_F_ACK, NLM_F_CAPPED,
  NLM_F_ACK_TLVS, NLMSGERR_ATTR_MSG, NLMSGERR_ATTR_OFFS, NLMSGERR_ATTR_MISS_TYPE, NLMSGERR_ATTR_MISS_NEST,
  NLA_F_NESTED, NLA_TYPE_MASK, GENL_ID_CTRL, GENL_CTRL_VERSION, GENL_NAMSIZ,
  CTRL_CMD_GETFAMILY, CTRL_CMD_NEWFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_VERSION,
  CTRL_ATTR_HDRSIZE, CTRL_ATTR_MAXATTR, CTRL_ATTR_MCAST_GROUPS, CTRL_ATTR_MCAST_GRP_NAME, CTRL_ATTR_MCAST_GRP_ID,
  NBD_GENL_VERSION, NBD_CMD_CONNECT, NBD_CMD_DISCONNECT, NBD_CMD_RECONFIGURE, NBD_CMD_LINK_DEAD, NBD_CMD_STATUS,
  NBD_ATTR_INDEX, NBD_ATTR_SIZE_BYTES, NBD_ATTR_BLOCK_SIZE_BYTES, NBD_ATTR_TIMEOUT, NBD_ATTR_SERVER_FLAGS,
  NBD_ATTR_CLIENT_FLAGS, NBD_ATTR_SOCKETS, NBD_ATTR_DEAD_CONN_TIMEOUT, NBD_ATTR_DEVICE_LIST,
  NBD_ATTR_BACKEND_IDENTIFIER, NBD_SOCK_ITEM, NBD_SOCK_FD, NBD_DEVICE_ITEM, NBD_DEVICE_INDEX, NBD_DEVICE_CONNECTED,
} from './constants';

const align4 = (n: number): number => (n + 3) & ~3;
const U64_MAX = (1n << 64n) - 1n;
const U16_MAX = 0xffff;

// ---- cursor ---------------------------------------------------------------

/** Bounds-checked reader over buf[pos, end). `where` names the structure in errors. */
export class Cursor {
  constructor(
    readonly buf: Buffer,
    public pos: number,
    readonly end: number,
    readonly where: string,
  ) {
    if (pos < 0 || end > buf.length || pos > end) throw new NetlinkMessageError(`${where}: bad bounds`);
  }

  static of(buf: Buffer, where: string): Cursor {
    return new Cursor(buf, 0, buf.length, where);
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  need(n: number, what: string): void {
    if (n > this.remaining) {
      throw new NetlinkMessageError(
        `${this.where}: ${what} needs ${n} bytes at offset ${this.pos}, only ${this.remaining} left`);
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++];
  }

  u16(what: string): number {
    this.need(2, what);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  i32(what: string): number {
    this.need(4, what);
    const v = this.buf.readInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  bytes(n: number, what: string): Buffer {
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /** Skip padding up to the next 4-byte boundary (relative to `base`); a missing pad at the end is fine. */
  pad4(base: number): void {
    this.pos = Math.min(this.end, base + align4(this.pos - base));
  }
}

// ---- encoding -------------------------------------------------------------

export interface NlMsgHeader {
  type: number;
  flags: number;
  seq: number;
  pid: number;
}

// nlmsghdr: len u32 (header included, padding excluded), type u16, flags u16, seq u32, pid u32.
export function encodeNlmsg(h: { type: number; flags: number; seq: number; pid?: number }, payload: Buffer): Buffer {
  const len = NLMSG_HDRLEN + payload.length;
  const b = Buffer.alloc(align4(len));
  b.writeUInt32LE(len, 0);
  b.writeUInt16LE(h.type, 4);
  b.writeUInt16LE(h.flags, 6);
  b.writeUInt32LE(h.seq >>> 0, 8);
  b.writeUInt32LE(h.pid ?? 0, 12);
  payload.copy(b, NLMSG_HDRLEN);
  return b;
}

export interface GenlRequest {
  familyId: number;
  cmd: number;
  version: number;
  seq: number;
  /** Defaults to NLM_F_REQUEST | NLM_F_ACK: the kernel then always ends its answer with an NLMSG_ERROR. */
  flags?: number;
}

// genlmsghdr: cmd u8, version u8, reserved u16 (0); then the attributes.
export function encodeGenlmsg(r: GenlRequest, attrs: Buffer[]): Buffer {
  const genl = Buffer.alloc(GENL_HDRLEN);
  genl.writeUInt8(r.cmd, 0);
  genl.writeUInt8(r.version, 1);
  return encodeNlmsg(
    { type: r.familyId, flags: r.flags ?? (NLM_F_REQUEST | NLM_F_ACK), seq: r.seq },
    Buffer.concat([genl, ...attrs]),
  );
}

// nlattr: len u16 (4-byte header + payload, padding excluded), type u16, payload, zero pad to 4.
export function nla(type: number, payload: Buffer): Buffer {
  const len = NLA_HDRLEN + payload.length;
  if (len > U16_MAX) throw new RangeError(`netlink attribute ${type & NLA_TYPE_MASK} too long (${len} bytes)`);
  const b = Buffer.alloc(align4(len));
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  payload.copy(b, NLA_HDRLEN);
  return b;
}

export function nlaU8(type: number, v: number): Buffer {
  const p = Buffer.alloc(1);
  p.writeUInt8(v, 0);
  return nla(type, p);
}

export function nlaU16(type: number, v: number): Buffer {
  const p = Buffer.alloc(2);
  p.writeUInt16LE(v, 0);
  return nla(type, p);
}

export function nlaU32(type: number, v: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32LE(v, 0);
  return nla(type, p);
}

export function nlaU64(type: number, v: bigint | number): Buffer {
  const p = Buffer.alloc(8);
  p.writeBigUInt64LE(BigInt(v), 0);
  return nla(type, p);
}

/** A NUL-terminated string attribute (what nla_put_string sends). */
export function nlaString(type: number, s: string): Buffer {
  return nla(type, Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]));
}

/** A nested attribute; NLA_F_NESTED is set unless `flag` is false (the kernel accepts both here). */
export function nlaNested(type: number, children: Buffer[], flag = true): Buffer {
  return nla(flag ? type | NLA_F_NESTED : type, Buffer.concat(children));
}

// ---- decoding: messages -----------------------------------------------------

export interface NlMessage extends NlMsgHeader {
  /** The message after its 16-byte header, padding excluded. */
  payload: Buffer;
  /** The whole message, header included, padding excluded (a view into the parsed buffer). */
  raw: Buffer;
}

// Layout read: repeated { nlmsghdr (len u32, type u16, flags u16, seq u32, pid u32),
// payload[len - 16], pad to 4 }. recv() on a netlink socket may return several.
export function parseMessages(buf: Buffer): NlMessage[] {
  const c = Cursor.of(buf, 'netlink message');
  const out: NlMessage[] = [];
  while (c.remaining > 0) {
    const start = c.pos;
    const len = c.u32('nlmsg_len');
    if (len < NLMSG_HDRLEN) throw new NetlinkMessageError(`nlmsg_len ${len} at offset ${start} is below 16`);
    if (start + len > c.end) {
      throw new NetlinkMessageError(`nlmsg_len ${len} at offset ${start} runs past the ${buf.length}-byte buffer`);
    }
    const type = c.u16('nlmsg_type');
    const flags = c.u16('nlmsg_flags');
    const seq = c.u32('nlmsg_seq');
    const pid = c.u32('nlmsg_pid');
    const payload = c.bytes(len - NLMSG_HDRLEN, 'payload');
    out.push({ type, flags, seq, pid, payload, raw: buf.subarray(start, start + len) });
    c.pad4(start);
  }
  return out;
}

export interface NlAttr {
  /** Type number with NLA_F_NESTED / NLA_F_NET_BYTEORDER masked off. */
  type: number;
  nested: boolean;
  data: Buffer;
}

// Layout read: repeated { nla_len u16 (4 + payload), nla_type u16 (type | NLA_F_NESTED |
// NLA_F_NET_BYTEORDER), payload[nla_len - 4], pad to 4 }.
export function parseAttrs(buf: Buffer, where: string): NlAttr[] {
  const c = Cursor.of(buf, where);
  const out: NlAttr[] = [];
  while (c.remaining > 0) {
    const start = c.pos;
    const len = c.u16('nla_len');
    const rawType = c.u16('nla_type');
    if (len < NLA_HDRLEN) throw new NetlinkMessageError(`${where}: nla_len ${len} at offset ${start} is below 4`);
    const data = c.bytes(len - NLA_HDRLEN, `attribute ${rawType & NLA_TYPE_MASK} payload`);
    out.push({ type: rawType & NLA_TYPE_MASK, nested: (rawType & NLA_F_NESTED) !== 0, data });
    c.pad4(start);
  }
  return out;
}

/** Attributes by type; when a type repeats, the last one wins (as the kernel's nla_parse does). */
export class AttrTable {
  private readonly byType = new Map<number, NlAttr>();
  constructor(
    readonly list: NlAttr[],
    readonly where: string,
  ) {
    for (const a of list) this.byType.set(a.type, a);
  }

  static parse(buf: Buffer, where: string): AttrTable {
    return new AttrTable(parseAttrs(buf, where), where);
  }

  has(type: number): boolean {
    return this.byType.has(type);
  }

  private sized(type: number, size: number, what: string): Buffer | undefined {
    const a = this.byType.get(type);
    if (!a) return undefined;
    if (a.data.length !== size) {
      throw new NetlinkMessageError(`${this.where}: attribute ${type} is ${a.data.length} bytes, a ${what} is ${size}`);
    }
    return a.data;
  }

  u8(type: number): number | undefined {
    return this.sized(type, 1, 'u8')?.readUInt8(0);
  }

  u16(type: number): number | undefined {
    return this.sized(type, 2, 'u16')?.readUInt16LE(0);
  }

  u32(type: number): number | undefined {
    return this.sized(type, 4, 'u32')?.readUInt32LE(0);
  }

  u64(type: number): bigint | undefined {
    return this.sized(type, 8, 'u64')?.readBigUInt64LE(0);
  }

  /** A string attribute, up to its first NUL (the NUL is optional, as in nla_strscpy). */
  str(type: number): string | undefined {
    const a = this.byType.get(type);
    if (!a) return undefined;
    const nul = a.data.indexOf(0);
    return a.data.subarray(0, nul < 0 ? a.data.length : nul).toString('utf8');
  }

  nested(type: number, name: string): AttrTable | undefined {
    const a = this.byType.get(type);
    return a ? AttrTable.parse(a.data, `${this.where} > ${name}`) : undefined;
  }

  /** Required variants: a missing attribute is a malformed message. */
  needU32(type: number, name: string): number {
    const v = this.u32(type);
    if (v === undefined) throw new NetlinkMessageError(`${this.where}: ${name} is missing`);
    return v;
  }
}

export interface GenlMessage {
  header: NlMsgHeader;
  cmd: number;
  version: number;
  /** The attributes after the 4-byte genlmsghdr. */
  attrs: Buffer;
}

// Layout read (payload of a generic netlink message): cmd u8, version u8, reserved u16, attributes.
export function parseGenl(msg: NlMessage): GenlMessage {
  const c = Cursor.of(msg.payload, `genetlink message type ${msg.type}`);
  const cmd = c.u8('genlmsghdr.cmd');
  const version = c.u8('genlmsghdr.version');
  c.u16('genlmsghdr.reserved');
  const { type, flags, seq, pid } = msg;
  return { header: { type, flags, seq, pid }, cmd, version, attrs: c.bytes(c.remaining, 'attributes') };
}

export interface NlAck {
  /** Positive errno of the failure, 0 for a plain acknowledgement. */
  errno: number;
  seq: number;
  /** The header of the request this answers, as the kernel echoed it. */
  request: NlMsgHeader;
  /** NLMSGERR_ATTR_MSG: the kernel's reason in words, when it set one. */
  extAck?: string;
  /** NLMSGERR_ATTR_OFFS: offset of the offending attribute in the request. */
  badAttrOffset?: number;
  /** NLMSGERR_ATTR_MISS_TYPE / MISS_NEST: a required attribute that was missing, and the nest it belongs in. */
  missingAttrType?: number;
  missingAttrNest?: number;
}

// Layout read (payload of NLMSG_ERROR, struct nlmsgerr): error i32 (negative errno, or 0
// for an ACK), the request's nlmsghdr (16 bytes), then the rest of the request unless
// NLM_F_CAPPED is set or error is 0, then, when NLM_F_ACK_TLVS is set, nlattrs
// (NLMSGERR_ATTR_MSG string, NLMSGERR_ATTR_OFFS u32, ...).
export function parseAck(msg: NlMessage): NlAck {
  if (msg.type !== NLMSG_ERROR) throw new NetlinkMessageError(`message type ${msg.type} is not NLMSG_ERROR`);
  const c = Cursor.of(msg.payload, 'NLMSG_ERROR');
  const error = c.i32('error');
  if (error > 0 || error < -4095) throw new NetlinkMessageError(`NLMSG_ERROR error field ${error} is not -errno`);
  const reqStart = c.pos;
  const reqLen = c.u32('echoed nlmsg_len');
  const request: NlMsgHeader = {
    type: c.u16('echoed nlmsg_type'),
    flags: c.u16('echoed nlmsg_flags'),
    seq: c.u32('echoed nlmsg_seq'),
    pid: c.u32('echoed nlmsg_pid'),
  };
  const ack: NlAck = { errno: error === 0 ? 0 : -error, seq: msg.seq, request };
  if (error !== 0 && (msg.flags & NLM_F_CAPPED) === 0) {
    if (reqLen < NLMSG_HDRLEN) throw new NetlinkMessageError(`echoed nlmsg_len ${reqLen} is below 16`);
    c.bytes(reqLen - NLMSG_HDRLEN, 'echoed request');
    c.pad4(reqStart);
  }
  if ((msg.flags & NLM_F_ACK_TLVS) !== 0) {
    const t = AttrTable.parse(c.bytes(c.remaining, 'extended ack'), 'extended ack');
    const text = t.str(NLMSGERR_ATTR_MSG);
    if (text !== undefined && text !== '') ack.extAck = text;
    const offs = t.u32(NLMSGERR_ATTR_OFFS);
    if (offs !== undefined) ack.badAttrOffset = offs;
    const missType = t.u32(NLMSGERR_ATTR_MISS_TYPE);
    if (missType !== undefined) ack.missingAttrType = missType;
    const missNest = t.u32(NLMSGERR_ATTR_MISS_NEST);
    if (missNest !== undefined) ack.missingAttrNest = missNest;
  }
  return ack;
}

/** A request's answer: the replies that came before its terminating NLMSG_ERROR (or NLMSG_DONE). */
export interface NlReply {
  replies: NlMessage[];
  ack: NlAck;
}

/**
 * Sorts the messages received for one request. Messages with another seq (a
 * late answer to an earlier, timed-out request) are dropped. Throws when no
 * NLMSG_ERROR/NLMSG_DONE for `seq` is present.
 */
export function collectReply(messages: NlMessage[], seq: number): NlReply {
  const replies: NlMessage[] = [];
  for (const m of messages) {
    if (m.seq !== seq) continue;
    if (m.type === NLMSG_ERROR) return { replies, ack: parseAck(m) };
    if (m.type === NLMSG_DONE) {
      return { replies, ack: { errno: 0, seq, request: { type: 0, flags: 0, seq, pid: 0 } } };
    }
    replies.push(m);
  }
  throw new NetlinkMessageError(`no acknowledgement for request ${seq}`);
}

// ---- the controller: CTRL_CMD_GETFAMILY -----------------------------------

export interface McastGroup {
  name: string;
  id: number;
}

export interface GenlFamily {
  id: number;
  name: string;
  version: number;
  hdrSize: number;
  maxAttr: number;
  mcastGroups: McastGroup[];
}

export function buildGetFamily(name: string, seq: number): Buffer {
  if (name.length === 0 || Buffer.byteLength(name) >= GENL_NAMSIZ || name.includes('\0')) {
    throw new RangeError(`generic netlink family name ${JSON.stringify(name)} is not 1..15 bytes`);
  }
  return encodeGenlmsg(
    { familyId: GENL_ID_CTRL, cmd: CTRL_CMD_GETFAMILY, version: GENL_CTRL_VERSION, seq },
    [nlaString(CTRL_ATTR_FAMILY_NAME, name)],
  );
}

// Layout read (ctrl_fill_info): genlmsghdr { CTRL_CMD_NEWFAMILY }, then FAMILY_NAME string,
// FAMILY_ID u16, VERSION u32, HDRSIZE u32, MAXATTR u32, OPS nested (ignored), MCAST_GROUPS
// nested { item i (type i+1) nested { MCAST_GRP_ID u32, MCAST_GRP_NAME string } }.
export function parseGetFamilyReply(msg: NlMessage): GenlFamily {
  if (msg.type !== GENL_ID_CTRL) throw new NetlinkMessageError(`GETFAMILY reply has type ${msg.type}, not 0x10`);
  const g = parseGenl(msg);
  if (g.cmd !== CTRL_CMD_NEWFAMILY) throw new NetlinkMessageError(`GETFAMILY reply has command ${g.cmd}`);
  const t = AttrTable.parse(g.attrs, 'GETFAMILY reply');
  const id = t.u16(CTRL_ATTR_FAMILY_ID);
  if (id === undefined) throw new NetlinkMessageError('GETFAMILY reply: CTRL_ATTR_FAMILY_ID is missing');
  const mcastGroups: McastGroup[] = [];
  const groups = t.nested(CTRL_ATTR_MCAST_GROUPS, 'MCAST_GROUPS');
  for (const item of groups?.list ?? []) {
    const gt = AttrTable.parse(item.data, `GETFAMILY reply > MCAST_GROUPS > item ${item.type}`);
    const name = gt.str(CTRL_ATTR_MCAST_GRP_NAME);
    if (name === undefined) throw new NetlinkMessageError(`GETFAMILY reply: group ${item.type} has no name`);
    mcastGroups.push({ name, id: gt.needU32(CTRL_ATTR_MCAST_GRP_ID, 'MCAST_GRP_ID') });
  }
  return {
    id,
    name: t.str(CTRL_ATTR_FAMILY_NAME) ?? '',
    version: t.u32(CTRL_ATTR_VERSION) ?? 0,
    hdrSize: t.u32(CTRL_ATTR_HDRSIZE) ?? 0,
    maxAttr: t.u32(CTRL_ATTR_MAXATTR) ?? 0,
    mcastGroups,
  };
}

// ---- the nbd family ---------------------------------------------------------

export interface NbdConnectRequest {
  /** /dev/nbdN to use; without it the kernel picks a free device or makes a new one. */
  index?: number;
  sizeBytes: bigint;
  blockSize: number;
  timeoutSec: number;
  deadConnTimeoutSec: number;
  /** NBD_FLAG_* transmission flags, as a handshake would have sent them. */
  serverFlags: number;
  /** NBD_CFLAG_* bits. */
  clientFlags: number;
  backendId: string;
  /** Socket fds for the kernel's ends, one per connection. */
  fds: number[];
}

export interface NbdReconfigureRequest {
  index: number;
  /** New sockets for dead ones; none for a resize alone. */
  fds: number[];
  /** A new size (nbd_genl_reconfigure calls nbd_genl_size_set: the disk grows online, a RESIZE uevent). */
  sizeBytes?: bigint;
  /** Sent with sizeBytes (the same block size again: the kernel needs it to set the size). */
  blockSize?: number;
  timeoutSec?: number;
  deadConnTimeoutSec?: number;
  /** Sent when given, but Linux (up to 6.x) ignores SERVER_FLAGS on RECONFIGURE. */
  serverFlags?: number;
  clientFlags?: number;
  backendId?: string;
}

function checkIndex(index: number): void {
  if (!Number.isInteger(index) || index < 0 || index > 0x7fffffff) {
    throw new ConfigError('ECONFIG', `NBD device index ${index} is not an integer in 0..2147483647`);
  }
}

function checkU64(name: string, v: bigint | number): void {
  const ok = typeof v === 'bigint' ? v >= 0n && v <= U64_MAX : Number.isSafeInteger(v) && v >= 0;
  if (!ok) throw new ConfigError('ECONFIG', `${name} ${String(v)} is not an unsigned 64-bit integer`);
}

function checkBackend(id: string): void {
  if (id.includes('\0')) throw new ConfigError('ECONFIG', 'backend identifier must not contain NUL');
  if (Buffer.byteLength(id) > 4096) throw new ConfigError('ECONFIG', 'backend identifier is longer than 4096 bytes');
}

function socketsAttr(fds: number[]): Buffer {
  if (fds.length === 0) throw new ConfigError('ECONFIG', 'NBD netlink command needs at least one socket fd');
  for (const fd of fds) {
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw new ConfigError('ECONFIG', `bad socket fd ${fd}`);
  }
  return nlaNested(NBD_ATTR_SOCKETS, fds.map((fd) => nlaNested(NBD_SOCK_ITEM, [nlaU32(NBD_SOCK_FD, fd)])));
}

const nbdHeader = (familyId: number, cmd: number, seq: number): GenlRequest =>
  ({ familyId, cmd, version: NBD_GENL_VERSION, seq });

// Attribute order is ours (the kernel reads them into a table first); the test fixtures pin it.
export function buildNbdConnect(familyId: number, seq: number, r: NbdConnectRequest): Buffer {
  const attrs: Buffer[] = [];
  if (r.index !== undefined) {
    checkIndex(r.index);
    attrs.push(nlaU32(NBD_ATTR_INDEX, r.index));
  }
  checkU64('size', r.sizeBytes);
  checkU64('block size', r.blockSize);
  checkU64('timeout', r.timeoutSec);
  checkU64('dead connection timeout', r.deadConnTimeoutSec);
  checkU64('server flags', r.serverFlags);
  checkU64('client flags', r.clientFlags);
  checkBackend(r.backendId);
  attrs.push(
    nlaU64(NBD_ATTR_SIZE_BYTES, r.sizeBytes),
    nlaU64(NBD_ATTR_BLOCK_SIZE_BYTES, r.blockSize),
    nlaU64(NBD_ATTR_TIMEOUT, r.timeoutSec),
    nlaU64(NBD_ATTR_DEAD_CONN_TIMEOUT, r.deadConnTimeoutSec),
    nlaU64(NBD_ATTR_SERVER_FLAGS, r.serverFlags),
    nlaU64(NBD_ATTR_CLIENT_FLAGS, r.clientFlags),
    nlaString(NBD_ATTR_BACKEND_IDENTIFIER, r.backendId),
    socketsAttr(r.fds),
  );
  return encodeGenlmsg(nbdHeader(familyId, NBD_CMD_CONNECT, seq), attrs);
}

export function buildNbdReconfigure(familyId: number, seq: number, r: NbdReconfigureRequest): Buffer {
  checkIndex(r.index);
  const attrs: Buffer[] = [nlaU32(NBD_ATTR_INDEX, r.index)];
  const u64s: Array<[string, number, number | undefined]> = [
    ['timeout', NBD_ATTR_TIMEOUT, r.timeoutSec],
    ['dead connection timeout', NBD_ATTR_DEAD_CONN_TIMEOUT, r.deadConnTimeoutSec],
    ['server flags', NBD_ATTR_SERVER_FLAGS, r.serverFlags],
    ['client flags', NBD_ATTR_CLIENT_FLAGS, r.clientFlags],
  ];
  for (const [name, type, v] of u64s) {
    if (v === undefined) continue;
    checkU64(name, v);
    attrs.push(nlaU64(type, v));
  }
  if (r.sizeBytes !== undefined) {
    checkU64('size', r.sizeBytes);
    attrs.push(nlaU64(NBD_ATTR_SIZE_BYTES, r.sizeBytes));
    if (r.blockSize !== undefined) {
      checkU64('block size', r.blockSize);
      attrs.push(nlaU64(NBD_ATTR_BLOCK_SIZE_BYTES, r.blockSize));
    }
  }
  if (r.backendId !== undefined) {
    checkBackend(r.backendId);
    attrs.push(nlaString(NBD_ATTR_BACKEND_IDENTIFIER, r.backendId));
  }
  if (r.fds.length > 0 || r.sizeBytes === undefined) attrs.push(socketsAttr(r.fds));
  return encodeGenlmsg(nbdHeader(familyId, NBD_CMD_RECONFIGURE, seq), attrs);
}

export function buildNbdDisconnect(familyId: number, seq: number, index: number): Buffer {
  checkIndex(index);
  return encodeGenlmsg(nbdHeader(familyId, NBD_CMD_DISCONNECT, seq), [nlaU32(NBD_ATTR_INDEX, index)]);
}

/** Without an index the kernel reports every device it has. */
export function buildNbdStatus(familyId: number, seq: number, index?: number): Buffer {
  const attrs: Buffer[] = [];
  if (index !== undefined) {
    checkIndex(index);
    attrs.push(nlaU32(NBD_ATTR_INDEX, index));
  }
  return encodeGenlmsg(nbdHeader(familyId, NBD_CMD_STATUS, seq), attrs);
}

function nbdGenl(msg: NlMessage, familyId: number, cmd: number, what: string): GenlMessage {
  if (msg.type !== familyId) throw new NetlinkMessageError(`${what} has type ${msg.type}, not the nbd family ${familyId}`);
  const g = parseGenl(msg);
  if (g.cmd !== cmd) throw new NetlinkMessageError(`${what} has command ${g.cmd}, not ${cmd}`);
  return g;
}

// Layout read (nbd_connect_reply): genlmsghdr { NBD_CMD_CONNECT }, NBD_ATTR_INDEX u32.
export function parseNbdConnectReply(msg: NlMessage, familyId: number): number {
  const g = nbdGenl(msg, familyId, NBD_CMD_CONNECT, 'CONNECT reply');
  return AttrTable.parse(g.attrs, 'CONNECT reply').needU32(NBD_ATTR_INDEX, 'NBD_ATTR_INDEX');
}

export interface NbdStatusEntry {
  index: number;
  /** The kernel's view: the device has a configuration (it is connected, or someone holds it open). */
  connected: boolean;
}

// Layout read (nbd_genl_status): genlmsghdr { NBD_CMD_STATUS }, NBD_ATTR_DEVICE_LIST nested
// { NBD_DEVICE_ITEM nested { NBD_DEVICE_INDEX u32, NBD_DEVICE_CONNECTED u8 } }*.
// An unknown index gives an empty list, not an error.
export function parseNbdStatusReply(msg: NlMessage, familyId: number): NbdStatusEntry[] {
  const g = nbdGenl(msg, familyId, NBD_CMD_STATUS, 'STATUS reply');
  const list = AttrTable.parse(g.attrs, 'STATUS reply').nested(NBD_ATTR_DEVICE_LIST, 'DEVICE_LIST');
  const out: NbdStatusEntry[] = [];
  for (const item of list?.list ?? []) {
    if (item.type !== NBD_DEVICE_ITEM) continue;
    const t = AttrTable.parse(item.data, 'STATUS reply > DEVICE_LIST > DEVICE_ITEM');
    const index = t.needU32(NBD_DEVICE_INDEX, 'NBD_DEVICE_INDEX');
    const connected = t.u8(NBD_DEVICE_CONNECTED);
    if (connected === undefined) throw new NetlinkMessageError(`STATUS reply: device ${index} has no CONNECTED`);
    out.push({ index, connected: connected !== 0 });
  }
  return out;
}

// Layout read (nbd_mcast_index): genlmsghdr { NBD_CMD_LINK_DEAD }, NBD_ATTR_INDEX u32, sent to
// the "nbd_mc_group" multicast group. Returns undefined for any other message.
export function parseNbdLinkDead(msg: NlMessage, familyId: number): number | undefined {
  if (msg.type !== familyId) return undefined;
  const g = parseGenl(msg);
  if (g.cmd !== NBD_CMD_LINK_DEAD) return undefined;
  return AttrTable.parse(g.attrs, 'LINK_DEAD').needU32(NBD_ATTR_INDEX, 'NBD_ATTR_INDEX');
}
