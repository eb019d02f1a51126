import { spawnSync } from 'node:child_process';

/** True when `cmd` is on PATH (or is an existing absolute path). */
export function onPath(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v "${cmd}"`], { stdio: 'ignore' }).status === 0;
}

/**
 * The `skip` option for a test that needs real peers. Outside CI a missing tool
 * skips the test with a reason; in CI (CI=true) nothing is ever skipped, so a
 * missing peer fails the run instead of hiding.
 */
export function skipUnless(...cmds: string[]): false | string {
  if (process.env.CI) return false;
  const missing = cmds.filter((c) => !onPath(c));
  return missing.length ? `missing ${missing.join(', ')} (install the Debian packages .ci/run lists)` : false;
}

/** Same as skipUnless, for a plain boolean check (e.g. in a describe-level guard). */
export function haveAll(...cmds: string[]): boolean {
  return process.env.CI ? true : cmds.every(onPath);
}
