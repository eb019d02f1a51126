// SessionEngine with scripted target PDUs (no socket).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IscsiNbdError } from '../../src/errors';
import { AsyncEvent, RejectReason, TmfFunction, TmfResponse } from '../../src/iscsi/constants';
import { PduFramer } from '../../src/iscsi/framer';
import {
  DataOutPdu, decodeFrame, decodePdu, encodeBhs, encodePdu, encodeLun, NopOutPdu, Pdu, ScsiCommandPdu, TaskMgmtRequestPdu, TextRequestPdu,
} from '../../src/iscsi/pdu';
import { encodeText } from '../../src/iscsi/text';
import { AsyncEventInfo, CommandTimeoutInfo, SessionEngine } from '../../src/iscsi/session-engine';
import { IttAllocator } from '../../src/iscsi/itt';
import type { ScsiResponse } from '../../src/scsi/transport';
import {
  asyncMsg, dataIn, logoutResp, nopIn, pattern, r2t, reject, scsiResp, setup, textResp, tick, tmfResp,
} from './fake-target';

const READ10 = Buffer.from([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]);
const WRITE10 = Buffer.from([0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]);
const TUR = Buffer.alloc(6);

function cmd(p: Pdu): ScsiCommandPdu {
  assert.equal(p.opcode, 0x01, `expected SCSI Command, got opcode 0x${p.opcode.toString(16)}`);
  return p as ScsiCommandPdu;
}
function dout(p: Pdu): DataOutPdu {
  assert.equal(p.opcode, 0x05, `expected Data-Out, got opcode 0x${p.opcode.toString(16)}`);
  return p as DataOutPdu;
}

async function settle<T>(p: Promise<T>): Promise<{ ok: T } | { err: IscsiNbdError }> {
  return p.then((ok) => ({ ok }), (err) => ({ err }));
}

function state(p: Promise<unknown>): Promise<'pending' | 'settled'> {
  const marker = Symbol('pending');
  return Promise.race([p.then(() => 'settled' as const, () => 'settled' as const), tick().then(() => marker)]).then(
    (v) => (v === marker ? 'pending' : 'settled'),
  );
}

// ------------------------------------------------------------------ window

test('CmdSN window: closed (MaxCmdSN = ExpCmdSN - 1) queues commands; a NOP-In opens it', async () => {
  const h = setup({ cmdSN: 10, expCmdSN: 10, maxCmdSN: 9 });
  const p = h.e.submit({ lun: 0, cdb: TUR });
  assert.equal(h.sent.length, 0);
  assert.equal(h.e.inFlight, 1);
  assert.equal(h.e.sequence.window, 0);
  h.e.receive(nopIn({ expCmdSN: 10, maxCmdSN: 10 }));
  const [c] = h.take();
  assert.equal(cmd(c).cmdSN, 10);
  assert.equal(cmd(c).immediate, false);
  h.e.receive(scsiResp(cmd(c).itt, { statSN: 5, expCmdSN: 11, maxCmdSN: 11 }));
  const r = await p;
  assert.equal(r.status, 0);
  assert.equal(h.e.sequence.expStatSN, 6);
  assert.equal(h.e.inFlight, 0);
});

test('CmdSN window wraps at 2^32 (RFC 1982)', async () => {
  const h = setup({ cmdSN: 0xfffffffe, expCmdSN: 0xfffffffe, maxCmdSN: 0x00000001 });
  const ps = [0, 1, 2, 3, 4].map(() => h.e.submit({ lun: 0, cdb: TUR }));
  const sent = h.take().map(cmd);
  assert.deepEqual(sent.map((c) => c.cmdSN), [0xfffffffe, 0xffffffff, 0, 1]);
  assert.equal(h.e.queued, 1);
  // A window update that would move MaxCmdSN backwards is ignored.
  h.e.receive(nopIn({ expCmdSN: 0xfffffffe, maxCmdSN: 0xfffffffe }));
  assert.equal(h.sent.length, 0);
  // MaxCmdSN < ExpCmdSN - 1: invalid, both ignored.
  h.e.receive(nopIn({ expCmdSN: 5, maxCmdSN: 2 }));
  assert.equal(h.sent.length, 0);
  h.e.receive(nopIn({ expCmdSN: 2, maxCmdSN: 2 }));
  const [last] = h.take().map(cmd);
  assert.equal(last.cmdSN, 2);
  for (const c of [...sent, last]) h.e.receive(scsiResp(c.itt, { expCmdSN: 3, maxCmdSN: 40 }));
  for (const p of ps) assert.equal((await p).status, 0);
});

test('immediate PDUs (NOP-Out ping, TMF) go out with the window closed and do not advance CmdSN', async () => {
  const h = setup({ cmdSN: 7, expCmdSN: 7, maxCmdSN: 6 });
  const tur = h.e.submit({ lun: 0, cdb: TUR });
  const ping = h.e.ping(1000);
  const [nop] = h.take() as NopOutPdu[];
  assert.equal(nop.opcode, 0x00);
  assert.equal(nop.immediate, true);
  assert.equal(nop.cmdSN, 7);
  assert.equal(nop.ttt, 0xffffffff);
  assert.notEqual(nop.itt, 0xffffffff);
  h.e.receive(nopIn({ itt: nop.itt, statSN: 3, expCmdSN: 7, maxCmdSN: 7 }));
  await ping;
  const [c] = h.take().map(cmd);
  assert.equal(c.cmdSN, 7);
  assert.equal(c.expStatSN, 4, 'ExpStatSN = last StatSN + 1');
  h.e.receive(scsiResp(c.itt, { statSN: 4, expCmdSN: 8, maxCmdSN: 8 }));
  await tur;
  assert.equal(h.e.sequence.cmdSN, 8);
});

test('ITTs wrap past 0xffffffff, which is never used', async () => {
  const h = setup({ firstItt: 0xfffffffe });
  const a = h.e.submit({ lun: 0, cdb: TUR });
  const b = h.e.submit({ lun: 0, cdb: TUR });
  const [ca, cb] = h.take().map(cmd);
  assert.equal(ca.itt, 0xfffffffe);
  assert.equal(cb.itt, 0);
  h.e.receive(scsiResp(ca.itt));
  h.e.receive(scsiResp(cb.itt));
  await Promise.all([a, b]);
});

