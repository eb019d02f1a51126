// IscsiSession recovery on a manual clock: every timer of the session
// (reconnect backoff, replacement timeout) and of its engines comes from the
// injected clock, so the test decides when each one fires, down to the
// connect and login timeouts; only the TCP exchanges run in real time.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { IscsiNbdError } from '../../src/errors';
import { IscsiSession } from '../../src/iscsi/initiator';
import { ManualClock, startFakeTarget } from './fake-target';

const TUR = Buffer.alloc(6);

/** A ManualClock that records the delay of every timer armed on it. */
class RecordingClock extends ManualClock {
  readonly delays: number[] = [];
  override setTimeout(fn: () => void, ms: number): number {
    this.delays.push(ms);
    return super.setTimeout(fn, ms);
  }
}

function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const poll = (): void => {
      if (cond()) resolve();
      else if (Date.now() > end) reject(new Error('condition not met in time'));
      else setTimeout(poll, 5);
    };
    poll();
  });
}

// Connect and login timeouts are on the clock too; values no backoff delay takes.
const CONNECT_MS = 9_001;
const LOGIN_MS = 9_002;

function session(t: TestContext, port: number, clock: ManualClock, replacementMs = 60_000): IscsiSession {
  const s = new IscsiSession({
    portal: { host: '127.0.0.1', port },
    targetName: 'iqn.2026-11.test:fake',
    initiatorName: 'iqn.2026-11.test:init',
    backoff: { initialMs: 1000, maxMs: 4000, jitter: 0 },
    timeouts: { nopIntervalMs: 0, commandMs: 0, replacementMs, connectMs: CONNECT_MS, loginMs: LOGIN_MS },
    clock,
  });
  t.after(() => s.close());
  return s;
}

test('manual clock: a lost connection is logged in again only when the backoff delay has passed', async (t) => {
  const f = await startFakeTarget();
  t.after(() => f.close());
  const clock = new RecordingClock();
  const s = session(t, f.port, clock);
  await s.connect();
  assert.equal(f.logins, 1);
  const lost = new Promise<void>((r) => s.once('lost', () => r()));
  f.conns[0].close();
  await lost;
  assert.equal(s.state, 'recovering');
  // A command during the outage is parked, not failed.
  const parked = s.execute({ lun: 0, cdb: TUR });
  clock.advance(999);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(f.logins, 1, 'no login before the first backoff delay (initialMs) has passed');
  const reconnected = new Promise<{ attempts: number; outageMs: number }>((r) => s.once('reconnected', r));
  clock.advance(1);
  const info = await reconnected;
  assert.equal(f.logins, 2);
  assert.deepEqual(info, { attempts: 1, outageMs: 1000 }, 'the outage is measured on the session clock');
  assert.equal((await parked).status, 0, 'the parked command ran on the new connection');
  assert.equal(s.state, 'logged-in');
  await s.logout();
});

test('manual clock: failed reconnects back off exponentially up to maxMs; the replacement timeout fails parked commands', async (t) => {
  const f = await startFakeTarget();
  const clock = new RecordingClock();
  const s = session(t, f.port, clock, 20_000);
  await s.connect();
  const lost = new Promise<void>((r) => s.once('lost', () => r()));
  await f.close(); // the target is gone: every reconnect is refused
  await lost;
  const parked = s.execute({ lun: 0, cdb: TUR });
  const parkedErr = parked.then(() => undefined, (e: unknown) => e as IscsiNbdError);
  const retries = (): number[] => clock.delays.filter((ms) => ms !== 20_000 && ms !== CONNECT_MS && ms !== LOGIN_MS);
  assert.deepEqual(retries(), [1000]);
  // Each attempt fails in real time (connection refused) and arms the next delay.
  for (const [i, want] of [[1, 2000], [2, 4000], [3, 4000]] as const) {
    clock.advance(retries()[i - 1]);
    await until(() => retries().length > i);
    assert.equal(retries()[i], want, `delay after failed attempt ${i}`);
  }
  assert.equal(s.state, 'recovering', 'commands are still parked within replacementMs');
  clock.advance(20_000 - (1000 + 2000 + 4000)); // the replacement timer fires; due retries start too
  assert.equal(s.state, 'failed');
  const err = await parkedErr;
  assert.ok(err instanceof IscsiNbdError);
  assert.equal(err.code, 'ECONNLOST');
  s.close();
  assert.equal(clock.pending, 0, 'close() leaves no timer armed, not even a retry that was connecting');
});

/** A target that accepts and never answers: the login waits on its timer. It
 * reads (and drops) what it gets, so that our close reaches it as an end. */
async function silentTarget(t: TestContext, clock: ManualClock, timeouts: { connectMs?: number; loginMs: number }): Promise<{ s: IscsiSession; accepted: net.Socket[] }> {
  const accepted: net.Socket[] = [];
  const silent = net.createServer((c) => accepted.push(c.resume()));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const c of accepted) c.destroy();
    silent.close();
  });
  const s = new IscsiSession({
    portal: { host: '127.0.0.1', port: (silent.address() as net.AddressInfo).port },
    targetName: 'iqn.2026-11.test:fake',
    initiatorName: 'iqn.2026-11.test:init',
    timeouts: { nopIntervalMs: 0, commandMs: 0, ...timeouts },
    clock,
  });
  t.after(() => s.close());
  return { s, accepted };
}

test('manual clock: a target that accepts and never answers the login times out when the clock says so', async (t) => {
  const clock = new RecordingClock();
  const { s, accepted } = await silentTarget(t, clock, { connectMs: 7000, loginMs: 15000 });
  let settled = false;
  const connecting = s.connect().finally(() => { settled = true; });
  connecting.catch(() => undefined);
  // Connected (the connect timer is cleared), then the login waits on its timer.
  await until(() => accepted.length === 1 && clock.delays.includes(15000));
  assert.ok(clock.delays.includes(7000), 'the connect timeout was armed on the clock');
  clock.advance(14_999);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(settled, false, 'nothing times out before the clock reaches the login timeout');
  clock.advance(1);
  await assert.rejects(connecting, (e: IscsiNbdError) => e.code === 'ETIMEOUT' && /login did not complete within 15000 ms/.test(e.message));
});

test('manual clock: close() during a login cancels it at once: no timer left, the socket closed', async (t) => {
  const clock = new RecordingClock();
  const { s, accepted } = await silentTarget(t, clock, { loginMs: 15000 });
  const connecting = s.connect();
  connecting.catch(() => undefined);
  await until(() => accepted.length === 1 && clock.delays.includes(15000));
  const peerClosed = new Promise<void>((r) => accepted[0].once('close', () => r()));
  s.close();
  await assert.rejects(connecting, (e: IscsiNbdError) => e.code === 'ESHUTDOWN');
  assert.equal(clock.pending, 0, 'the login timer went with the cancelled login');
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([peerClosed, new Promise((_, rej) => { timer = setTimeout(() => rej(new Error('the target never saw the socket close')), 5000); })]);
  clearTimeout(timer);
});
