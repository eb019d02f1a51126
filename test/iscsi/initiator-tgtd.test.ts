// IscsiSession and discover() against a real tgtd (Debian `tgt`), each test
// with its own instance on a free 127.0.0.1 port, always stopped.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { IscsiNbdError, LoginError } from '../../src/errors';
import { IscsiSession, type IscsiSessionOptions } from '../../src/iscsi/initiator';
import { discover } from '../../src/iscsi/discovery';
import * as cdb from '../../src/scsi/cdb';
import type { ScsiRequest, ScsiResponse } from '../../src/scsi/transport';
import { startTgtdWithLuns, type Tgtd, type TgtdSpec } from '../helpers/tgtd';

const INITIATOR = 'iqn.2026-11.test.iscsi-nbd:initiator';
const HAVE_TGTD = fs.existsSync('/usr/sbin/tgtd') || fs.existsSync('/usr/bin/tgtd');
const skip = HAVE_TGTD ? false : 'tgtd not installed (apt-get install tgt)';
const MiB = 1 << 20;

async function withTgtd(t: TestContext, spec: TgtdSpec): Promise<Tgtd> {
  const d = await startTgtdWithLuns(spec);
  t.after(() => d.stop());
  return d;
}

function session(t: TestContext, d: Tgtd, o: Partial<IscsiSessionOptions> = {}): IscsiSession {
  const s = new IscsiSession({
    portal: { host: '127.0.0.1', port: d.port },
    targetName: d.iqn(1),
    initiatorName: INITIATOR,
    ...o,
  });
  t.after(() => s.close());
  return s;
}

function senseKey(r: ScsiResponse): number {
  const s = r.sense;
  if (!s || s.length < 3) return -1;
  return (s[0] & 0x7f) >= 0x72 ? s[1] & 0x0f : s[2] & 0x0f;
}

/** Execute, retrying UNIT ATTENTION (power-on/reset after a new tgtd or session) a few times. */
async function run(s: IscsiSession, req: ScsiRequest): Promise<ScsiResponse> {
  for (let i = 0; ; i++) {
    const r = await s.execute(req);
    if (r.status === 2 && senseKey(r) === 6 && i < 5) continue;
    return r;
  }
}

function good(r: ScsiResponse, what: string): void {
  assert.equal(r.status, 0, `${what}: status 0x${r.status.toString(16)} sense ${r.sense?.toString('hex')}`);
}

function pattern(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

async function writeBlocks(s: IscsiSession, lun: number, lba: number, data: Buffer, bs = 512): Promise<void> {
  good(await run(s, { lun, cdb: cdb.writeCdb(BigInt(lba), data.length / bs), dataOut: data }), `WRITE ${data.length} @${lba}`);
}

async function readBlocks(s: IscsiSession, lun: number, lba: number, bytes: number, bs = 512): Promise<Buffer> {
  const r = await run(s, { lun, cdb: cdb.readCdb(BigInt(lba), bytes / bs), dataInLength: bytes });
  good(r, `READ ${bytes} @${lba}`);
  assert.equal(r.residual, 0);
  return r.data!;
}

test('tgtd: plain login, TEST UNIT READY, READ CAPACITY(16), graceful logout', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: 8 * MiB }] }] });
  const s = session(t, d);
  const states: string[] = [];
  s.on('state', (to: string) => states.push(to));
  assert.equal(s.state, 'idle');
  await s.connect();
  assert.equal(s.state, 'logged-in');
  const n = s.negotiated!;
  assert.ok(n.tsih > 0);
  assert.equal(n.headerDigest, false);
  assert.equal(n.errorRecoveryLevel, 0);
  assert.equal(s.maxTransferBytes, n.maxBurstLength);
  good(await run(s, { lun: 1, cdb: cdb.testUnitReady() }), 'TUR');
  const rc = await run(s, { lun: 1, cdb: cdb.readCapacity16(), dataInLength: 32 });
  good(rc, 'READ CAPACITY(16)');
  assert.equal(rc.data!.readBigUInt64BE(0), BigInt(8 * MiB / 512 - 1));
  assert.equal(rc.data!.readUInt32BE(8), 512);
  const st = s.stats;
  assert.equal(st.portal, `127.0.0.1:${d.port}`);
  assert.ok(st.window >= 1);
  assert.equal(st.reconnects, 0);
  assert.equal(s.inFlight, 0);
  await s.logout();
  assert.equal(s.state, 'closed');
  assert.deepEqual(states, ['connecting', 'logged-in', 'closing', 'closed']);
  await assert.rejects(s.execute({ lun: 1, cdb: cdb.testUnitReady() }), (e: IscsiNbdError) => e.code === 'ESHUTDOWN');
});

