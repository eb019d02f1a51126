import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RequestError, ScsiError, TransportError } from '../../src/errors';
import { LogicalUnit, LunOptions } from '../../src/scsi/lun';
import { CHECK, FakeDisk, FakeTransport, DiskOptions, byOp, stdInquiry, vpdPage, inquiryData, fixedSense } from './fake-transport';

function setup(disk: DiskOptions = {}, opts: LunOptions = {}) {
  const t = new FakeTransport();
  const d = new FakeDisk(t, disk);
  const delays: number[] = [];
  const lun = new LogicalUnit(t, 1, { sleep: async (ms) => { delays.push(ms); }, ...opts });
  return { t, d, lun, delays };
}

const rejectsCode = async (p: Promise<unknown>, cls: Function, code: string): Promise<Error> => {
  let err: unknown;
  try { await p; } catch (e) { err = e; }
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${String(err)}`);
  assert.equal((err as { code: string }).code, code, String(err));
  return err as Error;
};

test('open: qemu-like identification sequence and LunInfo', async () => {
  const { t, lun } = setup({ maxTransferBlocks: 128, maxUnmapBlocks: 4096, maxUnmapDescriptors: 8, maxWriteSameBlocks: 1024 });
  const i = await lun.open();
  assert.deepEqual(t.sequence, ['00', 'INQ', 'INQ/0', 'INQ/80', 'INQ/83', 'INQ/b0', 'INQ/b1', 'INQ/b2', '1a', '9e/10']);
  assert.ok(t.requests.every((r) => r.lun === 1));
  assert.equal(i.vendor, 'FAKE');
  assert.equal(i.product, 'DISK');
  assert.equal(i.revision, '0001');
  assert.equal(i.serial, 'SER123');
  assert.equal(i.identity, 'naa.600140512345678901234567890abcde|sn:SER123');
  assert.equal(i.designators.length, 3);
  assert.equal(i.blockSize, 512);
  assert.equal(i.blocks, 2048n);
  assert.equal(i.sizeBytes, 2048n * 512n);
  assert.equal(i.physicalBlockSize, 512);
  assert.equal(i.writeProtect, false);
  assert.equal(i.writeCache, true);
  assert.equal(i.dpoFua, true);
  assert.equal(i.rotational, false);
  assert.deepEqual(i.limits, {
    maxTransferBytes: 128 * 512, optimalTransferBytes: 0, optimalGranularityBytes: 0, maxUnmapBlocks: 4096,
    maxUnmapDescriptors: 8, maxWriteSameBlocks: 1024, unmapGranularityBytes: 0, unmapAlignmentBytes: 0,
  });
  assert.deepEqual(i.provisioning, { lbpme: true, lbprz: true, lbpu: true, lbpws: true, lbpws10: false, anc: false, type: 2 });
  assert.deepEqual(i.capabilities, { unmap: true, writeSame: true, writeSameUnmap: true, getLbaStatus: true, sync16: true, rw16: true });
  assert.equal(lun.info, i);
  // INQUIRY CDBs asked for VPD with EVPD set
  assert.equal(t.requests[3].cdb.toString('hex'), '120180' + '00ff00');
});

test('open: asks only for listed VPD pages; defaults without B0/B1/B2', async () => {
  const { t, lun } = setup({ vpdPages: [0x00, 0x80], lbpme: false, lbprz: false });
  const i = await lun.open();
  assert.deepEqual(t.sequence, ['00', 'INQ', 'INQ/0', 'INQ/80', '1a', '9e/10']);
  assert.equal(i.rotational, true);
  assert.equal(i.identity, 'sn:SER123');
  assert.equal(i.limits.maxUnmapDescriptors, 1);
  assert.deepEqual(i.capabilities, { unmap: false, writeSame: true, writeSameUnmap: false, getLbaStatus: false, sync16: true, rw16: true });
});

test('open: unit attention and BUSY are retried with capped backoff', async () => {
  const uas: string[] = [];
  const { t, lun, delays } = setup({}, { maxBackoffMs: 20, onUnitAttention: (a, q) => uas.push(`${a}/${q}`) });
  t.once(byOp(0x00), CHECK(6, 0x29, 0x00));
  t.once(byOp(0x00), CHECK(6, 0x2a, 0x09));
  t.once(stdInquiry, { status: 0x08 });
  t.once(stdInquiry, { status: 0x28 });
  t.once(stdInquiry, { status: 0x08 });
  await lun.open();
  assert.deepEqual(t.sequence.slice(0, 6), ['00', '00', '00', 'INQ', 'INQ', 'INQ']);
  assert.deepEqual(delays, [8, 16, 20]);
  assert.deepEqual(uas, ['41/0', '42/9']);
});

test('BUSY forever: gives up after maxRetries with ESCSI_RETRY', async () => {
  const { t, lun, delays } = setup({}, { maxRetries: 4 });
  await lun.open();
  t.on(byOp(0x35), { status: 0x08 });
  const err = await rejectsCode(lun.flush(), ScsiError, 'ESCSI_RETRY');
  assert.match(err.message, /SYNCHRONIZE CACHE\(10\): BUSY \(gave up after 4 retries\)/);
  assert.deepEqual(delays, [8, 16, 32, 64]);
  assert.equal(t.sequence.filter((s) => s === '35').length, 5);
});

test('open: MODE SENSE(10) fallback and READ CAPACITY(10) fallback', async () => {
  const { t, lun } = setup({ wp: true, dpofua: false, wce: false });
  t.on(byOp(0x1a), CHECK(5, 0x20, 0x00));
  t.on(byOp(0x9e, 0x10), CHECK(5, 0x20, 0x00));
  const i = await lun.open();
  assert.deepEqual(t.sequence.slice(-4), ['1a', '5a', '9e/10', '25']);
  assert.equal(i.writeProtect, true);
  assert.equal(i.dpoFua, false);
  assert.equal(i.writeCache, false);
  assert.equal(i.blocks, 2048n);
  assert.equal(i.provisioning.lbpme, false);
  assert.equal(i.capabilities.getLbaStatus, false);
  assert.equal(i.capabilities.rw16, false);
  // later MODE SENSE goes straight to (10)
  await lun.modeSense(0x08);
  assert.equal(t.sequence.at(-1), '5a');
});

test('open: caching page asked separately when the all-pages answer lacks it', async () => {
  const { t, d, lun } = setup({ wce: false });
  t.on((r) => r.cdb[0] === 0x1a && (r.cdb[2] & 0x3f) === 0x3f, () => ({ data: Buffer.from([3, 0, 0x10, 0]) }));
  void d;
  const i = await lun.open();
  assert.deepEqual(t.sequence.slice(-3), ['1a', '1a', '9e/10']);
  assert.equal(i.writeCache, false);
  assert.equal(i.dpoFua, true);
});

test('open: no MODE SENSE at all assumes writable with a write cache', async () => {
  const { t, lun } = setup();
  t.on(byOp(0x1a), CHECK(5, 0x20, 0x00));
  t.on(byOp(0x5a), CHECK(5, 0x20, 0x00));
  const i = await lun.open();
  assert.equal(i.writeProtect, false);
  assert.equal(i.writeCache, true);
  assert.equal(i.dpoFua, false);
});

test('open: READ CAPACITY(10) saying 0xffffffff without (16) is a clear error', async () => {
  const { t, lun } = setup();
  t.on(byOp(0x9e, 0x10), CHECK(5, 0x24, 0x00));
  t.on(byOp(0x25), { data: Buffer.from('ffffffff00000200', 'hex') });
  const e = await rejectsCode(lun.open(), ScsiError, 'ESCSI_UNSUPPORTED');
  assert.match(e.message, /READ CAPACITY\(16\)/);
});

test('open: refuses non-disks, missing LUNs and odd block sizes', async () => {
  const a = setup({ deviceType: 0x0c });
  const e = await rejectsCode(a.lun.open(), ScsiError, 'ESCSI_UNSUPPORTED');
  assert.match(e.message, /not a disk.*0x0c/);
  const b = setup({ qualifier: 3, deviceType: 0x1f });
  await rejectsCode(b.lun.open(), ScsiError, 'ENOLUN');
  const c = setup({ qualifier: 1 });
  await rejectsCode(c.lun.open(), ScsiError, 'ENOLUN');
  const d = setup({ blockSize: 520, blocks: 8 });
  await rejectsCode(d.lun.open(), ScsiError, 'ESCSI_UNSUPPORTED');
  // TUR: medium not present
  const m = setup();
  m.t.on(byOp(0x00), CHECK(2, 0x3a, 0x00));
  await rejectsCode(m.lun.open(), ScsiError, 'ESCSI_NOMEDIUM');
  assert.equal(m.t.requests.length, 1);
});

test('open: a broken VPD page is skipped, not fatal', async () => {
  const { t, lun } = setup();
  t.on(vpdPage(0xb0), CHECK(5, 0x24, 0x00));
  t.on(vpdPage(0x83), { data: Buffer.from('00830010', 'hex') }); // says 16 bytes, sends none
  const i = await lun.open();
  assert.deepEqual(i.designators, []);
  assert.equal(i.identity, 'sn:SER123');
  assert.equal(i.limits.maxTransferBytes, 0);
});

test('read: split at the transfer limit into views of the caller buffer', async () => {
  const { t, d, lun } = setup({ maxTransferBlocks: 16 }); // 8 KiB device limit
  await lun.open();
  t.maxTransferBytes = 4096;
  for (let i = 0; i < d.mem.length; i++) d.mem[i] = (i * 7 + 3) & 0xff;
  t.requests.length = 0;
  const into = Buffer.alloc(12288 + 100);
  const out = await lun.read(1024n, 10240, into);
  assert.equal(out.buffer, into.buffer);
  assert.equal(out.length, 10240);
  assert.deepEqual(out, d.mem.subarray(1024, 1024 + 10240));
  assert.equal(t.requests.length, 3);
  assert.deepEqual(t.requests.map((r) => [r.cdb.toString('hex'), r.dataInLength]), [
    ['28000000000200000800', 4096], ['28000000000a00000800', 4096], ['28000000001200000400', 2048],
  ]);
  t.requests.forEach((r, k) => {
    assert.equal(r.dataIn!.buffer, into.buffer);
    assert.equal(r.dataIn!.byteOffset, into.byteOffset + k * 4096);
  });
  assert.equal(t.maxInFlight, 3); // concurrent
  // the device limit wins when smaller
  t.maxTransferBytes = 1 << 20;
  t.requests.length = 0;
  const fresh = await lun.read(0n, 32768);
  assert.deepEqual(fresh, d.mem.subarray(0, 32768));
  assert.equal(t.requests.length, 4);
  assert.equal(lun.maxIoBytes(), 8192);
});

test('read: a short Data-In is an error, never stale bytes', async () => {
  const { t, lun } = setup();
  await lun.open();
  t.on(byOp(0x28), { data: Buffer.alloc(100) });
  const e = await rejectsCode(lun.read(0n, 512), ScsiError, 'ESCSI_IO');
  assert.match(e.message, /short read/);
});

test('read: RECOVERED ERROR with data counts as success', async () => {
  const { t, d, lun } = setup();
  await lun.open();
  d.mem.fill(0xab, 0, 512);
  t.once(byOp(0x28), { status: 2, sense: fixedSense(1, 0x17, 0x01), data: d.mem.subarray(0, 512) });
  const r = await lun.read(0n, 512);
  assert.equal(r[0], 0xab);
  assert.equal(t.sequence.filter((s) => s === '28').length, 1);
});

test('write: views not copies, FUA bit, FUA emulated by flush without DPOFUA', async () => {
  const { t, d, lun } = setup({ maxTransferBlocks: 8 });
  await lun.open();
  t.requests.length = 0;
  const data = Buffer.alloc(6144, 0x5a);
  await lun.write(2048n, data, { fua: true });
  assert.equal(t.requests.length, 2);
  assert.equal(t.requests[0].cdb.toString('hex'), '2a080000000400000800');
  assert.equal(t.requests[1].cdb.toString('hex'), '2a080000000c00000400');
  assert.equal(t.requests[0].dataOut!.buffer, data.buffer);
  assert.equal(t.requests[1].dataOut!.byteOffset, data.byteOffset + 4096);
  assert.deepEqual(d.mem.subarray(2048, 2048 + 6144), data);
  t.requests.length = 0;
  await lun.write(0n, Buffer.alloc(512, 1));
  assert.equal(t.requests[0].cdb[1], 0);

  const n = setup({ dpofua: false });
  await n.lun.open();
  n.t.requests.length = 0;
  await n.lun.write(0n, Buffer.alloc(512, 1), { fua: true });
  assert.deepEqual(n.t.sequence, ['2a', '35']);
  assert.equal(n.t.requests[0].cdb[1], 0);
});

test('write/read: 16-byte CDBs past a 32-bit LBA', async () => {
  const t = new FakeTransport();
  const d = new FakeDisk(t, { blocks: 16 });
  void d;
  t.on(byOp(0x9e, 0x10), () => {
    const b = Buffer.alloc(32);
    b.writeBigUInt64BE(0x1ffffffffn, 0);
    b.writeUInt32BE(512, 8);
    return { data: b };
  });
  t.on(byOp(0x8a), { status: 0 });
  t.on(byOp(0x88), (r) => ({ data: Buffer.alloc(r.dataInLength!) }));
  t.on(byOp(0x28), (r) => ({ data: Buffer.alloc(r.dataInLength!) }));
  const lun = new LogicalUnit(t, 0);
  await lun.open();
  t.requests.length = 0;
  await lun.write(0x100000000n * 512n, Buffer.alloc(1024));
  await lun.read(0x100000000n * 512n - 512n, 512);
  assert.equal(t.requests[0].cdb.toString('hex'), '8a000000000100000000000000020000');
  assert.equal(t.requests[1].cdb.toString('hex'), '2800ffffffff00000100');
});

test('requests: alignment and range are checked before anything is sent', async () => {
  const { t, lun } = setup();
  await rejectsCode(lun.read(0n, 512), RequestError, 'EINVAL'); // not open
  await lun.open();
  const n = t.requests.length;
  await rejectsCode(lun.read(1n, 512), RequestError, 'EINVAL');
  await rejectsCode(lun.read(0n, 100), RequestError, 'EINVAL');
  await rejectsCode(lun.write(2048n * 512n, Buffer.alloc(512)), RequestError, 'EINVAL');
  await rejectsCode(lun.unmap(2047n * 512n, 1024), RequestError, 'EINVAL');
  await rejectsCode(lun.read(0n, 1024, Buffer.alloc(512)), RequestError, 'EINVAL');
  assert.equal(t.requests.length, n);
  assert.equal((await lun.read(0n, 0)).length, 0);
});

test('flush: SYNCHRONIZE CACHE(10) over the whole LUN; (16) if (10) is unsupported', async () => {
  const { t, lun } = setup();
  await lun.open();
  await lun.flush();
  assert.equal(t.requests.at(-1)!.cdb.toString('hex'), '35000000000000000000');
  t.on(byOp(0x35), CHECK(5, 0x20, 0x00));
  await lun.flush();
  assert.deepEqual(t.sequence.slice(-2), ['35', '91']);
  assert.equal(t.requests.at(-1)!.cdb.toString('hex'), '91000000000000000000000000000000');
});

test('unmap: split to the max unmap LBA count; disk state follows', async () => {
  const { t, d, lun } = setup({ maxUnmapBlocks: 100, maxUnmapDescriptors: 4 });
  await lun.open();
  d.mem.fill(0xff);
  t.requests.length = 0;
  await lun.unmap(512n * 10n, 450 * 512);
  assert.equal(t.requests.length, 5);
  const descs = t.requests.map((r) => {
    assert.equal(r.cdb[0], 0x42);
    const p = r.dataOut!;
    assert.equal(r.cdb.readUInt16BE(7), p.length);
    assert.equal(p.readUInt16BE(0), p.length - 2);
    assert.equal(p.readUInt16BE(2), p.length - 8);
    return [Number(p.readBigUInt64BE(8)), p.readUInt32BE(16)];
  });
  descs.sort((a, b) => a[0] - b[0]);
  assert.deepEqual(descs, [[10, 100], [110, 100], [210, 100], [310, 100], [410, 50]]);
  assert.equal(d.mapped.slice(10, 460).every((x) => x === 0), true);
  assert.equal(d.mapped[9], 1);
  assert.equal(d.mapped[460], 1);
  assert.equal(d.mem[10 * 512 - 1], 0xff);
  assert.equal(d.mem[10 * 512], 0);
  await lun.unmap(0n, 0);
});

test('unmap: without LBPU is ENOTSUP; a refusing device loses the capability', async () => {
  const a = setup({ lbpu: false });
  await a.lun.open();
  await rejectsCode(a.lun.unmap(0n, 512), RequestError, 'ENOTSUP');
  const b = setup();
  await b.lun.open();
  b.t.on(byOp(0x42), CHECK(5, 0x20, 0x00));
  await rejectsCode(b.lun.unmap(0n, 512), ScsiError, 'ESCSI_UNSUPPORTED');
  assert.equal(b.lun.info.capabilities.unmap, false);
  await rejectsCode(b.lun.unmap(0n, 512), RequestError, 'ENOTSUP');
});

test('writeZeroes: WRITE SAME(16) of one zero block, UNMAP bit, split to max write same length', async () => {
  const { t, d, lun } = setup({ maxWriteSameBlocks: 64 });
  await lun.open();
  d.mem.fill(0xee);
  t.requests.length = 0;
  await lun.writeZeroes(0n, 150 * 512, { unmap: true });
  assert.equal(t.requests.length, 3);
  const got = t.requests.map((r) => [r.cdb[0], r.cdb[1], Number(r.cdb.readBigUInt64BE(2)), r.cdb.readUInt32BE(10), r.dataOut!.length]);
  got.sort((a, b) => a[2] - b[2]);
  assert.deepEqual(got, [[0x93, 0x08, 0, 64, 512], [0x93, 0x08, 64, 64, 512], [0x93, 0x08, 128, 22, 512]]);
  assert.ok(t.requests.every((r) => r.dataOut!.every((x) => x === 0)));
  assert.equal(d.mem.subarray(0, 150 * 512).every((x) => x === 0), true);
  assert.equal(d.mem[150 * 512], 0xee);
  t.requests.length = 0;
  await lun.writeZeroes(0n, 512); // no unmap asked: no UNMAP bit
  assert.equal(t.requests[0].cdb[1], 0);
});

test('writeZeroes: no UNMAP bit without LBPRZ; default chunk without a B0 limit', async () => {
  const { t, lun } = setup({ lbprz: false, blocks: 70000 }, { defaultWriteSameBlocks: 65536 });
  await lun.open();
  t.requests.length = 0;
  await lun.writeZeroes(0n, 70000 * 512, { unmap: true });
  const counts = t.requests.map((r) => [r.cdb[1], r.cdb.readUInt32BE(10)]).sort((a, b) => b[1] - a[1]);
  assert.deepEqual(counts, [[0, 65536], [0, 4464]]);
});

test('writeZeroes: WRITE SAME refused -> zero buffers from then on; fast -> ENOTSUP', async () => {
  const { t, d, lun } = setup();
  await lun.open();
  t.on(byOp(0x93), CHECK(5, 0x20, 0x00));
  d.mem.fill(0x11);
  t.requests.length = 0;
  await lun.writeZeroes(512n, 4096);
  assert.deepEqual(t.sequence, ['93', '2a']);
  assert.equal(d.mem.subarray(512, 4608).every((x) => x === 0), true);
  assert.equal(d.mem[511], 0x11);
  assert.equal(d.mem[4608], 0x11);
  assert.equal(lun.info.capabilities.writeSame, false);
  t.requests.length = 0;
  await rejectsCode(lun.writeZeroes(0n, 512, { fast: true }), RequestError, 'ENOTSUP');
  assert.equal(t.requests.length, 0);

  const f = setup();
  await f.lun.open();
  f.t.on(byOp(0x93), CHECK(5, 0x24, 0x00));
  await rejectsCode(f.lun.writeZeroes(0n, 512, { fast: true }), RequestError, 'ENOTSUP');
  assert.deepEqual(f.t.sequence.slice(-1), ['93']);
  // other errors are errors, not fallbacks
  const g = setup();
  await g.lun.open();
  g.t.on(byOp(0x93), CHECK(7, 0x27, 0x00));
  await rejectsCode(g.lun.writeZeroes(0n, 512), ScsiError, 'ESCSI_WRITE_PROTECT');
  assert.equal(g.lun.info.capabilities.writeSame, true);
});

test('lbaStatus: GET LBA STATUS extents, clipped to the range; all mapped without LBPME', async () => {
  const { t, lun } = setup();
  await lun.open();
  await lun.unmap(512n * 100n, 512 * 50);
  const e = await lun.lbaStatus(512n * 90n, 512 * 100);
  assert.deepEqual(e, [
    { offset: 512n * 90n, length: 512n * 10n, state: 'mapped' },
    { offset: 512n * 100n, length: 512n * 50n, state: 'deallocated' },
    { offset: 512n * 150n, length: 512n * 40n, state: 'mapped' },
  ]);
  const c = t.requests.at(-1)!.cdb;
  assert.deepEqual([c[0], c[1], Number(c.readBigUInt64BE(2))], [0x9e, 0x12, 90]);
  // a device answering nonsense (first descriptor past the start) -> one mapped extent
  t.once(byOp(0x9e, 0x12), { data: Buffer.from('00000014000000000000000000000100000000100100000000', 'hex') });
  assert.deepEqual(await lun.lbaStatus(0n, 512), [{ offset: 0n, length: 512n, state: 'mapped' }]);

  const n = setup({ lbpme: false });
  await n.lun.open();
  n.t.requests.length = 0;
  assert.deepEqual(await n.lun.lbaStatus(0n, 4096), [{ offset: 0n, length: 4096n, state: 'mapped' }]);
  assert.equal(n.t.requests.length, 0);
});

test('error mapping on I/O', async () => {
  const { t, lun } = setup();
  await lun.open();
  t.once(byOp(0x28), { status: 2, sense: fixedSense(3, 0x11, 0x00, 1234) });
  const e = await rejectsCode(lun.read(0n, 512), ScsiError, 'ESCSI_MEDIUM');
  assert.equal(e.message, 'READ(10): MEDIUM ERROR: unrecovered read error (11/00) at LBA 1234');
  t.once(byOp(0x2a), CHECK(7, 0x27, 0x07));
  await rejectsCode(lun.write(0n, Buffer.alloc(512)), ScsiError, 'ESCSI_NOSPACE');
  t.once(byOp(0x2a), { status: 0x18 });
  await rejectsCode(lun.write(0n, Buffer.alloc(512)), ScsiError, 'ESCSI_IO');
  // ABORTED COMMAND retried 3 times then ESCSI_ABORTED
  t.on(byOp(0x35), CHECK(0x0b, 0x47, 0x00));
  const before = t.requests.length;
  await rejectsCode(lun.flush(), ScsiError, 'ESCSI_ABORTED');
  assert.equal(t.requests.length - before, 4);
});

test('transport timeouts are retried with backoff; other transport errors are not', async () => {
  const { t, lun, delays } = setup();
  await lun.open();
  t.once(byOp(0x35), () => { throw new TransportError('ETIMEOUT', 'timed out'); });
  await lun.flush();
  assert.deepEqual(delays, [8]);
  t.once(byOp(0x35), () => { throw new TransportError('ECONNLOST', 'gone'); });
  await rejectsCode(lun.flush(), TransportError, 'ECONNLOST');
});

test('revalidate: same LU updates in place, a different one is ELUN_CHANGED', async () => {
  const { t, d, lun } = setup();
  const i = await lun.open();
  const caps = i.capabilities;
  caps.writeSame = false;
  const again = await lun.revalidate();
  assert.equal(again, i);
  assert.equal(i.capabilities, caps);
  assert.equal(caps.writeSame, false);
  d.o.serial = 'OTHER';
  await rejectsCode(lun.revalidate(), ScsiError, 'ELUN_CHANGED');
  assert.equal(lun.info.serial, 'SER123');
  void t;
});

test('reportLuns and inquiry helpers', async () => {
  const { t, lun } = setup();
  t.on(byOp(0xa0), { data: Buffer.from('00000010000000000000000000000000' + '0001000000000000', 'hex') });
  const l = await lun.reportLuns();
  assert.deepEqual(l.map((x) => x.lun), [0, 1]);
  t.on(stdInquiry, { data: inquiryData({ vendor: 'IET', product: 'VIRTUAL-DISK' }) });
  assert.equal((await lun.inquiry()).product, 'VIRTUAL-DISK');
});

test('open: a missing LUN (TUR says LU not supported) is a clear error after a few tries', async () => {
  const { t, lun, delays } = setup();
  t.on(byOp(0x00), CHECK(5, 0x25, 0x00));
  const e = await rejectsCode(lun.open(), ScsiError, 'ENOLUN');
  assert.match(e.message, /no logical unit at LUN 1/);
  assert.deepEqual(delays, [8, 16, 32]);
});

test('NOT READY becoming ready backs off; deferred errors retry the current command', async () => {
  const { t, lun, delays } = setup();
  await lun.open();
  t.once(byOp(0x35), CHECK(2, 0x04, 0x01));
  t.once(byOp(0x35), CHECK(2, 0x04, 0x01));
  t.once(byOp(0x35), { status: 2, sense: fixedSense(3, 0x0c, 0x00, 77, true) });
  await lun.flush();
  assert.deepEqual(delays, [8, 16]);
  assert.equal(t.sequence.filter((s) => s === '35').length, 4);
});

test('fuzz: open() against random answers resolves or rejects with our errors only', async () => {
  const fc = (await import('fast-check')).default;
  await fc.assert(fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 96 }), { minLength: 1, maxLength: 12 }),
    fc.array(fc.constantFrom(0, 0, 0, 2, 8), { minLength: 1, maxLength: 12 }), async (datas, statuses) => {
      const t = new FakeTransport();
      let k = 0;
      t.on(() => true, () => {
        const n = k++;
        const status = statuses[n % statuses.length];
        const data = Buffer.from(datas[n % datas.length]);
        // mostly-plausible answers: the right page code for VPD, a disk for standard INQUIRY
        return status === 2 ? { status, sense: data } : { status, data };
      });
      t.on(stdInquiry, () => ({ data: inquiryData() }));
      const lun = new LogicalUnit(t, 0, { sleep: async () => undefined });
      try {
        const i = await lun.open();
        assert.ok(i.blockSize >= 512);
      } catch (e) {
        assert.ok(e instanceof ScsiError || e instanceof RequestError, String(e));
      }
    }), { numRuns: 300 });
});
