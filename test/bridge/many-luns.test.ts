// Many LUNs of one target against tgtd: one pool of sessions for all of
// them (the connections counted at the target's port), a round trip on
// every LUN, one LUN's identity changed (that LUN refused alone), a LUN
// reset of one LUN under fio verify on the others, and a target restart
// with 16 LUNs open. The bridge (ExportManager + NbdServer) runs in this
// process; the NBD clients are python3-libnbd and fio.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { skipUnless } from '../helpers/tools';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { fioVerify, onCleanup, startBridge } from '../resilience/env';
import { nbdJson } from '../helpers/libnbd';
import { connections, roundTrips } from '../helpers/many-luns';
import { until } from '../helpers/process';
import type { ExportConfig } from '../../src/config';
import { SLOTS_PER_SESSION } from '../../src/bridge/targets';

const skip = skipUnless('tgtd', 'tgtadm', 'python3', 'ss', 'fio');
const IQN = 'iqn.2026-12.test.iscsi-nbd:many';
const MiB = 1024 * 1024;
const FAST = { nopInterval: 2, nopTimeout: 4, command: 5, replacement: 60, login: 5, connect: 3 };

async function target(t: { after: (f: () => unknown) => void }, luns: number): Promise<Tgtd> {
  const tg = await startTgtdWithLuns({ targets: [{ iqn: IQN, luns: Array.from({ length: luns }, () => ({ size: 8 * MiB })) }] });
  onCleanup(t, () => tg.stop());
  return tg;
}

const exportsOf = (tg: Tgtd, luns: number[]): ExportConfig[] => luns.map((l) => ({ name: `e${l}`, url: `iscsi://${tg.portal}/${IQN}/${l}` }));
const range = (a: number, b: number): number[] => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test('16 LUNs of one target: one pool of 2 sessions, a round trip on every LUN; ownSessions gets a pool of its own', { skip, timeout: 120_000 }, async (t) => {
  const tg = await target(t, 17);
  const specs = exportsOf(tg, range(1, 16));
  const br = await startBridge(t, { exports: [...specs, { name: 'own', url: `iscsi://${tg.portal}/${IQN}/17`, ownSessions: true }], sessions: 2, timeouts: FAST });
  const pools = br.manager.targets.list();
  assert.equal(pools.length, 2, 'one shared pool and the ownSessions one');
  const shared = pools.find((p) => p.luns.includes('e1'))!;
  assert.deepEqual(shared.luns.sort(), specs.map((s) => s.name).sort());
  assert.equal(shared.sessions.length, 2);
  assert.equal(shared.gate.max, 2 * SLOTS_PER_SESSION, 'the slots grow with the sessions');
  for (const s of specs) assert.equal(br.manager.exports.get(s.name)!.status().pool, shared.id);
  assert.notEqual(br.manager.exports.get('own')!.status().pool, shared.id);
  assert.equal(await connections(tg.port), 4, '2 sessions for the 16 LUNs, 2 of its own for the ownSessions one');
  const r = await roundTrips(br, [...specs.map((s) => s.name), 'own'], 4096, 'a');
  for (const [n, [e, same]] of Object.entries(r)) if (!n.endsWith("!")) assert.deepEqual([e, same], [0, true], `${n}: ${JSON.stringify(r)}`);
  // The data is on each LUN's own backing file at that offset.
  const fs = await import('node:fs');
  for (const l of range(1, 17)) {
    const name = l === 17 ? 'own' : `e${l}`;
    const onDisk = fs.readFileSync(`${tg.dir}/t1-lun${l}.img`).subarray(4096, 8192).toString();
    assert.equal(onDisk, `a:${name}:`.repeat(1024).slice(0, 4096), `LUN ${l}`);
  }
});

