import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ReplyBufferPool } from '../../src/nbd/reply-pool';
import { TransmissionEngine } from '../../src/nbd/transmission';
import { transmissionFlagsFor } from '../../src/nbd/common';
import * as C from '../../src/nbd/constants';
import { RequestError } from '../../src/errors';
import { MemoryExport } from '../helpers/memory-export';
import { req, settle } from './util';

test('ReplyBufferPool: small buffers are not pooled; a given-back buffer is handed out again for the same size only', () => {
  const p = new ReplyBufferPool(1024, 4096);
  const small = p.take(100);
  assert.equal(small.pooled, false);
  assert.equal(small.buf.length, 100);
  const a = p.take(2048);
  assert.equal(a.pooled, true);
  p.give(a.buf);
  assert.equal(p.cachedBytes, 2048);
  assert.notEqual(p.take(3000).buf, a.buf, 'another size gets another buffer');
  assert.equal(p.take(2048).buf, a.buf, 'same size: reused');
  assert.equal(p.cachedBytes, 0);
});

test('ReplyBufferPool: never caches more than its limit', () => {
  const p = new ReplyBufferPool(1024, 4096);
  const bufs = [p.take(2048).buf, p.take(2048).buf, p.take(2048).buf];
  for (const b of bufs) p.give(b);
  assert.equal(p.cachedBytes, 4096);
});

// The engine hands large READ replies out with a `sent` callback (the pool
// gets the buffer back only through it) and small or failed ones without.
test('large READ replies come with a sent() callback; small and failed ones do not', async () => {
  const exp = new MemoryExport({ size: 1 << 22 });
  exp.poke(0, Buffer.alloc(131072, 0x42));
  exp.fail({ op: 'read', offset: 1n << 21n, length: 131072, error: new RequestError('EIO', 'injected') });
  const out: Array<{ bufs: Buffer[]; sent?: () => void }> = [];
  const eng = new TransmissionEngine({
    export: exp, structuredReplies: false, metaContexts: new Map(), transmissionFlags: transmissionFlagsFor(exp, false),
  }, {
    send: (bufs, sent) => out.push({ bufs, sent }),
    pause: () => undefined,
    resume: () => undefined,
    close: () => undefined,
  });
  eng.push(Buffer.concat([
    req(C.CMD_READ, 1, 0, 131072),
    req(C.CMD_READ, 2, 0, 4096),
    req(C.CMD_READ, 3, 1 << 21, 131072),
  ]));
  await settle();
  await eng.whenIdle();
  assert.equal(out.length, 3);
  const byCookie = new Map(out.map((o) => [o.bufs[0].readBigUInt64BE(8), o]));
  const big = byCookie.get(1n)!;
  assert.equal(typeof big.sent, 'function');
  assert.equal(big.bufs[0].length, 16 + 131072);
  assert.ok(big.bufs[0].subarray(16).every((x) => x === 0x42));
  assert.equal(byCookie.get(2n)!.sent, undefined);
  const failed = byCookie.get(3n)!;
  assert.equal(failed.sent, undefined);
  assert.equal(failed.bufs[0].readUInt32BE(4), 5, 'EIO');

  // Once sent, the same buffer serves the next read of that size, with that read's data.
  big.sent!();
  exp.poke(262144, Buffer.alloc(131072, 0x17));
  eng.push(req(C.CMD_READ, 4, 262144, 131072));
  await settle();
  await eng.whenIdle();
  const again = out[3];
  assert.equal(again.bufs[0].buffer, big.bufs[0].buffer, 'reused');
  assert.equal(again.bufs[0].readBigUInt64BE(8), 4n);
  assert.ok(again.bufs[0].subarray(16).every((x) => x === 0x17));
});

test('a reply buffer is not handed to another read until its sent() ran', async () => {
  const exp = new MemoryExport({ size: 1 << 22 });
  exp.poke(0, Buffer.alloc(65536, 0x01));
  exp.poke(65536, Buffer.alloc(65536, 0x02));
  const out: Array<{ bufs: Buffer[]; sent?: () => void }> = [];
  const eng = new TransmissionEngine({
    export: exp, structuredReplies: true, metaContexts: new Map(), transmissionFlags: transmissionFlagsFor(exp, true),
  }, { send: (bufs, sent) => out.push({ bufs, sent }), pause: () => undefined, resume: () => undefined, close: () => undefined });
  eng.push(req(C.CMD_READ, 1, 0, 65536));
  await settle();
  await eng.whenIdle();
  const first = out[0];
  assert.equal(typeof first.sent, 'function');
  // Still "on the wire": the next read of the same size needs another buffer.
  eng.push(req(C.CMD_READ, 2, 65536, 65536));
  await settle();
  await eng.whenIdle();
  assert.notEqual(out[1].bufs[0].buffer, first.bufs[0].buffer);
  assert.ok(first.bufs[0].subarray(32).every((x) => x === 0x01), 'the unsent reply kept its bytes');
  first.sent!();
  eng.push(req(C.CMD_READ, 3, 65536, 65536));
  await settle();
  await eng.whenIdle();
  assert.equal(out[2].bufs[0].buffer, first.bufs[0].buffer, 'reused after sent()');
});
