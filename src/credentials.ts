import { readSecret } from './config';
import { ConfigError } from './errors';
import type { ChapCredentials } from './iscsi/chap';
import type { IscsiUrl } from './iscsi/url';

// Where a session's CHAP credentials come from: the URL, the config file,
// a file or an environment variable. One shape for all of them.

/** Default places to read a secret from when the URL and config give none. */
export interface SecretOptions {
  'chap-secret-file'?: string;
  'chap-secret-env'?: string;
  'target-secret-file'?: string;
  'target-secret-env'?: string;
}

export type SessionAuth = ChapCredentials;

/**
 * CHAP credentials for a URL: the user from the URL, the secret from the URL,
 * else from a file, else from an environment variable.
 */
export function authFor(url: IscsiUrl, opts: SecretOptions, override?: Partial<ChapCredentials>): SessionAuth | undefined {
  const user = override?.user ?? url.auth?.user;
  if (!user) return undefined;
  const secret =
    override?.secret ??
    (url.auth?.password ? url.auth.password : undefined) ??
    readSecret({ file: opts['chap-secret-file'], env: opts['chap-secret-env'] }, 'the CHAP secret');
  if (!secret) {
    throw new ConfigError('ECONFIG', `CHAP user "${user}" given without a secret (put it in the URL as user%secret@, or use --chap-secret-file / $${opts['chap-secret-env'] ?? 'ISCSI_NBD_CHAP_SECRET'})`);
  }
  const targetUser = override?.targetUser ?? url.auth?.targetUser;
  const targetSecret =
    override?.targetSecret ??
    url.auth?.targetPassword ??
    (targetUser ? readSecret({ file: opts['target-secret-file'], env: opts['target-secret-env'] }, 'the target CHAP secret') : undefined);
  return { user, secret, targetUser, targetSecret };
}
