// One-shot commands (discover, copy) write plain text to stderr, on a
// terminal or not, and JSON lines with --log-format json, never both mixed:
// their errors, warnings, progress lines go through tell() (src/log.ts) like
// the log lines do.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { onPath, skipUnless } from '../helpers/tools';
import { CLI, REPO_ROOT, childEnv, runCliRaw } from '../helpers/process';
import { parseLogLines } from './strict-json';

const skip = skipUnless('tgtd', 'tgtadm');
const MiB = 1024 * 1024;
const SECRET = 'OneShotSecret123';

let tgtd: Tgtd | undefined;
let dir = '';

before(async () => {
  if (skip) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'logs-oneshot-'));
  tgtd = await startTgtdWithLuns({
    targets: [
      { tid: 1, luns: [{ size: 8 * MiB }] },
      { tid: 2, luns: [{ size: 8 * MiB }], chap: { user: 'oneshot', secret: SECRET } },
    ],
  });
}, { timeout: 60000 });

after(async () => {
  await tgtd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}, { timeout: 60000 });

test('--log-format json: every stderr line of discover and copy is JSON', { skip, timeout: 120000 }, async () => {
  const env = { ISCSI_NBD_STATE_DIR: dir };
  // A target that refuses us (CHAP) next to one that works: the answer on stdout, the failure on stderr.
  const d = await runCliRaw(['discover', `iscsi://${tgtd!.portal}`, '--log-level', 'info', '--log-format', 'json'], 60000, env);
  assert.equal(d.code, 4, d.err);
  assert.match(d.out, /Target: iqn\.2026-11\.test\.iscsi-nbd:t1/);
  const dl = parseLogLines(d.err, 'discover stderr');
  const failed = dl.find((l) => l.level === 50 && l.target === tgtd!.iqn(2));
  assert.ok(failed, `the failed target as a JSON error line:\n${d.err}`);

  const u = await runCliRaw(['discover', '127.0.0.1:1', '--log-format', 'json'], 30000, env);
  assert.equal(u.code, 3);
  const ul = parseLogLines(u.err, 'unreachable discover stderr');
  assert.equal(ul.length, 1, u.err);
  assert.equal(ul[0].level, 50);
  assert.equal(ul[0].code, 'ECONNECT');

  const img = path.join(dir, 'img');
  fs.writeFileSync(img, Buffer.alloc(MiB, 7));
  const c = await runCliRaw(['copy', img, tgtd!.url(1, 1), '--log-level', 'info', '--log-format', 'json'], 60000, env);
  assert.equal(c.code, 0, c.err);
  assert.match(c.out, /^copied 1048576 bytes/);
  const cl = parseLogLines(c.err, 'copy stderr');
  assert.ok(cl.some((l) => l.phase === 'copy' && l.pct === 100 && /^copy: 100% /.test(String(l.msg))), `progress as JSON:\n${c.err}`);
  assert.ok(cl.some((l) => l.level === 40 && /larger than the source/.test(String(l.msg))), c.err);
});

test('not a terminal, no --log-format: plain text, no JSON line', { skip, timeout: 60000 }, async () => {
  const env = { ISCSI_NBD_STATE_DIR: dir };
  const u = await runCliRaw(['discover', '127.0.0.1:1'], 30000, env);
  assert.equal(u.code, 3, u.err);
  assert.match(u.err, /^iscsi-nbd: cannot connect to iSCSI portal 127\.0\.0\.1:1: .* \[ECONNECT\]\n$/);
  const img = path.join(dir, 'img-plain');
  fs.writeFileSync(img, Buffer.alloc(MiB, 7));
  const c = await runCliRaw(['copy', img, tgtd!.url(1, 1), '--progress', 'plain'], 60000, env);
  assert.equal(c.code, 0, c.err);
  for (const l of c.err.split('\n').filter(Boolean)) assert.ok(!l.startsWith('{'), `a JSON line off a terminal without --log-format json: ${l}`);
  assert.match(c.err, /^copy: 100% /m);
  assert.match(c.err, /WARN: the destination LUN is larger than the source/);
});

test('on a terminal: plain text only', { skip: skip || (onPath('script') ? false : 'no script(1)'), timeout: 120000 }, () => {
  const cmd = `${process.execPath} ${CLI} discover iscsi://${tgtd!.portal} --log-level info`;
  const r = spawnSync('script', ['-qfec', cmd, '/dev/null'], {
    cwd: REPO_ROOT, encoding: 'utf8', timeout: 60000, env: childEnv({ ISCSI_NBD_STATE_DIR: dir, TERM: 'dumb' }),
  });
  const lines = r.stdout.split(/\r?\n/).filter((s) => s.trim() !== '');
  assert.equal(r.status, 4, r.stdout);
  assert.ok(lines.length > 5, r.stdout);
  for (const l of lines) assert.ok(!l.trimStart().startsWith('{'), `no JSON on a terminal: ${l}`);
  assert.ok(lines.some((l) => /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: iSCSI session logged in \{/.test(l)), `pretty log lines, one per event:\n${r.stdout}`);
  // The login error once, in the listing; the last line points at it.
  assert.equal(lines.filter((l) => l.includes('authentication failed')).length, 1, r.stdout);
  assert.ok(lines.some((l) => l === `iscsi-nbd: cannot log in to ${tgtd!.iqn(2)} (see the Error line above)`), r.stdout);
});
