// Sizes: parseSize is strict, and a mistyped size given to `iscsi-nbd target`
// (--lun 12Q, --size 12Q) is refused instead of becoming a file named "12Q".

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseSize } from '../../src/target/backend';
import { lunSpecKind } from '../../src/cli/target';
import { runCliAsync } from '../helpers/process';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

test('parseSize: bytes, K/M/G/T in either case, with an optional iB or B', () => {
  assert.equal(parseSize('4096'), 4096);
  assert.equal(parseSize('4096B'), 4096);
  assert.equal(parseSize('4096b'), 4096);
  assert.equal(parseSize('1K'), KiB);
  assert.equal(parseSize('1k'), KiB);
  assert.equal(parseSize('512M'), 512 * MiB);
  assert.equal(parseSize('512m'), 512 * MiB);
  assert.equal(parseSize('512MiB'), 512 * MiB);
  assert.equal(parseSize('512MB'), 512 * MiB);
  assert.equal(parseSize('1G'), GiB);
  assert.equal(parseSize('2GiB'), 2 * GiB);
  assert.equal(parseSize('2gib'), 2 * GiB);
  assert.equal(parseSize('10gb'), 10 * GiB);
  assert.equal(parseSize('1.5G'), 1.5 * GiB);
  assert.equal(parseSize('2T'), 2 * 1024 * GiB);
  assert.equal(parseSize(' 8M '), 8 * MiB);
  assert.equal(parseSize('8 M'), 8 * MiB);
});

test('parseSize refuses anything else, listing the accepted forms', () => {
  for (const bad of ['12Q', '1P', '1PiB', '5X', '1Gx', 'G', '', '0', '0M', '-1M', '1.5', '10iB', 'lots', '1e9', '0x100', '1,5G', '1G1', '1 GiBs']) {
    assert.throws(() => parseSize(bad), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'ECONFIG', bad);
      assert.match(e.message, new RegExp(`^bad size "${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`), bad);
      return true;
    }, bad);
  }
  assert.throws(() => parseSize('12Q'), /K, M, G or T, optionally followed by iB or B/);
  assert.throws(() => parseSize('99999999999T'), /at most 2\^53 bytes/);
});

test('a --lun argument shaped like a size is a size, even a wrong one; anything else is a file', () => {
  for (const s of ['1G', '512M', '4096', '12Q', '10Gb', '3X', '1.5Tb']) assert.equal(lunSpecKind(s), 'size', s);
  for (const s of ['disk.img', './12Q', '/var/lib/lun0', 'lun', 'G1', '12Q.img']) assert.equal(lunSpecKind(s), 'file', s);
});

test('`iscsi-nbd target --lun 12Q` / `--size 12Q` are refused and create no file', { timeout: 60000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'copy-size-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const env = { ISCSI_NBD_STATE_DIR: dir };
  const cwdRun = (args: string[]) => runCliAsync(['target', '--listen', '127.0.0.1:0', ...args], 20000, env);

  // The CLI runs in the repository root: make the check there too, then look.
  const repoRoot = path.resolve(__dirname, '..', '..', '..');
  const stray = path.join(repoRoot, '12Q');
  const existedBefore = fs.existsSync(stray);

  const lun = await cwdRun(['--lun', '12Q']);
  assert.equal(lun.code, 6, lun.err);
  assert.match(lun.err, /bad size "12Q" in --lun \(LUN 0\): use a number of bytes .*K, M, G or T.* or a path for a file LUN \(\.\/12Q for a file named like that\)/);
  if (!existedBefore) assert.equal(fs.existsSync(stray), false, 'a file named 12Q was created');

  const size = await cwdRun(['--lun', path.join(dir, 'disk.img'), '--size', '12Q']);
  assert.equal(size.code, 6, size.err);
  assert.match(size.err, /bad --size "12Q": use a number of bytes/);
  assert.equal(fs.existsSync(path.join(dir, 'disk.img')), false, 'the LUN file was created despite the bad --size');

  // --size is checked even when every LUN is a memory LUN.
  const size2 = await cwdRun(['--lun', '1M', '--size', '1P']);
  assert.equal(size2.code, 6, size2.err);
  assert.match(size2.err, /bad --size "1P"/);
});
