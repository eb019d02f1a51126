// SessionPool failover with fake members: parked commands move to a live
// member at once, a member that logs in takes over what others hold, and a
// pool whose members are all past their replacement timeout fails fast.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { SessionPool, PoolMember } from '../../src/bridge/pool';
import { createPendingTask, PendingTask } from '../../src/iscsi/session-engine';
import type { SessionState } from '../../src/iscsi/session-state';
import { TransportError } from '../../src/errors';
import type { ScsiRequest, ScsiResponse } from '../../src/scsi/transport';

class FakeMember extends EventEmitter implements PoolMember {
  state: SessionState = 'logged-in';
  parked: PendingTask[] = [];
  ran: PendingTask[] = [];
  readonly maxTransferBytes = 65536;
  constructor(readonly name: string) {
    super();
  }
  get inFlight(): number {
    return this.parked.length + this.ran.filter((t) => !t.settled).length;
  }
  execute(req: ScsiRequest): Promise<ScsiResponse> {
    const { task, promise } = createPendingTask(req);
    this.adopt([task]);
    return promise;
  }
  adopt(tasks: readonly PendingTask[]): void {
    for (const t of tasks) {
      if (this.state === 'logged-in') this.ran.push(t);
      else if (this.state === 'failed') t.reject(new TransportError('ECONNLOST', `${this.name} failed`));
      else this.parked.push(t);
    }
  }
  takeParked(): PendingTask[] {
    const p = this.parked;
    this.parked = [];
    return p;
  }
  /** The connection drops: what ran is parked again (as IscsiSession does). */
  lose(): void {
    this.parked.push(...this.ran.filter((t) => !t.settled));
    this.ran = [];
    this.set('recovering');
  }
  set(state: SessionState): void {
    this.state = state;
    this.emit('state', state);
  }
  finishAll(): void {
    for (const t of this.ran) t.resolve({ status: 0, residual: 0 });
  }
}

const REQ: ScsiRequest = { lun: 0, cdb: Buffer.from([0x00, 0, 0, 0, 0, 0]) };

test('pool: commands of a member that loses its connection move to a live member at once', async () => {
  const a = new FakeMember('a');
  const b = new FakeMember('b');
  const pool = new SessionPool([a, b]);
  const ps = Array.from({ length: 6 }, () => pool.execute(REQ));
  await new Promise((r) => setImmediate(r));
  assert.equal(a.ran.length + b.ran.length, 6);
  const onA = a.ran.length;
  assert.ok(onA > 0);
  a.lose();
  assert.equal(a.parked.length, 0, 'nothing left parked on the dead path');
  assert.equal(b.ran.length, 6);
  assert.equal(pool.moved, onA);
  b.finishAll();
  for (const p of ps) assert.equal((await p).status, 0);
  pool.detach();
});

test('pool: with every member down, commands wait on a recovering one and move to the first that logs in', async () => {
  const a = new FakeMember('a');
  const b = new FakeMember('b');
  const pool = new SessionPool([a, b]);
  a.set('recovering');
  b.set('recovering');
  const p = pool.execute(REQ);
  await new Promise((r) => setImmediate(r));
  assert.equal(a.parked.length + b.parked.length, 1);
  const holder = a.parked.length ? a : b;
  const other = holder === a ? b : a;
  other.set('logged-in');
  assert.equal(other.ran.length, 1, 'the member that logged in took the parked command');
  other.finishAll();
  assert.equal((await p).status, 0);
  pool.detach();
});

test('pool: members past their replacement timeout fail new commands at once', async () => {
  const a = new FakeMember('a');
  const pool = new SessionPool([a], { waitForMemberMs: 60000 });
  a.set('failed');
  const t0 = Date.now();
  await assert.rejects(pool.execute(REQ), (e: TransportError) => e.code === 'ECONNLOST');
  assert.ok(Date.now() - t0 < 5000);
  pool.detach();
});
