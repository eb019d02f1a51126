// Holes in the embedded target's file LUNs are punched with fallocate(2)
// through koffi, one call per UNMAP / WRITE SAME (UNMAP) range, and no
// process per range: `iscsi-nbd target` as a child process, a LUN filled by
// `iscsi-nbd copy` and then zeroed by it (zero runs become WRITE SAME with
// UNMAP), the backing file's st_blocks read before and after. A `fallocate`
// first on the target's PATH records any call, and must see none.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCliAsync, startCli } from '../helpers/process';
import { punchHole } from '../../src/target/punch';

const MiB = 1024 * 1024;

function tmpdir(t: { after: (fn: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tgt-punch-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

const allocated = (file: string): number => fs.statSync(file).blocks * 512;

test('punchHole: fallocate(2) frees the blocks and keeps the size; a bad fd names its errno', async (t) => {
  const file = path.join(tmpdir(t), 'f.img');
  fs.writeFileSync(file, crypto.randomBytes(4 * MiB));
  const fd = fs.openSync(file, 'r+');
  try {
    fs.fsyncSync(fd);
    const before = allocated(file);
    assert.ok(before >= 4 * MiB, `allocated ${before}`);
    await punchHole(fd, MiB, 2 * MiB);
    assert.equal(fs.statSync(file).size, 4 * MiB);
    assert.ok(allocated(file) <= before - 2 * MiB, `allocated ${allocated(file)} after punching 2 MiB of ${before}`);
    const mid = Buffer.alloc(2 * MiB);
    fs.readSync(fd, mid, 0, mid.length, MiB);
    assert.ok(mid.equals(Buffer.alloc(2 * MiB)), 'the hole does not read as zeros');
  } finally {
    fs.closeSync(fd);
  }
  await assert.rejects(punchHole(1 << 20, 0, 4096), /fallocate\(PUNCH_HOLE\) failed: EBADF/);
});

test('iscsi-nbd target: zeroing a file LUN over iSCSI drops its st_blocks, without spawning fallocate', { timeout: 120000 }, async (t) => {
  const dir = tmpdir(t);
  const lun = path.join(dir, 'lun.img');
  const calls = path.join(dir, 'fallocate-calls');
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'fallocate'), `#!/bin/sh\necho "$@" >> "${calls}"\nexit 1\n`, { mode: 0o755 });
  const env = { PATH: `${bin}:${process.env.PATH ?? ''}`, ISCSI_NBD_STATE_DIR: dir, ISCSI_NBD_CONTROL: path.join(dir, 'none.sock') };

  const target = startCli(['target', '--listen', '127.0.0.1:0', '--lun', lun, '--size', '16M'], env);
  t.after(() => target.stop());
  await target.waitFor(/url: iscsi:\/\/\S+/, 20000);
  const url = /url: (iscsi:\/\/\S+)/.exec(target.out())![1];

  const data = path.join(dir, 'data.img');
  fs.writeFileSync(data, crypto.randomBytes(16 * MiB));
  const fillUp = await runCliAsync(['copy', data, url, '--progress', 'none'], 60000, env);
  assert.equal(fillUp.code, 0, fillUp.err);
  const full = allocated(lun);
  assert.ok(full >= 16 * MiB, `allocated ${full} after writing 16 MiB`);

  // All zeros, in 64 KiB requests: 256 WRITE SAME (UNMAP) ranges, each a punch.
  const zeros = path.join(dir, 'zeros.img');
  fs.writeFileSync(zeros, Buffer.alloc(0));
  fs.truncateSync(zeros, 16 * MiB);
  const started = Date.now();
  const zero = await runCliAsync(['copy', zeros, url, '--chunk', '64', '--progress', 'none'], 60000, env);
  assert.equal(zero.code, 0, zero.err);
  assert.match(zero.out, /copied 16777216 bytes .*: 0 B data, 16\.0 MiB zeros/);
  const after = allocated(lun);
  assert.ok(after < MiB, `allocated ${after} of ${full} after zeroing the LUN: holes were not punched (${Date.now() - started} ms)`);
  assert.equal(fs.statSync(lun).size, 16 * MiB);
  assert.equal(fs.existsSync(calls), false, `the target spawned fallocate: ${fs.existsSync(calls) ? fs.readFileSync(calls, 'utf8').slice(0, 200) : ''}`);
  const back = fs.readFileSync(lun);
  assert.ok(back.equals(Buffer.alloc(16 * MiB)), 'the LUN does not read back as zeros');
});
