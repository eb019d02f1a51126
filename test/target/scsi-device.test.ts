import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as cdb from '../../src/scsi/cdb';
import {
  parseStandardInquiry, parseVpdSupportedPages, parseVpdUnitSerial, parseVpdDeviceId, parseVpdBlockLimits,
  parseVpdLbp, parseReadCapacity16, parseReadCapacity10, parseModeSense, findCachingPage, parseReportLuns, parseLbaStatus,
  parseVpdBlockCharacteristics,
} from '../../src/scsi/parse';
import { parseSense } from '../../src/scsi/sense';
import { MemoryBackend } from '../../src/target/backend';
import { LogicalUnits, ScsiDevice, ScsiResult } from '../../src/target/scsi-device';

function dev(o: { size?: number; blockSize?: number; readOnly?: boolean } = {}): ScsiDevice {
  return new ScsiDevice({ backend: new MemoryBackend({ size: o.size ?? 4 * 1024 * 1024, blockSize: o.blockSize ?? 512, readOnly: o.readOnly, identitySeed: 'unit' }) });
}

function senseOf(r: ScsiResult): [number, number, number] {
  assert.equal(r.status, 2);
  const s = parseSense(r.sense)!;
  return [s.senseKey, s.asc, s.ascq];
}

test('INQUIRY standard data and VPD pages 00, 80, 83, B0, B1, B2', async () => {
  const d = dev();
  const std = parseStandardInquiry((await d.execute(cdb.inquiry(255))).data!);
  assert.equal(std.deviceType, 0);
  assert.ok(std.cmdQue && std.hiSup);
  assert.equal(std.vendor.trim(), 'ISCSINBD');
  assert.deepEqual(parseVpdSupportedPages((await d.execute(cdb.inquiry(255, 0))).data!), [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
  const serial = parseVpdUnitSerial((await d.execute(cdb.inquiry(255, 0x80))).data!);
  assert.equal(serial, d.serial);
  assert.equal(serial, dev().serial, 'stable for the same seed');
  const ids = parseVpdDeviceId((await d.execute(cdb.inquiry(255, 0x83))).data!);
  assert.ok(ids.some((x) => x.type === 3 && x.raw.length === 8 && (x.raw[0] >> 4) === 3));
  assert.ok(ids.some((x) => x.type === 1 && x.value.includes(serial)));
  const bl = parseVpdBlockLimits((await d.execute(cdb.inquiry(255, 0xb0))).data!);
  assert.equal(bl.maxTransferLength, 32 * 1024 * 1024 / 512);
  assert.equal(bl.optimalUnmapGranularity, 8);
  assert.ok(bl.wsnz && bl.ugaValid);
  assert.equal(parseVpdBlockCharacteristics((await d.execute(cdb.inquiry(255, 0xb1))).data!).mediumRotationRate, 1);
  const lbp = parseVpdLbp((await d.execute(cdb.inquiry(255, 0xb2))).data!);
  assert.ok(lbp.lbpu && lbp.lbpws && lbp.lbpws10 && lbp.lbprz);
  assert.equal(lbp.provisioningType, 2);
  assert.deepEqual(senseOf(await d.execute(cdb.inquiry(255, 0x99))), [5, 0x24, 0]);
  // Allocation length limits the data.
  assert.equal((await d.execute(cdb.inquiry(36))).data!.length, 36);
});

test('READ CAPACITY 10/16 with LBPME/LBPRZ, 512 and 4096-byte blocks', async () => {
  for (const bs of [512, 4096]) {
    const d = dev({ blockSize: bs, size: 1 << 20 });
    const c10 = parseReadCapacity10((await d.execute(cdb.readCapacity10())).data!);
    assert.deepEqual(c10, { returnedLba: (1 << 20) / bs - 1, blockLength: bs });
    const c16 = parseReadCapacity16((await d.execute(cdb.readCapacity16())).data!);
    assert.equal(c16.returnedLba, BigInt((1 << 20) / bs - 1));
    assert.equal(c16.blockLength, bs);
    assert.ok(c16.lbpme && c16.lbprz);
  }
});

test('READ/WRITE 10/16, FUA, range checks, unknown opcode', async () => {
  const d = dev();
  const data = Buffer.alloc(4096, 0x3c);
  assert.equal((await d.execute(cdb.write10(8n, 8, { fua: true }), data)).status, 0);
  assert.deepEqual((await d.execute(cdb.read16(8n, 8))).data, data);
  assert.deepEqual((await d.execute(cdb.read10(0n, 1))).data, Buffer.alloc(512));
  assert.deepEqual(senseOf(await d.execute(cdb.read10(8191n, 2))), [5, 0x21, 0]);
  assert.deepEqual(senseOf(await d.execute(cdb.write16(8192n, 1), Buffer.alloc(512))), [5, 0x21, 0]);
  assert.deepEqual(senseOf(await d.execute(Buffer.from([0xc5, 0, 0, 0, 0, 0]))), [5, 0x20, 0]);
  assert.equal((await d.execute(cdb.read10(0n, 0))).status, 0);
  assert.equal((await d.execute(cdb.testUnitReady())).status, 0);
  assert.equal((await d.execute(cdb.synchronizeCache10())).status, 0);
  assert.equal((await d.execute(cdb.synchronizeCache16())).status, 0);
  const rs = await d.execute(cdb.requestSense(252));
  assert.equal(parseSense(rs.data)!.senseKey, 0);
});

test('write protection: WRITE, UNMAP, WRITE SAME answer DATA PROTECT 27/00; MODE SENSE shows WP', async () => {
  const d = dev({ readOnly: true });
  assert.deepEqual(senseOf(await d.execute(cdb.write10(0n, 1), Buffer.alloc(512))), [7, 0x27, 0]);
  assert.deepEqual(senseOf(await d.execute(cdb.writeSame16(0n, 1), Buffer.alloc(512))), [7, 0x27, 0]);
  assert.deepEqual(senseOf(await d.execute(cdb.unmap(24), cdb.unmapParameterList([{ lba: 0n, blocks: 1 }]))), [7, 0x27, 0]);
  const m = parseModeSense((await d.execute(cdb.modeSense6(0x3f))).data!, false);
  assert.ok(m.writeProtect);
  assert.ok(m.dpoFua);
});

test('MODE SENSE 6/10: caching page, control page, block descriptors, saved values unsupported', async () => {
  const d = dev();
  const m6 = parseModeSense((await d.execute(cdb.modeSense6(cdb.MODE_PAGE_CACHING))).data!, false);
  assert.ok(!m6.writeProtect && m6.dpoFua);
  assert.ok(findCachingPage(m6));
  const m10 = parseModeSense((await d.execute(cdb.modeSense10(0x3f))).data!, true);
  assert.ok(m10.pages.some((p) => p.pageCode === 0x0a));
  assert.deepEqual(senseOf(await d.execute(Buffer.from([0x1a, 0, 0xc8, 0, 255, 0]))), [5, 0x39, 0]);
  assert.deepEqual(senseOf(await d.execute(cdb.modeSense6(0x19))), [5, 0x24, 0]);
});

test('UNMAP and WRITE SAME (UNMAP bit deallocates; otherwise the pattern is written); GET LBA STATUS reports it', async () => {
  const d = dev();
  await d.execute(cdb.write10(0n, 64), Buffer.alloc(64 * 512, 1));
  const st = async (lba: bigint) => parseLbaStatus((await d.execute(cdb.getLbaStatus(lba, 1024))).data!).descriptors;
  assert.deepEqual((await st(0n))[0], { lba: 0n, blocks: 64, status: 0, state: 'mapped' });
  assert.equal((await d.execute(cdb.unmap(24), cdb.unmapParameterList([{ lba: 8n, blocks: 16 }]))).status, 0);
  const s1 = await st(0n);
  assert.deepEqual(s1.slice(0, 3).map((x) => [x.lba, x.blocks, x.state]), [[0n, 8, 'mapped'], [8n, 16, 'deallocated'], [24n, 40, 'mapped']]);
  assert.deepEqual((await d.execute(cdb.read10(8n, 16))).data, Buffer.alloc(16 * 512));
  // WRITE SAME(16) UNMAP with a zero block deallocates.
  assert.equal((await d.execute(cdb.writeSame16(32n, 16, { unmap: true }), Buffer.alloc(512))).status, 0);
  assert.equal((await st(32n))[0].state, 'deallocated');
  // WRITE SAME(10) without UNMAP writes the pattern.
  const pat = Buffer.alloc(512, 0xee);
  assert.equal((await d.execute(cdb.writeSame10(100n, 3), pat)).status, 0);
  assert.deepEqual((await d.execute(cdb.read10(100n, 3))).data, Buffer.concat([pat, pat, pat]));
  // Errors: out of range, 0 blocks (WSNZ), bad parameter list.
  assert.deepEqual(senseOf(await d.execute(cdb.unmap(24), cdb.unmapParameterList([{ lba: 8190n, blocks: 16 }]))), [5, 0x21, 0]);
  assert.deepEqual(senseOf(await d.execute(cdb.writeSame16(0n, 0), Buffer.alloc(512))), [5, 0x24, 0]);
  const badList = cdb.unmapParameterList([{ lba: 0n, blocks: 1 }]);
  badList.writeUInt16BE(15, 2);
  assert.deepEqual(senseOf(await d.execute(cdb.unmap(badList.length), badList)), [5, 0x26, 0]);
  assert.deepEqual(senseOf(await d.execute(cdb.getLbaStatus(8192n, 1024))), [5, 0x21, 0]);
});

test('write overflow: whole blocks written, partial block is 0E/03; dataOutNeeded reported', async () => {
  const d = dev();
  const r = await d.execute(cdb.write10(0n, 2), Buffer.alloc(512, 7));
  assert.equal(r.status, 0);
  assert.equal(r.dataOutNeeded, 1024);
  assert.deepEqual((await d.execute(cdb.read10(0n, 1))).data, Buffer.alloc(512, 7));
  assert.deepEqual(senseOf(await d.execute(cdb.write10(4n, 1), Buffer.alloc(200))), [5, 0x0e, 0x03]);
});

test('medium error hook and REPORT LUNS / missing LUNs', async () => {
  const backend = new MemoryBackend({ size: 1 << 20 });
  const d = new ScsiDevice({ backend, mediumError: (lba, n) => (lba <= 5n && 5n < lba + BigInt(n) ? 5n : undefined) });
  const r = await d.execute(cdb.read10(0n, 8));
  const s = parseSense(r.sense)!;
  assert.deepEqual([s.senseKey, s.asc, s.information], [3, 0x11, 5n]);
  const units = new LogicalUnits(new Map([[0, d], [3, dev()]]));
  const rl = parseReportLuns((await units.execute(0, cdb.reportLuns())).data!);
  assert.deepEqual(rl.luns.map((l) => l.lun), [0, 3]);
  const inq = (await units.execute(7, cdb.inquiry(96))).data!;
  assert.equal(inq[0], 0x7f);
  assert.deepEqual(senseOf(await units.execute(7, cdb.testUnitReady())), [5, 0x25, 0]);
});
