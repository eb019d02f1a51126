// The export state machine's timers run on ManagerOptions.clock: a failed
// export is opened again when its backoff has passed on that clock, and not
// before, whatever the wall clock does. The embedded target comes and goes
// (fault injection); the same retry against tgtd, in real time, is in
// test/lifecycle/export-states.test.ts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ExportManager, OPEN_RETRY_BACKOFF } from '../../src/bridge/manager';
import { DEFAULT_TIMEOUTS } from '../../src/config';
import { ManualClock } from '../iscsi/fake-target';
import { sleep } from '../helpers/process';
import { INITIATOR, exportUrl, onCleanup, startTargets, testLog, type After, type TargetSet } from './env';

/** The embedded target, down for now, and a manager whose export timers run on a manual clock. */
async function downTargetAndManager(t: After): Promise<{ tg: TargetSet; clock: ManualClock; manager: ExportManager }> {
  const tg = await startTargets(t);
  await tg.down(0);
  const clock = new ManualClock();
  const manager = new ExportManager({
    initiatorName: INITIATOR, sessions: 1, digest: 'none', readOnly: false,
    timeouts: { ...DEFAULT_TIMEOUTS, login: 2 }, authFor: () => undefined, log: testLog(), clock,
  });
  onCleanup(t, () => manager.closeAll());
  return { tg, clock, manager };
}

async function until(what: string, ok: () => boolean, ms = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

test('open retry: on the injected clock, after the backoff and not before; then the export serves', { timeout: 60_000 }, async (t) => {
  const { tg, clock, manager } = await downTargetAndManager(t);

  const { export: e, error } = await manager.start({ name: 'd', url: exportUrl(tg.ports[0]) });
  assert.ok(error, 'the first attempt fails: nothing listens');
  assert.equal(e.state, 'failed');
  const first = e.status().nextRetryInMs!;
  const lo = OPEN_RETRY_BACKOFF.initialMs * (1 - OPEN_RETRY_BACKOFF.jitter);
  const hi = OPEN_RETRY_BACKOFF.initialMs * (1 + OPEN_RETRY_BACKOFF.jitter);
  assert.ok(first >= lo && first <= hi, `first retry in ${first} ms, within the backoff's first step`);
  assert.equal(clock.pending, 1, 'one timer: the retry');

  // The target is back, and the wall clock passes the backoff: still no attempt.
  await tg.up(0);
  await sleep(hi + 300);
  assert.equal(e.state, 'failed', 'the retry waits for the injected clock');
  clock.advance(first - 1);
  await sleep(100);
  assert.equal(e.state, 'failed', 'one millisecond short of the backoff');
  assert.equal(e.status().nextRetryInMs, 1);

  clock.advance(1);
  await until('the export to open on the retry', () => e.state === 'ready');
  assert.equal(e.status().nextRetryInMs, undefined);
  assert.equal(e.status().error, undefined);
  const buf = Buffer.alloc(4096);
  await e.export!.read(0n, buf.length, buf);
  assert.equal(clock.pending, 0, 'no retry left once open');
});

test('open retry: a second failure backs off further on the same clock, and closing the export cancels it', { timeout: 60_000 }, async (t) => {
  const { tg, clock, manager } = await downTargetAndManager(t);

  const { export: e } = await manager.start({ name: 'd', url: exportUrl(tg.ports[0]) });
  clock.advance(e.status().nextRetryInMs!);
  // The attempt fails again (still nothing listening) and schedules the next, doubled.
  await until('the second retry to be scheduled', () => (e.status().nextRetryInMs ?? 0) > 0 && clock.pending === 1);
  const second = e.status().nextRetryInMs!;
  const lo = 2 * OPEN_RETRY_BACKOFF.initialMs * (1 - OPEN_RETRY_BACKOFF.jitter);
  const hi = 2 * OPEN_RETRY_BACKOFF.initialMs * (1 + OPEN_RETRY_BACKOFF.jitter);
  assert.ok(second >= lo && second <= hi, `second retry in ${second} ms`);
  assert.equal(e.state, 'failed');

  await manager.remove('d');
  assert.equal(clock.pending, 0, 'closing cancelled the retry');
  await tg.up(0);
  clock.advance(hi);
  await sleep(200);
  assert.equal(e.state, 'closed');
});
