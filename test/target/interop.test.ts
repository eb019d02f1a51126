// The embedded target against real initiators: libiscsi's tools (iscsi-ls,
// iscsi-inq, iscsi-readcapacity16, iscsi-test-cu) and qemu's iSCSI driver
// (qemu-img, qemu-io). Each test starts its own TargetServer on a free port.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileBackend, MemoryBackend } from '../../src/target/backend';
import { TargetServer, TargetServerOptions } from '../../src/target/server';
import type { ChapConfig } from '../../src/target/engine';

const INI = 'iqn.2026-11.io.test:ini';
const TGT = 'iqn.2026-11.io.test:target';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(bin: string, args: string[], timeoutMs = 60000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(bin, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function have(bin: string): boolean {
  return (process.env.PATH ?? '').split(':').some((d) => fs.existsSync(path.join(d, bin)));
}

const needs = (...bins: string[]): { skip?: string } => {
  const missing = bins.filter((b) => !have(b));
  return missing.length ? { skip: `not installed: ${missing.join(', ')}` } : {};
};

async function start(t: { after: (fn: () => Promise<void> | void) => void }, o: Partial<TargetServerOptions> & { chap?: ChapConfig } = {}): Promise<TargetServer> {
  const s = new TargetServer({
    targets: o.targets ?? [{
      name: TGT,
      luns: [
        { lun: 0, backend: new MemoryBackend({ size: 64 << 20, blockSize: 512, identitySeed: 'lun0' }) },
        { lun: 1, backend: new MemoryBackend({ size: 16 << 20, blockSize: 4096, identitySeed: 'lun1' }) },
      ],
      chap: o.chap,
    }],
    ...o,
  });
  await s.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => s.close());
  return s;
}

const url = (s: TargetServer, lun = 0, auth = ''): string => `iscsi://${auth}${s.portal}/${TGT}/${lun}`;

test('iscsi-ls: discovery and LUN listing', needs('iscsi-ls'), async (t) => {
  const s = await start(t);
  const r = await run('iscsi-ls', ['-i', INI, '-s', `iscsi://${s.portal}`]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, new RegExp(`Target:${TGT} Portal:${s.portal.replace(/\./g, '\\.')},1`));
  // iscsi-ls prints (last LBA x block size), rounded down.
  assert.match(r.stdout, /Lun:0\s+Type:DIRECT_ACCESS \(Size:63M\)/);
  assert.match(r.stdout, /Lun:1\s+Type:DIRECT_ACCESS \(Size:15M\)/);
});

test('iscsi-inq: standard INQUIRY and VPD pages; iscsi-readcapacity16 on a 4096-byte LUN', needs('iscsi-inq', 'iscsi-readcapacity16'), async (t) => {
  const s = await start(t);
  const std = await run('iscsi-inq', ['-i', INI, url(s)]);
  assert.equal(std.code, 0, std.stderr);
  assert.match(std.stdout, /Vendor:ISCSINBD/);
  assert.match(std.stdout, /CmdQue:1/);
  const pages = await run('iscsi-inq', ['-i', INI, '-e', '1', url(s)]);
  for (const p of ['0x00', '0x80', '0x83', '0xb0', '0xb1', '0xb2']) assert.match(pages.stdout, new RegExp(`Page:${p}`));
  const serial = await run('iscsi-inq', ['-i', INI, '-e', '1', '-c', '128', url(s)]);
  const dev = s.devices(TGT)[0];
  assert.match(serial.stdout, new RegExp(`Unit Serial Number:\\[${dev.serial}\\]`));
  const ids = await run('iscsi-inq', ['-i', INI, '-e', '1', '-c', '131', url(s)]);
  assert.match(ids.stdout, /Designator Type:\(3\) NAA/);
  assert.match(ids.stdout, new RegExp(`ISCSINBD${dev.serial}`));
  const bl = await run('iscsi-inq', ['-i', INI, '-e', '1', '-c', '176', url(s)]);
  assert.match(bl.stdout, /maximum transfer length:65536/);
  const lbp = await run('iscsi-inq', ['-i', INI, '-e', '1', '-c', '178', url(s)]);
  assert.match(lbp.stdout, /lbpu:1/);
  assert.match(lbp.stdout, /lbprz:1/);
  const cap = await run('iscsi-readcapacity16', ['-i', INI, url(s, 1)]);
  assert.equal(cap.code, 0, cap.stderr);
  assert.match(cap.stdout, /LOGICAL BLOCK LENGTH IN BYTES:4096/);
  assert.match(cap.stdout, /RETURNED LOGICAL BLOCK ADDRESS:4095/);
  assert.match(cap.stdout, /LBPME:1 LBPRZ:1/);
  // swapIdentity: a new serial behind the same address.
  s.swapIdentity();
  const serial2 = await run('iscsi-inq', ['-i', INI, '-e', '1', '-c', '128', url(s)]);
  assert.doesNotMatch(serial2.stdout, new RegExp(dev.serial === s.devices(TGT)[0].serial ? 'x^' : `\\[${serial.stdout.match(/\[(\w+)\]/)![1]}\\]`));
});

test('qemu-img info / qemu-io patterns / qemu-img convert + compare, on 512 and 4096-byte LUNs', needs('qemu-img', 'qemu-io'), async (t) => {
  const s = await start(t);
  const info = await run('qemu-img', ['info', '--output=json', url(s)]);
  assert.equal(info.code, 0, info.stderr);
  assert.equal(JSON.parse(info.stdout)['virtual-size'], 64 << 20);
  for (const lun of [0, 1]) {
    const io = await run('qemu-io', ['-f', 'raw',
      '-c', 'write -P 0xab 1M 3M', '-c', 'write -P 0x11 4096 4096', '-c', 'read -P 0xab 1M 3M', '-c', 'read -P 0x11 4096 4096',
      '-c', 'read -P 0 0 4096', '-c', 'write -P 0x5c 5M 1M', '-c', 'flush', '-c', 'read -P 0x5c 5M 1M', url(s, lun)]);
    assert.equal(io.code, 0, io.stderr);
    assert.doesNotMatch(io.stdout + io.stderr, /Pattern verification failed|error/i);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tgt-qemu-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const src = path.join(dir, 'src.img');
  const buf = Buffer.alloc(8 << 20);
  for (let i = 0; i < buf.length; i += 4) buf.writeUInt32LE((i * 2654435761) >>> 0, i);
  fs.writeFileSync(src, buf);
  const conv = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, url(s, 1)]);
  assert.equal(conv.code, 0, conv.stderr);
  const back = path.join(dir, 'back.img');
  const conv2 = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', url(s, 1), back]);
  assert.equal(conv2.code, 0, conv2.stderr);
  assert.deepEqual(fs.readFileSync(back).subarray(0, buf.length), buf);
});

