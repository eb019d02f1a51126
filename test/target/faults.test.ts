import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TargetPdu, decodeFrame } from '../../src/iscsi/pdu';
import { PduFramer } from '../../src/iscsi/framer';
import { parseSense } from '../../src/scsi/sense';
import { FaultController, seededRandom } from '../../src/target/faults';
import { Harness, cdb10, INITIATOR, TARGET } from './harness';

type Of<N extends number> = Extract<TargetPdu, { opcode: N }>;
const TUR = Buffer.alloc(6);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('drop the connection after N commands (one-shot)', async () => {
  const h = new Harness();
  await h.login();
  h.faults.set({ dropAfterCommands: 2 });
  for (let i = 0; i < 2; i++) assert.equal((await h.result(h.scsi(TUR))).status, 0);
  h.scsi(TUR);
  assert.ok(h.destroyed);
  assert.equal(h.faults.fired.drop, 1);
  assert.equal(h.faults.active.dropAfterCommands, undefined);
});

test('drop in the middle of a PDU: half the response is written, then the socket is destroyed', async () => {
  const h = new Harness();
  await h.login();
  h.faults.set({ dropMidPduAfterCommands: 0 });
  const before = h.raw.length;
  h.scsi(cdb10(0x28, 0, 8), { read: true, edtl: 4096 });
  const deadline = Date.now() + 2000;
  while (!h.destroyed && Date.now() < deadline) await sleep(2);
  assert.ok(h.destroyed);
  const last = h.raw[h.raw.length - 1];
  assert.ok(h.raw.length > before);
  assert.equal(last.length, (48 + 4096) >> 1);
});

test('BUSY, TASK SET FULL and UNIT ATTENTION for the next N commands', async () => {
  const h = new Harness();
  await h.login();
  h.faults.set({ status: { status: 'busy', count: 2 } });
  assert.equal((await h.result(h.scsi(TUR))).status, 0x08);
  assert.equal((await h.result(h.scsi(TUR))).status, 0x08);
  assert.equal((await h.result(h.scsi(TUR))).status, 0x00);
  h.faults.set({ status: { status: 'task-set-full', count: 1 } });
  const r = await h.result(h.scsi(cdb10(0x28, 0, 1), { read: true, edtl: 512 }));
  assert.equal(r.status, 0x28);
  assert.ok(r.underflow);
  assert.equal(r.residual, 512);
  h.faults.set({ status: { status: 'unit-attention', count: 1, asc: 0x2a, ascq: 0x09 } });
  const ua = await h.result(h.scsi(TUR));
  assert.equal(ua.status, 0x02);
  const s = parseSense(ua.sense)!;
  assert.deepEqual([s.senseKey, s.asc, s.ascq], [0x06, 0x2a, 0x09]);
});

test('status with a probability from a seeded RNG is reproducible', async () => {
  const run = async (): Promise<number[]> => {
    const h = new Harness();
    await h.login();
    h.faults.set({ status: { status: 'busy', probability: 0.5, seed: 42 } });
    const out: number[] = [];
    for (let i = 0; i < 20; i++) out.push((await h.result(h.scsi(TUR))).status);
    return out;
  };
  const a = await run();
  const b = await run();
  assert.deepEqual(a, b);
  assert.ok(a.includes(0) && a.includes(8));
  const r = seededRandom(1);
  assert.ok(r() >= 0 && r() < 1);
});

test('MEDIUM ERROR on given LBAs with INFORMATION = first bad LBA', async () => {
  const h = new Harness();
  await h.login();
  h.faults.set({ mediumErrors: [{ lba: 100, blocks: 4 }] });
  const r = await h.result(h.scsi(cdb10(0x28, 96, 8), { read: true, edtl: 4096 }));
  assert.equal(r.status, 2);
  const s = parseSense(r.sense)!;
  assert.deepEqual([s.senseKey, s.asc, s.ascq], [0x03, 0x11, 0x00]);
  assert.equal(s.information, 100n);
  assert.equal((await h.result(h.scsi(cdb10(0x28, 0, 8), { read: true, edtl: 4096 }))).status, 0);
  h.faults.clear();
  assert.equal((await h.result(h.scsi(cdb10(0x28, 96, 8), { read: true, edtl: 4096 }))).status, 0);
});

test('delay every response; stall holds responses until cleared', async () => {
  const h = new Harness();
  await h.login();
  h.faults.set({ delayMs: 60 });
  const itt = h.scsi(TUR);
  await sleep(20);
  assert.equal(h.out.length, 0);
  assert.equal((await h.result(itt)).status, 0);
  h.faults.set({ delayMs: undefined, stall: true });
  const itt2 = h.scsi(TUR);
  await sleep(50);
  assert.equal(h.out.length, 0);
  assert.ok(!h.destroyed);
  h.faults.clear();
  assert.equal((await h.result(itt2)).status, 0);
});

