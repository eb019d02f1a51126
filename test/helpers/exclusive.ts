// VM scenarios across the runner's worker processes. Those whose assertions are
// about time take the VM lock alone: a daemon restart must end within the kernel's
// I/O timeout (15 s), and under TCG on two CPUs a second VM beside it makes it take
// far longer (a restart measured 10.4 s alone, 20.5 s next to the map scenario,
// 17.2 s next to the kernel e2e VMs). Every other VM scenario holds the lock shared:
// they may run side by side, never beside one that holds it alone.
// Lock files hold a live process id; a dead holder's is taken over.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const POLL_MS = 1000;
/** How long a VM scenario may wait for its turn (the systemd scenario holds it alone for up to ~10 min). */
export const VM_LOCK_WAIT_MS = 900_000;
/** The lock of every VM scenario: alone for those that time daemon restarts (map, systemd), shared for the rest. */
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

const lockDir = (): string => os.tmpdir();
const exclusiveFile = (name: string): string => path.join(lockDir(), `iscsi-nbd-test-${name}.lock`);
const sharedPrefix = (name: string): string => `iscsi-nbd-test-${name}.shared.`;

/** Live shared holders of `name` other than this process (dead ones' files are removed). */
function otherSharedHolders(name: string): string[] {
  const live: string[] = [];
  for (const f of fs.readdirSync(lockDir())) {
    if (!f.startsWith(sharedPrefix(name))) continue;
    const file = path.join(lockDir(), f);
    if (f === `${sharedPrefix(name)}${process.pid}`) continue;
    if (holderAlive(file)) live.push(file);
    else fs.rmSync(file, { force: true });
  }
  return live;
}

/** True while another live process holds `name` alone (a dead holder's file is removed). */
function heldAlone(name: string): boolean {
  const file = exclusiveFile(name);
  if (!fs.existsSync(file)) return false;
  if (holderAlive(file)) return true;
  fs.rmSync(file, { force: true });
  return false;
}

async function waitTurn(name: string, deadline: number, waitMs: number, what: string): Promise<void> {
  if (Date.now() > deadline) throw new Error(`${name}: ${what} for over ${waitMs / 1000} s`);
  await new Promise((r) => setTimeout(r, POLL_MS));
}

/**
 * Wait (at most waitMs) until no other process holds the lock `name` in any way, then
 * hold it alone; resolves with its release. New shared holders wait from the moment
 * this one is waiting.
 */
export async function lockExclusive(name: string, waitMs: number): Promise<() => void> {
  const file = exclusiveFile(name);
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (!heldAlone(name)) continue;
      await waitTurn(name, deadline, waitMs, `another test held ${file}`);
    }
  }
  const release = (): void => fs.rmSync(file, { force: true });
  try {
    while (otherSharedHolders(name).length > 0) await waitTurn(name, deadline, waitMs, 'shared holders kept it');
  } catch (e) {
    release();
    throw e;
  }
  return release;
}

/**
 * Hold `name` shared (at most waitMs to wait): with other shared holders, never while
 * a process holds it alone or waits to. Resolves with its release.
 */
export async function lockShared(name: string, waitMs: number): Promise<() => void> {
  // Our file first, then the check: a process taking it alone either sees our file or we see its.
  const mine = path.join(lockDir(), `${sharedPrefix(name)}${process.pid}`);
  const deadline = Date.now() + waitMs;
  for (;;) {
    fs.writeFileSync(mine, String(process.pid));
    if (!heldAlone(name)) return () => fs.rmSync(mine, { force: true });
    fs.rmSync(mine, { force: true });
    await waitTurn(name, deadline, waitMs, `a test held ${exclusiveFile(name)} alone`);
  }
}
