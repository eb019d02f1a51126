import os from 'node:os';
import path from 'node:path';
import { resolveInitiatorName } from '../iscsi/names';

// Where the daemon keeps its state (generated initiator name, mappings) and
// where its control socket lives. Root gets the FHS places; a user gets XDG ones.

const isRoot = (): boolean => process.getuid?.() === 0;

export function defaultStateDir(): string {
  if (process.env.ISCSI_NBD_STATE_DIR) return process.env.ISCSI_NBD_STATE_DIR;
  if (isRoot()) return '/var/lib/iscsi-nbd';
  return path.join(process.env.XDG_CONFIG_HOME ?? path.join(os.homedir(), '.config'), 'iscsi-nbd');
}

/** `--control none` (config `control: none`): run without a control socket. */
export const NO_CONTROL = 'none';

/**
 * Root: /run/iscsi-nbd/control.sock. A user: $XDG_RUNTIME_DIR/iscsi-nbd-UID.sock
 * (that directory is the user's alone), else /tmp/iscsi-nbd-UID/control.sock:
 * a directory the daemon makes 0700, never a name in /tmp itself, which
 * another user could take first (control.ts checks who owns both).
 */
export function defaultControlPath(): string {
  if (process.env.ISCSI_NBD_CONTROL) return process.env.ISCSI_NBD_CONTROL;
  if (isRoot()) return '/run/iscsi-nbd/control.sock';
  const uid = process.getuid?.() ?? 'user';
  if (process.env.XDG_RUNTIME_DIR) return path.join(process.env.XDG_RUNTIME_DIR, `iscsi-nbd-${uid}.sock`);
  return path.join(os.tmpdir(), `iscsi-nbd-${uid}`, 'control.sock');
}

/** --initiator-name, else open-iscsi's, else one generated and kept in the state dir. */
export function initiatorName(explicit?: string, stateDir = defaultStateDir()): string {
  return resolveInitiatorName({ explicit, stateFile: path.join(stateDir, 'initiatorname') }).name;
}
