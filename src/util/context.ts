// Errors with what we were doing put in front.
import { IscsiNbdError } from '../errors';

/**
 * `context: message`, keeping the error code of an IscsiNbdError (anything
 * else becomes EIO); the original error is the cause.
 */
export function withContext(err: unknown, context: string): IscsiNbdError {
  if (err instanceof IscsiNbdError) return new IscsiNbdError(err.code, `${context}: ${err.message}`, { cause: err });
  return new IscsiNbdError('EIO', `${context}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}