test('the ITT allocator skips tags still in flight and the reserved one, and wraps', () => {
  const a = new IttAllocator(0xfffffffd);
  const inUse = new Set([0xfffffffe, 0]);
  const got = [a.next((i) => inUse.has(i)), a.next((i) => inUse.has(i)), a.next((i) => inUse.has(i))];
  assert.deepEqual(got, [0xfffffffd, 1, 2]);
  assert.throws(() => new IttAllocator(5).next(() => true), /no free ITT/);
});

// ------------------------------------------------------------------ writes

test('write: immediate data, unsolicited Data-Out up to FirstBurstLength, then R2T sequences', async () => {
  const h = setup({
    params: { immediateData: true, initialR2T: false, firstBurstLength: 16384, maxXmitDataSegmentLength: 4096, maxBurstLength: 8192 },
  });
  const data = pattern(40960);
  const p = h.e.submit({ lun: 3, cdb: WRITE10, dataOut: data });
  const out = h.take();
  const c = cmd(out[0]);
  assert.equal(c.write, true);
  assert.equal(c.read, false);
  assert.equal(c.final, false, 'F=0: unsolicited Data-Out follows');
  assert.equal(c.expectedDataTransferLength, 40960);
  assert.equal(c.lun, encodeLun(3));
  assert.deepEqual(c.data, data.subarray(0, 4096));
  const unsol = out.slice(1).map(dout);
  assert.deepEqual(unsol.map((d) => [d.dataSN, d.bufferOffset, d.data.length, d.final, d.ttt]), [
    [0, 4096, 4096, false, 0xffffffff],
    [1, 8192, 4096, false, 0xffffffff],
    [2, 12288, 4096, true, 0xffffffff],
  ]);
  for (const d of unsol) {
    assert.equal(d.itt, c.itt);
    assert.equal(d.lun, encodeLun(3));
    assert.deepEqual(d.data, data.subarray(d.bufferOffset, d.bufferOffset + d.data.length));
  }
  // Payloads are views of the caller's buffer, not copies.
  const payloads = h.batches.flat().filter((b) => b.length === 4096);
  assert.ok(payloads.length >= 4);
  for (const b of payloads) assert.equal(b.buffer, data.buffer);

  for (const [i, off] of [16384, 24576, 32768].entries()) {
    h.e.receive(r2t(c.itt, { ttt: 0x5000 + i, r2tSN: i, bufferOffset: off, desiredDataTransferLength: 8192 }));
    const seq = h.take().map(dout);
    assert.deepEqual(seq.map((d) => [d.dataSN, d.bufferOffset, d.data.length, d.final, d.ttt]), [
      [0, off, 4096, false, 0x5000 + i],
      [1, off + 4096, 4096, true, 0x5000 + i],
    ]);
    for (const d of seq) assert.deepEqual(d.data, data.subarray(d.bufferOffset, d.bufferOffset + 4096));
  }
  h.e.receive(scsiResp(c.itt));
  assert.equal((await p).status, 0);
});

test('write: InitialR2T=Yes, ImmediateData=No sends a bare command (F=1) and data only on R2T', async () => {
  const h = setup({ params: { immediateData: false, initialR2T: true, firstBurstLength: 0, maxXmitDataSegmentLength: 1000 } });
  const data = pattern(2500);
  const p = h.e.submit({ lun: 0, cdb: WRITE10, dataOut: data });
  const [c0] = h.take();
  const c = cmd(c0);
  assert.equal(c.final, true);
  assert.equal(c.data.length, 0);
  h.e.receive(r2t(c.itt, { ttt: 7, bufferOffset: 0, desiredDataTransferLength: 2500 }));
  const seq = h.take().map(dout);
  assert.deepEqual(seq.map((d) => [d.dataSN, d.bufferOffset, d.data.length, d.final]), [
    [0, 0, 1000, false], [1, 1000, 1000, false], [2, 2000, 500, true],
  ]);
  assert.deepEqual(Buffer.concat(seq.map((d) => d.data)), data);
  h.e.receive(scsiResp(c.itt));
  await p;
});

test('write: small write goes entirely as immediate data (F=1); limited by FirstBurstLength', async () => {
  const h = setup({ params: { immediateData: true, initialR2T: true, firstBurstLength: 512, maxXmitDataSegmentLength: 8192 } });
  const small = pattern(300);
  const p1 = h.e.submit({ lun: 0, cdb: WRITE10, dataOut: small });
  const [c1] = h.take().map(cmd);
  assert.equal(c1.final, true);
  assert.deepEqual(c1.data, small);
  const big = pattern(2048);
  const p2 = h.e.submit({ lun: 0, cdb: WRITE10, dataOut: big });
  const [c2] = h.take().map(cmd);
  assert.equal(c2.final, true, 'InitialR2T=Yes: no unsolicited Data-Out');
  assert.equal(c2.data.length, 512);
  h.e.receive(r2t(c2.itt, { bufferOffset: 512, desiredDataTransferLength: 1536 }));
  const [d] = h.take().map(dout);
  assert.equal(d.bufferOffset, 512);
  assert.equal(d.data.length, 1536);
  assert.equal(d.final, true);
  h.e.receive(scsiResp(c1.itt));
  h.e.receive(scsiResp(c2.itt));
  await Promise.all([p1, p2]);
});

test('write: MaxOutstandingR2T=2, two R2Ts back to back are both answered, DataSN restarts per R2T', async () => {
  const h = setup({ params: { immediateData: false, initialR2T: true, firstBurstLength: 0, maxXmitDataSegmentLength: 4096, maxBurstLength: 8192, maxOutstandingR2T: 2 } });
  const data = pattern(16384);
  const p = h.e.submit({ lun: 0, cdb: WRITE10, dataOut: data });
  const c = cmd(h.take()[0]);
  h.e.receive(r2t(c.itt, { ttt: 1, r2tSN: 0, bufferOffset: 0, desiredDataTransferLength: 8192 }));
  h.e.receive(r2t(c.itt, { ttt: 2, r2tSN: 1, bufferOffset: 8192, desiredDataTransferLength: 8192 }));
  const seq = h.take().map(dout);
  assert.deepEqual(seq.map((d) => [d.ttt, d.dataSN, d.bufferOffset, d.final]), [
    [1, 0, 0, false], [1, 1, 4096, true], [2, 0, 8192, false], [2, 1, 12288, true],
  ]);
  assert.deepEqual(Buffer.concat(seq.map((d) => d.data)), data);
  h.e.receive(scsiResp(c.itt));
  await p;
});

