import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { LunExport, BlockLun } from '../../src/bridge/lun-export';
import { RangeLock } from '../../src/bridge/range-lock';
import type { LunInfo, LbaExtent } from '../../src/scsi/lun';

/** A LUN in memory that insists on aligned I/O, as LogicalUnit does, with random latency. */
class MemLun implements BlockLun {
  data: Buffer;
  mapped: boolean[];
  calls: string[] = [];
  flushes = 0;
  info: LunInfo;
  constructor(readonly bs: number, blocks: number, opts: { dpoFua?: boolean; unmap?: boolean; lbprz?: boolean } = {}) {
    this.data = Buffer.alloc(bs * blocks);
    this.mapped = new Array(blocks).fill(false);
    this.info = {
      lun: 0, deviceType: 0, vendor: 'TEST', product: 'MEMLUN', revision: '1', designators: [], identity: 'x',
      blockSize: bs, blocks: BigInt(blocks), sizeBytes: BigInt(bs * blocks), physicalBlockSize: bs, lowestAlignedLba: 0,
      writeProtect: false, writeCache: true, dpoFua: opts.dpoFua ?? true, rotational: false, protectionEnabled: false,
      limits: { maxTransferBytes: 0, optimalTransferBytes: 0, optimalGranularityBytes: 0, maxUnmapBlocks: 0, maxUnmapDescriptors: 0, maxWriteSameBlocks: 0, unmapGranularityBytes: 0, unmapAlignmentBytes: 0 },
      provisioning: { lbpme: true, lbprz: opts.lbprz ?? true, lbpu: true, lbpws: true, lbpws10: false, anc: false, type: 2 },
      capabilities: { unmap: opts.unmap ?? true, writeSame: true, writeSameUnmap: true, getLbaStatus: true, sync16: true, rw16: true },
      vpdPages: [], inquiry: {} as LunInfo['inquiry'],
    };
  }
  private check(offset: bigint, length: number | bigint) {
    assert.equal(offset % BigInt(this.bs), 0n, `unaligned offset ${offset}`);
    assert.equal(BigInt(length) % BigInt(this.bs), 0n, `unaligned length ${length}`);
  }
  private async delay() { await new Promise((r) => setTimeout(r, Math.random() * 3)); }
  async read(offset: bigint, length: number, into?: Buffer) {
    this.check(offset, length); this.calls.push(`read ${offset} ${length}`);
    await this.delay();
    const out = into ? into.subarray(0, length) : Buffer.alloc(length);
    this.data.copy(out, 0, Number(offset), Number(offset) + length);
    return out;
  }
  async write(offset: bigint, data: Buffer, opts: { fua?: boolean } = {}) {
    this.check(offset, data.length); this.calls.push(`write ${offset} ${data.length}${opts.fua ? ' fua' : ''}`);
    const copy = Buffer.from(data);
    await this.delay();
    copy.copy(this.data, Number(offset));
    for (let b = Number(offset) / this.bs; b < (Number(offset) + data.length) / this.bs; b++) this.mapped[b] = true;
  }
  async flush() { this.flushes++; this.calls.push('flush'); }
  async unmap(offset: bigint, length: number | bigint) {
    this.check(offset, length); this.calls.push(`unmap ${offset} ${length}`);
    this.data.fill(0, Number(offset), Number(offset) + Number(length));
    for (let b = Number(offset) / this.bs; b < (Number(offset) + Number(length)) / this.bs; b++) this.mapped[b] = false;
  }
  async writeZeroes(offset: bigint, length: number | bigint, opts: { unmap?: boolean; fast?: boolean } = {}) {
    this.check(offset, length); this.calls.push(`zero ${offset} ${length}${opts.unmap ? ' unmap' : ''}`);
    this.data.fill(0, Number(offset), Number(offset) + Number(length));
    for (let b = Number(offset) / this.bs; b < (Number(offset) + Number(length)) / this.bs; b++) this.mapped[b] = !opts.unmap;
  }
  async lbaStatus(offset: bigint, length: number | bigint): Promise<LbaExtent[]> {
    this.check(offset, length);
    const out: LbaExtent[] = [];
    const first = Number(offset) / this.bs;
    const last = first + Number(length) / this.bs;
    for (let b = first; b < last; b++) {
      const state = this.mapped[b] ? 'mapped' : 'deallocated';
      const prev = out[out.length - 1];
      if (prev && prev.state === state) prev.length += BigInt(this.bs);
      else out.push({ offset: BigInt(b * this.bs), length: BigInt(this.bs), state });
    }
    return out;
  }
}

test('flags and block sizes come from the LUN', () => {
  const e = new LunExport(new MemLun(4096, 256), { name: 'x' });
  assert.equal(e.size, 4096n * 256n);
  assert.deepEqual(e.blockSizes, { minimum: 4096, preferred: 4096, maximum: 32 * 1024 * 1024 });
  assert.equal(e.flags.multiConn, true);
  assert.equal(e.flags.flush, true);
  assert.equal(e.flags.trim, true);
  assert.equal(e.flags.readOnly, false);
  assert.equal(new LunExport(new MemLun(512, 8), { name: 'y', readOnly: true }).flags.readOnly, true);
  assert.equal(new LunExport(new MemLun(512, 8, { unmap: false }), { name: 'y' }).flags.trim, false);
});

