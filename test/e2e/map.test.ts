// `iscsi-nbd map` against the real kernel: the daemon runs inside a Debian VM
// (node and this repo over 9p, scripts/vm/node-guest.ts), owns /dev/nbdN through
// netlink, and its LUNs are on tgtd on the host. The guest script
// (test/e2e/map-guest.sh) maps a 512-byte and a 4 KiB LUN with no block size
// given, makes filesystems, runs a writer with fsync, kills the daemon with -9,
// stops it with SIGTERM, kills it in the middle of reattaching, asks the host
// for a 10 s target outage, unmaps, and swaps a LUN while the daemon is down.
// The writer must never see a failed call and dmesg must show no I/O error.
//
// Skipped only when qemu-system-x86_64 is absent and CI is not set.

import { skipUnless } from '../helpers/tools';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { runGuest, GUEST_HOST_ADDR } from '../../scripts/vm/node-guest';

const skip = skipUnless('qemu-system-x86_64', 'tgtd', 'tgtadm');
const GUEST_SCRIPT = path.resolve(__dirname, '../../../test/e2e/map-guest.sh');
const INAME = 'iqn.2026-11.test.iscsi-nbd:vm-map';
const MiB = 1 << 20;

let tgtd: Tgtd | undefined;
after(async () => {
  await tgtd?.stop();
});

test('map: a daemon restart, a crash and a target outage that the filesystem never sees', { skip, timeout: 900_000 }, async () => {
  tgtd = await startTgtdWithLuns({
    targets: [{ luns: [{ size: 64 * MiB, blockSize: 512 }, { size: 64 * MiB, blockSize: 4096 }, { size: 16 * MiB, blockSize: 4096 }] }],
  });
  const t = tgtd;
  const url = (lun: number) => `iscsi://${GUEST_HOST_ADDR}:3260/${t.iqn(1)}/${lun}`;
  const outages: number[] = [];
  const lines: string[] = [];
  const r = await runGuest({
    script: fs.readFileSync(GUEST_SCRIPT, 'utf8'),
    forwards: [{ guestPort: 3260, hostPort: t.port }],
    env: { URL512: url(1), URL4K: url(2), URLSWAP: url(3), INAME },
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
  // What the closing note reports: how long a writer paused, and what the kernel logged.
  const cs = (k: string) => `${(Number(res[k]) / 100).toFixed(1)} s`;
  process.stderr.write(
    `map e2e: boot ${((r.readyMs ?? 0) / 1000).toFixed(1)} s, first map ${cs('map_first_cs')}, ` +
      `kill -9 -> writer resumed ${cs('kill9_resume_cs')}, SIGTERM exit ${cs('term_exit_cs')} -> resumed ${cs('term_resume_cs')}, ` +
      `10 s outage -> resumed ${cs('outage_resume_cs')}, resize ${cs('resize_cs')}, longest writer gap ${cs('writer_max_gap_cs')}, rounds ${res.writer_rounds}; ` +
      `dmesg: ${res.dmesg_io_errors} I/O errors, ${res.dmesg_dead_conn} "Dead connection", ${res.dmesg_reconnected} "reconnected socket", ` +
      `${res.dmesg_timed_out} "timed out"; VM ${(r.vmMs / 1000).toFixed(0)} s\n`,
  );
});
