// Implicit ALUA against the embedded target: two ports (TargetServers) of one
// LUN in two target port groups. I/O goes to the active/optimized group,
// a standby group gets no data commands, and a switch of states while fio
// writes and verifies loses nothing. (LIO, the kernel's target, is the
// other peer: test/e2e, in the VM.)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TargetServer } from '../../src/target/server';
import { MemoryBackend } from '../../src/target/backend';
import { ALUA, AluaTopology } from '../../src/target/alua';
import { IQN, MiB, fioVerify, exportUrl, onCleanup, startBridge, testLog, type After } from './env';
import { sleep } from '../helpers/process';
import { ALUA_REFRESH_MS } from '../../src/bridge/manager';
import { ManualClock } from '../iscsi/fake-target';

const DATA_OPS = new Set([0x28, 0x2a, 0x88, 0x8a, 0x35, 0x91, 0x41, 0x93, 0x42]);

async function aluaTargets(t: After): Promise<{ topology: AluaTopology; ports: number[]; dataCommands: number[]; commands: number[] }> {
  const backend = new MemoryBackend({ size: 64 * MiB, blockSize: 512, identitySeed: 'alua-lun' });
  const topology = new AluaTopology();
  topology.set(1, ALUA.OPTIMIZED, [1]);
  topology.set(2, ALUA.STANDBY, [2]);
  const dataCommands = [0, 0];
  const commands = [0, 0];
  const ports: number[] = [];
  for (const i of [0, 1]) {
    const s = new TargetServer({
      targets: [{ name: IQN, luns: [{ lun: 0, backend, identitySeed: 'alua-lun', alua: { topology, group: i + 1, relativePort: i + 1 } }] }],
      log: testLog(), closeBackends: false,
    });
    ports.push((await s.listen({ host: '127.0.0.1', port: 0 })).port);
    // Count what each port is asked to do, and to move data for (refused ones included).
    const dev = s.device(IQN, 0)!;
    const exec = dev.execute.bind(dev);
    dev.execute = (cdb, out) => {
      commands[i]++;
      if (DATA_OPS.has(cdb[0])) dataCommands[i]++;
      return exec(cdb, out);
    };
    onCleanup(t, () => s.close());
  }
  return { topology, ports, dataCommands, commands };
}

const pathStates = (e: { status(): { sessions: { alua?: { state: string } }[] } }): (string | undefined)[] => e.status().sessions.map((s) => s.alua?.state);

test('ALUA: I/O follows the optimized group, standby gets none, a switch under fio loses nothing', { timeout: 120_000 }, async (t) => {
  const tg = await aluaTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]), portals: [`127.0.0.1:${tg.ports[1]}`] }], sessions: 2 });
  const e = br.manager.exports.get('d')!;
  assert.deepEqual(pathStates(e), ['active/optimized', 'standby']);

  const first = await fioVerify(br.uri(), { size: '8M', t });
  assert.equal(first.errors, 0, first.res.stderr);
  assert.ok(tg.dataCommands[0] > 100, `the optimized port moved the data (${tg.dataCommands[0]})`);
  assert.equal(tg.dataCommands[1], 0, 'the standby port got no data command');

  // The array fails over: group 1 goes standby, group 2 active/optimized, while fio writes.
  const before = [...tg.dataCommands];
  const run = fioVerify(br.uri(), { size: '48M', bs: '4k', t });
  // Switch once fio is well into its writes.
  for (let i = 0; i < 200 && tg.dataCommands[0] - before[0] < 2000; i++) await sleep(25);
  const switchedAt = Date.now();
  tg.topology.set(1, ALUA.STANDBY);
  tg.topology.set(2, ALUA.OPTIMIZED);
  const second = await run;
  assert.equal(second.errors, 0, second.res.stderr);
  const j = JSON.parse(second.res.stdout.slice(second.res.stdout.indexOf('{')));
  const maxMs = Math.max(...j.jobs.map((x: { write: { clat_ns: { max: number } } }) => x.write.clat_ns.max)) / 1e6;
  console.log(`# alua: switch under fio: ${tg.dataCommands[1] - before[1]} data commands on the new optimized port, ` +
    `${tg.dataCommands[0] - before[0]} on the old one, longest write ${maxMs.toFixed(1)} ms, ${Date.now() - switchedAt} ms from switch to fio's end`);
  assert.deepEqual(pathStates(e), ['standby', 'active/optimized']);
  assert.ok(tg.dataCommands[1] - before[1] > 100, 'the new optimized port took the I/O');

  // Non-optimized is used only while nothing optimized is up.
  tg.topology.set(1, ALUA.NON_OPTIMIZED);
  await br.manager.exports.get('d')!.refreshAlua();
  const mid = [...tg.dataCommands];
  assert.equal((await fioVerify(br.uri(), { size: '4M', t })).errors, 0);
  assert.equal(tg.dataCommands[0], mid[0], 'non-optimized unused while an optimized path is up');
  tg.topology.set(2, ALUA.UNAVAILABLE);
  await br.manager.exports.get('d')!.refreshAlua();
  assert.deepEqual(pathStates(e), ['active/non-optimized', 'unavailable']);
  const late = [...tg.dataCommands];
  assert.equal((await fioVerify(br.uri(), { size: '4M', t })).errors, 0);
  assert.ok(tg.dataCommands[0] > late[0], 'non-optimized carries the I/O when it is the best there is');
  assert.equal(tg.dataCommands[1], late[1], 'an unavailable port gets nothing');
});