test('write: an R2T outside the buffer is a fatal protocol error', async () => {
  const h = setup();
  const p = h.e.submit({ lun: 0, cdb: WRITE10, dataOut: pattern(100) });
  const c = cmd(h.take()[0]);
  h.e.receive(r2t(c.itt, { bufferOffset: 50, desiredDataTransferLength: 100 }));
  assert.equal(h.fatal.length, 1);
  assert.equal((h.fatal[0] as IscsiNbdError).code, 'EPROTO');
  assert.equal(h.e.state, 'dead');
  // The task is kept for recovery.
  assert.equal(await state(p), 'pending');
  assert.equal(h.e.drainTasks().length, 1);
});

// ------------------------------------------------------------------ reads

test('read: Data-In reassembled into the caller buffer with out-of-order offsets (DataPDUInOrder=No), status in the last Data-In', async () => {
  const h = setup({ params: { dataPDUInOrder: false, dataSequenceInOrder: false } });
  const src = pattern(12288, 3);
  const dest = Buffer.alloc(16384);
  const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 12288, dataIn: dest });
  const c = cmd(h.take()[0]);
  assert.equal(c.read, true);
  assert.equal(c.final, true);
  assert.equal(c.expectedDataTransferLength, 12288);
  h.e.receive(dataIn(c.itt, { dataSN: 0, bufferOffset: 8192, data: src.subarray(8192) }));
  h.e.receive(dataIn(c.itt, { dataSN: 1, bufferOffset: 0, data: src.subarray(0, 4096) }));
  h.e.receive(dataIn(c.itt, {
    dataSN: 2, bufferOffset: 4096, data: src.subarray(4096, 8192), final: true, statusPresent: true, status: 0, statSN: 9,
  }));
  const r = await p;
  assert.equal(r.status, 0);
  assert.equal(r.residual, 0);
  assert.equal(r.data!.buffer, dest.buffer, 'data is a view of the caller buffer');
  assert.equal(r.data!.length, 12288);
  assert.deepEqual(r.data, src);
  assert.equal(h.e.sequence.expStatSN, 10);
});

test('read: underflow residual shortens data; overflow gives a negative residual', async () => {
  const h = setup();
  const p1 = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 4096 });
  const c1 = cmd(h.take()[0]);
  h.e.receive(dataIn(c1.itt, { data: pattern(1000), final: true, statusPresent: true, underflow: true, residualCount: 3096 }));
  const r1 = await p1;
  assert.equal(r1.residual, 3096);
  assert.equal(r1.data!.length, 1000);
  assert.deepEqual(r1.data, pattern(1000));

  const p2 = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 512 });
  const c2 = cmd(h.take()[0]);
  h.e.receive(dataIn(c2.itt, { data: pattern(512) }));
  h.e.receive(scsiResp(c2.itt, { overflow: true, residualCount: 512 }));
  const r2 = await p2;
  assert.equal(r2.residual, -512);
  assert.equal(r2.data!.length, 512);
});

test('read: Data-In beyond the expected length fails that task only; others go on', async () => {
  const h = setup();
  const bad = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 512 });
  const good = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 512 });
  const [cb, cg] = h.take().map(cmd);
  h.e.receive(dataIn(cb.itt, { bufferOffset: 256, data: pattern(512) }));
  const rb = await settle(bad);
  assert.ok('err' in rb);
  assert.equal(rb.err.code, 'EPROTO');
  assert.match(rb.err.message, /overflows/);
  assert.equal(h.fatal.length, 0);
  // The ITT stays known until the target ends the task: no loss of sync.
  h.e.receive(dataIn(cb.itt, { dataSN: 1, data: pattern(10), final: true, statusPresent: true }));
  assert.equal(h.fatal.length, 0);
  h.e.receive(dataIn(cg.itt, { data: pattern(512), final: true, statusPresent: true }));
  assert.equal((await good).status, 0);
  assert.equal(h.e.inFlight, 0);
});

test('read: GOOD status with less data than expected and no underflow is refused; CHECK CONDITION gives what came', async () => {
  const h = setup();
  const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 1024 });
  const c = cmd(h.take()[0]);
  h.e.receive(dataIn(c.itt, { data: pattern(512), final: true, statusPresent: true }));
  const r = await settle(p);
  assert.ok('err' in r && r.err.code === 'EPROTO' && /without reporting an underflow/.test(r.err.message));
  const q = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 1024 });
  const c2 = cmd(h.take()[0]);
  h.e.receive(scsiResp(c2.itt, { status: 2, sense: Buffer.from('7000050000000000', 'hex') }));
  const rq = await q;
  assert.equal(rq.status, 2);
  assert.equal(rq.data!.length, 0);
  assert.equal(h.fatal.length, 0);
});

test('read: a DataSN gap fails the task', async () => {
  const h = setup();
  const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 1024 });
  const c = cmd(h.take()[0]);
  h.e.receive(dataIn(c.itt, { dataSN: 0, data: pattern(512) }));
  h.e.receive(dataIn(c.itt, { dataSN: 2, bufferOffset: 512, data: pattern(512) }));
  const r = await settle(p);
  assert.ok('err' in r && r.err.code === 'EPROTO' && /DataSN/.test(r.err.message));
  h.e.receive(scsiResp(c.itt));
  assert.equal(h.fatal.length, 0);
});

