// `iscsi-nbd copy` with streams that are not `-`: a FIFO, /dev/stdin behind a
// shell pipe, <(...) and >(...) from bash, /dev/null, /dev/stdout into a pipe;
// a stream that ends before the LUN does (refused unless --allow-short), an
// empty one, one longer than the LUN. Run through bash against tgtd LUNs (the
// LUN's bytes read back from tgtd's backing file) and regular files.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { userText } from '../helpers/cli-text';
import { CLI, REPO_ROOT, childEnv } from '../helpers/process';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { skipUnless } from '../helpers/tools';
import { MiB, sha256 } from './util';

const skip = skipUnless('tgtd', 'tgtadm', 'bash', 'sha256sum');
const LUN_BYTES = 8 * MiB;

let tgt: Tgtd | undefined;
let dir = '';
let env: Record<string, string> = {};
/** 8 MiB of random bytes with a 1 MiB zero run: exactly one LUN. */
let full: Buffer;
let fullFile = '';

before(async () => {
  if (skip) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'copy-streams-'));
  env = { ISCSI_NBD_STATE_DIR: dir, ISCSI_NBD_CONTROL: path.join(dir, 'no-daemon.sock'), CLI, D: dir };
  tgt = await startTgtdWithLuns({ targets: [{ luns: [{ size: LUN_BYTES }, { size: LUN_BYTES }] }] });
  full = crypto.randomBytes(LUN_BYTES);
  full.fill(0, 2 * MiB, 3 * MiB);
  fullFile = path.join(dir, 'full.bin');
  fs.writeFileSync(fullFile, full);
}, { timeout: 60000 });

after(async () => {
  await tgt?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}, { timeout: 30000 });

const url = (lun: number): string => tgt!.url(1, lun);
const lunBytes = (lun: number): Buffer => fs.readFileSync(tgt!.lunInfo(1, lun).path);
const fill = (lun: number, byte: number): void => fs.writeFileSync(tgt!.lunInfo(1, lun).path, Buffer.alloc(LUN_BYTES, byte));

/** A bash script with $CLI (the iscsi-nbd entry point) and $D (the test dir) set; `iscsi-nbd` is a function. */
function bash(script: string, timeoutMs = 60000): Promise<{ code: number | null; out: string; err: string }> {
  const prelude = 'set -o pipefail; iscsi-nbd() { node "$CLI" "$@"; }\n';
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', prelude + script], { cwd: REPO_ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(env) });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    const timer = setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } }, timeoutMs);
    child.once('close', (code) => { clearTimeout(timer); resolve({ code, out, err: userText(err) }); });
  });
}

test('stream sources: a FIFO, /dev/stdin behind a pipe, <(...): every byte lands on the LUN', { skip, timeout: 120000 }, async () => {
  fill(1, 0xee);
  const fifo = await bash(`mkfifo "$D/in.fifo"; cat "${fullFile}" > "$D/in.fifo" & iscsi-nbd copy "$D/in.fifo" ${url(1)} --progress none; rc=$?; wait; exit $rc`);
  assert.equal(fifo.code, 0, fifo.err);
  assert.match(fifo.out, new RegExp(`^copied ${LUN_BYTES} bytes \\(8\\.0 MiB\\) from ${dir}/in\\.fifo in `));
  assert.equal(sha256(lunBytes(1)), sha256(full), 'FIFO: the LUN does not hold the stream');

  fill(1, 0xee);
  const stdin = await bash(`cat "${fullFile}" | iscsi-nbd copy /dev/stdin ${url(1)} --progress none`);
  assert.equal(stdin.code, 0, stdin.err);
  assert.match(stdin.out, new RegExp(`^copied ${LUN_BYTES} bytes \\(8\\.0 MiB\\) from /dev/stdin in `));
  assert.equal(sha256(lunBytes(1)), sha256(full), '/dev/stdin: the LUN does not hold the stream');

  fill(1, 0xee);
  const procsub = await bash(`iscsi-nbd copy <(cat "${fullFile}") ${url(1)} --progress none`);
  assert.equal(procsub.code, 0, procsub.err);
  assert.match(procsub.out, new RegExp(`^copied ${LUN_BYTES} bytes \\(8\\.0 MiB\\) from /dev/fd/\\d+ in `));
  assert.equal(sha256(lunBytes(1)), sha256(full), '<(...): the LUN does not hold the stream');

  // /dev/stdin redirected from a regular file is that file: a sized copy, a short one is fine.
  fill(1, 0xee);
  const small = path.join(dir, 'small.bin');
  fs.writeFileSync(small, full.subarray(0, 3 * MiB + 100));
  const redirected = await bash(`iscsi-nbd copy /dev/stdin ${url(1)} --progress none < "${small}"`);
  assert.equal(redirected.code, 0, redirected.err);
  assert.match(redirected.out, /^copied 3145828 bytes \(3\.0 MiB\) in .*padded with 412 zero bytes/);
  assert.ok(lunBytes(1).subarray(0, 3 * MiB + 100).equals(full.subarray(0, 3 * MiB + 100)));
});