test('unaligned reads and writes are served by read-modify-write without touching neighbours', async () => {
  const lun = new MemLun(4096, 64);
  const e = new LunExport(lun, { name: 'x' });
  const model = Buffer.alloc(4096 * 64);
  const init = randomBytes(model.length);
  await e.write(0n, init, false);
  init.copy(model);
  for (const [off, len] of [[1, 1], [4095, 2], [100, 9000], [8192, 512], [12288 + 511, 4096 * 3 + 7]]) {
    const d = randomBytes(len);
    await e.write(BigInt(off), d, false);
    d.copy(model, off);
    // A reused reply buffer: every byte of it must be overwritten, and nothing past it.
    const into = Buffer.alloc(len + 3, 0xa5);
    await e.read(BigInt(off), len, into);
    assert.deepEqual(into.subarray(0, len), model.subarray(off, off + len));
    assert.deepEqual(into.subarray(len), Buffer.alloc(3, 0xa5));
  }
  assert.deepEqual(lun.data, model);
});

test('concurrent overlapping unaligned writes never lose bytes outside each request', async () => {
  const lun = new MemLun(4096, 16);
  const e = new LunExport(lun, { name: 'x' });
  const model = Buffer.alloc(4096 * 16);
  // Each writer owns a disjoint 512-byte slot, but many slots share a block.
  const writes: Promise<void>[] = [];
  for (let round = 0; round < 4; round++) {
    for (let slot = 0; slot < 128; slot++) {
      const d = Buffer.alloc(512, (slot + round * 7) & 0xff);
      writes.push(e.write(BigInt(slot * 512), d, false));
      d.copy(model, slot * 512);
    }
  }
  await Promise.all(writes);
  assert.deepEqual(lun.data, model);
});

test('FUA uses the FUA bit with DPOFUA and write+flush without', async () => {
  const a = new MemLun(512, 8, { dpoFua: true });
  await new LunExport(a, { name: 'a' }).write(0n, Buffer.alloc(512, 1), true);
  assert.deepEqual(a.calls, ['write 0 512 fua']);
  const b = new MemLun(512, 8, { dpoFua: false });
  await new LunExport(b, { name: 'b' }).write(0n, Buffer.alloc(512, 1), true);
  assert.deepEqual(b.calls, ['write 0 512', 'flush']);
});

test('trim unmaps only whole blocks; zero handles partial edges', async () => {
  const lun = new MemLun(4096, 8);
  const e = new LunExport(lun, { name: 'x' });
  await e.write(0n, Buffer.alloc(4096 * 8, 0xaa), false);
  lun.calls = [];
  await e.trim(100n, 4096 * 3, false);
  assert.deepEqual(lun.calls, ['unmap 4096 8192']);
  lun.calls = [];
  await e.zero(4096n * 5n + 10n, 4096 + 20, { noHole: true, fastZero: false, fua: false });
  const z = lun.data.subarray(4096 * 5, 4096 * 7);
  assert.equal(z[9], 0xaa);
  assert.ok(z.subarray(10, 10 + 4096 + 20).every((b) => b === 0));
  assert.equal(z[10 + 4096 + 20], 0xaa);
  await assert.rejects(e.zero(1n, 10, { noHole: false, fastZero: true, fua: false }), (err: { code?: string }) => err.code === 'ENOTSUP');
  lun.calls = [];
  await e.zero(0n, 4096, { noHole: false, fastZero: false, fua: true });
  assert.deepEqual(lun.calls, ['zero 0 4096 unmap', 'flush']);
});

test('block status maps deallocated ranges to holes, from the requested offset', async () => {
  const lun = new MemLun(512, 64);
  const e = new LunExport(lun, { name: 'x' });
  await e.write(512n * 4n, Buffer.alloc(512 * 4, 1), false);
  const ext = await e.blockStatus(100n, 512 * 16);
  assert.deepEqual(ext, [
    { length: 512 * 4 - 100, flags: 3 },
    { length: 512 * 4, flags: 0 },
    { length: 512 * 8 + 100, flags: 3 },
  ]);
  assert.equal(ext.reduce((a, x) => a + x.length, 0), 512 * 16);
});

test('RangeLock grants disjoint ranges at once and overlapping ones in order', async () => {
  const l = new RangeLock();
  const order: string[] = [];
  const r1 = await l.acquire(0n, 10n);
  const p2 = l.acquire(5n, 15n).then((rel) => { order.push('b'); return rel; });
  const r3 = await l.acquire(20n, 30n);
  order.push('c');
  assert.equal(l.waitingCount, 1);
  r1();
  (await p2)();
  r3();
  assert.deepEqual(order, ['c', 'b']);
  assert.equal(l.heldCount, 0);
});
