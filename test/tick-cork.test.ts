import test from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { TickCork } from '../src/tick-cork';

// A stream that records each _writev/_write batch and completes it when told.
function recorder() {
  const batches: Buffer[][] = [];
  const pending: Array<() => void> = [];
  const s = new Writable({
    writev(chunks, cb) {
      batches.push(chunks.map((c) => c.chunk as Buffer));
      pending.push(() => cb());
    },
    write(chunk, _enc, cb) {
      batches.push([chunk as Buffer]);
      pending.push(() => cb());
    },
  });
  return { s, batches, pending };
}

test('TickCork: writes of one tick leave as one batch, in order', async () => {
  const r = recorder();
  const c = new TickCork();
  c.write(r.s, [Buffer.from('a'), Buffer.from('b')]);
  c.write(r.s, [Buffer.from('c')]);
  assert.equal(r.batches.length, 0, 'held until the tick ends');
  await new Promise((res) => setImmediate(res));
  assert.deepEqual(r.batches.map((b) => Buffer.concat(b).toString()), ['abc']);
});

// The writes made from several callbacks of one poll phase (one per readable
// socket) must still leave as one batch per stream: nextTick runs between
// those callbacks, so only the check phase may uncork.
test('TickCork: writes from later callbacks of the same loop turn join the batch', async () => {
  const r1 = recorder();
  const r2 = recorder();
  const c1 = new TickCork();
  const c2 = new TickCork();
  c1.write(r1.s, [Buffer.from('a')]);
  await new Promise((res) => process.nextTick(res));
  await Promise.resolve();
  c2.write(r2.s, [Buffer.from('x')]);
  c1.write(r1.s, [Buffer.from('b')]);
  await new Promise((res) => process.nextTick(res));
  assert.equal(r1.batches.length + r2.batches.length, 0, 'nothing leaves before the check phase');
  await new Promise((res) => setImmediate(res));
  assert.deepEqual(r1.batches.map((b) => Buffer.concat(b).toString()), ['ab']);
  assert.deepEqual(r2.batches.map((b) => Buffer.concat(b).toString()), ['x']);
});

test('TickCork: a write to another stream sends what the cork held first', async () => {
  const r1 = recorder();
  const r2 = recorder();
  const c = new TickCork();
  c.write(r1.s, [Buffer.from('a')]);
  c.write(r2.s, [Buffer.from('x')]);
  assert.deepEqual(r1.batches.map((b) => Buffer.concat(b).toString()), ['a'], 'flushed when the cork moved on');
  c.flush();
  assert.deepEqual(r2.batches.map((b) => Buffer.concat(b).toString()), ['x']);
  await new Promise((res) => setImmediate(res));
  assert.equal(r1.batches.length + r2.batches.length, 2, 'nothing sent twice');
});

test('TickCork: done runs only after the stream finished the buffers', async () => {
  const r = recorder();
  const c = new TickCork();
  let done = 0;
  c.write(r.s, [Buffer.from('x'), Buffer.from('y')], () => done++);
  await new Promise((res) => setImmediate(res));
  assert.equal(r.batches.length, 1);
  assert.equal(done, 0, 'not while the write is outstanding');
  r.pending.shift()!();
  await new Promise((res) => setImmediate(res));
  assert.equal(done, 1);
});

test('TickCork: done still runs when the stream is destroyed before writing', async () => {
  const r = recorder();
  const c = new TickCork();
  let done = 0;
  r.s.on('error', () => undefined);
  c.write(r.s, [Buffer.from('z')], () => done++);
  r.s.destroy(new Error('gone'));
  await new Promise((res) => setImmediate(res));
  assert.equal(done, 1);
  assert.equal(r.batches.length, 0, 'nothing was written');
});
