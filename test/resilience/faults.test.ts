// Target faults seen through the whole bridge: embedded target (fault
// injection) -> our initiator -> NbdServer -> a real NBD client (libnbd).
// Each test is bounded; processes are killed in t.after.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { skipUnless } from '../helpers/tools';
import { IscsiSession } from '../../src/iscsi/initiator';
import { exportUrl, INITIATOR, IQN, onCleanup, startBridge, startTargets, testLog } from './env';
import { nbdEval } from '../helpers/libnbd';
import { sleep, until } from '../helpers/process';

const skip = skipUnless('python3');
const FAST = { nopInterval: 1, nopTimeout: 2, command: 5, replacement: 30, login: 5, connect: 3 };

test('LUN identity: a different device behind the same address is refused, never written, and keeps being refused', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: FAST });
  const exp = br.manager.exports.get('d')!;
  const session = exp.sessions[0];
  const first = exp.lun!.info.identity;
  // A write that lands.
  assert.deepEqual(await nbdEval(br.uri(), `h.pwrite(bytes([0xAA])*4096, 0)\nprint(json.dumps(1))`, { timeoutMs: 30000, t }), 1);
  // The device is replaced: new serial and designators, then the connection drops.
  tg.servers[0].swapIdentity();
  const refused = new Promise<Error>((r) => session.once('refused', r));
  tg.servers[0].dropConnections();
  const err = await Promise.race([refused, sleep(20000).then(() => undefined)]);
  assert.ok(err, 'the session refused the changed LUN');
  assert.equal((err as { code?: string }).code, 'ELUN_CHANGED');
  assert.match(err!.message, /another device/);
  // Clients get EIO; the device never sees the write.
  const r = await nbdEval(br.uri(), `print(json.dumps([err(lambda: h.pwrite(bytes([0x55])*4096, 0)), err(lambda: h.pread(4096, 0))]))`, { timeoutMs: 30000, t }) as number[];
  assert.deepEqual(r, [5, 5]);
  assert.ok((await tg.backend.read(0, 4096)).equals(Buffer.alloc(4096, 0xaa)), 'the other device was not written');
  // It keeps refusing across further reconnect attempts.
  await sleep(1500);
  assert.equal(session.state, 'failed');
  assert.ok(session.refused);
  assert.equal(exp.lun!.info.identity, first);
  const st = exp.status() as { sessions: Array<{ refused?: string }> };
  assert.match(st.sessions[0].refused ?? '', /another device/);
});

test('NOP-Out timeout detects a stalled target; the session recovers and the read completes', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: { ...FAST, command: 30 } });
  const s = br.manager.exports.get('d')!.sessions[0];
  const lost = new Promise<Error>((r) => s.once('lost', r));
  tg.faults.set({ stall: true });
  const reader = nbdEval(br.uri(), `print(json.dumps(err(lambda: h.pread(65536, 0))))`, { timeoutMs: 40000, t });
  const why = await Promise.race([lost, sleep(15000).then(() => undefined)]);
  assert.ok(why, 'connection declared dead');
  assert.match(why!.message, /NOP-Out|ping/);
  tg.faults.clear();
  assert.equal(await reader, 0);
  assert.ok(s.stats.reconnects >= 1);
});

test('a command outliving its timeout: ABORT TASK, then the command is retried and succeeds', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: { ...FAST, command: 1, nopInterval: 0 } });
  const s = br.manager.exports.get('d')!.sessions[0];
  tg.faults.set({ delayMs: 1500 });
  const reader = nbdEval(br.uri(), `print(json.dumps(err(lambda: h.pread(65536, 0))))`, { timeoutMs: 40000, t });
  await sleep(2500); // the first READ timed out and was aborted by now
  tg.faults.set({ delayMs: undefined });
  assert.equal(await reader, 0);
  assert.equal(s.state, 'logged-in');
});

test('BUSY, TASK SET FULL and UNIT ATTENTION are retried without NBD errors', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: FAST });
  for (const status of ['busy', 'task-set-full', 'unit-attention'] as const) {
    tg.faults.set({ status: { status, count: 3 } });
    const r = await nbdEval(br.uri(), `
w = err(lambda: h.pwrite(bytes([7])*65536, 1048576))
r = err(lambda: h.pread(65536, 1048576))
print(json.dumps([w, r]))`, { timeoutMs: 30000, t });
    assert.deepEqual(r, [0, 0], status);
  }
  assert.ok(tg.faults.fired.status >= 9);
});

test('a medium error reaches the client as EIO for those blocks only', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: FAST });
  tg.faults.set({ mediumErrors: [{ lba: 2048, blocks: 8 }] });
  const r = await nbdEval(br.uri(), `
bad = err(lambda: h.pread(4096, 2048*512))
before = err(lambda: h.pread(4096, 2040*512))
after = err(lambda: h.pread(4096, 2056*512))
print(json.dumps([bad, before, after]))`, { timeoutMs: 30000, t });
  assert.deepEqual(r, [5, 0, 0]);
});

test('an async logout request: the session logs out, logs in again, no client error', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: FAST });
  const s = br.manager.exports.get('d')!.sessions[0];
  const back = new Promise((r) => s.once('reconnected', r));
  const io = nbdEval(br.uri(), `
import time
bad = 0
for i in range(60):
    bad += 1 if err(lambda: h.pwrite(bytes([i])*65536, i*65536)) else 0
    bad += 1 if err(lambda: h.pread(65536, i*65536)) else 0
    time.sleep(0.02)
print(json.dumps(bad))`, { timeoutMs: 40000, t });
  await sleep(300);
  assert.ok(tg.servers[0].requestLogout(2) >= 1);
  await Promise.race([back, sleep(15000)]);
  assert.equal(await io, 0);
  assert.ok(s.stats.reconnects >= 1);
});

