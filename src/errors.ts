// Error classes shared by every layer. Each carries a stable `code` that
// callers, logs, metrics and the NBD errno table key on; the message is for
// people and may change.

export type ErrorCode =
  // configuration and usage
  | 'EBADURL'
  | 'EBADNAME'
  | 'ECONFIG'
  // transport
  | 'ECONNECT'
  | 'ECONNLOST'
  | 'ETIMEOUT'
  | 'EPROTO'
  | 'EDIGEST'
  // login
  | 'ELOGIN'
  | 'EAUTH'
  | 'ENOTARGET'
  | 'ETARGETBUSY'
  | 'EREDIRECT'
  /** A network interface given for a path does not exist (or has not that address). */
  | 'ENODEV'
  // SCSI outcomes (see scsi/sense.ts for the mapping from sense data)
  | 'ESCSI_RETRY'
  | 'ESCSI_ABORTED'
  | 'ESCSI_NOSPACE'
  | 'ESCSI_WRITE_PROTECT'
  | 'ESCSI_NOMEDIUM'
  | 'ESCSI_INVALID'
  | 'ESCSI_MEDIUM'
  | 'ESCSI_IO'
  | 'ESCSI_UNSUPPORTED'
  | 'ELUN_CHANGED'
  /** No logical unit at that LUN number. */
  | 'ENOLUN'
  // NBD/bridge level
  | 'EINVAL'
  | 'ENOSPC'
  | 'EPERM'
  | 'EOVERFLOW'
  | 'ENOTSUP'
  | 'ESHUTDOWN'
  | 'EIO'
  | 'ENOMEM';

export class IscsiNbdError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** Bad input from configuration or the command line. */
export class ConfigError extends IscsiNbdError {}

/** The peer broke the protocol: the connection it came on must be dropped. */
export class ProtocolError extends IscsiNbdError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EPROTO', message, options);
  }
}

/** Network level failure: connect refused, reset, timeout. */
export class TransportError extends IscsiNbdError {}

/** Login failed; `statusClass`/`statusDetail` are the target's Login Response status. */
export class LoginError extends IscsiNbdError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly statusClass?: number,
    readonly statusDetail?: number,
  ) {
    super(code, message);
  }
}

/** A SCSI command ended with CHECK CONDITION or another non-GOOD status. */
export class ScsiError extends IscsiNbdError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly status: number,
    readonly senseKey?: number,
    readonly asc?: number,
    readonly ascq?: number,
  ) {
    super(code, message);
  }
}

/** A request the NBD layer or the bridge refuses before running it. */
export class RequestError extends IscsiNbdError {}

// NBD errno values (doc/proto.md "Error values").
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** The one table translating our errors to NBD errnos. Anything unknown is EIO. */
const NBD_ERRNO: Partial<Record<ErrorCode, number>> = {
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EPERM: NBD_EPERM,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
  ENOMEM: NBD_ENOMEM,
  EIO: NBD_EIO,
  ESCSI_NOSPACE: NBD_ENOSPC,
  ESCSI_WRITE_PROTECT: NBD_EPERM,
  ESCSI_INVALID: NBD_EINVAL,
  ESCSI_UNSUPPORTED: NBD_ENOTSUP,
  ESCSI_NOMEDIUM: NBD_EIO,
  ESCSI_MEDIUM: NBD_EIO,
  ESCSI_ABORTED: NBD_EIO,
  ESCSI_IO: NBD_EIO,
  ELUN_CHANGED: NBD_EIO,
};

export function nbdErrnoOf(err: unknown): number {
  if (err instanceof IscsiNbdError) return NBD_ERRNO[err.code] ?? NBD_EIO;
  return NBD_EIO;
}

export function errorCodeOf(err: unknown): string {
  if (err instanceof IscsiNbdError) return err.code;
  if (err && typeof err === 'object' && 'code' in err) return String((err as { code: unknown }).code);
  return 'EUNKNOWN';
}
