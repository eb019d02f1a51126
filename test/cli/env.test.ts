import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { applyEnvOptions, UsageError } from '../../src/cli/common';

const BIN = path.resolve(__dirname, '../../../bin/iscsi-nbd.js');

function cli(args: string[], env: Record<string, string>) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ISCSI_NBD_')));
  return spawnSync(process.execPath, [BIN, ...args], { env: { ...clean, ...env }, encoding: 'utf8', timeout: 20000 });
}

test('an ISCSI_NBD_* variable is checked like the flag it stands for', () => {
  const r = cli(['serve', '--export', 'a=iscsi://127.0.0.1:1/iqn.2000-01.x:y/0'], { ISCSI_NBD_DIGEST: 'md5' });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /digest.*md5/s);
});

test('variables that stand for no option of the command (and secrets) are not unknown arguments', () => {
  const r = cli(['check-config', '/nonexistent.yaml'], { ISCSI_NBD_CHAP_SECRET: 's', ISCSI_NBD_LISTEN: '127.0.0.1:1', ISCSI_NBD_SOMETHING_ELSE: 'x' });
  assert.doesNotMatch(r.stderr, /Unknown argument/);
  assert.match(r.stderr, /nonexistent\.yaml/);
});

test('applyEnvOptions: a flag on the command line wins; lists split; booleans read as people write them', () => {
  const argv: Record<string, unknown> = { sessions: 3 };
  applyEnvOptions(argv, (k) => k !== 'metrics', { ISCSI_NBD_SESSIONS: '5', ISCSI_NBD_LISTEN: 'a:1, b:2', ISCSI_NBD_READ_ONLY: 'on', ISCSI_NBD_METRICS: 'x:1' });
  assert.equal(argv.sessions, 3);
  assert.deepEqual(argv.listen, ['a:1', 'b:2']);
  assert.equal(argv['read-only'], true);
  assert.equal(argv.readOnly, true);
  assert.equal(argv.metrics, undefined, 'an option the command does not have is left out');
  const off: Record<string, unknown> = {};
  applyEnvOptions(off, () => true, { ISCSI_NBD_READ_ONLY: 'No' });
  assert.equal(off['read-only'], false);
});

test('applyEnvOptions: a boolean that is neither yes nor no, or a number that is not one, is a usage error; out of range a config error', () => {
  const all = (): boolean => true;
  assert.throws(() => applyEnvOptions({}, all, { ISCSI_NBD_READ_ONLY: 'maybe' }), (e: Error) => e instanceof UsageError && /ISCSI_NBD_READ_ONLY=maybe is not a yes or no/.test(e.message));
  assert.throws(() => applyEnvOptions({}, all, { ISCSI_NBD_SESSIONS: '2x' }), (e: Error) => e instanceof UsageError && /ISCSI_NBD_SESSIONS=2x is not a number/.test(e.message));
  assert.throws(() => applyEnvOptions({}, all, { ISCSI_NBD_SESSIONS: '65' }), (e: Error & { code?: string }) => e.code === 'ECONFIG' && /ISCSI_NBD_SESSIONS=65: must be a whole number 1\.\.64/.test(e.message));
  // Not checked when the command has no such option, or the flag was given.
  applyEnvOptions({}, () => false, { ISCSI_NBD_READ_ONLY: 'maybe' });
  applyEnvOptions({ 'read-only': true }, all, { ISCSI_NBD_READ_ONLY: 'maybe' });
});