test('UNMAP/WRITE SAME then GET LBA STATUS shows real deallocation (qemu-io discard, write -z -u, qemu-img map)', needs('qemu-img', 'qemu-io'), async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tgt-map-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'lun.img');
  const backend = await FileBackend.open({ path: file, size: 32 << 20, blockSize: 512 });
  const s = await start(t, { targets: [{ name: TGT, luns: [{ lun: 0, backend }] }] });
  const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 0 8M', '-c', 'discard 1M 2M', '-c', 'write -z -u 4M 1M', url(s)]);
  assert.equal(io.code, 0, io.stderr);
  const map = await run('qemu-img', ['map', '--output=json', url(s)]);
  assert.equal(map.code, 0, map.stderr);
  const ext = JSON.parse(map.stdout) as { start: number; length: number; data: boolean }[];
  const dataAt = (off: number): boolean => ext.find((e) => e.start <= off && off < e.start + e.length)!.data;
  assert.equal(dataAt(0), true);
  assert.equal(dataAt(1 << 20), false);
  assert.equal(dataAt((3 << 20) - 1), false);
  assert.equal(dataAt(3 << 20), true);
  assert.equal(dataAt(4 << 20), false);
  assert.equal(dataAt(5 << 20), true);
  assert.equal(dataAt(16 << 20), false);
  // The file really has holes there.
  assert.ok(fs.statSync(file).blocks * 512 <= (5 << 20) + (1 << 20));
});

// 512-byte blocks: qemu's iscsi driver asserts on reads of >= 32 KiB from never-probed
// ranges of a 4096-byte LUN (it asks block status for BDRV_REQUEST_MAX_BYTES, not 4K-aligned).
test('persistence: a file LUN serves the same data after a server restart', needs('qemu-io'), async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tgt-persist-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'lun.img');
  const s1 = new TargetServer({ targets: [{ name: TGT, luns: [{ lun: 0, backend: await FileBackend.open({ path: file, size: 16 << 20, blockSize: 512 }) }] }] });
  await s1.listen({ port: 0 });
  const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 2M 1M', '-c', 'discard 2M 64k', url(s1)]);
  assert.equal(w.code, 0, w.stderr);
  const serial1 = s1.devices()[0].serial;
  await s1.close();
  const s2 = new TargetServer({ targets: [{ name: TGT, luns: [{ lun: 0, backend: await FileBackend.open({ path: file, blockSize: 512 }) }] }] });
  await s2.listen({ port: 0 });
  t.after(() => s2.close());
  assert.equal(s2.devices()[0].serial, serial1, 'serial derived from the file path');
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0 2M 64k', '-c', 'read -P 0x42 2112k 960k', url(s2)]);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/);
});

