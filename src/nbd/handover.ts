// What the next process needs to carry on an NBD connection in transmission
// phase that this one hands over (through systemd's fd store): what the
// handshake agreed, and the bytes read from the socket but not handled. Pure
// codec over Buffer.
//
// Layout (big-endian):
//   0  8  magic "INBDHO01"
//   8  4  length J of the JSON that follows (at most MAX_STATE_JSON)
//  12  J  JSON {exportName, structuredReplies, metaContexts: [[id, name]], transmissionFlags, blockSizeRequested, label}
//  12+J   the unread bytes, to the end

import { IscsiNbdError } from '../errors';

const MAGIC = Buffer.from('INBDHO01', 'latin1');
const HEADER = 12;
export const MAX_STATE_JSON = 64 * 1024;

export interface HandoverState {
  exportName: string;
  structuredReplies: boolean;
  metaContexts: [number, string][];
  transmissionFlags: number;
  blockSizeRequested: boolean;
  /** Where the connection came from (a listener address, `kernel:nbdN`), for logs and status. */
  label: string;
}

export class HandoverError extends IscsiNbdError {
  constructor(message: string) {
    super('EPROTO', message);
  }
}

export function encodeHandover(s: HandoverState, unread: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(s), 'utf8');
  const head = Buffer.alloc(HEADER);
  MAGIC.copy(head, 0);
  head.writeUInt32BE(json.length, 8);
  return Buffer.concat([head, json, unread]);
}

const isInt = (v: unknown, max: number): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= max;

export function parseHandover(b: Buffer): { state: HandoverState; unread: Buffer } {
  if (b.length < HEADER || !b.subarray(0, 8).equals(MAGIC)) throw new HandoverError('not an NBD hand-over record');
  const n = b.readUInt32BE(8);
  if (n > MAX_STATE_JSON || HEADER + n > b.length) throw new HandoverError(`hand-over record: state of ${n} bytes does not fit`);
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(b.toString('utf8', HEADER, HEADER + n)) as Record<string, unknown>;
  } catch {
    throw new HandoverError('hand-over record: state is not JSON');
  }
  const mc = v?.metaContexts;
  if (
    typeof v !== 'object' || v === null ||
    typeof v.exportName !== 'string' || typeof v.structuredReplies !== 'boolean' || typeof v.blockSizeRequested !== 'boolean' ||
    typeof v.label !== 'string' || !isInt(v.transmissionFlags, 0xffff) ||
    !Array.isArray(mc) || !mc.every((e) => Array.isArray(e) && e.length === 2 && isInt(e[0], 0xffffffff) && typeof e[1] === 'string')
  ) {
    throw new HandoverError('hand-over record: state has the wrong shape');
  }
  return { state: v as unknown as HandoverState, unread: b.subarray(HEADER + n) };
}
