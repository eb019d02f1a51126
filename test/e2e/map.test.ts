// `iscsi-nbd map` against the real kernel: the daemon runs inside a Debian VM
// (node and this repo over 9p, scripts/vm/node-guest.ts), owns /dev/nbdN through
// netlink, and its LUNs are on tgtd on the host. The guest script
// (test/e2e/map-guest.sh) maps a 512-byte and a 4 KiB LUN with no block size
// given, makes filesystems, runs a writer with fsync, kills the daemon with -9,
// stops it with SIGTERM, kills it in the middle of reattaching, asks the host
// for a 10 s target outage, unmaps, and swaps a LUN while the daemon is down.
// The writer must never see a failed call and dmesg must show no I/O error.
// Last, the same daemon maps 4 more LUNs of that target: they must join the one
// pool of sessions the 4 KiB LUN already uses (2 sessions, 2 TCP connections, no
// login), and each device must read back its own data and no other's.
//
// Skipped only when qemu-system-x86_64 is absent and CI is not set.

import { skipUnless } from '../helpers/tools';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { runGuest, GUEST_HOST_ADDR } from '../../scripts/vm/node-guest';
import { lockExclusive, RESTART_VM_LOCK, VM_LOCK_WAIT_MS } from '../helpers/exclusive';

const skip = skipUnless('qemu-system-x86_64', 'tgtd', 'tgtadm');
const GUEST_SCRIPT = path.resolve(__dirname, '../../../test/e2e/map-guest.sh');
const INAME = 'iqn.2026-11.test.iscsi-nbd:vm-map';
const MiB = 1 << 20;
/** The LUNs the last step maps together, and what each gets written (4 MiB, guest side). */
const MANY_LUNS = [4, 5, 6, 7];
const MANY_BYTES = 4 * MiB;
/** The daemon's sessions per target: the default, the guest gives no --sessions. */
const SESSIONS = 2;

/** I_T nexuses (sessions) of `iname` on tgtd's only target, and their connections. */
function nexusOf(show: string, iname: string): { sessions: number; conns: number } {
  const blocks = show.split(/\n\s*LUN information:/)[0].split(/I_T nexus: \d+/).slice(1).filter((b) => b.includes(`Initiator: ${iname} `) || b.includes(`Initiator: ${iname}\n`));
  return { sessions: blocks.length, conns: blocks.reduce((n, b) => n + (b.match(/Connection: \d+/g) ?? []).length, 0) };
}

