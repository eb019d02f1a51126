// fio with crc32c verify through the bridge while paths fail: network
// faults from a TCP proxy (resets, stalls, half-closes), multipath failover
// between two portals of one LUN, and a tgtd that is SIGKILLed and started
// again. Zero fio errors and a clean verify every time.

import { test } from 'node:test';
import fs from 'node:fs';
import assert from 'node:assert/strict';
import { skipUnless } from '../helpers/tools';
import { FaultProxy } from '../helpers/fault-proxy';
import { startTgtdWithLuns } from '../helpers/tgtd';
import { exportUrl, fioVerify, onCleanup, startBridge, startTargets, MiB } from './env';
import { nbdEval } from '../helpers/libnbd';
import { sleep, until } from '../helpers/process';

const FAST = { nopInterval: 1, nopTimeout: 2, command: 10, replacement: 60, login: 5, connect: 3 };

function assertClean(r: Awaited<ReturnType<typeof fioVerify>>): void {
  assert.equal(r.res.timedOut, false, 'fio timed out');
  assert.equal(r.res.code, 0, `fio failed: ${r.res.stderr.slice(-2000)}`);
  assert.equal(r.errors, 0, `fio errors: ${r.res.stdout.slice(-2000)}`);
}


/** Two embedded target servers (two portals) over one LUN, one export using both, both paths logged in. */
async function startTwoPaths(t: Parameters<typeof startTargets>[0]) {
  const tg = await startTargets(t, { paths: 2 });
  const br = await startBridge(t, {
    exports: [{ name: 'd', url: exportUrl(tg.ports[0]), portals: [`127.0.0.1:${tg.ports[1]}`] }],
    timeouts: FAST,
    sessions: 2,
  });
  const exp = br.manager.exports.get('d')!;
  const [s0, s1] = exp.sessions;
  await until(() => s0.state === 'logged-in' && s1.state === 'logged-in', 10000, 'both paths logged in');
  return { tg, br, exp };
}

test('network faults (reset, stall, half-close) under fio verify: zero errors', { skip: skipUnless('fio'), timeout: 150000 }, async (t) => {
  const tg = await startTargets(t);
  const proxy = new FaultProxy({ host: '127.0.0.1', port: tg.ports[0] });
  await proxy.listen();
  onCleanup(t, () => proxy.close());
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(proxy.port) }], timeouts: FAST });
  const s = br.manager.exports.get('d')!.sessions[0];
  const fio = fioVerify(br.uri(), { size: '24M', bs: '64k', iodepth: 8, extra: ['--rate=4m'], t, timeoutMs: 120000 });
  await sleep(1000);
  proxy.reset();
  await until(() => s.state === 'logged-in', 15000, 'back after the reset');
  await sleep(800);
  const lost = new Promise((r) => s.once('lost', r));
  proxy.stall(true);
  await Promise.race([lost, sleep(8000)]); // the NOP-Out ping notices
  proxy.stall(false);
  await until(() => s.state === 'logged-in', 15000, 'back after the stall');
  await sleep(800);
  proxy.halfClose();
  await until(() => s.state === 'logged-in' && s.stats.reconnects >= 3, 15000, 'back after the half-close');
  const r = await fio;
  assertClean(r);
  assert.ok(s.stats.reconnects >= 3, `reconnects: ${s.stats.reconnects}`);
});

test('multipath: a path dies under fio verify, its commands move to the live path; the path is used again when back', { skip: skipUnless('fio'), timeout: 150000 }, async (t) => {
  const { tg, br, exp } = await startTwoPaths(t);
  assert.equal(exp.sessions.length, 2);
  const [s0, s1] = exp.sessions;
  assert.notEqual(s0.stats.portal, s1.stats.portal);
  const fio = fioVerify(br.uri(), { size: '48M', bs: '64k', iodepth: 16, extra: ['--rate=8m'], t, timeoutMs: 120000 });
  await sleep(1200);
  // Slow replies so that commands are surely in flight on the path that dies.
  tg.faults.set({ delayMs: 300 });
  await sleep(400);
  await tg.down(0);
  await sleep(300);
  tg.faults.set({ delayMs: undefined });
  await sleep(2000);
  assert.equal(s1.state, 'logged-in');
  await tg.up(0);
  await until(() => s0.state === 'logged-in', 20000, 'path 0 back');
  const r = await fio;
  assertClean(r);
  const moved = (exp.status() as { movedCommands: number }).movedCommands;
  assert.ok(moved > 0, 'in-flight commands of the dead path moved to the live one');
  // The path that came back carries commands again.
  const before = s0.stats.cmdSn;
  assertClean(await fioVerify(br.uri(), { size: '8M', bs: '64k', iodepth: 16, t, timeoutMs: 60000 }));
  assert.ok(s0.stats.cmdSn > before, 'path 0 used again');
  const st = exp.status() as { movedCommands: number; sessions: Array<{ state: string; portal: string }> };
  assert.deepEqual(st.sessions.map((x) => x.state), ['logged-in', 'logged-in']);
  t.diagnostic(`commands moved to the live path: ${st.movedCommands}`);
});

