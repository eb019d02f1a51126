// Implicit ALUA against the kernel's own target (LIO) in the VM: one fileio LUN exported
// through two TPGs (127.0.0.1:3260 and :3261 in the guest), each TPG's LUN in a target
// port group of its own (implicit ALUA only), everything built by hand in configfs
// (test/e2e/alua-lio-guest.sh). The daemon serves the LUN as an export and maps that
// export as /dev/nbd0: two views of one LUN over one pool, a session to each TPG, only
// the mapping taking I/O (the idle view must not read through a port gone standby).
// Two writers write and read back with O_DIRECT while alua_access_state is
// switched twice (A to standby before B becomes optimized, then the other way round).
// LIO's per-port counters (lun_0/statistics/scsi_tgt_port) show where the commands went:
// - I/O follows the optimized group;
// - a standby group gets no commands while the states hold (LIO counts every command
//   it receives, refused ones too, so this also says none was sent and refused);
// - a switch of states loses nothing: no failed write or read-back, every slot and an
//   untouched region verify through the device and in LIO's backing file, no I/O error
//   in dmesg; `status --json` shows each path's state flipped;
// - with the writers stopped, a third switch shows in `status` within one periodic read
//   (no command carries the unit attention then), with no data moved.
// The embedded target covers the same in test/resilience/alua.test.ts (plus faults).
//
// ISCSI_NBD_ALUA_LIO_LOG_LEVEL sets the daemon's log level in the guest (default debug):
// its log is printed when the guest script fails, and its ALUA lines of a steady window
// when both ports took commands in it. ISCSI_NBD_VM_VERBOSE=1 streams the guest's output.
// Skipped only when qemu-system-x86_64 is absent and CI is not set.

import { lockShared, RESTART_VM_LOCK, VM_LOCK_WAIT_MS } from '../helpers/exclusive';
import { skipUnless } from '../helpers/tools';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { runGuest, LIO_GUEST_MODULES } from '../../scripts/vm/node-guest';
import { ALUA_REFRESH_MS } from '../../src/bridge/manager';

const skip = skipUnless('qemu-system-x86_64');
const GUEST_SCRIPT = path.resolve(__dirname, '../../../test/e2e/alua-lio-guest.sh');
const IQN = 'iqn.2026-12.test.iscsi-nbd:lio-alua';
const INAME = 'iqn.2026-12.test.iscsi-nbd:alua-initiator';

/** "name a_cmds a_wmb a_rmb b_cmds b_wmb b_rmb [rounds]": per-port differences of LIO's counters. */
interface PortDelta { a: { cmds: number; wmb: number; rmb: number }; b: { cmds: number; wmb: number; rmb: number }; rounds?: number }
function portDelta(v: string | undefined, what: string): PortDelta {
  const f = (v ?? '').trim().split(/\s+/).slice(1).map(Number);
  assert.ok(f.length >= 6 && f.every(Number.isFinite), `${what}: ${v}`);
  return { a: { cmds: f[0], wmb: f[1], rmb: f[2] }, b: { cmds: f[3], wmb: f[4], rmb: f[5] }, ...(f.length > 6 ? { rounds: f[6] } : {}) };
}

interface SessionJson { portal?: string; state?: string; alua?: { state: string; group?: number; relativePort?: number } }
/** The mapped device's paths: portal port -> ALUA state, from `status --json`. */
function mappedPaths(json: string | undefined, what: string): Map<number, SessionJson> {
  assert.ok(json, `${what}: no status`);
  const st = JSON.parse(json) as { mappings?: { device: string; sessions?: SessionJson[] }[]; exports?: { sessions?: SessionJson[] }[] };
  const m = st.mappings?.find((x) => /(^|\/)nbd0$/.test(x.device));
  assert.ok(m?.sessions?.length, `${what}: /dev/nbd0 has no sessions in status: ${json.slice(0, 2000)}`);
  const byPort = new Map<number, SessionJson>();
  for (const s of m.sessions) byPort.set(Number(/:(\d+)(?:,\d+)?$/.exec(s.portal ?? '')?.[1]), s);
  return byPort;
}

