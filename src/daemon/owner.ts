import fs from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../errors';

// Which daemon owns a state dir: <state dir>/daemon.json names its pid and
// control socket. `map` finds the daemon through it; a second daemon on the
// same mappings is refused, because two processes serving one kernel device
// would each replace the other's sockets.

export interface OwnerInfo {
  pid: number;
  control: string;
  startedAt: string;
}

function ownerFile(stateDir: string): string {
  return path.join(stateDir, 'daemon.json');
}

/** A live iscsi-nbd process with that pid (not a recycled pid of something else). */
export function isDaemonAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return /iscsi-nbd/.test(fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return true; // no /proc: trust kill(0)
  }
}

export function readOwner(stateDir: string): OwnerInfo | undefined {
  try {
    const o = JSON.parse(fs.readFileSync(ownerFile(stateDir), 'utf8')) as OwnerInfo;
    return Number.isInteger(o.pid) && typeof o.control === 'string' ? o : undefined;
  } catch {
    return undefined;
  }
}

/** Claim the state dir for this process, or say which live daemon has it. */
export function claimStateDir(stateDir: string, control: string): void {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const o = readOwner(stateDir);
  if (o && o.pid !== process.pid && isDaemonAlive(o.pid)) {
    throw new ConfigError(
      'ECONFIG',
      `the state dir ${stateDir} belongs to iscsi-nbd pid ${o.pid} (control socket ${o.control}), which still runs: ` +
        'stop it first (if it hangs, kill it: mapped devices wait for the next daemon)',
    );
  }
  const tmp = `${ownerFile(stateDir)}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ pid: process.pid, control, startedAt: new Date().toISOString() } satisfies OwnerInfo) + '\n', { mode: 0o644 });
  fs.renameSync(tmp, ownerFile(stateDir));
}

export function releaseStateDir(stateDir: string): void {
  if (readOwner(stateDir)?.pid === process.pid) fs.rmSync(ownerFile(stateDir), { force: true });
}