test('read: in order (DataPDUInOrder=Yes), a Data-In that repeats, skips or goes back fails the task; bytes never sent are not handed out', async () => {
  // Two PDUs of 512 at offset 0 add up to the 1024 asked for: the byte count
  // alone would call it complete and hand out a buffer half of which the
  // target never wrote (allocUnsafe: old heap bytes, with no caller buffer).
  const cases: Array<[string, Array<[number, number]>]> = [
    ['repeat', [[0, 512], [0, 512]]],
    ['gap', [[0, 256], [512, 512]]],
    ['back', [[512, 512], [0, 512]]],
    ['overlap', [[0, 768], [512, 256]]],
  ];
  for (const [name, pdus] of cases) {
    const h = setup();
    const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 1024 });
    const c = cmd(h.take()[0]);
    // The framer is asked where the second payload goes: nowhere in the buffer.
    const bhs = (off: number, len: number) => encodePdu(dataIn(c.itt, { dataSN: 1, bufferOffset: off, data: Buffer.alloc(len) })).subarray(0, 48);
    pdus.forEach(([off, len], i) => {
      if (i === 1) assert.equal(h.e.placeDataIn(bhs(off, len), len), undefined, `${name}: not placed`);
      h.e.receive(dataIn(c.itt, { dataSN: i, bufferOffset: off, data: pattern(len, i + 1), final: i === pdus.length - 1, statusPresent: i === pdus.length - 1 }));
    });
    const r = await settle(p);
    assert.ok('err' in r, `${name}: refused`);
    assert.equal(r.err.code, 'EPROTO', name);
    assert.match(r.err.message, /expected \d+: with DataPDUInOrder=Yes/, name);
    assert.deepEqual(h.fatal, [], `${name}: the session goes on`);
    assert.equal(h.e.inFlight, 0, `${name}: the status ended the task`);
  }
  // The same data in order is taken.
  const h = setup();
  const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 1024 });
  const c = cmd(h.take()[0]);
  h.e.receive(dataIn(c.itt, { dataSN: 0, bufferOffset: 0, data: pattern(1024).subarray(0, 512) }));
  h.e.receive(dataIn(c.itt, { dataSN: 1, bufferOffset: 512, data: pattern(1024).subarray(512), final: true, statusPresent: true }));
  assert.deepEqual((await p).data, pattern(1024));
});

test('read: out of order (DataPDUInOrder=No), a Data-In over bytes already received fails the task', async () => {
  const h = setup({ params: { dataPDUInOrder: false, dataSequenceInOrder: false } });
  const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 1024 });
  const c = cmd(h.take()[0]);
  h.e.receive(dataIn(c.itt, { dataSN: 0, bufferOffset: 512, data: pattern(512) }));
  h.e.receive(dataIn(c.itt, { dataSN: 1, bufferOffset: 0, data: pattern(768), final: true, statusPresent: true }));
  const r = await settle(p);
  assert.ok('err' in r && r.err.code === 'EPROTO' && /overlaps data already received at 512-1024/.test(r.err.message));
  // And a command that reads again after a retry starts with no ranges.
  const q = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 1024 });
  const c2 = cmd(h.take()[0]);
  h.e.receive(dataIn(c2.itt, { dataSN: 0, bufferOffset: 512, data: pattern(1024).subarray(512) }));
  h.e.receive(dataIn(c2.itt, { dataSN: 1, bufferOffset: 0, data: pattern(1024).subarray(0, 512), final: true, statusPresent: true }));
  assert.deepEqual((await q).data, pattern(1024));
  assert.deepEqual(h.fatal, []);
});

test('read: A bit (DataACK) is ignored at ERL 0', async () => {
  const h = setup();
  const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 512 });
  const c = cmd(h.take()[0]);
  h.e.receive(dataIn(c.itt, { ack: true, ttt: 0x77, data: pattern(512), final: true, statusPresent: true }));
  assert.equal((await p).data!.length, 512);
  assert.equal(h.sent.length, 0, 'no SNACK at ERL 0');
});

test('SCSI Response: CHECK CONDITION with sense (SenseLength stripped by the codec)', async () => {
  const h = setup();
  const p = h.e.submit({ lun: 1, cdb: TUR });
  const c = cmd(h.take()[0]);
  const sense = Buffer.from('700006000000000a0000000029000000000000'.slice(0, 36), 'hex');
  h.e.receive(scsiResp(c.itt, { status: 2, sense }));
  const r: ScsiResponse = await p;
  assert.equal(r.status, 2);
  assert.deepEqual(r.sense, sense);
  assert.equal(r.data, undefined);
});

test('SCSI Response with response = target failure fails the task', async () => {
  const h = setup();
  const p = h.e.submit({ lun: 1, cdb: TUR });
  const c = cmd(h.take()[0]);
  h.e.receive(scsiResp(c.itt, { response: 1 }));
  const r = await settle(p);
  assert.ok('err' in r && r.err.code === 'ESCSI_IO');
  assert.equal(h.e.inFlight, 0);
});

for (const [name, make] of [
  ['Data-In', (itt: number) => dataIn(itt, { data: pattern(4) })],
  ['SCSI Response', (itt: number) => scsiResp(itt)],
  ['R2T', (itt: number) => r2t(itt, { desiredDataTransferLength: 4 })],
  ['NOP-In', (itt: number) => nopIn({ itt })],
  ['Task Management Response', (itt: number) => tmfResp(itt, 0)],
] as const) {
  test(`unknown ITT in ${name} is loss of sync: fatal`, () => {
    const h = setup();
    void h.e.submit({ lun: 0, cdb: READ10, dataInLength: 512 });
    const c = cmd(h.take()[0]);
    h.e.receive(make((c.itt + 100) >>> 0));
    assert.equal(h.fatal.length, 1);
    assert.match(h.fatal[0].message, /unknown ITT/);
    assert.equal(h.e.state, 'dead');
    // Later PDUs are ignored, never thrown.
    h.e.receive(scsiResp(c.itt));
    assert.equal(h.fatal.length, 1);
  });
}

// ------------------------------------------------------------------ NOP

test('NOP-In with a TTT is answered by a NOP-Out echoing LUN, TTT and data, ITT 0xffffffff', () => {
  const h = setup({ cmdSN: 5, expCmdSN: 5 });
  const lun = 0x0001000000000000n;
  h.e.receive(nopIn({ ttt: 0xabcd, lun, statSN: 20, data: Buffer.from('ping') }));
  const [n] = h.take() as NopOutPdu[];
  assert.equal(n.opcode, 0x00);
  assert.equal(n.immediate, true);
  assert.equal(n.itt, 0xffffffff);
  assert.equal(n.ttt, 0xabcd);
  assert.equal(n.lun, lun);
  assert.equal(n.cmdSN, 5);
  assert.deepEqual(n.data, Buffer.from('ping'));
  // An unsolicited NOP-In (TTT reserved) needs no answer.
  h.e.receive(nopIn({}));
  assert.equal(h.sent.length, 0);
});