test('ALUA against LIO: I/O follows the optimized group, a standby group gets no commands, two switches lose nothing', { skip, timeout: VM_LOCK_WAIT_MS + 470_000 }, async (t) => {
  t.after(await lockShared(RESTART_VM_LOCK, VM_LOCK_WAIT_MS));
  const lines: string[] = [];
  const r = await runGuest({
    script: fs.readFileSync(GUEST_SCRIPT, 'utf8'),
    forwards: [],
    extraModules: LIO_GUEST_MODULES,
    env: { IQN, INAME, LOG_LEVEL: process.env.ISCSI_NBD_ALUA_LIO_LOG_LEVEL ?? 'debug' },
    timeoutMs: 380_000,
    onLine: (l) => {
      lines.push(l);
      if (process.env.ISCSI_NBD_VM_VERBOSE) process.stderr.write(l + '\n');
    },
  });
  const tail = lines.filter((l) => !l.startsWith('RESULT status_')).slice(-100).join('\n');
  assert.equal(r.timedOut, false, `the VM timed out:\n${tail}`);
  assert.equal(r.exitCode, 0, `the guest script failed (${r.setupError ?? 'exit ' + r.exitCode}):\n${tail}`);
  const res = r.results;
  assert.equal(res.done, '1', tail);

  // Nothing lost.
  assert.equal(res.failures, '0', 'no write or read-back failed');
  assert.equal(res.verify_bad, '0', 'every slot and the untouched region verify, on the device and in the backing file');
  assert.equal(res.dmesg_io_errors, '0', 'no I/O error in dmesg');
  assert.ok(Number(res.rounds) > 50, `the writers made progress (${res.rounds} rounds)`);

  // Steady states: the optimized port moves the data, the standby one gets nothing.
  const winA = portDelta(res.win_a, 'A optimized');
  const winB = portDelta(res.win_b, 'B optimized');
  const winA2 = portDelta(res.win_a2, 'A optimized again');
  for (const [w, opt, stby, what, name] of [[winA, 'a', 'b', 'A optimized, B standby', 'a'], [winB, 'b', 'a', 'A standby, B optimized', 'b'], [winA2, 'a', 'b', 'back to A', 'a2']] as const) {
    assert.ok(w[opt].cmds >= 100, `${what}: the optimized port took the I/O (${JSON.stringify(w)})`);
    assert.ok(w[opt].wmb > 0, `${what}: data was written through the optimized port (${JSON.stringify(w)})`);
    const why = lines.filter((l) => l.includes(`WINLOG ${name} `)).join('\n');
    assert.deepEqual(w[stby], { cmds: 0, wmb: 0, rmb: 0 }, `${what}: the standby port got no command (${JSON.stringify(w)}); the daemon meanwhile:\n${why}`);
  }

  // status --json: each path's state, flipped by the switch and back.
  const expect = (json: string | undefined, a: string, b: string, what: string): void => {
    const p = mappedPaths(json, what);
    assert.equal(p.get(3260)?.alua?.state, a, `${what}: the path to TPG 1 (${JSON.stringify(p.get(3260))})`);
    assert.equal(p.get(3261)?.alua?.state, b, `${what}: the path to TPG 2 (${JSON.stringify(p.get(3261))})`);
    assert.notEqual(p.get(3260)?.alua?.group, p.get(3261)?.alua?.group, `${what}: two port groups`);
  };
  expect(res.status_a, 'active/optimized', 'standby', 'before the switch');
  expect(res.status_b, 'standby', 'active/optimized', 'after the switch');
  expect(res.status_a2, 'active/optimized', 'standby', 'after the switch back');
  assert.deepEqual([mappedPaths(res.status_a, 'a').get(3260)?.alua?.group, mappedPaths(res.status_a, 'a').get(3261)?.alua?.group], [16, 32]);
  // Idle: no command carries the unit attention, the 30 s read (ALUA_REFRESH_MS) finds the switch.
  expect(res.status_idle, 'standby', 'active/optimized', 'after a switch with no I/O');
  const idleMs = Number(res.idle_follow_cs) * 10;
  assert.ok(idleMs <= ALUA_REFRESH_MS + 5000, `status followed an idle switch within one refresh (${idleMs} ms)`);
  const idle = portDelta(res.idle_during, 'idle');
  assert.ok(idle.a.wmb === 0 && idle.b.wmb === 0 && idle.a.rmb === 0 && idle.b.rmb === 0, `no data moved while idle (${JSON.stringify(idle)})`);

  const t1 = portDelta(res.switch1_total, 'switch 1 total');
  const t2 = portDelta(res.switch2_total, 'switch 2 total');
  const sec = (k: string): string => `${(Number(res[k]) / 100).toFixed(1)} s`;
  console.log(`# alua-lio: mapped in ${sec('map_cs')} (VM ready after ${((r.readyMs ?? 0) / 1000).toFixed(1)} s); ` +
    `steady: optimized port ${winA.a.cmds} commands (${winA.a.wmb} MiB written) in 8 s, standby ${winA.b.cmds}`);
  console.log(`# alua-lio: switch 1 (A standby, then B optimized): I/O on B after ${sec('switch1_cs')}, A quiet after ${sec('switch1_quiet_cs')}; ` +
    `A got ${t1.a.cmds} commands from the switch on (refused or in flight), longest writer pause ${sec('switch1_gap_cs')}`);
  console.log(`# alua-lio: switch 2 (A optimized, then B standby): I/O on A after ${sec('switch2_cs')}, B quiet after ${sec('switch2_quiet_cs')}; ` +
    `B got ${t2.b.cmds} commands from the switch on, longest writer pause ${sec('switch2_gap_cs')}`);
  console.log(`# alua-lio: ${res.rounds} write+read-back rounds, 0 failures, longest pause overall ${sec('max_gap_cs')}, ` +
    `${res.alua_log} path state changes logged; idle switch seen in status after ${sec('idle_follow_cs')} ` +
    `(${idle.a.cmds + idle.b.cmds} commands meanwhile, no data); VM ${(r.vmMs / 1000).toFixed(0)} s`);
});