test('tgtd: unknown target gives ENOTARGET; nothing listening gives ECONNECT', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: MiB }] }] });
  const s = session(t, d, { targetName: 'iqn.2026-11.test.iscsi-nbd:nope' });
  await assert.rejects(s.connect(), (e: LoginError) => e instanceof LoginError && e.code === 'ENOTARGET' && /not found/.test(e.message));
  assert.equal(s.state, 'failed');
  const s2 = session(t, d, { portal: { host: '127.0.0.1', port: 1 } });
  await assert.rejects(s2.connect(), (e: IscsiNbdError) => e.code === 'ECONNECT' && /refused/.test(e.message));
});

test('tgtd: CHAP, mutual CHAP, and a wrong password (EAUTH)', { skip }, async (t) => {
  const d = await withTgtd(t, {
    targets: [
      { luns: [{ size: MiB }], chap: { user: 'alice', secret: 'alicesecret12' } },
      { luns: [{ size: MiB }], chap: { user: 'bob', secret: 'bobsecret1234' }, mutualChap: { user: 'tgt', secret: 'targetsecret9' } },
    ],
  });
  const s = session(t, d, { auth: { user: 'alice', secret: 'alicesecret12' } });
  await s.connect();
  assert.ok(s.negotiated!.chapAlgorithm > 0);
  good(await run(s, { lun: 1, cdb: cdb.testUnitReady() }), 'TUR over CHAP');
  await s.logout();

  const m = session(t, d, {
    targetName: d.iqn(2),
    auth: { user: 'bob', secret: 'bobsecret1234', targetUser: 'tgt', targetSecret: 'targetsecret9' },
  });
  await m.connect();
  assert.equal(m.negotiated!.mutualAuthenticated, true);
  good(await run(m, { lun: 1, cdb: cdb.testUnitReady() }), 'TUR over mutual CHAP');
  await m.logout();

  const bad = session(t, d, { auth: { user: 'alice', secret: 'wrongsecret12' } });
  await assert.rejects(bad.connect(), (e: LoginError) => e.code === 'EAUTH' && /authentication failed/.test(e.message));

  const badTarget = session(t, d, {
    targetName: d.iqn(2),
    auth: { user: 'bob', secret: 'bobsecret1234', targetUser: 'tgt', targetSecret: 'not-the-secret' },
  });
  await assert.rejects(badTarget.connect(), (e: IscsiNbdError) => e.code === 'EAUTH');

  const none = session(t, d);
  await assert.rejects(none.connect(), (e: IscsiNbdError) => e.code === 'EAUTH');
});

test('tgtd: header and data digests (CRC32C) with read/write round trips', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: 16 * MiB }] }] });
  // tgtd offers no digests unless told to.
  await d.setTargetParam(1, 'HeaderDigest', 'CRC32C,None');
  await d.setTargetParam(1, 'DataDigest', 'CRC32C,None');
  const s = session(t, d, { digest: 'crc32c' });
  await s.connect();
  assert.equal(s.negotiated!.headerDigest, true);
  assert.equal(s.negotiated!.dataDigest, true);
  const data = pattern(3 * MiB + 4096, 1);
  await writeBlocks(s, 1, 100, data);
  assert.deepEqual(await readBlocks(s, 1, 100, data.length), data);
  assert.equal(s.stats.digestErrors, 0);
  await s.logout();

  const p = session(t, d, { digest: 'prefer-crc32c' });
  await p.connect();
  assert.equal(p.negotiated!.headerDigest, true);
  assert.deepEqual(await readBlocks(p, 1, 100, 4096), data.subarray(0, 4096));
  await p.logout();
});