test('a stream that ends before the LUN: exit 1 and how much was written; --allow-short accepts it; empty and too long refused', { skip, timeout: 120000 }, async () => {
  fill(1, 0xee);
  const head = 3 * MiB + 1000; // not a whole block either
  const short = await bash(`head -c ${head} "${fullFile}" | iscsi-nbd copy /dev/stdin ${url(1)} --progress none`);
  assert.equal(short.code, 1, short.err);
  assert.equal(short.out, '', 'a summary line was printed for a failed copy');
  assert.match(
    short.err,
    new RegExp(`iscsi-nbd: /dev/stdin ended after ${head} bytes, before the ${LUN_BYTES} bytes of iscsi://127\\.0\\.0\\.1:\\d+/\\S+/1: ` +
      `those ${head} bytes were written, the rest of the LUN was left as it was\\. If the source is meant to be shorter than the LUN, pass --allow-short \\[EIO\\]`),
  );
  let lun = lunBytes(1);
  assert.ok(lun.subarray(0, head).equals(full.subarray(0, head)), 'what the stream held was not written');
  assert.ok(lun.subarray(head + 24 + 512).equals(Buffer.alloc(LUN_BYTES - head - 24 - 512, 0xee)), 'the LUN past the stream was touched');

  // The same through `-` and a FIFO: the same rule.
  const dash = await bash(`head -c ${head} "${fullFile}" | iscsi-nbd copy - ${url(1)} --progress none`);
  assert.equal(dash.code, 1, dash.err);
  assert.match(dash.err, /iscsi-nbd: stdin ended after 3146728 bytes, before the 8388608 bytes of /);

  fill(1, 0xee);
  const allowed = await bash(`iscsi-nbd copy <(head -c ${head} "${fullFile}") ${url(1)} --progress none --allow-short`);
  assert.equal(allowed.code, 0, allowed.err);
  assert.match(allowed.out, new RegExp(`^copied ${head} bytes \\(3\\.0 MiB\\) from /dev/fd/\\d+ in .*the last block was padded with 24 zero bytes; ` +
    `the LUN's last ${LUN_BYTES - head - 24} bytes were left as they were \\(--allow-short\\)\\n$`));
  lun = lunBytes(1);
  assert.ok(lun.subarray(0, head).equals(full.subarray(0, head)));
  assert.ok(lun.subarray(head, head + 24).equals(Buffer.alloc(24)));
  assert.ok(lun.subarray(head + 24).equals(Buffer.alloc(LUN_BYTES - head - 24, 0xee)));

  // Empty: nothing to copy is never a success, --allow-short or not; an empty regular file neither.
  const empty = await bash(`iscsi-nbd copy <(true) ${url(1)} --allow-short --progress none`);
  assert.equal(empty.code, 1, empty.err);
  assert.match(empty.err, /iscsi-nbd: \/dev\/fd\/\d+ is empty: nothing was copied to iscsi:\/\/\S+ \[EIO\]/);
  const emptyFile = await bash(`: > "$D/empty.img"; iscsi-nbd copy "$D/empty.img" ${url(1)} --progress none`);
  assert.equal(emptyFile.code, 1, emptyFile.err);
  assert.match(emptyFile.err, /iscsi-nbd: \S+empty\.img is empty: nothing was copied \[EIO\]/);

  // Longer than the LUN: refused, not truncated.
  const long = await bash(`cat "${fullFile}" "${fullFile}" | iscsi-nbd copy /dev/stdin ${url(1)} --progress none`);
  assert.equal(long.code, 1, long.err);
  assert.match(long.err, /iscsi-nbd: \/dev\/stdin is longer than the 8388608 bytes of iscsi:\/\/\S+: refusing to truncate the copy/);

  // --verify cannot read a pipe twice: refused before logging in.
  const verify = await bash(`iscsi-nbd copy <(cat "${fullFile}") ${url(1)} --verify`);
  assert.equal(verify.code, 6, verify.err);
  assert.match(verify.err, /--verify reads both sides back, and \/dev\/fd\/\d+ \(a pipe, FIFO or device, not a file\) cannot be read twice/);
});