test('login rejected on reconnect: retried with backoff until the target accepts again', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: FAST });
  const s = br.manager.exports.get('d')!.sessions[0];
  tg.faults.set({ rejectLogin: { statusClass: 3, statusDetail: 1, count: 3 } });
  tg.servers[0].dropConnections();
  const r = await nbdEval(br.uri(), `print(json.dumps(err(lambda: h.pread(4096, 0))))`, { timeoutMs: 40000, t });
  assert.equal(r, 0);
  assert.equal(tg.faults.fired.rejectLogin, 3);
  await until(() => s.state === 'logged-in', 10000, 'logged in');
});

test('a corrupted data digest drops the connection and the command is retried (digests on)', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: FAST, digest: 'crc32c' });
  const s = br.manager.exports.get('d')!.sessions[0];
  await tg.backend.write(0, Buffer.alloc(65536, 0x5a));
  tg.faults.set({ corruptDataDigest: true });
  const r = await nbdEval(br.uri(), `
d = h.pread(65536, 0)
print(json.dumps(d == bytes([0x5a])*65536))`, { timeoutMs: 30000, t });
  assert.equal(r, true);
  assert.equal(tg.faults.fired.corruptDigest, 1);
  assert.ok(s.stats.reconnects >= 1);
  assert.ok(s.stats.digestErrors >= 1);
});

test('malformed PDUs from the target: connection dropped and recovered, other exports unaffected', { skip, timeout: 90000 }, async (t) => {
  const bad = await startTargets(t);
  const good = await startTargets(t);
  const br = await startBridge(t, {
    exports: [{ name: 'bad', url: exportUrl(bad.ports[0]) }, { name: 'good', url: exportUrl(good.ports[0]) }],
    timeouts: FAST,
  });
  const s = br.manager.exports.get('bad')!.sessions[0];
  for (const kind of ['bad-opcode', 'absurd-dsl', 'unknown-itt', 'truncated-ahs', 'bad-offset'] as const) {
    const before = s.stats.reconnects;
    bad.faults.set({ malformed: kind });
    const [rb, rg] = await Promise.all([
      nbdEval(br.uri('bad'), `print(json.dumps(err(lambda: h.pread(4096, 0))))`, { timeoutMs: 40000, t }),
      nbdEval(br.uri('good'), `print(json.dumps([err(lambda: h.pwrite(bytes([1])*4096, 0)), err(lambda: h.pread(4096, 0))]))`, { timeoutMs: 40000, t }),
    ]);
    assert.equal(rb, 0, kind);
    assert.deepEqual(rg, [0, 0], kind);
    assert.equal(bad.faults.active.malformed, undefined, `${kind} fired`);
    await until(() => s.stats.reconnects > before, 10000, `${kind}: reconnect`);
  }
  assert.equal(br.manager.exports.get('good')!.sessions[0].stats.reconnects, 0);
});

test('after the replacement timeout requests fail with EIO while reconnecting; service resumes when the target is back', { skip, timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]) }], timeouts: { ...FAST, replacement: 2 } });
  const s = br.manager.exports.get('d')!.sessions[0];
  await tg.down(0);
  // Shorter than the replacement timeout: the request waits; longer: EIO.
  const r1 = await nbdEval(br.uri(), `
import time
t0 = time.time()
e = err(lambda: h.pread(4096, 0))
print(json.dumps([e, time.time() - t0]))`, { timeoutMs: 30000, t }) as [number, number];
  assert.equal(r1[0], 5);
  assert.ok(r1[1] >= 1, 'the request waited for the replacement timeout before failing');
  assert.equal(s.state, 'failed');
  // New requests fail at once while the target is away.
  const r2 = await nbdEval(br.uri(), `print(json.dumps(err(lambda: h.pread(4096, 0))))`, { timeoutMs: 30000, t });
  assert.equal(r2, 5);
  await tg.up(0);
  await until(() => s.state === 'logged-in', 20000, 'reconnected in the background');
  const r3 = await nbdEval(br.uri(), `print(json.dumps(err(lambda: h.pread(4096, 0))))`, { timeoutMs: 30000, t });
  assert.equal(r3, 0);
});


test('escalation chain: ABORT TASK and LUN RESET unanswered in time -> reconnect, the command is reissued and succeeds', { timeout: 60000 }, async (t) => {
  const tg = await startTargets(t);
  const s = new IscsiSession({
    portal: { host: '127.0.0.1', port: tg.ports[0] },
    targetName: IQN,
    initiatorName: INITIATOR,
    timeouts: { commandMs: 300, tmfMs: 300, nopIntervalMs: 0 },
    log: testLog(),
  });
  onCleanup(t, () => s.close());
  await s.connect();
  const lost = new Promise<Error>((r) => s.once('lost', r));
  tg.faults.set({ delayMs: 1000 });
  const read = s.execute({ lun: 0, cdb: Buffer.from([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), dataInLength: 512 });
  const why = await Promise.race([lost, sleep(10000).then(() => undefined)]);
  tg.faults.set({ delayMs: undefined });
  assert.ok(why, 'the connection was dropped');
  assert.match(why!.message, /task management could not end a timed-out command/);
  const r = await read;
  assert.equal(r.status, 0);
  assert.equal(r.data?.length, 512);
  assert.ok(s.stats.reconnects >= 1);
});