test('tgtd: discovery of two targets with their portals', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: MiB }] }, { luns: [{ size: MiB }] }] });
  const found = await discover({ portal: { host: '127.0.0.1', port: d.port }, initiatorName: INITIATOR });
  assert.deepEqual(found.map((x) => x.name).sort(), [d.iqn(1), d.iqn(2)].sort());
  for (const f of found) {
    assert.deepEqual(f.portals, [{ host: '127.0.0.1', port: d.port, tpgt: 1 }]);
  }
  const withDigest = await discover({ portal: { host: '127.0.0.1', port: d.port }, initiatorName: INITIATOR, digest: 'prefer-crc32c' });
  assert.equal(withDigest.length, 2);
});

test('tgtd: READ/WRITE round trips from one block to several MiB (immediate, unsolicited, R2T paths)', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: 32 * MiB }] }] });
  const variants: [string, Partial<IscsiSessionOptions>, (() => Promise<void>)?][] = [
    ['defaults', {}],
    ['InitialR2T=Yes ImmediateData=No', { params: { initialR2T: true, immediateData: false } }],
    ['small bursts', { params: { maxBurstLength: 65536, firstBurstLength: 16384, maxRecvDataSegmentLength: 8192 } }],
    // tgtd defaults to InitialR2T=Yes; with No at both ends unsolicited Data-Out PDUs are used.
    ['InitialR2T=No (unsolicited Data-Out)', { params: { initialR2T: false, firstBurstLength: 65536 } }, () => d.setTargetParam(1, 'InitialR2T', 'No')],
  ];
  let seed = 10;
  for (const [name, o, prep] of variants) {
    if (prep) await prep();
    const s = session(t, d, o);
    await s.connect();
    const n = s.negotiated!;
    if (name.startsWith('InitialR2T=No')) assert.equal(n.initialR2T, false);
    let lba = 0;
    for (const size of [512, 4096, n.firstBurstLength + 512, 256 * 1024 + 512, MiB, 5 * MiB]) {
      const data = pattern(size, seed++);
      await writeBlocks(s, 1, lba, data);
      const back = await readBlocks(s, 1, lba, size);
      assert.ok(back.equals(data), `${name}: ${size} bytes round trip`);
      lba += size / 512 + 8;
    }
    // Reads into a caller buffer.
    const dest = Buffer.alloc(MiB);
    const r = await run(s, { lun: 1, cdb: cdb.read10(0n, MiB / 512), dataInLength: MiB, dataIn: dest });
    good(r, 'READ into buffer');
    assert.equal(r.data!.buffer, dest.buffer);
    // Several commands at once.
    const many = await Promise.all(Array.from({ length: 32 }, (_, i) => run(s, { lun: 1, cdb: cdb.read10(BigInt(i * 64), 64), dataInLength: 64 * 512 })));
    for (const m of many) good(m, 'parallel READ');
    await s.logout();
  }
});

test('tgtd: small target MaxRecvDataSegmentLength splits Data-Out PDUs', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: 8 * MiB }] }] });
  await d.setTargetParam(1, 'MaxRecvDataSegmentLength', 4096);
  const s = session(t, d, { params: { maxRecvDataSegmentLength: 4096 } });
  await s.connect();
  assert.equal(s.negotiated!.maxXmitDataSegmentLength, 4096);
  const data = pattern(2 * MiB, 77);
  await writeBlocks(s, 1, 8, data);
  assert.ok((await readBlocks(s, 1, 8, data.length)).equals(data));
  await s.logout();
});

