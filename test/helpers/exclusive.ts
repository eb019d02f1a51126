// One test at a time across the runner's worker processes, for the VM scenarios
// whose assertions are about time: a daemon restart must end within the kernel's
// I/O timeout (15 s), and under TCG on two CPUs, two of these VMs side by side
// take twice as long (a restart measured 10.4 s alone, 20.5 s next to the map
// scenario). A lock file held by a live process id; a dead holder's is taken over.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const POLL_MS = 1000;
/** The VM scenarios that time daemon restarts against the kernel's I/O timeout (map, systemd). */
export const RESTART_VM_LOCK = 'restart-vm';

function holderAlive(file: string): boolean {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(file, 'utf8').trim());
  } catch {
    return false;
  }
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Wait (at most waitMs) until no other process holds the lock `name`, then hold it;
 * resolves with its release.
 */
export async function lockExclusive(name: string, waitMs: number): Promise<() => void> {
  const file = path.join(os.tmpdir(), `iscsi-nbd-test-${name}.lock`);
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      return () => fs.rmSync(file, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (!holderAlive(file)) {
        fs.rmSync(file, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`${name}: another test held ${file} for over ${waitMs / 1000} s`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }
}
