import os from 'node:os';
import path from 'node:path';
import { resolveInitiatorName } from '../iscsi/names';
import { readSecret } from '../config';
import { ConfigError } from '../errors';
import type { IscsiUrl } from '../iscsi/url';

/** Where we keep our generated initiator name and the demo's data. */
export function stateDir(): string {
  if (process.env.ISCSI_NBD_STATE_DIR) return process.env.ISCSI_NBD_STATE_DIR;
  if (process.getuid?.() === 0) return '/var/lib/iscsi-nbd';
  return path.join(process.env.XDG_CONFIG_HOME ?? path.join(os.homedir(), '.config'), 'iscsi-nbd');
}

export function initiatorName(explicit?: string): string {
  return resolveInitiatorName({ explicit, stateFile: path.join(stateDir(), 'initiatorname') }).name;
}

export interface SecretOptions {
  'chap-secret-file'?: string;
  'chap-secret-env'?: string;
  'target-secret-file'?: string;
  'target-secret-env'?: string;
}

export interface SessionAuth {
  user: string;
  secret: string;
  targetUser?: string;
  targetSecret?: string;
}

/**
 * CHAP credentials for a URL: the user from the URL, the secret from the URL,
 * else from a file, else from an environment variable.
 */
export function authFor(url: IscsiUrl, opts: SecretOptions, override?: { user?: string; secret?: string; targetUser?: string; targetSecret?: string }): SessionAuth | undefined {
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
