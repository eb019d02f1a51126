// `iscsi-nbd copy` as a child process against an embedded target in this
// process: image formats refused (and accepted with --format raw), stdin ->
// LUN -> stdout round trips, a LUN served by a running daemon, Ctrl-C.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startControlServer } from '../../src/daemon/control';
import { onPath } from '../helpers/tools';
import { MiB, runCli, sha256, startTarget, Target, TGT } from './util';

let tgt: Target;
let dir = '';
let env: Record<string, string> = {};

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'copy-cli-'));
  // No daemon unless a test starts one; never the machine's own.
  env = { ISCSI_NBD_STATE_DIR: dir, ISCSI_NBD_CONTROL: path.join(dir, 'no-daemon.sock') };
  tgt = await startTarget([8 * MiB, 8 * MiB, 1 * MiB]);
}, { timeout: 30000 });

after(async () => {
  await tgt?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}, { timeout: 30000 });

const lunBytes = (lun: number, length?: number): Promise<Buffer> => tgt.backends[lun].read(0, length ?? tgt.backends[lun].size);

/** A qcow2 image: from qemu-img when it is there, else a hand-made qcow2 v3 header. */
function makeQcow2(file: string): void {
  if (onPath('qemu-img')) {
    const r = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '4M'], { encoding: 'utf8', timeout: 20000 });
    assert.equal(r.status, 0, r.stderr);
    return;
  }
  const h = Buffer.alloc(64 * 1024);
  Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]).copy(h, 0);
  fs.writeFileSync(file, h);
}

test('a qcow2 source is refused (exit 6, the format named, LUN untouched); --format raw copies its bytes', { timeout: 90000 }, async () => {
  const img = path.join(dir, 'disk.qcow2');
  makeQcow2(img);
  await tgt.backends[0].write(0, Buffer.alloc(MiB, 0x5a));
  const before = sha256(await lunBytes(0));

  const r = await runCli(['copy', img, tgt.url(0)], { env });
  assert.equal(r.code, 6, r.err);
  assert.equal(
    r.err.trim(),
    `iscsi-nbd: ${img} is a qcow2 image, not raw: convert it first with \`qemu-img convert -O raw ${img} ${path.join(dir, 'disk.raw')}\`, ` +
      'or pass --format raw to copy its bytes as they are [ECONFIG]',
  );
  assert.equal(r.out, '');
  assert.equal(sha256(await lunBytes(0)), before, 'the LUN was written despite the refusal');

  // The same through stdin.
  const s = await runCli(['copy', '-', tgt.url(0)], { env, stdinFile: img });
  assert.equal(s.code, 6, s.err);
  assert.match(s.err, /stdin starts like a qcow2 image, not raw: .*or pass --format raw to copy its bytes as they are/);
  assert.equal(sha256(await lunBytes(0)), before);

  // Explicitly raw: the container's bytes land on the LUN as they are.
  const raw = await runCli(['copy', img, tgt.url(0), '--format', 'raw', '--progress', 'none'], { env });
  assert.equal(raw.code, 0, raw.err);
  assert.match(raw.out, /^copied \d+ bytes/);
  const file = fs.readFileSync(img);
  assert.ok((await tgt.backends[0].read(0, file.length)).equals(file), 'LUN does not hold the file bytes');
});

