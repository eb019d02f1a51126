import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as cdb from '../../src/scsi/cdb';

// Fixtures written by hand from the SPC-4/SBC-3 CDB layouts.
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const eq = (b: Buffer, s: string): void => assert.equal(b.toString('hex'), hex(s).toString('hex'));

test('TEST UNIT READY / REQUEST SENSE', () => {
  eq(cdb.testUnitReady(), '00 00 00 00 00 00');
  eq(cdb.requestSense(), '03 00 00 00 fc 00');
  eq(cdb.requestSense(18, true), '03 01 00 00 12 00');
});

test('INQUIRY standard and EVPD', () => {
  eq(cdb.inquiry(), '12 00 00 00 ff 00');
  eq(cdb.inquiry(36), '12 00 00 00 24 00');
  eq(cdb.inquiry(0x1000, 0x83), '12 01 83 10 00 00');
  eq(cdb.inquiry(255, 0x00), '12 01 00 00 ff 00');
  eq(cdb.inquiry(64, 0xb0), '12 01 b0 00 40 00');
});

test('READ CAPACITY (10) and (16)', () => {
  eq(cdb.readCapacity10(), '25 00 00000000 00 00 00 00');
  eq(cdb.readCapacity16(), '9e 10 0000000000000000 00000020 00 00');
  eq(cdb.readCapacity16(12), '9e 10 0000000000000000 0000000c 00 00');
});

test('GET LBA STATUS', () => {
  eq(cdb.getLbaStatus(0x123456789an, 4104), '9e 12 000000123456789a 00001008 00 00');
});

test('READ/WRITE (10) with FUA and DPO', () => {
  eq(cdb.read10(0x01020304n, 8), '28 00 01020304 00 0008 00');
  eq(cdb.read10(0n, 1, { fua: true }), '28 08 00000000 00 0001 00');
  eq(cdb.write10(0xffffffffn, 0xffff), '2a 00 ffffffff 00 ffff 00');
  eq(cdb.write10(16n, 2, { fua: true }), '2a 08 00000010 00 0002 00');
  eq(cdb.write10(16n, 2, { fua: true, dpo: true }), '2a 18 00000010 00 0002 00');
  eq(cdb.write10(16n, 2, { dpo: true }), '2a 10 00000010 00 0002 00');
});

test('READ/WRITE (16)', () => {
  eq(cdb.read16(0x100000000n, 1), '88 00 0000000100000000 00000001 00 00');
  eq(cdb.write16(0x0102030405060708n, 0x10000, { fua: true }), '8a 08 0102030405060708 00010000 00 00');
});

test('READ/WRITE picks 16 past 32-bit LBA or 65535 blocks', () => {
  assert.equal(cdb.readCdb(0xffffffffn, 0xffff)[0], 0x28);
  assert.equal(cdb.readCdb(0x100000000n, 1)[0], 0x88);
  assert.equal(cdb.readCdb(0n, 0x10000)[0], 0x88);
  assert.equal(cdb.writeCdb(5n, 1)[0], 0x2a);
  assert.equal(cdb.writeCdb(5n, 0x10000)[0], 0x8a);
  assert.equal(cdb.writeCdb(0x100000000n, 1, { fua: true })[1], 0x08);
  assert.equal(cdb.readCdb(5n, 1, undefined, true)[0], 0x88);
});

test('builders refuse out-of-range values', () => {
  assert.throws(() => cdb.read10(0x100000000n, 1), RangeError);
  assert.throws(() => cdb.read10(0n, 0x10000), RangeError);
  assert.throws(() => cdb.read16(-1n, 1), RangeError);
  assert.throws(() => cdb.write16(0n, 0x100000000), RangeError);
  assert.throws(() => cdb.inquiry(0x10000), RangeError);
  assert.throws(() => cdb.writeSame10(0n, 1, { ndob: true }), RangeError);
});

test('SYNCHRONIZE CACHE (10)/(16)', () => {
  eq(cdb.synchronizeCache10(), '35 00 00000000 00 0000 00');
  eq(cdb.synchronizeCache10(0x10n, 0x20, true), '35 02 00000010 00 0020 00');
  eq(cdb.synchronizeCache16(), '91 00 0000000000000000 00000000 00 00');
  eq(cdb.synchronizeCache16(0x100000000n, 7, true), '91 02 0000000100000000 00000007 00 00');
});