test('tgtd: 4096-byte-block LUN, SYNCHRONIZE CACHE, REPORT LUNS', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: 16 * MiB, blockSize: 4096 }, { size: MiB }] }] });
  const s = session(t, d);
  await s.connect();
  const rc = await run(s, { lun: 1, cdb: cdb.readCapacity16(), dataInLength: 32 });
  good(rc, 'READ CAPACITY(16)');
  assert.equal(rc.data!.readUInt32BE(8), 4096);
  assert.equal(rc.data!.readBigUInt64BE(0), BigInt(16 * MiB / 4096 - 1));
  const data = pattern(MiB + 8192, 5);
  await writeBlocks(s, 1, 3, data, 4096);
  assert.ok((await readBlocks(s, 1, 3, data.length, 4096)).equals(data));
  good(await run(s, { lun: 1, cdb: cdb.synchronizeCache10() }), 'SYNCHRONIZE CACHE(10)');

  const rl = await run(s, { lun: 0, cdb: cdb.reportLuns(), dataInLength: 4096 });
  good(rl, 'REPORT LUNS');
  const listLen = rl.data!.readUInt32BE(0);
  const luns: number[] = [];
  for (let o = 8; o < 8 + listLen; o += 8) luns.push(rl.data!.readUInt16BE(o) & 0x3fff);
  assert.deepEqual(luns.sort(), [0, 1, 2]);
  assert.equal(rl.residual, 4096 - (8 + listLen));
  assert.equal(rl.data!.length, 8 + listLen);
  await s.logout();
});

test('tgtd: UNMAP on a thin LUN reads back zeros', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: 8 * MiB, thin: true }] }] });
  const s = session(t, d);
  await s.connect();
  const data = pattern(MiB, 9);
  await writeBlocks(s, 1, 0, data);
  const list = cdb.unmapParameterList([{ lba: 256n, blocks: 1024 }]);
  good(await run(s, { lun: 1, cdb: cdb.unmap(list.length), dataOut: list }), 'UNMAP');
  const back = await readBlocks(s, 1, 0, MiB);
  assert.ok(back.subarray(0, 256 * 512).equals(data.subarray(0, 256 * 512)));
  assert.ok(back.subarray(256 * 512, 1280 * 512).equals(Buffer.alloc(1024 * 512)));
  assert.ok(back.subarray(1280 * 512).equals(data.subarray(1280 * 512)));
  await s.logout();
});

test('tgtd: SIGKILL and restart with commands in flight: they complete after recovery', { skip, timeout: 60000 }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: 16 * MiB }] }] });
  const s = session(t, d, { timeouts: { nopIntervalMs: 1000, nopTimeoutMs: 2000 } });
  const events: string[] = [];
  s.on('lost', () => events.push('lost'));
  s.on('reconnected', () => events.push('reconnected'));
  await s.connect();
  const before = pattern(2 * MiB, 21);
  await writeBlocks(s, 1, 0, before);
  const isid = s.isid;

  // Freeze tgtd so the commands are surely in flight, then kill and restart it.
  process.kill(d.pid!, 'SIGSTOP');
  const read = s.execute({ lun: 1, cdb: cdb.read10(0n, 2 * MiB / 512), dataInLength: 2 * MiB });
  const after = pattern(MiB, 22);
  const write = s.execute({ lun: 1, cdb: cdb.write10(8192n, MiB / 512), dataOut: after });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(s.inFlight, 2);
  await d.restart();

  // Both resolve (the SCSI layer never sees the outage); a fresh tgtd reports a UNIT ATTENTION first.
  const [r, w] = await Promise.all([read, write]);
  for (const x of [r, w]) assert.ok(x.status === 0 || (x.status === 2 && senseKey(x) === 6), `status ${x.status}`);
  if (r.status === 0) assert.ok(r.data!.equals(before));
  if (w.status !== 0) await writeBlocks(s, 1, 8192, after);
  assert.ok((await readBlocks(s, 1, 0, 2 * MiB)).equals(before));
  assert.ok((await readBlocks(s, 1, 8192, MiB)).equals(after));
  assert.equal(s.state, 'logged-in');
  assert.equal(s.stats.reconnects, 1);
  assert.equal(s.isid, isid);
  assert.deepEqual(events, ['lost', 'reconnected']);
  await s.logout();
});

