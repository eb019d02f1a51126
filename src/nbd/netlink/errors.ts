// Errors of the kernel NBD netlink layer. `errno` keeps the kernel's answer
// by name ('EBUSY', 'EINVAL', ...) so callers can branch on it; `code` is the
// project-wide ErrorCode that logs and metrics key on.
import { constants as osConstants } from 'node:os';
import { IscsiNbdError, type ErrorCode } from '../../errors';

export interface NetlinkErrorDetails {
  /** errno name of the failure, e.g. 'EBUSY'; 'EBADMSG' for a malformed message. */
  errno: string;
  /** The kernel's extended-ack message (NLMSGERR_ATTR_MSG), when it sent one. */
  extAck?: string;
  /** The netlink command that failed, e.g. 'NBD_CMD_CONNECT'. */
  command?: string;
  cause?: unknown;
}

export class NetlinkError extends IscsiNbdError {
  readonly errno: string;
  readonly extAck?: string;
  readonly command?: string;
  constructor(code: ErrorCode, message: string, details: NetlinkErrorDetails) {
    super(code, message, details.cause === undefined ? undefined : { cause: details.cause });
    this.errno = details.errno;
    if (details.extAck !== undefined) this.extAck = details.extAck;
    if (details.command !== undefined) this.command = details.command;
  }
}

/** Bytes from the kernel that do not parse: truncated, bad lengths, wrong types. */
export class NetlinkMessageError extends NetlinkError {
  constructor(message: string) {
    super('EPROTO', `malformed netlink message: ${message}`, { errno: 'EBADMSG' });
  }
}

// Several names share a number (EAGAIN/EWOULDBLOCK, EDEADLK/EDEADLOCK): the
// first one os.constants lists wins, except where the kernel source says otherwise.
const PREFERRED: Record<number, string> = { 95: 'EOPNOTSUPP' };
let byNumber: Map<number, string> | undefined;

/** errno number (positive) to its name, e.g. 16 -> 'EBUSY'; unknown numbers become 'E<n>'. */
export function errnoName(n: number): string {
  if (!byNumber) {
    byNumber = new Map();
    for (const [name, value] of Object.entries(osConstants.errno)) {
      if (!byNumber.has(value)) byNumber.set(value, name);
    }
    for (const [value, name] of Object.entries(PREFERRED)) byNumber.set(Number(value), name);
  }
  return byNumber.get(n) ?? `E${n}`;
}