test('one LUN of 8 becomes another device behind the same address: that LUN is refused, the other 7 are served, and it serves again once it is back', { skip, timeout: 150_000 }, async (t) => {
  const tg = await target(t, 8);
  const specs = exportsOf(tg, range(1, 8));
  const br = await startBridge(t, { exports: specs, sessions: 2, timeouts: FAST });
  const names = specs.map((s) => s.name);
  const before = await roundTrips(br, names, 0, 'b');
  for (const [n, v] of Object.entries(before)) assert.deepEqual(v, [0, true], n);
  // LUN 3 is another device now (other serial and identifier), and the target restarts: every session logs in again.
  await tg.resizeLun(1, 3, 8 * MiB, 'scsi_sn=OTHER0003,scsi_id=other-device-3');
  await tg.restart();
  const e3 = br.manager.exports.get('e3')!;
  await until(() => e3.state === 'recovering' && /another device/.test(e3.lastError?.message ?? ''), 30_000, 'e3 refused');
  await until(() => br.manager.targets.list()[0].sessions.every((s) => s.state === 'logged-in'), 30_000, 'both sessions logged in again');
  const during = await roundTrips(br, names, 8192, 'c');
  for (const n of names) {
    if (n === 'e3') assert.equal(during[n][0], 5, 'e3 fails with EIO');
    else assert.deepEqual(during[n], [0, true], n);
  }
  for (const n of names.filter((x) => x !== 'e3')) assert.ok(br.manager.exports.get(n)!.isServing && br.manager.exports.get(n)!.state === 'ready', n);
  // Nothing reached the other device.
  const fs = await import('node:fs');
  assert.ok(fs.readFileSync(`${tg.dir}/t1-lun3.img`).subarray(8192, 8192 + 4096).equals(Buffer.alloc(4096)), 'the other device was not written');
  const st = e3.status();
  assert.match(st.sessions[0].refused ?? '', /another device/);
  // The expected device comes back: the LUN looks again by itself and serves.
  await tg.resizeLun(1, 3, 8 * MiB);
  await until(() => e3.state === 'ready', 40_000, 'e3 served again');
  const after = await roundTrips(br, ['e3'], 12288, 'd');
  assert.deepEqual(after.e3, [0, true]);
});

test('a LUN reset of one LUN while five LUNs run fio verify: nothing fails, and the reset touches no other LUN\'s commands', { skip, timeout: 180_000 }, async (t) => {
  const tg = await target(t, 6);
  const specs = exportsOf(tg, range(1, 6));
  const br = await startBridge(t, { exports: specs, sessions: 2, timeouts: FAST });
  const fios = range(2, 6).map((l) => fioVerify(`nbd://127.0.0.1:${br.port}/e${l}`, { size: '8M', bs: '16k', iodepth: 8, t }));
  const reset = fioVerify(`nbd://127.0.0.1:${br.port}/e1`, { size: '8M', bs: '16k', iodepth: 4, t });
  const sessions = br.manager.targets.list()[0].sessions;
  const responses: number[] = [];
  for (let i = 0; i < 6; i++) {
    await new Promise((r) => setTimeout(r, 300));
    responses.push(await sessions[i % 2].lunReset(1));
  }
  assert.deepEqual(responses, [0, 0, 0, 0, 0, 0], 'FUNCTION COMPLETE for every reset');
  const results = await Promise.all([...fios, reset]);
  results.forEach((r, i) => assert.equal(r.errors, 0, `LUN ${i < 5 ? i + 2 : 1}: ${r.res.stderr.slice(-2000)}`));
});

test('a target restart with 16 LUNs open: every LUN is back and nothing written before is lost', { skip, timeout: 150_000 }, async (t) => {
  const tg = await target(t, 16);
  const specs = exportsOf(tg, range(1, 16));
  const br = await startBridge(t, { exports: specs, sessions: 2, timeouts: FAST });
  const names = specs.map((s) => s.name);
  const first = await roundTrips(br, names, 65536, 'r1');
  for (const [n, v] of Object.entries(first)) assert.deepEqual(v, [0, true], n);
  await tg.restart();
  const pool = br.manager.targets.list()[0];
  await until(() => pool.sessions.every((s) => s.state === 'logged-in' && s.stats.reconnects >= 1), 40_000, 'sessions back');
  assert.equal(await connections(tg.port), 2);
  for (const n of names) assert.equal(br.manager.exports.get(n)!.state, 'ready', n);
  // What was written before the restart reads back; new writes land.
  const again = await nbdJson<Record<string, boolean>>('read back after the restart', `
port = sys.argv[1]
for n in sys.argv[2:]:
    h = connect('nbd://127.0.0.1:%s/%s' % (port, n))
    res[n] = h.pread(4096, 65536) == (('r1:%s:' % n).encode() * 1024)[:4096]
done()
`, [String(br.port), ...names], { timeoutMs: 60_000 });
  for (const n of names) assert.equal(again[n], true, n);
  const second = await roundTrips(br, names, 131072, 'r2');
  for (const [n, v] of Object.entries(second)) assert.deepEqual(v, [0, true], n);
});