test('tgtd: without reconnect, a lost connection fails pending commands with ECONNLOST', { skip }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: MiB }] }] });
  const s = session(t, d, { reconnect: false });
  await s.connect();
  good(await run(s, { lun: 1, cdb: cdb.testUnitReady() }), 'TUR');
  process.kill(d.pid!, 'SIGSTOP');
  const p = assert.rejects(s.execute({ lun: 1, cdb: cdb.testUnitReady() }), (e: IscsiNbdError) => e.code === 'ECONNLOST');
  await d.kill();
  await p;
  assert.equal(s.state, 'failed');
  await assert.rejects(s.execute({ lun: 1, cdb: cdb.testUnitReady() }), (e: IscsiNbdError) => e.code === 'ECONNLOST');
});

test('tgtd: outage longer than replacementMs fails commands with ECONNLOST, then the session comes back', { skip, timeout: 60000 }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: MiB }] }] });
  const s = session(t, d, { timeouts: { replacementMs: 500 }, backoff: { initialMs: 100, maxMs: 300 } });
  await s.connect();
  good(await run(s, { lun: 1, cdb: cdb.testUnitReady() }), 'TUR');
  await d.kill();
  const p = s.execute({ lun: 1, cdb: cdb.testUnitReady() });
  await assert.rejects(p, (e: IscsiNbdError) => e.code === 'ECONNLOST');
  assert.equal(s.state, 'failed');
  await assert.rejects(s.execute({ lun: 1, cdb: cdb.testUnitReady() }), (e: IscsiNbdError) => e.code === 'ECONNLOST');
  const back = new Promise<void>((r) => s.once('reconnected', () => r()));
  await d.restart();
  await back;
  assert.equal(s.state, 'logged-in');
  good(await run(s, { lun: 1, cdb: cdb.testUnitReady() }), 'TUR after');
  await s.logout();
});

test('tgtd: command timeout escalates (ABORT TASK, LUN RESET, reconnect) and the command is reissued', { skip, timeout: 60000 }, async (t) => {
  const d = await withTgtd(t, { targets: [{ luns: [{ size: MiB }] }] });
  const s = session(t, d, {
    timeouts: { commandMs: 400, tmfMs: 300, nopIntervalMs: 0 },
    backoff: { initialMs: 100, maxMs: 200 },
  });
  await s.connect();
  const data = pattern(64 * 1024, 31);
  await writeBlocks(s, 1, 0, data);
  const events: string[] = [];
  s.on('lost', (e: IscsiNbdError) => events.push(`lost:${e.code}`));
  s.on('reconnected', () => events.push('reconnected'));
  process.kill(d.pid!, 'SIGSTOP');
  t.after(() => { try { process.kill(d.pid!, 'SIGCONT'); } catch { /* gone */ } });
  const read = run(s, { lun: 1, cdb: cdb.read10(0n, 128), dataInLength: 64 * 1024 });
  // abort (300) + reset (300) after the 400 ms timeout, then the connection is dropped.
  const lost = new Promise<void>((r) => s.once('lost', () => r()));
  await lost;
  assert.equal(s.state, 'recovering');
  process.kill(d.pid!, 'SIGCONT');
  const r = await read;
  good(r, 'READ after escalation');
  assert.ok(r.data!.equals(data));
  assert.deepEqual(events, ['lost:ETIMEOUT', 'reconnected']);
  await s.logout();
});