test('reject a login with a given status', async () => {
  const h = new Harness();
  h.faults.set({ rejectLogin: { statusClass: 3, statusDetail: 1, count: 1 } });
  const r = await h.loginStep({ csg: 0, nsg: 1, transit: true, pairs: [['InitiatorName', INITIATOR], ['TargetName', TARGET], ['AuthMethod', 'None']] });
  assert.equal(r.pdu.statusClass, 3);
  assert.equal(r.pdu.statusDetail, 1);
  const h2 = new Harness({ faults: h.faults });
  await h2.login();
  assert.equal(h2.engine.state, 'full-feature');
});

test('corrupt the data digest of the next Data-In', async () => {
  const h = new Harness();
  await h.login([['HeaderDigest', 'CRC32C'], ['DataDigest', 'CRC32C']]);
  h.digests(true, true);
  h.faults.set({ corruptDataDigest: true });
  const itt = h.itt++;
  h.send({ opcode: 0x01, immediate: false, final: true, read: true, write: false, attr: 1, lun: 0n, itt, expectedDataTransferLength: 512, cmdSN: h.cmdSN++, expStatSN: 0, cdb: cdb10(0x28, 0, 1), data: Buffer.alloc(0) }, { headerDigest: true, dataDigest: true });
  const deadline = Date.now() + 2000;
  while (h.digestErrors.length === 0 && Date.now() < deadline) await sleep(2);
  assert.equal(h.digestErrors.length, 1);
  assert.equal(h.digestErrors[0].itt, itt);
  assert.equal(h.faults.fired.corruptDigest, 1);
});

test('malformed PDU menu', async () => {
  for (const kind of ['bad-opcode', 'absurd-dsl', 'unknown-itt', 'truncated-ahs', 'bad-offset'] as const) {
    const h = new Harness();
    await h.login();
    h.faults.set({ malformed: kind });
    const itt = h.scsi(cdb10(0x28, 0, 1), { read: true, edtl: 512 });
    const deadline = Date.now() + 2000;
    while (h.raw.length < 3 && Date.now() < deadline) await sleep(2);
    const bytes = h.raw[h.raw.length - 1];
    switch (kind) {
      case 'bad-opcode': assert.equal(bytes[0] & 0x3f, 0x3c); break;
      case 'absurd-dsl': assert.equal(bytes.readUIntBE(5, 3), 0xffffff); break;
      case 'unknown-itt': assert.notEqual(bytes.readUInt32BE(16), itt); break;
      case 'truncated-ahs': {
        assert.equal(bytes[4], 1);
        assert.equal(bytes.length, 52);
        assert.equal(bytes.readUInt16BE(48), 64);
        break;
      }
      case 'bad-offset': {
        let pdu: TargetPdu | undefined;
        new PduFramer({ maxDataSegmentLength: 1 << 20, onFrame: (f) => { pdu = decodeFrame(f) as TargetPdu; } }).push(bytes);
        assert.equal(pdu?.opcode, 0x25);
        assert.ok((pdu as Of<0x25>).bufferOffset > 512);
        break;
      }
    }
  }
});

test('async logout request (AsyncEvent 1) and the drop when the initiator ignores it', async () => {
  const h = new Harness();
  await h.login();
  assert.ok(h.engine.requestLogout(0));
  const a = await h.waitFor<Of<0x32>>((p) => p.opcode === 0x32);
  assert.equal(a.asyncEvent, 1);
  assert.equal(a.parameter3, 0);
  const deadline = Date.now() + 4000;
  while (!h.destroyed && Date.now() < deadline) await sleep(20);
  assert.ok(h.destroyed);
});

test('ignoreNopOut: NOP-Out pings go unanswered', async () => {
  const h = new Harness();
  await h.login();
  h.faults.set({ ignoreNopOut: true });
  h.send({ opcode: 0x00, immediate: true, lun: 0n, itt: 5, ttt: 0xffffffff, cmdSN: h.cmdSN, expStatSN: 0, data: Buffer.alloc(0) });
  await sleep(30);
  assert.equal(h.out.length, 0);
});

test('swapIdentity changes the serial and NAA designator', () => {
  const h = new Harness();
  const s1 = h.device.serial;
  const n1 = Buffer.from(h.device.naa);
  h.device.swapIdentity();
  assert.notEqual(h.device.serial, s1);
  assert.ok(!h.device.naa.equals(n1));
  const f = new FaultController();
  f.set({ stall: true });
  assert.ok(f.stalled);
});
