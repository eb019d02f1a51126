// Two views of one LUN over one pool (as the daemon has when it serves an export and
// maps it as a device): a login identifies the LUN once for both, and each view still
// compares what was found with what it expects.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { exportUrl, IQN, startBridge, startTargets } from './env';
import { sleep } from '../helpers/process';

const FAST = { nopInterval: 1, nopTimeout: 2, command: 5, replacement: 30, login: 5, connect: 3 };
const INQUIRY = 0x12;

test('one LUN seen by two managers: a login runs one identity check, and both views serve after it', { timeout: 60_000 }, async (t) => {
  const tg = await startTargets(t);
  const counts = { all: 0, inquiry: 0 };
  const dev = tg.servers[0].device(IQN, 0)!;
  const exec = dev.execute.bind(dev);
  dev.execute = (cdb, out) => {
    counts.all++;
    if (cdb[0] === INQUIRY) counts.inquiry++;
    return exec(cdb, out);
  };
  const one = await startBridge(t, { exports: [{ name: 'export', url: exportUrl(tg.ports[0]) }], timeouts: FAST });
  const session = one.manager.exports.get('export')!.sessions[0];
  const relogin = async (): Promise<{ all: number; inquiry: number }> => {
    counts.all = 0;
    counts.inquiry = 0;
    let timer: NodeJS.Timeout | undefined;
    const back = new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error('the session did not log in again within 20 s')), 20_000);
      session.once('reconnected', () => resolve());
    });
    tg.servers[0].dropConnections();
    await back.finally(() => clearTimeout(timer));
    await sleep(100);
    return { ...counts };
  };
  const alone = await relogin();
  assert.ok(alone.inquiry >= 1, `a login identifies the LUN (${JSON.stringify(alone)})`);

  // The same LUN opened by a second manager on the same registry (the devices' side).
  const two = await startBridge(t, { exports: [{ name: 'map:export', url: exportUrl(tg.ports[0]) }], timeouts: FAST, targets: one.manager.targets });
  const a = one.manager.exports.get('export')!;
  const b = two.manager.exports.get('map:export')!;
  assert.equal(a.poolId, b.poolId, 'one pool');
  assert.equal(b.sessions[0], session, 'the same session');
  const both = await relogin();
  assert.deepEqual(both, alone, 'a second view of the LUN adds no command to a login');
  for (const e of [a, b]) assert.equal(e.state, 'ready', `${e.name} serves after the login`);
  // Each view still reads through the session.
  for (const e of [a, b]) {
    const buf = Buffer.alloc(4096);
    await e.export!.read(0n, 4096, buf);
  }
});
