// ByteQueue against the plain concatenation of what was pushed: every way of
// reading gives the same bytes whatever the chunking, views stay views, and
// ownRemainder survives the pusher overwriting its buffers.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ByteQueue } from '../../src/util/byte-queue';

const SRC = Buffer.from(Array.from({ length: 61 }, (_, i) => (i * 7 + 3) & 0xff));

/** Every split of SRC into 1..3 chunks (cut points a <= b). */
function* chunkings(): Generator<Buffer[]> {
  for (let a = 0; a <= SRC.length; a++) {
    for (let b = a; b <= SRC.length; b += 5) yield [SRC.subarray(0, a), SRC.subarray(a, b), SRC.subarray(b)];
  }
}

function filled(chunks: Buffer[]): ByteQueue {
  const q = new ByteQueue();
  for (const c of chunks) q.push(c);
  return q;
}

test('ByteQueue: take, copyTo, takeViews and skip read the concatenation at every split', () => {
  const reads = [1, 4, 13, 0, 48 - 18, 9];
  for (const chunks of chunkings()) {
    const q = filled(chunks);
    assert.equal(q.length, SRC.length);
    let at = 0;
    for (const [i, n] of reads.entries()) {
      const want = SRC.subarray(at, at + n);
      switch (i % 4) {
        case 0: assert.deepEqual(q.take(n), want); break;
        case 1: {
          const dest = Buffer.alloc(n + 2, 0xee);
          assert.equal(q.copyTo(dest, 1, n), n);
          assert.deepEqual(dest.subarray(1, 1 + n), want);
          assert.equal(dest[0], 0xee);
          assert.equal(dest[n + 1], 0xee);
          break;
        }
        case 2: assert.deepEqual(Buffer.concat(q.takeViews(n)), want); break;
        default: assert.equal(q.skip(n), n);
      }
      at += n;
      assert.equal(q.length, SRC.length - at);
    }
    assert.deepEqual(q.drainAll(), SRC.subarray(at));
    assert.equal(q.length, 0);
  }
});

test('ByteQueue: a read inside one chunk is a view; copy=true and spanning reads are copies', () => {
  // Small Buffers share one pool, so identity is tested by writing through the source.
  const a = Buffer.from('abcdef');
  const b = Buffer.from('ghij');
  const q = filled([a, b]);
  const v = q.take(3);
  const c = q.take(2, true);
  const span = q.take(3);
  a.fill('A');
  b.fill('B');
  assert.equal(v.toString(), 'AAA', 'a view of a');
  assert.equal(c.toString(), 'de', 'a copy');
  assert.equal(span.toString(), 'fgh', 'a copy across chunks');
  assert.deepEqual(q.takeViews(10).map((x) => x.toString()), ['BB'], 'views of b');
});

test('ByteQueue: limits are exact: underflow throws and the partial operations stop at what is held', () => {
  const q = filled([Buffer.from('xyz')]);
  assert.throws(() => q.take(4), /underflow: 4 bytes wanted, 3 held/);
  assert.equal(q.length, 3, 'a refused take leaves everything');
  assert.equal(q.copyTo(Buffer.alloc(2), 0, 10), 2, 'copyTo stops at the destination end');
  assert.equal(q.skip(10), 1);
  assert.equal(q.take(0).length, 0);
  assert.deepEqual(q.takeViews(5), []);
  q.push(Buffer.alloc(0));
  assert.equal(q.length, 0);
});

test('ByteQueue: ownRemainder keeps the unread bytes when the pusher reuses its buffer', () => {
  for (let cut = 0; cut <= 16; cut++) {
    const reused = Buffer.from('0123456789abcdef');
    const q = filled([reused.subarray(0, 10), reused.subarray(10)]);
    q.skip(cut);
    q.ownRemainder();
    reused.fill(0x2a);
    assert.equal(q.drainAll().toString(), '0123456789abcdef'.slice(cut));
  }
});

test('ByteQueue: many small chunks (compaction) keep order', () => {
  const q = new ByteQueue();
  let next = 0;
  let expect = 0;
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < 1500; i++) q.push(Buffer.from([next++ & 0xff]));
    const got = q.take(1400 + round);
    for (const byte of got) assert.equal(byte, expect++ & 0xff);
  }
  for (const byte of q.drainAll()) assert.equal(byte, expect++ & 0xff);
  assert.equal(expect, next);
});
