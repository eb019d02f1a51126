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

export function defaultControlPath(): string {
  if (process.env.ISCSI_NBD_CONTROL) return process.env.ISCSI_NBD_CONTROL;
  if (isRoot()) return '/run/iscsi-nbd/control.sock';
  const dir = process.env.XDG_RUNTIME_DIR ?? os.tmpdir();
  return path.join(dir, `iscsi-nbd-${process.getuid?.() ?? 'user'}.sock`);
}

/** --initiator-name, else open-iscsi's, else one generated and kept in the state dir. */
export function initiatorName(explicit?: string, stateDir = defaultStateDir()): string {
  return resolveInitiatorName({ explicit, stateFile: path.join(stateDir, 'initiatorname') }).name;
}