test('UNMAP CDB and parameter list', () => {
  eq(cdb.unmap(24), '42 00 00 00 00 00 00 0018 00');
  eq(cdb.unmap(40, true), '42 01 00 00 00 00 00 0028 00');
  eq(cdb.unmapParameterList([{ lba: 0x10n, blocks: 0x20 }]),
    '0016 0010 00000000' + '0000000000000010 00000020 00000000');
  eq(cdb.unmapParameterList([{ lba: 1n, blocks: 2 }, { lba: 0x100000000n, blocks: 0xffffffff }]),
    '0026 0020 00000000' + '0000000000000001 00000002 00000000' + '0000000100000000 ffffffff 00000000');
  eq(cdb.unmapParameterList([]), '0006 0000 00000000');
  assert.throws(() => cdb.unmapParameterList(new Array(5000).fill({ lba: 0n, blocks: 1 })), RangeError);
});

test('WRITE SAME (10)/(16) with UNMAP, ANCHOR, NDOB', () => {
  eq(cdb.writeSame10(0x1234n, 8), '41 00 00001234 00 0008 00');
  eq(cdb.writeSame10(0x1234n, 8, { unmap: true }), '41 08 00001234 00 0008 00');
  eq(cdb.writeSame10(0n, 1, { unmap: true, anchor: true }), '41 18 00000000 00 0001 00');
  eq(cdb.writeSame16(0x100000000n, 0x10000), '93 00 0000000100000000 00010000 00 00');
  eq(cdb.writeSame16(2n, 3, { unmap: true }), '93 08 0000000000000002 00000003 00 00');
  eq(cdb.writeSame16(2n, 3, { anchor: true, unmap: true }), '93 18 0000000000000002 00000003 00 00');
  eq(cdb.writeSame16(2n, 3, { ndob: true }), '93 01 0000000000000002 00000003 00 00');
});

test('MODE SENSE (6)/(10)', () => {
  eq(cdb.modeSense6(0x3f), '1a 00 3f 00 ff 00');
  eq(cdb.modeSense6(0x08, 0xc0, { dbd: true }), '1a 08 08 00 c0 00');
  eq(cdb.modeSense6(0x08, 0xff, { pc: 1 }), '1a 00 48 00 ff 00');
  eq(cdb.modeSense10(0x3f, 0x1000, { dbd: true }), '5a 08 3f 00 00 00 00 1000 00');
  eq(cdb.modeSense10(0x08, 0xff, { llbaa: true, pc: 3 }), '5a 10 c8 00 00 00 00 00ff 00');
});

test('REPORT LUNS', () => {
  eq(cdb.reportLuns(), 'a0 00 00 00 00 00 00001000 00 00');
  eq(cdb.reportLuns(16, 2), 'a0 00 02 00 00 00 00000010 00 00');
});

test('cdbName', () => {
  assert.equal(cdb.cdbName(cdb.read10(0n, 1)), 'READ(10)');
  assert.equal(cdb.cdbName(cdb.readCapacity16()), 'READ CAPACITY(16)');
  assert.equal(cdb.cdbName(cdb.getLbaStatus(0n, 32)), 'GET LBA STATUS');
  assert.equal(cdb.cdbName(cdb.inquiry(255, 0xb0)), 'INQUIRY VPD 0xb0');
  assert.equal(cdb.cdbName(Buffer.from([0xee])), 'opcode 0xee');
  assert.equal(cdb.cdbName(Buffer.alloc(0)), 'opcode 0xff');
});

test('REPORT TARGET PORT GROUPS: MAINTENANCE IN 0x0A, extended format asked, allocation length', () => {
  assert.deepEqual(cdb.reportTargetPortGroups(1024), Buffer.from('a32a00000000000004000000', 'hex'));
  assert.deepEqual(cdb.reportTargetPortGroups(0x10000, false), Buffer.from('a30a00000000000100000000', 'hex'));
  assert.equal(cdb.cdbName(cdb.reportTargetPortGroups()), 'REPORT TARGET PORT GROUPS');
});
