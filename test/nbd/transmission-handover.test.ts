// TransmissionEngine.takeUnparsed: what one process read from a kernel socket
// and did not start, handed to the next process with the rest of the stream,
// must make every request run exactly once, whatever byte the cut falls on.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { TransmissionEngine } from '../../src/nbd/transmission';
import { transmissionFlagsFor } from '../../src/nbd/common';
import * as C from '../../src/nbd/constants';
import { MemoryExport } from '../helpers/memory-export';
import { parseReplies, req, settle } from './util';

function engine(exp: MemoryExport, sent: Buffer[]): TransmissionEngine {
  return new TransmissionEngine(
    { export: exp, structuredReplies: false, metaContexts: new Map(), transmissionFlags: transmissionFlagsFor(exp, false), maxDiscard: 1 << 20 },
    { send: (b) => sent.push(...b), pause: () => undefined, resume: () => undefined, close: () => undefined },
  );
}

const A = crypto.randomBytes(600);
const B = crypto.randomBytes(1000);
const STREAM = Buffer.concat([
  req(C.CMD_WRITE, 1, 0, A.length, 0, A),
  req(C.CMD_READ, 2, 8192, 100),
  req(C.CMD_WRITE, 3, 4096, B.length, 0, B),
  req(C.CMD_FLUSH, 4, 0, 0),
]);

async function cutAt(k: number, byteByByte: boolean): Promise<void> {
  const exp = new MemoryExport({ size: 1 << 20 });
  const sent: Buffer[] = [];
  const first = engine(exp, sent);
  if (byteByByte) for (let i = 0; i < k; i++) first.push(STREAM.subarray(i, i + 1));
  else first.push(STREAM.subarray(0, k));
  await settle();
  await first.whenIdle();
  const unread = first.takeUnparsed();
  assert.ok(unread, `a boundary to hand over from at byte ${k}`);
  first.push(Buffer.from('garbage after the hand-over')); // read nothing more
  const next = engine(exp, sent);
  next.push(Buffer.concat([unread, STREAM.subarray(k)]));
  await settle();
  await next.whenIdle();
  const replies = parseReplies(Buffer.concat(sent), new Map([[2n, 100]]));
  assert.deepEqual(replies.map((r) => [r.cookie, r.kind === 'simple' ? r.error : -1]).sort(), [[1n, 0], [2n, 0], [3n, 0], [4n, 0]], `cut at ${k}: every request answered once`);
  assert.equal(exp.calls.filter((c) => c.op === 'write').length, 2, `cut at ${k}: each WRITE ran once`);
  assert.ok(exp.peek(0, A.length).equals(A) && exp.peek(4096, B.length).equals(B), `cut at ${k}: the data landed`);
}

test('takeUnparsed: a cut at every byte of the stream, pushed whole', async () => {
  for (let k = 0; k <= STREAM.length; k++) await cutAt(k, false);
});

test('takeUnparsed: cuts inside each header and payload, pushed byte by byte', async () => {
  for (const k of [0, 1, 27, 28, 29, 28 + 599, 28 + 600, 28 + 600 + 14, 28 + 600 + 28 + 28 + 500, STREAM.length - 1, STREAM.length]) await cutAt(k, true);
});

test('takeUnparsed: no boundary while a refused WRITE payload is being skipped', async () => {
  const exp = new MemoryExport({ size: 1 << 20 });
  const eng = engine(exp, []);
  eng.push(req(C.CMD_WRITE, 9, 1 << 20, 4096, 0, Buffer.alloc(4096)).subarray(0, 28 + 100)); // beyond the end: refused
  await settle();
  assert.equal(eng.takeUnparsed(), undefined);
});