test('an unanswered NOP-Out ping kills the engine (ETIMEOUT); interval pings only when idle', async () => {
  const h = setup({ nopIntervalMs: 1000, nopTimeoutMs: 500 });
  h.clock.advance(999);
  assert.equal(h.sent.length, 0);
  h.clock.advance(1);
  const [n] = h.take() as NopOutPdu[];
  assert.equal(n.opcode, 0x00);
  assert.equal(n.ttt, 0xffffffff);
  h.e.receive(nopIn({ itt: n.itt }));
  // Traffic keeps pings away.
  h.clock.advance(900);
  h.e.receive(nopIn({}));
  h.clock.advance(200);
  assert.equal(h.sent.length, 0);
  h.clock.advance(1000);
  const [n2] = h.take() as NopOutPdu[];
  assert.equal(n2.opcode, 0x00);
  h.clock.advance(500);
  assert.equal(h.fatal.length, 1);
  assert.equal((h.fatal[0] as IscsiNbdError).code, 'ETIMEOUT');
  assert.equal(h.e.state, 'dead');
  assert.equal(h.clock.pending, 0, 'no timers left behind');
});

// ------------------------------------------------------------------ async, reject

test('Async Messages are emitted upward; a UA (event 0) does not disturb the session', async () => {
  const h = setup();
  const events: AsyncEventInfo[] = [];
  h.e.on('async', (i: AsyncEventInfo) => events.push(i));
  const sense = Buffer.from('7000060000000000000000003f0e0000', 'hex');
  const data = Buffer.concat([Buffer.from([0, sense.length]), sense]);
  h.e.receive(asyncMsg(AsyncEvent.SCSI_ASYNC_EVENT, { lun: encodeLun(2), data, statSN: 30 }));
  h.e.receive(asyncMsg(AsyncEvent.LOGOUT_REQUEST, { parameter3: 5 }));
  h.e.receive(asyncMsg(AsyncEvent.CONNECTION_DROP, { parameter1: 0, parameter2: 2, parameter3: 20 }));
  h.e.receive(asyncMsg(AsyncEvent.SESSION_DROP, { parameter2: 3 }));
  h.e.receive(asyncMsg(AsyncEvent.NEGOTIATION_REQUEST, { parameter3: 4 }));
  h.e.receive(asyncMsg(AsyncEvent.VENDOR_SPECIFIC, { asyncVCode: 9 }));
  assert.deepEqual(events.map((e) => e.name), [
    'scsi-async-event', 'logout-request', 'connection-drop', 'session-drop', 'negotiation-request', 'vendor-specific',
  ]);
  assert.equal(events[0].lun, 2);
  assert.deepEqual(events[0].sense, sense);
  assert.equal(events[1].parameter3, 5);
  assert.equal(events[2].parameter2, 2);
  assert.equal(events[5].vcode, 9);
  assert.equal(h.e.state, 'full-feature');
  assert.equal(h.e.sequence.expStatSN, 31);
  const p = h.e.submit({ lun: 2, cdb: TUR });
  h.e.receive(scsiResp(cmd(h.take()[0]).itt));
  await p;
});

test('Reject of a SCSI Command fails that task with EPROTO; Reject of a Data-Out is fatal', async () => {
  const h = setup();
  const p = h.e.submit({ lun: 0, cdb: TUR });
  const c = cmd(h.take()[0]);
  const hdr = encodeBhs(c);
  h.e.receive(reject(RejectReason.INVALID_PDU_FIELD, hdr));
  const r = await settle(p);
  assert.ok('err' in r && r.err.code === 'EPROTO' && /invalid pdu field/.test(r.err.message));
  assert.equal(h.e.state, 'full-feature');
  assert.equal(h.e.inFlight, 0);

  const w = h.e.submit({ lun: 0, cdb: WRITE10, dataOut: pattern(100000) });
  const cw = cmd(h.take()[0]);
  h.e.receive(r2t(cw.itt, { bufferOffset: 8192, desiredDataTransferLength: 8192 }));
  const d = dout(h.take()[0]);
  h.e.receive(reject(RejectReason.DATA_DIGEST_ERROR, encodeBhs(d)));
  assert.equal(h.fatal.length, 1);
  assert.equal(await state(w), 'pending', 'kept for reissue');
});

// ------------------------------------------------------------------ TMF

test('ABORT TASK: immediate, own ITT, references the task; the task rejects with ESCSI_ABORTED', async () => {
  const h = setup({ cmdSN: 100, expCmdSN: 100, maxCmdSN: 200 });
  const p = h.e.submit({ lun: 4, cdb: READ10, dataInLength: 4096 });
  const c = cmd(h.take()[0]);
  h.e.receive(dataIn(c.itt, { dataSN: 0, data: pattern(512) }));
  const a = h.e.abortTask(c.itt);
  const [t] = h.take() as TaskMgmtRequestPdu[];
  assert.equal(t.opcode, 0x02);
  assert.equal(t.immediate, true);
  assert.equal(t.func, TmfFunction.ABORT_TASK);
  assert.equal(t.referencedTaskTag, c.itt);
  assert.equal(t.refCmdSN, 100);
  assert.equal(t.cmdSN, 101);
  assert.equal(t.expDataSN, 1);
  assert.equal(t.lun, encodeLun(4));
  assert.notEqual(t.itt, c.itt);
  h.e.receive(tmfResp(t.itt, TmfResponse.FUNCTION_COMPLETE));
  assert.equal(await a, TmfResponse.FUNCTION_COMPLETE);
  const r = await settle(p);
  assert.ok('err' in r && r.err.code === 'ESCSI_ABORTED');
  assert.equal(h.e.inFlight, 0);
  assert.equal(h.e.sequence.cmdSN, 101);
});

test('LUN RESET aborts every task of that LUN only', async () => {
  const h = setup();
  const a = h.e.submit({ lun: 1, cdb: TUR });
  const b = h.e.submit({ lun: 2, cdb: TUR });
  const [, cb] = h.take().map(cmd);
  const rs = h.e.lunReset(1);
  const [t] = h.take() as TaskMgmtRequestPdu[];
  assert.equal(t.func, TmfFunction.LOGICAL_UNIT_RESET);
  assert.equal(t.lun, encodeLun(1));
  assert.equal(t.referencedTaskTag, 0xffffffff);
  h.e.receive(tmfResp(t.itt, TmfResponse.FUNCTION_COMPLETE));
  assert.equal(await rs, 0);
  const ra = await settle(a);
  assert.ok('err' in ra && ra.err.code === 'ESCSI_ABORTED');
  assert.equal(await state(b), 'pending');
  h.e.receive(scsiResp(cb.itt));
  await b;
});

