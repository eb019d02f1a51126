// The copy engine (src/copy) used directly, without the CLI: CopyOptions,
// progress callbacks, streams given as objects, the AbortSignal.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { copy, CopyInterrupted, CopyProgress, ShortSource, zeroRuns, lcm, gcd } from '../../src/copy';
import { INITIATOR, MiB, sha256, startTarget, Target } from './util';

let tgt: Target;
let dir = '';

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'copy-engine-'));
  tgt = await startTarget([4 * MiB, 4 * MiB], 4096);
}, { timeout: 30000 });

after(async () => {
  await tgt?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}, { timeout: 30000 });

const base = { initiatorName: INITIATOR, chunk: 64, parallel: 4 };

test('helpers: zeroRuns, gcd, lcm', () => {
  const b = Buffer.alloc(8 * 1024, 1);
  b.fill(0, 2048, 6144);
  assert.deepEqual(zeroRuns(b, 1024), [[2048, 6144]]);
  assert.deepEqual(zeroRuns(Buffer.alloc(4096), 1024), [[0, 4096]]);
  assert.deepEqual(zeroRuns(Buffer.alloc(4096, 7), 1024), []);
  assert.equal(gcd(512, 4096), 512);
  assert.equal(lcm(512, 4096), 4096);
  assert.equal(lcm(1, 4096), 4096);
});

test('file -> LUN -> file with progress and verify', { timeout: 60000 }, async () => {
  const img = path.join(dir, 'a.img');
  const data = crypto.randomBytes(3 * MiB);
  data.fill(0, MiB, 2 * MiB);
  fs.writeFileSync(img, data);
  const seen: CopyProgress[] = [];
  const s = await copy({ ...base, src: img, dst: tgt.url(0), verify: true, onProgress: (p) => seen.push(p) });
  assert.equal(s.bytes, data.length);
  assert.equal(s.verified, true);
  assert.equal(s.stream, false);
  assert.equal(s.paddedBytes, 0);
  assert.ok(s.zeroBytes >= MiB, `zeros ${s.zeroBytes}`);
  assert.deepEqual(seen[0], { phase: 'copy', done: 0, total: data.length });
  assert.ok(seen.some((p) => p.phase === 'copy' && p.done === data.length));
  assert.ok(seen.some((p) => p.phase === 'verify' && p.done === data.length));
  const out = path.join(dir, 'a.out');
  await copy({ ...base, src: tgt.url(0), dst: out });
  assert.equal(sha256(fs.readFileSync(out).subarray(0, data.length)), sha256(data));
});

test('streams as objects: a Readable into a LUN (padded to its 4096-byte block), the LUN into a Writable', { timeout: 60000 }, async () => {
  const data = crypto.randomBytes(MiB + 100);
  // Uneven pieces, as a pipe delivers them.
  const pieces: Buffer[] = [];
  for (let at = 0; at < data.length; ) {
    const n = Math.min(data.length - at, 1 + crypto.randomInt(200_000));
    pieces.push(data.subarray(at, at + n));
    at += n;
  }
  const s = await copy({ ...base, src: '-', dst: tgt.url(1), stdin: Readable.from(pieces), allowShort: true });
  assert.equal(s.stream, true);
  assert.equal(s.bytes, data.length);
  assert.equal(s.paddedBytes, 4096 - 100);
  const lun = await tgt.backends[1].read(0, data.length + s.paddedBytes);
  assert.equal(sha256(lun), sha256(Buffer.concat([data, Buffer.alloc(s.paddedBytes)])));

  const chunks: Buffer[] = [];
  const sink = new Writable({ write: (c: Buffer, _e, cb) => { chunks.push(Buffer.from(c)); setImmediate(cb); } });
  const d = await copy({ ...base, src: tgt.url(1), dst: '-', stdout: sink });
  assert.equal(d.bytes, 4 * MiB);
  const got = Buffer.concat(chunks);
  assert.equal(got.length, 4 * MiB);
  assert.equal(sha256(got), sha256(await tgt.backends[1].read(0, 4 * MiB)), 'stdout bytes out of order or missing');
});

test('a stream shorter than the LUN is a ShortSource (what it held is written); a file that shrinks mid-copy fails', { timeout: 60000 }, async () => {
  const data = crypto.randomBytes(MiB);
  const err = await copy({ ...base, src: '-', dst: tgt.url(0), stdin: Readable.from([data]) }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof ShortSource, String(err));
  assert.equal(err.code, 'EIO');
  assert.equal(err.copied, MiB);
  assert.equal(err.destinationSize, 4 * MiB);
  assert.ok((await tgt.backends[0].read(0, MiB)).equals(data), 'what the stream held was not written');
  const empty = await copy({ ...base, src: '-', dst: tgt.url(0), stdin: Readable.from([]), allowShort: true }).then(() => undefined, (e: unknown) => e);
  assert.ok(empty instanceof ShortSource && empty.copied === 0, String(empty));

  // A source file cut short after it was opened: an error, not zeros passed off as its data.
  const img = path.join(dir, 'shrinks.img');
  fs.writeFileSync(img, crypto.randomBytes(4 * MiB));
  const shrunk = await copy({
    ...base,
    src: img,
    dst: tgt.url(0),
    parallel: 1,
    onProgress: (p) => { if (p.done >= MiB) fs.truncateSync(img, MiB); },
  }).then(() => undefined, (e: unknown) => e);
  assert.match(String(shrunk), /shrinks\.img ended at byte 1048576, before the 4194304 bytes it had when the copy started: it changed during the copy/);
});

test('the AbortSignal: before the start, and in the middle', { timeout: 60000 }, async () => {
  const img = path.join(dir, 'b.img');
  fs.writeFileSync(img, crypto.randomBytes(4 * MiB));
  await assert.rejects(copy({ ...base, src: img, dst: tgt.url(0), signal: AbortSignal.abort() }), CopyInterrupted);
  const ac = new AbortController();
  const err = await copy({
    ...base,
    src: img,
    dst: tgt.url(0),
    parallel: 1,
    signal: ac.signal,
    onProgress: (p) => { if (p.done >= MiB) ac.abort(); },
  }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof CopyInterrupted, String(err));
  assert.equal(err.phase, 'copy');
  assert.equal(err.total, 4 * MiB);
  assert.ok(err.done >= MiB && err.done < 4 * MiB, `done ${err.done}`);
});

test('refusals before any I/O: no URL, --verify with a stream, an image format', { timeout: 30000 }, async () => {
  await assert.rejects(copy({ ...base, src: 'a', dst: 'b' }), /one of SRC and DST must be an iscsi:\/\/ URL/);
  await assert.rejects(copy({ ...base, src: '-', dst: tgt.url(0), verify: true, stdin: Readable.from([]) }), /cannot be read twice/);
  const vhdx = path.join(dir, 'c.vhdx');
  const h = Buffer.alloc(1 << 20);
  h.write('vhdxfile', 0, 'latin1');
  fs.writeFileSync(vhdx, h);
  await assert.rejects(copy({ ...base, src: vhdx, dst: tgt.url(0) }), (e: Error & { code?: string }) => {
    assert.equal(e.code, 'ECONFIG');
    assert.match(e.message, /c\.vhdx is a VHDX image, not raw/);
    return true;
  });
  await assert.rejects(copy({ ...base, src: '-', dst: tgt.url(0), stdin: Readable.from([Buffer.from('QED\0'), Buffer.alloc(5000)]) }), /stdin starts like a QED image/);
});