test('stream destinations: /dev/null, >(sha256sum), a FIFO, /dev/stdout into a pipe; regular files still sized', { skip, timeout: 120000 }, async () => {
  fs.writeFileSync(tgt!.lunInfo(1, 2).path, full);
  const want = sha256(full);

  const devnull = await bash(`iscsi-nbd copy ${url(2)} /dev/null --progress none`);
  assert.equal(devnull.code, 0, devnull.err);
  assert.match(devnull.out, /^copied 8388608 bytes \(8\.0 MiB\) in /);

  const procsub = await bash(`iscsi-nbd copy ${url(2)} >(sha256sum > "$D/procsub.sum") --progress none; rc=$?; wait; sleep 0.2; exit $rc`);
  assert.equal(procsub.code, 0, procsub.err);
  assert.equal(fs.readFileSync(path.join(dir, 'procsub.sum'), 'utf8').split(' ')[0], want, '>(sha256sum) saw other bytes');

  const fifo = await bash(`mkfifo "$D/out.fifo"; sha256sum < "$D/out.fifo" > "$D/fifo.sum" & iscsi-nbd copy ${url(2)} "$D/out.fifo" --progress none; rc=$?; wait; exit $rc`);
  assert.equal(fifo.code, 0, fifo.err);
  assert.equal(fs.readFileSync(path.join(dir, 'fifo.sum'), 'utf8').split(' ')[0], want, 'the FIFO reader saw other bytes');

  // /dev/stdout is the data: the summary goes to stderr, as with `-`.
  const stdout = await bash(`iscsi-nbd copy ${url(2)} /dev/stdout --progress none | sha256sum`);
  assert.equal(stdout.code, 0, stdout.err);
  assert.equal(stdout.out.split(' ')[0], want, '/dev/stdout carried other bytes than the LUN');
  assert.match(stdout.err, /copied 8388608 bytes \(8\.0 MiB\) in /);

  // A reader that goes away early: a plain error, not a success.
  const closed = await bash(`iscsi-nbd copy ${url(2)} >(head -c 1000 > /dev/null) --progress none`);
  assert.notEqual(closed.code, 0, closed.err);
  assert.match(closed.err, /iscsi-nbd: writing to \/dev\/fd\/\d+: .*EPIPE/);

  // A regular file is still truncated to the size and written sparse.
  const img = path.join(dir, 'out.img');
  fs.writeFileSync(img, Buffer.alloc(16 * MiB, 1));
  const file = await bash(`iscsi-nbd copy ${url(2)} "${img}" --progress none`);
  assert.equal(file.code, 0, file.err);
  assert.equal(fs.statSync(img).size, LUN_BYTES);
  assert.equal(sha256(fs.readFileSync(img)), want);
});