test('LUN RESET with requeue: the LUN\'s tasks go out again, and the engine is never idle in between', async () => {
  const h = setup();
  const a = h.e.submit({ lun: 1, cdb: TUR });
  const b = h.e.submit({ lun: 1, cdb: TUR });
  const [ca, cb] = h.take().map(cmd);
  const events: string[] = [];
  h.e.on('idle', () => events.push(`idle with ${h.e.inFlight} in flight`));
  h.e.on('taskDone', () => events.push(`taskDone with ${h.e.inFlight} in flight`));
  const rs = h.e.lunReset(1, 30000, true);
  const [t] = h.take() as TaskMgmtRequestPdu[];
  h.e.receive(tmfResp(t.itt, TmfResponse.FUNCTION_COMPLETE));
  assert.equal(await rs, 0);
  assert.deepEqual(events, ['taskDone with 2 in flight'], 'a waiter for idle (a logout) sees the tasks back, never a moment without them');
  const again = h.take().map(cmd);
  assert.equal(again.length, 2, 'both sent again');
  assert.ok(again.every((c) => c.itt !== ca.itt && c.itt !== cb.itt), 'with new ITTs');
  for (const c of again) h.e.receive(scsiResp(c.itt));
  await Promise.all([a, b]);
  assert.deepEqual(events.slice(-1), ['idle with 0 in flight']);
});

test('command timeout emits a hook with the task; the owner decides', async () => {
  const h = setup({ commandTimeoutMs: 3000 });
  const infos: CommandTimeoutInfo[] = [];
  h.e.on('timeout', (i: CommandTimeoutInfo) => infos.push(i));
  const p = h.e.submit({ lun: 6, cdb: READ10, dataInLength: 512 });
  const q = h.e.submit({ lun: 6, cdb: READ10, dataInLength: 512, timeoutMs: 100 });
  const [c] = h.take().map(cmd);
  h.clock.advance(100);
  assert.equal(infos.length, 1);
  h.clock.advance(2900);
  assert.equal(infos.length, 2);
  assert.deepEqual([infos[1].itt, infos[1].lun, infos[1].sent, infos[1].cdbOpcode], [c.itt, 6, true, 0x28]);
  assert.equal(await state(p), 'pending');
  assert.equal(await state(q), 'pending');
});

test('command timeouts share one timer: each command still times out at its own deadline, finished ones never', async () => {
  const h = setup({ commandTimeoutMs: 1000 });
  const infos: CommandTimeoutInfo[] = [];
  h.e.on('timeout', (i: CommandTimeoutInfo) => infos.push(i));
  const a = h.e.submit({ lun: 0, cdb: TUR });
  h.clock.advance(400);
  const b = h.e.submit({ lun: 0, cdb: TUR });
  h.clock.advance(200);
  const c = h.e.submit({ lun: 0, cdb: TUR });
  const [ca, cb, cc] = h.take().map(cmd);
  h.e.receive(scsiResp(cb.itt)); // b finishes: its deadline (t=1400) must not fire
  await b;
  h.clock.advance(399); // t=999
  assert.equal(infos.length, 0);
  h.clock.advance(1); // t=1000: a
  assert.deepEqual(infos.map((i) => i.itt), [ca.itt]);
  h.clock.advance(599); // t=1599: b would have been at 1400
  assert.equal(infos.length, 1);
  h.clock.advance(1); // t=1600: c
  assert.deepEqual(infos.map((i) => i.itt), [ca.itt, cc.itt]);
  assert.equal(await state(a), 'pending');
  assert.equal(await state(c), 'pending');
});

test('inFlight/queued stay exact: failed tasks holding their ITT and timed-out queued ones are not counted', async () => {
  // Window of one: the second command waits in the queue.
  const h = setup({ cmdSN: 1, expCmdSN: 1, maxCmdSN: 1, commandTimeoutMs: 1000 });
  const bad = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 512 });
  const queued = h.e.submit({ lun: 0, cdb: TUR, timeoutMs: 100 });
  const [cb] = h.take().map(cmd);
  assert.equal(h.e.inFlight, 2);
  assert.equal(h.e.queued, 1);
  // No 'timeout' listener: the engine fails the queued command itself.
  h.clock.advance(100);
  const rq = await settle(queued);
  assert.ok('err' in rq && rq.err.code === 'ETIMEOUT');
  assert.equal(h.e.queued, 0);
  assert.equal(h.e.inFlight, 1);
  // A protocol fault fails the sent one; its ITT stays reserved but it is not in flight any more.
  h.e.receive(dataIn(cb.itt, { bufferOffset: 256, data: pattern(512), expCmdSN: 1, maxCmdSN: 1 }));
  assert.ok('err' in (await settle(bad)));
  assert.equal(h.e.inFlight, 0);
  let idle = 0;
  h.e.on('idle', () => idle++);
  h.e.receive(scsiResp(cb.itt, { expCmdSN: 2, maxCmdSN: 2 })); // the target ends it
  assert.equal(h.e.inFlight, 0);
  assert.equal(idle, 1);
  // The window opened; nothing stale is sent.
  assert.equal(h.sent.length, 0);
});

// ------------------------------------------------------------------ logout, text

test('logout: immediate Logout Request, response moves the engine to logged-out', async () => {
  const h = setup({ cmdSN: 9 });
  const states: string[] = [];
  h.e.on('state', (_f: string, to: string) => states.push(to));
  const lo = h.e.logout();
  const [l] = h.take();
  assert.equal(l.opcode, 0x06);
  assert.ok(l.opcode === 0x06 && l.immediate && l.reason === 0 && l.cmdSN === 9);
  h.e.receive(logoutResp(l.itt, { time2Wait: 2 }));
  const r = await lo;
  assert.equal(r.response, 0);
  assert.deepEqual(states, ['logging-out', 'logged-out']);
  const after = await settle(h.e.submit({ lun: 0, cdb: TUR }));
  assert.ok('err' in after && after.err.code === 'ECONNLOST');
});