test('stdin -> LUN -> stdout round trip, checksums equal; the last block padded; a stream longer than the LUN refused', { timeout: 120000 }, async () => {
  // 3 MiB + 1000 bytes: random, with a 1 MiB zero run (sparse) and a length that is not a whole block.
  const data = crypto.randomBytes(3 * MiB + 1000);
  data.fill(0, MiB, 2 * MiB);
  const src = path.join(dir, 'stream.bin');
  fs.writeFileSync(src, data);
  await tgt.backends[1].write(0, Buffer.alloc(8 * MiB, 0xff)); // so that zeros and padding must really be written

  // Shorter than the LUN: refused unless --allow-short (the end of a pipe cannot tell a complete image from a dead producer).
  const up = await runCli(['copy', '-', tgt.url(1), '--progress', 'plain', '--allow-short'], { env, stdinFile: src });
  assert.equal(up.code, 0, up.err);
  assert.match(up.out, new RegExp(`^copied ${data.length} bytes \\(3\\.0 MiB\\) from stdin in .*; the last block was padded with 24 zero bytes; ` +
    `the LUN's last ${8 * MiB - data.length - 24} bytes were left as they were \\(--allow-short\\)\\n$`));
  assert.match(up.err, /copy: /);
  const padded = Buffer.concat([data, Buffer.alloc(24)]);
  assert.equal(sha256(await lunBytes(1, padded.length)), sha256(padded), 'LUN content differs from stdin');
  const tail = await tgt.backends[1].read(padded.length, 8 * MiB - padded.length);
  assert.ok(tail.equals(Buffer.alloc(tail.length, 0xff)), 'the LUN tail past the stream was touched');

  // Back out through stdout: the whole LUN, every byte (no holes in a stream), nothing else on stdout.
  const outFile = path.join(dir, 'stream.out');
  const down = await runCli(['copy', tgt.url(1), '-', '--progress', 'plain'], { env, stdoutFile: outFile });
  assert.equal(down.code, 0, down.err);
  const got = fs.readFileSync(outFile);
  assert.equal(got.length, 8 * MiB);
  assert.equal(sha256(got), sha256(await lunBytes(1)));
  assert.equal(sha256(got.subarray(0, data.length)), sha256(data), 'round trip changed the data');
  assert.match(down.err, /copied 8388608 bytes \(8\.0 MiB\) in /, 'the summary goes to stderr when stdout carries data');

  // A stream of exactly the LUN's size fits; one byte more is refused.
  const exact = crypto.randomBytes(MiB);
  fs.writeFileSync(src, exact);
  const fit = await runCli(['copy', '-', tgt.url(2), '--progress', 'none'], { env, stdinFile: src });
  assert.equal(fit.code, 0, fit.err);
  assert.doesNotMatch(fit.out, /padded/);
  assert.ok((await lunBytes(2)).equals(exact));
  fs.appendFileSync(src, Buffer.from([1]));
  const long = await runCli(['copy', '-', tgt.url(2), '--progress', 'none'], { env, stdinFile: src });
  assert.equal(long.code, 1, long.err);
  assert.match(long.err, /iscsi-nbd: stdin is longer than the 1048576 bytes of iscsi:\/\/127\.0\.0\.1:\d+\/iqn\.2026-11\.io\.test:copy\/2: refusing to truncate the copy/);

  // --verify cannot read a stream twice.
  const v = await runCli(['copy', '-', tgt.url(2), '--verify'], { env, stdinFile: src });
  assert.equal(v.code, 6, v.err);
  assert.match(v.err, /--verify .* cannot be read twice/);
});

