import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FairGate } from '../../src/bridge/fair-gate';

test('FairGate: a LUN alone gets every slot; under contention freed slots go to the waiting LUNs in turn', async () => {
  const g = new FairGate(4);
  const a = g.owner();
  const b = g.owner();
  const c = g.owner();
  for (let i = 0; i < 4; i++) assert.equal(a.tryTake(), true);
  assert.equal(a.tryTake(), false, 'full');
  const order: string[] = [];
  const waits = [
    ...[1, 2, 3].map((i) => a.wait().then(() => order.push(`a${i}`))),
    ...[1, 2].map((i) => b.wait().then(() => order.push(`b${i}`))),
    c.wait().then(() => order.push('c1')),
  ];
  assert.deepEqual([a.queued, b.queued, c.queued], [3, 2, 1]);
  assert.equal(b.tryTake(), false, 'nobody jumps the queue while others wait');
  for (let i = 0; i < 6; i++) {
    a.release();
    await Promise.resolve();
  }
  await Promise.all(waits);
  assert.deepEqual(order, ['a1', 'b1', 'c1', 'a2', 'b2', 'a3']);
  assert.equal(g.inFlight, 4, 'slots were handed over, never more than max');
  assert.deepEqual([a.held, b.held, c.held], [1, 2, 1]);
});

test('FairGate: releases with nobody waiting free the slot', () => {
  const g = new FairGate(2);
  const a = g.owner();
  assert.ok(a.tryTake());
  assert.ok(a.tryTake());
  a.release();
  a.release();
  assert.equal(g.inFlight, 0);
  assert.equal(a.held, 0);
});