test('logout rejected by the target: full feature phase again, and the keepalive still watches it', async () => {
  const h = setup({ nopIntervalMs: 1000, nopTimeoutMs: 500 });
  const lo = h.e.logout();
  const [l] = h.take();
  h.clock.advance(1500); // the keepalive ticks while the logout is out: no ping then
  assert.equal(h.sent.length, 0);
  h.e.receive(reject(RejectReason.PROTOCOL_ERROR, encodeBhs(l)));
  assert.ok('err' in (await settle(lo)));
  assert.equal(h.e.state, 'full-feature');
  h.clock.advance(1500); // a whole interval of silence after the Reject, and the next tick
  const [n] = h.take() as NopOutPdu[];
  assert.equal(n?.opcode, 0x00, 'a NOP-Out ping after the next silence');
  h.clock.advance(500);
  assert.equal((h.fatal[0] as IscsiNbdError | undefined)?.code, 'ETIMEOUT', 'and an unanswered one still kills the engine');
});

test('logout not answered: ETIMEOUT, and the engine is dead, not left logging out', async () => {
  const h = setup({ nopIntervalMs: 1000, nopTimeoutMs: 500 });
  const lo = h.e.logout(0, 2000);
  h.take();
  h.clock.advance(2000);
  const r = await settle(lo);
  assert.ok('err' in r && r.err.code === 'ETIMEOUT');
  assert.equal(h.e.state, 'dead');
  assert.equal(h.clock.pending, 0, 'no timers left behind');
  const after = await settle(h.e.submit({ lun: 0, cdb: TUR }));
  assert.ok('err' in after, 'nothing more goes on that connection');
  assert.equal(h.sent.length, 0);
});

test('text: SendTargets with C-bit continuation and TTT continuation', async () => {
  const h = setup({ cmdSN: 3, expCmdSN: 3, maxCmdSN: 10 });
  const p = h.e.text([['SendTargets', 'All']]);
  const [q1] = h.take() as TextRequestPdu[];
  assert.equal(q1.opcode, 0x04);
  assert.ok(q1.final && !q1.continue && q1.ttt === 0xffffffff && q1.cmdSN === 3 && !q1.immediate);
  assert.equal(q1.data.toString(), 'SendTargets=All\0');
  const full = encodeText([
    ['TargetName', 'iqn.a'], ['TargetAddress', '10.0.0.1:3260,1'], ['TargetAddress', '[fe80::1]:3261,2'],
    ['TargetName', 'iqn.b'],
  ]);
  // Part 1: C=1 (the text goes on), cut inside a pair.
  h.e.receive(textResp(q1.itt, { final: false, continue: true, ttt: 0x11, data: full.subarray(0, 20) }));
  const [q2] = h.take() as TextRequestPdu[];
  assert.ok(q2.final && q2.ttt === 0x11 && q2.data.length === 0 && q2.cmdSN === 4 && q2.itt === q1.itt);
  // Part 2: F=0, C=0 with a TTT: more responses follow.
  h.e.receive(textResp(q1.itt, { final: false, continue: false, ttt: 0x12, data: full.subarray(20, 50) }));
  const [q3] = h.take() as TextRequestPdu[];
  assert.ok(q3.ttt === 0x12 && q3.cmdSN === 5);
  h.e.receive(textResp(q1.itt, { final: true, ttt: 0xffffffff, data: full.subarray(50) }));
  assert.deepEqual(await p, [
    ['TargetName', 'iqn.a'], ['TargetAddress', '10.0.0.1:3260,1'], ['TargetAddress', '[fe80::1]:3261,2'],
    ['TargetName', 'iqn.b'],
  ]);
});

// ------------------------------------------------------------------ recovery

test('drainTasks hands back in-flight and queued tasks; a new engine reissues them with new ITT/CmdSN and rebuilt Data-Out', async () => {
  const h = setup({ cmdSN: 50, expCmdSN: 50, maxCmdSN: 51, params: { immediateData: true, initialR2T: true, firstBurstLength: 1024, maxXmitDataSegmentLength: 1024 } });
  const data = pattern(3000);
  const w = h.e.submit({ lun: 0, cdb: WRITE10, dataOut: data });
  const dest = Buffer.alloc(2048);
  const r = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 2048, dataIn: dest });
  const q = h.e.submit({ lun: 0, cdb: TUR });
  const [cw, cr] = h.take().map(cmd);
  const win = { expCmdSN: 50, maxCmdSN: 51 };
  h.e.receive(r2t(cw.itt, { bufferOffset: 1024, desiredDataTransferLength: 1024, ...win }));
  h.take();
  h.e.receive(dataIn(cr.itt, { data: pattern(1024, 9), ...win })); // partial, will be redone
  const ping = h.e.ping(1000);
  h.take();
  assert.equal(h.e.queued, 1);

  h.e.fail(new Error('socket closed'));
  const pr = await settle(ping);
  assert.ok('err' in pr && pr.err.code === 'ECONNLOST', 'NOP is not carried over');
  const drained = h.e.drainTasks();
  assert.equal(drained.length, 3);
  assert.deepEqual(drained.map((t) => t.req.cdb[0]), [0x2a, 0x28, 0x00]);
  assert.equal(h.e.inFlight, 0);

  const h2 = setup({ cmdSN: 900, expCmdSN: 900, maxCmdSN: 1000, firstItt: 77, params: { immediateData: true, initialR2T: true, firstBurstLength: 1024, maxXmitDataSegmentLength: 1024 } });
  h2.e.adopt(drained);
  const [nw, nr, nq] = h2.take().map(cmd);
  assert.deepEqual([nw.cmdSN, nr.cmdSN, nq.cmdSN], [900, 901, 902]);
  assert.deepEqual([nw.itt, nr.itt, nq.itt], [77, 78, 79]);
  assert.deepEqual(nw.data, data.subarray(0, 1024), 'immediate data rebuilt from the caller buffer');
  h2.e.receive(r2t(nw.itt, { bufferOffset: 1024, desiredDataTransferLength: 1976 }));
  const seq = h2.take().map(dout);
  assert.deepEqual(Buffer.concat(seq.map((d) => d.data)), data.subarray(1024));
  h2.e.receive(scsiResp(nw.itt));
  const src = pattern(2048, 5);
  h2.e.receive(dataIn(nr.itt, { data: src, final: true, statusPresent: true }));
  h2.e.receive(scsiResp(nq.itt));
  await w;
  const rr = await r;
  assert.deepEqual(rr.data, src);
  assert.equal(rr.data!.buffer, dest.buffer);
  await q;
});