test('ALUA: a port in transition is retried after a pause, then used', { timeout: 60_000 }, async (t) => {
  const tg = await aluaTargets(t);
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]), portals: [`127.0.0.1:${tg.ports[1]}`] }], sessions: 2 });
  tg.topology.set(1, ALUA.TRANSITIONING);
  setTimeout(() => tg.topology.set(1, ALUA.OPTIMIZED), 300);
  const r = await fioVerify(br.uri(), { size: '2M', t });
  assert.equal(r.errors, 0, r.res.stderr);
  assert.equal(tg.dataCommands[1], 0, 'standby stayed unused throughout');
});

test('ALUA: an idle export sees a change of states without any I/O, and the next I/O takes the new path', { timeout: 60_000 }, async (t) => {
  const tg = await aluaTargets(t);
  const clock = new ManualClock();
  const br = await startBridge(t, { exports: [{ name: 'd', url: exportUrl(tg.ports[0]), portals: [`127.0.0.1:${tg.ports[1]}`] }], sessions: 2, clock });
  const e = br.manager.exports.get('d')!;
  assert.deepEqual(pathStates(e), ['active/optimized', 'standby']);
  // No command is sent, so no unit attention can say so: only the periodic read can.
  tg.topology.set(1, ALUA.STANDBY);
  tg.topology.set(2, ALUA.OPTIMIZED);
  // Not before the period is over: the read comes from the export's own timer.
  clock.advance(ALUA_REFRESH_MS - 1);
  await sleep(300);
  assert.deepEqual(pathStates(e), ['active/optimized', 'standby'], 'no read before ALUA_REFRESH_MS');
  clock.advance(1);
  const t0 = Date.now();
  while (pathStates(e)[1] !== 'active/optimized' && Date.now() - t0 < 5000) await sleep(50);
  assert.deepEqual(pathStates(e), ['standby', 'active/optimized'], 'status shows the new states while idle');
  assert.deepEqual(tg.dataCommands, [0, 0], 'no data command was needed to learn them');
  // The next periodic read, with the states holding, goes through the path now optimized:
  // the first session's port, now standby, gets no command at all, as it gets no I/O.
  const seen = [...tg.commands];
  clock.advance(ALUA_REFRESH_MS);
  const t1 = Date.now();
  while (tg.commands[1] === seen[1] && Date.now() - t1 < 5000) await sleep(25);
  await sleep(200);
  assert.ok(tg.commands[1] > seen[1], 'the periodic read went to the optimized port');
  assert.equal(tg.commands[0], seen[0], 'the standby port got no command from it');
  const r = await fioVerify(br.uri(), { size: '2M', t });
  assert.equal(r.errors, 0, r.res.stderr);
  assert.equal(tg.dataCommands[0], 0, 'the port now standby got no data command');
  assert.ok(tg.dataCommands[1] > 0, 'the new optimized port took the I/O');
});

test('ALUA: two views of one LUN (an export and its mapping) share what either reads; the idle one reads through the optimized path', { timeout: 60_000 }, async (t) => {
  const tg = await aluaTargets(t);
  const clock = new ManualClock();
  const spec = { url: exportUrl(tg.ports[0]), portals: [`127.0.0.1:${tg.ports[1]}`] };
  // As in the daemon: the exports' manager and the devices' manager share one registry of pools.
  const busy = await startBridge(t, { exports: [{ name: 'busy', ...spec }], sessions: 2, clock });
  const idle = await startBridge(t, { exports: [{ name: 'idle', ...spec }], sessions: 2, clock, targets: busy.manager.targets });
  const eb = busy.manager.exports.get('busy')!;
  const ei = idle.manager.exports.get('idle')!;
  assert.equal(eb.poolId, ei.poolId, 'one pool of sessions for the two views');
  assert.deepEqual([pathStates(eb), pathStates(ei)], [['active/optimized', 'standby'], ['active/optimized', 'standby']]);
  tg.topology.set(1, ALUA.STANDBY);
  tg.topology.set(2, ALUA.OPTIMIZED);
  // I/O through one view only: its unit attention makes that view read the states.
  const r = await fioVerify(busy.uri(), { size: '2M', t });
  assert.equal(r.errors, 0, r.res.stderr);
  assert.deepEqual(pathStates(eb), ['standby', 'active/optimized']);
  assert.deepEqual(pathStates(ei), ['standby', 'active/optimized'], 'the idle view learnt the states the busy one read');
  // Both periodic reads, with the states holding, go through the port now optimized.
  const seen = [...tg.commands];
  clock.advance(ALUA_REFRESH_MS);
  const t0 = Date.now();
  while (tg.commands[1] < seen[1] + 2 && Date.now() - t0 < 5000) await sleep(25);
  await sleep(200);
  assert.ok(tg.commands[1] >= seen[1] + 2, `both views read the states (${tg.commands[1] - seen[1]} commands)`);
  assert.equal(tg.commands[0], seen[0], 'the standby port got no command from either view');
});