test('a LUN served by a running iscsi-nbd daemon: warned and refused without --force, copied with it', { timeout: 120000 }, async (t) => {
  const control = path.join(dir, 'daemon.sock');
  const status = {
    pid: 4242,
    initiatorName: 'iqn.2026-11.io.test:daemon',
    listen: ['127.0.0.1:10809'],
    // Another portal for the same target and LUN: still the same LUN.
    exports: [{ name: 'db', state: 'ready', url: `iscsi://10.9.8.7:3260/${TGT}/1`, target: TGT, lun: 1, size: String(8 * MiB), blockSize: 512,
      vendor: null, product: null, flags: null, clients: 1, inFlight: 0, queued: 0, counters: null, sessions: [] }],
    clients: [],
    mappings: [{ device: '/dev/nbd3', index: 3, url: `iscsi://user%[redacted]@${tgt.server.portal}/${TGT}/2`, export: 'm', identity: 'x', blockSize: 512,
      size: String(MiB), connections: 1, readOnly: false, state: 'attached' }],
  };
  let asked = 0;
  const srv: net.Server = await startControlServer(control, { status: () => { asked++; return status; } });
  t.after(() => new Promise<void>((r) => srv.close(() => r())));
  const img = path.join(dir, 'small.img');
  const data = crypto.randomBytes(256 * 1024);
  fs.writeFileSync(img, data);
  await tgt.backends[1].write(0, Buffer.alloc(MiB, 0x33));
  const lun1Before = sha256(await lunBytes(1));

  const refused = await runCli(['copy', img, tgt.url(1), '--control', control, '--progress', 'none'], { env });
  assert.equal(refused.code, 6, refused.err);
  assert.ok(asked > 0, 'the daemon was not asked');
  assert.match(refused.err, new RegExp(`iscsi-nbd: warning: iscsi://127\\.0\\.0\\.1:\\d+/${TGT}/1 is served by the iscsi-nbd daemon running on this host \\(pid 4242\\): export "db" \\(iscsi://10\\.9\\.8\\.7:3260/${TGT}/1\\)\\n`));
  assert.match(refused.err, /iscsi-nbd: refusing to write to iscsi:\/\/\S+\/1 while it is in use .*remove the export or stop the daemon first \(control socket .*daemon\.sock\), or pass --force \[ECONFIG\]/);
  assert.equal(sha256(await lunBytes(1)), lun1Before, 'the served LUN was written');

  // Reading a served LUN is refused as well (the copy would not be consistent).
  const read = await runCli(['copy', tgt.url(1), path.join(dir, 'never.img'), '--control', control], { env });
  assert.equal(read.code, 6, read.err);
  assert.match(read.err, /refusing to read iscsi:\/\/\S+\/1 while it is in use/);
  assert.equal(fs.existsSync(path.join(dir, 'never.img')), false);

  // A kernel mapping of the daemon counts too.
  const mapped = await runCli(['copy', img, tgt.url(2), '--control', control], { env });
  assert.equal(mapped.code, 6, mapped.err);
  assert.match(mapped.err, /is served by the iscsi-nbd daemon running on this host \(pid 4242\): \/dev\/nbd3 \(iscsi:\/\/user%\[redacted\]@/);

  // Another LUN of the same target is not served: silent.
  const other = await runCli(['copy', img, tgt.url(0), '--control', control, '--progress', 'none'], { env });
  assert.equal(other.code, 0, other.err);
  assert.doesNotMatch(other.err, /served/);

  // --force: a warning, then the copy.
  const forced = await runCli(['copy', img, tgt.url(1), '--control', control, '--force', '--progress', 'none'], { env });
  assert.equal(forced.code, 0, forced.err);
  assert.match(forced.err, /iscsi-nbd: warning: iscsi:\/\/\S+\/1 is served by the iscsi-nbd daemon running on this host \(pid 4242\): export "db" .*; copying anyway \(--force\)/);
  assert.ok((await tgt.backends[1].read(0, data.length)).equals(data));

  // No daemon answering (the default socket of these tests does not exist): silent.
  const none = await runCli(['copy', img, tgt.url(1), '--progress', 'none'], { env });
  assert.equal(none.code, 0, none.err);
  assert.doesNotMatch(none.err, /served/);
});

test('Ctrl-C (SIGINT) mid-copy: stops, says how far it got, exits 130, closes its session', { timeout: 120000 }, async (t) => {
  // A slow target of its own: every PDU 10 ms late.
  const slow = await startTarget([16 * MiB]);
  t.after(() => slow.close());
  slow.server.faults.set({ delayMs: 10 });
  const img = path.join(dir, 'big-sparse.img');
  fs.writeFileSync(img, Buffer.alloc(0));
  fs.truncateSync(img, 16 * MiB); // all zeros: with --no-sparse every byte is written anyway
  let sentAt = 0;
  const r = await runCli(['copy', img, slow.url(0), '--no-sparse', '--chunk', '64', '--parallel', '2', '--progress', 'plain'], {
    env,
    timeoutMs: 90000,
    during: (child, stderr) => {
      const poll = setInterval(() => {
        if (/copy: \d+% /.test(stderr())) {
          clearInterval(poll);
          sentAt = Date.now();
          child.kill('SIGINT');
        }
      }, 20);
      child.once('close', () => clearInterval(poll));
    },
  });
  assert.ok(sentAt > 0, `never saw progress: ${r.err}`);
  assert.equal(r.code, 130, r.err);
  const m = /iscsi-nbd: (?:warning: )?interrupted after (\d+) bytes of 16777216; the destination is partial\n/.exec(r.err);
  assert.ok(m, r.err);
  const done = Number(m[1]);
  assert.ok(done > 0 && done < 16 * MiB, `done ${done}`);
  assert.doesNotMatch(r.out, /copied/);
  assert.doesNotMatch(r.err, /at .*\.js:\d+/, 'a stack trace was printed');
  // The session went away with the process (logged out, or at least closed).
  const deadline = Date.now() + 10000;
  while (slow.server.connections.length > 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  assert.equal(slow.server.connections.length, 0, 'the iSCSI connection is still open');
});