function md5Head(file: string, bytes: number): string {
  const fd = fs.openSync(file, 'r');
  try {
    const b = Buffer.alloc(bytes);
    const n = fs.readSync(fd, b, 0, bytes, 0);
    return crypto.createHash('md5').update(b.subarray(0, n)).digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}

let tgtd: Tgtd | undefined;
after(async () => {
  await tgtd?.stop();
});

test('map: a daemon restart, a crash and a target outage that the filesystem never sees', { skip, timeout: VM_LOCK_WAIT_MS + 1_500_000 }, async (ctx) => {
  // Its restarts must end within the kernel's I/O timeout: no other VM beside it.
  ctx.after(await lockExclusive(RESTART_VM_LOCK, VM_LOCK_WAIT_MS));
  tgtd = await startTgtdWithLuns({
    targets: [{ luns: [{ size: 64 * MiB, blockSize: 512 }, { size: 64 * MiB, blockSize: 4096 }, { size: 16 * MiB, blockSize: 4096 }] }],
  });
  const t = tgtd;
  // More LUNs of the same target for the last step (after the others, so nothing before it changes).
  const manyFiles: string[] = [];
  for (const [i, lun] of MANY_LUNS.entries()) manyFiles.push((await t.addLun(1, lun, { size: 8 * MiB, blockSize: i % 2 ? 4096 : 512 })).path);
  const base = `iscsi://${GUEST_HOST_ADDR}:3260/${t.iqn(1)}`;
  const url = (lun: number) => `${base}/${lun}`;
  const outages: number[] = [];
  const lines: string[] = [];
  const r = await runGuest({
    script: fs.readFileSync(GUEST_SCRIPT, 'utf8'),
    forwards: [{ guestPort: 3260, hostPort: t.port }],
    env: { URL512: url(1), URL4K: url(2), URLSWAP: url(3), URLMANY: base, IQN: t.iqn(1), INAME },
    timeoutMs: 840_000,
    onLine: (l) => {
      lines.push(l);
      if (process.env.ISCSI_NBD_VM_VERBOSE) process.stderr.write(l + '\n');
    },
    hostActions: {
      // Stop tgtd (connections refused), wait, start it again with the same configuration.
      outage: async ([seconds]) => {
        const started = Date.now();
        await t.kill();
        await new Promise((res) => setTimeout(res, Number(seconds) * 1000));
        await t.restart();
        outages.push(Date.now() - started);
        return `target down for ${Date.now() - started} ms`;
      },
      // The array grows the 4 KiB LUN (tgtd cannot: the LUN is re-created over the same, bigger file).
      grow: async () => {
        await t.resizeLun(1, 2, 96 * MiB);
        return 'grown to 96 MiB';
      },
      // Another disk behind the same address: new backing file and a serial of its own.
      swap: async () => {
        await t.deleteLun(1, 3);
        await t.addLun(1, 3, { size: 16 * MiB, blockSize: 4096 });
        await t.tgtadm(['--op', 'update', '--mode', 'logicalunit', '--tid', '1', '--lun', '3', '--params', 'scsi_sn=swapped0003']);
        return 'swapped';
      },
      // What the target sees of us: "<sessions> <connections>".
      nexus: async () => {
        const n = nexusOf(await t.tgtadm(['--lld', 'iscsi', '--op', 'show', '--mode', 'target']), INAME);
        return `${n.sessions} ${n.conns}`;
      },
    },
  });
  const tail = lines.slice(-80).join('\n');
  assert.equal(r.timedOut, false, `the VM timed out:\n${tail}`);
  assert.equal(r.exitCode, 0, `the guest script failed (${r.setupError ?? 'exit ' + r.exitCode}):\n${tail}`);
  const res = r.results;
  assert.equal(res.done, '1', tail);
  assert.equal(res.dev512 !== res.dev4k, true);
  assert.equal(res.writer_failures, '0', 'the writer never saw a failed call');
  assert.equal(res.dmesg_io_errors, '0', 'no I/O error in dmesg');
  assert.equal(res.fsck_clean, '1');
  assert.equal(res.remap_refused, '1');
  assert.equal(res.unmap_stays, '1');
  assert.equal(res.swap_refused, '1');
  assert.equal(res.killed_mid_reattach, '1');
  assert.equal(res.resize_grew, '1', 'the device and its filesystem grew online');
  assert.ok(Number(res.writer_rounds) > 10, `the writer made progress (${res.writer_rounds} rounds)`);
  assert.equal(outages.length, 1);
  const cs = (k: string) => `${(Number(res[k]) / 100).toFixed(1)} s`;
  // The last step: 4 more LUNs of the target join the pool the 4 KiB LUN (LUN 2) uses.
  process.stderr.write(
    `map e2e pool: ${MANY_LUNS.length} more LUNs of the target -> ${res.many_pools} pool of ${(res.many_luns ?? '').split(',').length} LUNs, ` +
      `${res.many_sessions} sessions, ${res.many_conns} TCP connections (${res.many_conns_before} before), ` +
      `tgtd sees ${res.many_target_sessions} I_T nexuses / ${res.many_target_conns} connections, ${res.many_logins} logins; ` +
      `4 maps ${cs('many_map_cs')}, 4 x ${MANY_BYTES / MiB} MiB O_DIRECT write+read ${cs('many_io_cs')}, step ${cs('many_step_cs')}\n`,
  );
  const name = (lun: number) => `map:${t.iqn(1)}/${lun}`;
  assert.equal(res.many_pools, '1', 'one pool for the target');
  assert.equal(res.many_luns, [2, ...MANY_LUNS].map(name).sort().join(','), 'the pool names the 4 KiB LUN and the 4 new ones');
  assert.equal(res.many_maps_in_pool, String(MANY_LUNS.length), 'each new mapping names that pool');
  assert.equal(res.many_sessions, String(SESSIONS), `${SESSIONS} sessions for the target, not ${SESSIONS} per LUN`);
  assert.equal(res.many_sessions_up, String(SESSIONS));
  assert.equal(res.many_paths, MANY_LUNS.map(() => SESSIONS).join(','), 'each LUN has a path over each session');
  assert.equal(res.many_logins, '0', 'joining the pool logs in nothing');
  assert.equal(res.many_conns_before, String(SESSIONS));
  assert.equal(res.many_conns, String(SESSIONS), 'the guest has one TCP connection per session to the target');
  assert.equal(res.many_target_sessions, String(SESSIONS), 'tgtd sees as many I_T nexuses');
  assert.equal(res.many_target_conns, String(SESSIONS));
  assert.equal(res.many_mixed, '0', 'no device reads another one\'s data');
  assert.equal(res.many_own, String(MANY_LUNS.length), 'each device reads back its own data');
  for (const [i, f] of manyFiles.entries()) {
    assert.equal(md5Head(f, MANY_BYTES), res[`many_md5_${i + 1}`], `LUN ${MANY_LUNS[i]} holds what its device was given`);
  }
  assert.equal(res.unmapped_pools, '1', 'the pool stays for the 4 KiB LUN');
  assert.equal(res.unmapped_luns, name(2));
  assert.equal(res.unmapped_sessions, String(SESSIONS));
  assert.equal(res.unmapped_conns, String(SESSIONS));
  // What the closing note reports: how long a writer paused, and what the kernel logged.
  process.stderr.write(
    `map e2e: boot ${((r.readyMs ?? 0) / 1000).toFixed(1)} s, first map ${cs('map_first_cs')}, ` +
      `kill -9 -> writer resumed ${cs('kill9_resume_cs')}, SIGTERM exit ${cs('term_exit_cs')} -> resumed ${cs('term_resume_cs')}, ` +
      `10 s outage -> resumed ${cs('outage_resume_cs')}, resize ${cs('resize_cs')}, longest writer gap ${cs('writer_max_gap_cs')}, rounds ${res.writer_rounds}; ` +
      `dmesg: ${res.dmesg_io_errors} I/O errors, ${res.dmesg_dead_conn} "Dead connection", ${res.dmesg_reconnected} "reconnected socket", ` +
      `${res.dmesg_timed_out} "timed out"; VM ${(r.vmMs / 1000).toFixed(0)} s\n`,
  );
});