test('CHAP and mutual CHAP with iscsi-ls', needs('iscsi-ls'), async (t) => {
  const s = await start(t, { chap: { user: 'alice', secret: 'alicesecret12', mutualUser: 'tgtuser', mutualSecret: 'targetsecret34' } });
  const ok = await run('iscsi-ls', ['-i', INI, '-s', `iscsi://alice%alicesecret12@${s.portal}`]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /Lun:0/);
  const bad = await run('iscsi-ls', ['-i', INI, '-s', `iscsi://alice%wrongsecret99@${s.portal}`]);
  assert.doesNotMatch(bad.stdout, /Lun:0/);
  const none = await run('iscsi-ls', ['-i', INI, '-s', `iscsi://${s.portal}`]);
  assert.doesNotMatch(none.stdout, /Lun:0/);
  const mutual = await run('iscsi-ls', ['-i', INI, '-s', `iscsi://alice%alicesecret12@${s.portal}/?target_user=tgtuser&target_password=targetsecret34`]);
  assert.equal(mutual.code, 0, mutual.stderr);
  assert.match(mutual.stdout, /Lun:0/);
  const mutualBad = await run('iscsi-ls', ['-i', INI, '-s', `iscsi://alice%alicesecret12@${s.portal}/?target_user=tgtuser&target_password=notthesecret1`]);
  assert.doesNotMatch(mutualBad.stdout, /Lun:0/);
});

test('qemu with header digest CRC32C', needs('qemu-io'), async (t) => {
  const s = await start(t);
  const a = s.address();
  const r = await run('qemu-io', ['--image-opts', `driver=iscsi,transport=tcp,portal=${a.host}:${a.port},target=${TGT},lun=0,header-digest=crc32c`,
    '-c', 'write -P 0x21 0 1M', '-c', 'read -P 0x21 0 1M']);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /Pattern verification failed/);
  assert.ok(s.connections.length >= 0);
});

test('faults seen by qemu: BUSY retried, MEDIUM ERROR fails the read', needs('qemu-io'), async (t) => {
  const s = await start(t);
  s.faults.set({ status: { status: 'busy', count: 2, opcodes: [0x28, 0x88] } });
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', url(s)]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /read 4096\/4096/);
  s.faults.clear();
  s.faults.set({ mediumErrors: [{ lba: 2048 }] });
  const m = await run('qemu-io', ['-f', 'raw', '-c', 'read 1M 4k', '-c', 'read 0 4k', url(s)]);
  assert.match(m.stdout + m.stderr, /read failed: Input\/output error/);
  assert.ok(s.faults.fired.mediumError >= 1);
  s.faults.clear();
  // libiscsi reconnects after a dropped connection (whole or mid-PDU) and re-issues the command.
  for (const f of [{ dropAfterCommands: 12 }, { dropMidPduAfterCommands: 12 }, { status: { status: 'task-set-full' as const, count: 2, opcodes: [0x2a, 0x8a] } }]) {
    s.faults.set(f);
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 1M', '-c', 'write -P 0x34 1M 1M', '-c', 'read -P 0x33 0 1M', '-c', 'read -P 0x34 1M 1M', url(s)]);
    assert.equal(io.code, 0, io.stderr);
    assert.doesNotMatch(io.stdout, /Pattern verification failed|failed/);
    s.faults.clear();
  }
  assert.equal(s.faults.fired.drop, 1);
  assert.equal(s.faults.fired.halfPdu, 1);
});

test('libiscsi test suite (iscsi-test-cu ALL --dataloss) on 512 and 4096-byte LUNs', needs('iscsi-test-cu'), async (t) => {
  const s = await start(t, {
    targets: [{
      name: TGT,
      luns: [
        { lun: 0, backend: new MemoryBackend({ size: 64 << 20, blockSize: 512 }) },
        { lun: 1, backend: new MemoryBackend({ size: 64 << 20, blockSize: 4096 }) },
      ],
    }],
  });
  for (const lun of [0, 1]) {
    const r = await run('iscsi-test-cu', ['--dataloss', '-i', INI, '-t', 'ALL', url(s, lun)], 300000);
    const summary = /tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/.exec(r.stdout);
    assert.ok(summary, r.stdout.slice(-2000));
    const failed = r.stdout.split('\n').filter((l) => /\.\.\.FAILED|FAILED$|CU_/.test(l)).join('\n');
    assert.equal(Number(summary![4]), 0, `LUN ${lun}:\n${failed}`);
    assert.ok(Number(summary![3]) >= 200);
  }
});
