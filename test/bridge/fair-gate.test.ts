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

test('FairGate: more slots (a session joins the pool) go to the waiters at once; fewer are given back as commands end', async () => {
  const g = new FairGate(1);
  const a = g.owner();
  const b = g.owner();
  assert.ok(a.tryTake());
  let got = 0;
  const waits = [a.wait(), b.wait(), b.wait()].map((p) => p.then(() => got++));
  g.setMax(3);
  await Promise.resolve();
  await Promise.resolve();
  assert.equal(got, 2, 'two new slots, two waiters served');
  assert.equal(g.inFlight, 3);
  g.setMax(1);
  a.release(); // over the limit: the slot is not handed on
  assert.equal(g.inFlight, 2);
  a.release();
  assert.equal(g.inFlight, 1);
  b.release(); // at the limit again: the last waiter gets this slot
  await Promise.all(waits);
  assert.equal(got, 3);
  assert.equal(g.inFlight, 1);
});
