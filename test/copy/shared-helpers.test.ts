// src/util helpers the copy engine and the CLI share: byte formatting,
// bounded concurrency, error context.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { humanBytes } from '../../src/util/size';
import { runLimited } from '../../src/util/limit';
import { withContext } from '../../src/util/context';
import { IscsiNbdError } from '../../src/errors';

test('humanBytes: steady ".0" for progress, trimmed for listings', () => {
  assert.equal(humanBytes(0), '0 B');
  assert.equal(humanBytes(1023), '1023 B');
  assert.equal(humanBytes(512.4), '512 B');
  assert.equal(humanBytes(3 * 1024 * 1024), '3.0 MiB');
  assert.equal(humanBytes(1536), '1.5 KiB');
  assert.equal(humanBytes(8n * 1024n * 1024n, { trim: true }), '8 MiB');
  assert.equal(humanBytes(1536, { trim: true }), '1.5 KiB');
  assert.equal(humanBytes(2 ** 50, { trim: true }), '1 PiB');
});

test('runLimited: at most limit in flight, every item once, slots in range', async () => {
  const items = Array.from({ length: 50 }, (_, i) => i);
  let i = 0;
  let inFlight = 0;
  let peak = 0;
  const seen: number[] = [];
  const slots = new Set<number>();
  await runLimited(() => items[i++], 4, async (n, slot) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    slots.add(slot);
    await new Promise((r) => setTimeout(r, n % 3));
    seen.push(n);
    inFlight--;
  });
  assert.equal(peak, 4);
  assert.deepEqual(seen.sort((a, b) => a - b), items);
  assert.ok([...slots].every((s) => s >= 0 && s < 4));
});

test('runLimited: the first error is thrown after in-flight work ends; no new items start', async () => {
  let i = 0;
  let started = 0;
  let finished = 0;
  const told: unknown[] = [];
  const boom = new Error('boom');
  await assert.rejects(runLimited(() => (i < 100 ? i++ : undefined), 3, async (n) => {
    started++;
    await new Promise((r) => setTimeout(r, 5));
    finished++;
    if (n === 4) throw boom;
    if (n > 4) throw new Error('later');
  }, (e) => told.push(e)), boom);
  assert.equal(started, finished, 'nothing left running');
  assert.ok(started < 12, `stopped early: ${started}`);
  assert.deepEqual(told, [boom]);
  await runLimited(() => undefined, 0, async () => assert.fail('no items'));
});

test('withContext: keeps the code, names the context, keeps the cause', () => {
  const inner = new IscsiNbdError('ENOSPC', 'full');
  const e = withContext(inner, 'lun 1');
  assert.equal(e.code, 'ENOSPC');
  assert.equal(e.message, 'lun 1: full');
  assert.equal(e.cause, inner);
  const plain = withContext(new Error('socket closed'), 'target x');
  assert.equal(plain.code, 'EIO');
  assert.equal(plain.message, 'target x: socket closed');
  assert.equal(withContext('odd', 'y').message, 'y: odd');
});