test('digests: header and data CRC32C on everything sent', async () => {
  const h = setup({ params: { headerDigest: true, dataDigest: true, immediateData: true, firstBurstLength: 4096, maxXmitDataSegmentLength: 4096 } });
  const p = h.e.submit({ lun: 0, cdb: WRITE10, dataOut: pattern(1000) });
  const batch = Buffer.concat(h.batches[0]);
  const decoded = decodePdu(batch, { headerDigest: true, dataDigest: true });
  assert.equal(decoded.opcode, 0x01);
  assert.equal(batch.length, 48 + 4 + 1000 + 4);
  h.e.receive(scsiResp(cmd(h.take()[0]).itt));
  await p;
});

test('bad requests are refused without touching the wire', async () => {
  const h = setup();
  const bidi = await settle(h.e.submit({ lun: 0, cdb: WRITE10, dataOut: pattern(10), dataInLength: 10 }));
  assert.ok('err' in bidi && bidi.err.code === 'EINVAL');
  const short = await settle(h.e.submit({ lun: 0, cdb: READ10, dataInLength: 100, dataIn: Buffer.alloc(10) }));
  assert.ok('err' in short && short.err.code === 'EINVAL');
  const lun = await settle(h.e.submit({ lun: 1 << 25, cdb: TUR }));
  assert.ok('err' in lun && lun.err.code === 'EINVAL');
  assert.equal(h.sent.length, 0);
});

test('a PDU that is not valid in full feature phase is fatal, not a crash', () => {
  const h = setup();
  h.e.receive({ opcode: 0x23 } as Pdu);
  assert.equal(h.fatal.length, 1);
});

test('engine stops cleanly: no timers after shutdown', () => {
  const h = setup({ nopIntervalMs: 100, commandTimeoutMs: 100 });
  void h.e.submit({ lun: 0, cdb: TUR }).catch(() => undefined);
  h.e.shutdown();
  assert.equal(h.clock.pending, 0);
  h.e.failAll(new Error('x'));
  assert.ok(h.e instanceof SessionEngine);
});

test('read contract: a command that fails while its Data-In is streaming into the caller buffer takes that buffer back first', async () => {
  const h = setup({ commandTimeoutMs: 1000 });
  const dest = Buffer.alloc(4096, 0xee);
  const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 4096, dataIn: dest });
  const c = cmd(h.take()[0]);
  const framer = new PduFramer({
    maxDataSegmentLength: 1 << 16,
    placeData: (bhs, dsl) => h.e.placeDataIn(bhs, dsl),
    onFrame: (f) => h.e.receive(decodeFrame(f)),
  });
  h.e.setDivert(() => framer.divert());
  const wire = encodePdu(dataIn(c.itt, { dataSN: 0, bufferOffset: 0, data: pattern(4096, 3), final: true, statusPresent: true }));
  framer.push(wire.subarray(0, 48 + 1000));
  assert.deepEqual(dest.subarray(0, 1000), pattern(4096, 3).subarray(0, 1000), 'streaming into the caller buffer');
  // No escalation listener: the timeout fails the command here, mid-PDU.
  h.clock.advance(1000);
  await assert.rejects(p, (e: IscsiNbdError) => e.code === 'ETIMEOUT');
  dest.fill(0x5a); // the caller reuses its buffer for something else
  framer.push(wire.subarray(48 + 1000));
  assert.ok(dest.equals(Buffer.alloc(4096, 0x5a)), 'nothing written into the buffer after the command failed');
  assert.deepEqual(h.fatal, []);
  assert.equal(h.e.inFlight, 0, 'the status ended the task');
});

test('read contract: Data-In the framer streams into the caller buffer (placeDataIn) is used in place, others are copied', async () => {
  for (const step of [1, 7, 100, 1 << 20]) {
    const h = setup({ params: { dataPDUInOrder: false, dataSequenceInOrder: false } }); // b arrives second half first
    const destA = Buffer.alloc(4096, 0xee);
    const destB = Buffer.alloc(4096, 0xee);
    const pa = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 4096, dataIn: destA });
    const pb = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 4096, dataIn: destB });
    const [ca, cb] = h.take().map(cmd);
    const a = pattern(4096, 1);
    const b = pattern(4096, 2);
    // Interleaved, with a target ping carrying data in between: a placement
    // must never be taken for another PDU's.
    const wire = Buffer.concat([
      encodePdu(dataIn(ca.itt, { dataSN: 0, bufferOffset: 0, data: a.subarray(0, 1000) })),
      encodePdu(dataIn(cb.itt, { dataSN: 0, bufferOffset: 2048, data: b.subarray(2048) })),
      encodePdu(nopIn({ ttt: 0x1234, data: Buffer.from('ping') })),
      encodePdu(dataIn(ca.itt, { dataSN: 1, bufferOffset: 1000, data: a.subarray(1000), final: true, statusPresent: true })),
      encodePdu(dataIn(cb.itt, { dataSN: 1, bufferOffset: 0, data: b.subarray(0, 2048), final: true, statusPresent: true })),
    ]);
    const framer = new PduFramer({
      maxDataSegmentLength: 1 << 16,
      placeData: (bhs, dsl) => h.e.placeDataIn(bhs, dsl),
      onFrame: (f) => h.e.receive(decodeFrame(f)),
    });
    for (let i = 0; i < wire.length; i += step) framer.push(wire.subarray(i, i + step));
    const [ra, rb] = await Promise.all([pa, pb]);
    assert.deepEqual(destA, a, `step ${step}`);
    assert.deepEqual(destB, b, `step ${step}`);
    destA[0] ^= 0xff;
    assert.equal(ra.data![0], destA[0], 'the response data is the caller buffer');
    assert.equal(rb.data!.length, 4096);
    assert.deepEqual(h.fatal, []);
  }
  // Without the framer (nothing placed) the same Data-In is copied.
  const h = setup();
  const dest = Buffer.alloc(512);
  const p = h.e.submit({ lun: 0, cdb: READ10, dataInLength: 512, dataIn: dest });
  const c = cmd(h.take()[0]);
  h.e.receive(dataIn(c.itt, { data: pattern(512, 5), final: true, statusPresent: true }));
  await p;
  assert.deepEqual(dest, pattern(512, 5));
});
