// CRC32C (Castagnoli) digests for iSCSI headers and data (RFC 7143 13.1,
// RFC 3720 B.4). The 32-bit value goes on the wire least significant byte
// first: RFC 3720 B.4 lists "32 bytes of zeroes" as CRC bytes aa 36 91 8a,
// i.e. the value 0x8a9136aa written little-endian.

import { crc32c as nativeCrc32c } from '@node-rs/crc32';
import { IscsiNbdError } from '../errors';

/** CRC32C of `buf`, continuing from `initial` (the CRC of the preceding bytes). */
export function crc32c(buf: Uint8Array, initial?: number): number {
  return nativeCrc32c(buf, initial) >>> 0;
}

/** CRC32C over several buffers, as if they were concatenated. */
export function crc32cOf(bufs: readonly Uint8Array[]): number {
  let crc = 0;
  for (const b of bufs) if (b.length > 0) crc = nativeCrc32c(b, crc);
  return crc >>> 0;
}

/** The 4 digest bytes as sent on the wire. */
export function digestBytes(crc: number, out: Buffer = Buffer.allocUnsafe(4), offset = 0): Buffer {
  out.writeUInt32LE(crc >>> 0, offset);
  return out;
}

/** Read a digest from the wire. */
export function readDigest(buf: Buffer, offset = 0): number {
  return buf.readUInt32LE(offset);
}

/**
 * A header or data digest did not match. A header digest error is fatal for
 * the connection (the framing can no longer be trusted); a data digest error
 * carries the PDU's ITT so the session can fail or recover that task.
 */
export class DigestError extends IscsiNbdError {
  constructor(
    readonly kind: 'header' | 'data',
    readonly itt: number | undefined,
    readonly opcode: number | undefined,
    message: string,
  ) {
    super('EDIGEST', message);
  }
  get fatal(): boolean {
    return this.kind === 'header';
  }
}