test('tgtd SIGKILLed and restarted 5 s later under fio verify: zero errors', { skip: skipUnless('fio', 'tgtd', 'tgtadm'), timeout: 150000 }, async (t) => {
  const tgtd = await startTgtdWithLuns({ targets: [{ luns: [{ size: 64 * MiB }] }] });
  onCleanup(t, () => tgtd.stop());
  const br = await startBridge(t, { exports: [{ name: 'd', url: tgtd.url(1, 1) }], timeouts: FAST });
  const s = br.manager.exports.get('d')!.sessions[0];
  const fio = fioVerify(br.uri(), { size: '24M', bs: '64k', iodepth: 8, extra: ['--rate=3m'], t, timeoutMs: 120000 });
  await sleep(1500);
  await tgtd.kill();
  await sleep(5000);
  await tgtd.restart();
  await until(() => s.state === 'logged-in', 40000, 'reconnected to the restarted tgtd');
  const r = await fio;
  assertClean(r);
  assert.ok(s.stats.reconnects >= 1);
});

test('multipath: one portal starts answering with another device; its commands go to the path whose identity matches', { skip: skipUnless('python3'), timeout: 90000 }, async (t) => {
  const { tg, br, exp } = await startTwoPaths(t);
  const [s0, s1] = exp.sessions;
  const io = nbdEval(br.uri(), `
import time
bad = 0
for i in range(120):
    buf = bytes([i % 250 + 1]) * 65536
    bad += 1 if err(lambda: h.pwrite(buf, i * 65536)) else 0
    d = h.pread(65536, i * 65536)
    bad += 0 if d == buf else 1
    time.sleep(0.01)
print(json.dumps(bad))`, { timeoutMs: 60000, t });
  await sleep(500);
  const refused = new Promise((r) => s0.once('refused', r));
  tg.servers[0].swapIdentity(); // only path 0's device changes
  tg.servers[0].dropConnections();
  await Promise.race([refused, sleep(15000)]);
  assert.ok(s0.refused, 'path 0 refused');
  assert.equal(await io, 0);
  assert.equal(s1.state, 'logged-in');
  assert.equal(s0.state, 'failed');
});

test('tgtd: the LUN gets another serial number; after the next reconnect the session refuses it and nothing is written', { skip: skipUnless('python3', 'tgtd', 'tgtadm'), timeout: 90000 }, async (t) => {
  const tgtd = await startTgtdWithLuns({ targets: [{ luns: [{ size: 16 * MiB }] }] });
  onCleanup(t, () => tgtd.stop());
  const proxy = new FaultProxy({ host: '127.0.0.1', port: tgtd.port });
  await proxy.listen();
  onCleanup(t, () => proxy.close());
  const url = tgtd.url(1, 1).replace(`127.0.0.1:${tgtd.port}`, `127.0.0.1:${proxy.port}`);
  const br = await startBridge(t, { exports: [{ name: 'd', url }], timeouts: FAST });
  const exp = br.manager.exports.get('d')!;
  const s = exp.sessions[0];
  const first = exp.lun!.info.identity;
  assert.deepEqual(await nbdEval(br.uri(), `h.pwrite(bytes([0xAB])*4096, 0)\nh.flush()\nprint(json.dumps(1))`, { timeoutMs: 30000, t }), 1);
  // Another device behind the same address: tgtd reports a new serial number.
  await tgtd.tgtadm(['--lld', 'iscsi', '--mode', 'logicalunit', '--op', 'update', '--tid', '1', '--lun', '1', '--params', 'scsi_sn=CHANGED0001']);
  const refused = new Promise<Error>((r) => s.once('refused', r));
  proxy.reset();
  const err = await Promise.race([refused, sleep(20000).then(() => undefined)]);
  assert.ok(err, 'refused after the reconnect');
  assert.match(err!.message, /CHANGED0001/);
  const r = await nbdEval(br.uri(), `print(json.dumps(err(lambda: h.pwrite(bytes([0xCD])*4096, 0))))`, { timeoutMs: 30000, t });
  assert.equal(r, 5);
  const fd = fs.openSync(tgtd.lunInfo(1, 1).path, 'r');
  const b = Buffer.alloc(4096);
  fs.readSync(fd, b, 0, 4096, 0);
  fs.closeSync(fd);
  assert.ok(b.equals(Buffer.alloc(4096, 0xab)), 'the changed device was not written');
  assert.equal(exp.lun!.info.identity, first);
});
