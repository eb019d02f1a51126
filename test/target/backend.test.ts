import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileBackend, GranuleSet, MemoryBackend, parseSize } from '../../src/target/backend';

function tmpdir(t: { after: (fn: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'tgt-backend-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

test('parseSize', () => {
  assert.equal(parseSize('1G'), 2 ** 30);
  assert.equal(parseSize('512M'), 512 * 2 ** 20);
  assert.equal(parseSize('4096'), 4096);
  assert.equal(parseSize('2GiB'), 2 ** 31);
  assert.throws(() => parseSize('lots'));
});

test('GranuleSet runs and sparse pages', () => {
  const g = new GranuleSet();
  g.setRange(5, 10, true);
  g.setRange(40000, 40002, true);
  g.setRange(7, 8, false);
  assert.deepEqual(g.runs(), [[5, 2], [8, 2], [40000, 2]]);
  assert.ok(g.has(40001) && !g.has(7));
  g.setRange(0, 100000, false);
  assert.deepEqual(g.runs(), []);
});

test('MemoryBackend: sparse chunks, discard, mapping', async () => {
  const b = new MemoryBackend({ size: 1 << 20, blockSize: 512 });
  assert.equal(b.allocatedBytes, 0);
  await b.write(1000, Buffer.alloc(10000, 9));
  assert.deepEqual(await b.read(1000, 10000), Buffer.alloc(10000, 9));
  assert.deepEqual(await b.read(0, 1000), Buffer.alloc(1000));
  assert.equal(b.allocatedBytes, 3 * 4096);
  await b.discard(4096, 4096);
  assert.deepEqual(await b.mapping(0, 16384), [
    { offset: 0, length: 4096, mapped: true }, { offset: 4096, length: 4096, mapped: false },
    { offset: 8192, length: 4096, mapped: true }, { offset: 12288, length: 4096, mapped: false },
  ]);
  // A partial discard zeroes but keeps the chunk unless it becomes all zero.
  await b.discard(8192, 100);
  assert.deepEqual(await b.read(8192, 100), Buffer.alloc(100));
  assert.equal((await b.mapping(8192, 4096))[0].mapped, true);
  await b.discard(8192 + 100, 4096 - 100);
  assert.equal((await b.mapping(8192, 4096))[0].mapped, false);
});

function allocatedBytes(file: string): number {
  return fs.statSync(file).blocks * 512;
}

test('FileBackend: created sparse, holes really punched, allocation map persisted and rebuilt', async (t) => {
  const dir = tmpdir(t);
  const file = path.join(dir, 'lun.img');
  const b = await FileBackend.open({ path: file, size: 64 << 20, blockSize: 512 });
  assert.equal(b.allocationSource, 'created');
  assert.equal(fs.statSync(file).size, 64 << 20);
  assert.ok(allocatedBytes(file) < 1 << 20);
  const data = Buffer.alloc(1 << 20, 0xa5);
  await b.write(4 << 20, data, true);
  assert.ok(allocatedBytes(file) >= 1 << 20);
  assert.deepEqual((await b.mapping(4 << 20, 1 << 20)), [{ offset: 4 << 20, length: 1 << 20, mapped: true }]);
  await b.discard((4 << 20) + 65536, 131072);
  assert.ok(b.punchSupported, `fallocate(2) PUNCH_HOLE works here: ${b.punchError}`);
  assert.ok(allocatedBytes(file) <= (1 << 20) - 131072 + 65536);
  assert.deepEqual(await b.read((4 << 20) + 65536, 131072), Buffer.alloc(131072));
  const m = await b.mapping(4 << 20, 1 << 20);
  assert.deepEqual(m.map((e) => [e.offset - (4 << 20), e.length, e.mapped]), [[0, 65536, true], [65536, 131072, false], [196608, (1 << 20) - 196608, true]]);
  await b.close();
  assert.ok(fs.existsSync(`${file}.alloc`));

  // Reopen: same data, map from the sidecar.
  const b2 = await FileBackend.open({ path: file, blockSize: 512 });
  assert.equal(b2.allocationSource, 'sidecar');
  assert.equal(b2.size, 64 << 20);
  assert.deepEqual(await b2.read(4 << 20, 65536), data.subarray(0, 65536));
  assert.deepEqual((await b2.mapping(4 << 20, 1 << 20)).map((e) => e.mapped), [true, false, true]);
  // A write drops the saved map (crash safety) until the next flush.
  await b2.write(0, Buffer.alloc(512, 1));
  assert.ok(!fs.existsSync(`${file}.alloc`));
  await b2.flush();
  assert.ok(fs.existsSync(`${file}.alloc`));
  await b2.close();

  // Without the sidecar the map is rebuilt from the file system's extents (filefrag).
  fs.unlinkSync(`${file}.alloc`);
  const b3 = await FileBackend.open({ path: file, blockSize: 512 });
  assert.ok(b3.allocationSource === 'filefrag' || b3.allocationSource === 'scan');
  const m3 = await b3.mapping(4 << 20, 1 << 20);
  assert.deepEqual(m3.map((e) => [e.offset - (4 << 20), e.length, e.mapped]), [[0, 65536, true], [65536, 131072, false], [196608, (1 << 20) - 196608, true]]);
  assert.equal((await b3.mapping(0, 4096))[0].mapped, true);
  assert.equal((await b3.mapping(8 << 20, 4096))[0].mapped, false);
  await b3.close();

  // A file modified behind our back (mtime differs) is not trusted either.
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(4096, 3), 0, 4096, 32 << 20);
  fs.closeSync(fd);
  const b4 = await FileBackend.open({ path: file, blockSize: 512 });
  assert.notEqual(b4.allocationSource, 'sidecar');
  assert.equal((await b4.mapping(32 << 20, 4096))[0].mapped, true);
  await b4.close();
});

test('FileBackend: scan fallback when filefrag is unavailable; errors for bad geometry', async (t) => {
  const dir = tmpdir(t);
  const file = path.join(dir, 'lun.img');
  const b = await FileBackend.open({ path: file, size: 1 << 20, blockSize: 4096 });
  await b.write(8192, Buffer.alloc(4096, 1));
  await b.close();
  fs.unlinkSync(`${file}.alloc`);
  const b2 = await FileBackend.open({ path: file, blockSize: 4096, filefragBin: '/nonexistent/filefrag' });
  assert.equal(b2.allocationSource, 'scan');
  assert.deepEqual((await b2.mapping(0, 16384)).map((e) => e.mapped), [false, true, false]);
  await b2.close();
  await assert.rejects(FileBackend.open({ path: path.join(dir, 'missing.img'), blockSize: 512 }), /no size/);
  fs.writeFileSync(path.join(dir, 'odd.img'), Buffer.alloc(1000));
  await assert.rejects(FileBackend.open({ path: path.join(dir, 'odd.img'), blockSize: 512 }), /multiple/);
});

test('FileBackend: zeros are written when punching fails', async (t) => {
  const dir = tmpdir(t);
  const file = path.join(dir, 'lun.img');
  const b = await FileBackend.open({
    path: file, size: 1 << 20, blockSize: 512,
    punchHole: async () => { throw new Error('fallocate(PUNCH_HOLE) failed: EOPNOTSUPP'); },
  });
  await b.write(0, Buffer.alloc(8192, 1));
  await b.discard(0, 8192);
  assert.equal(b.punchSupported, false);
  assert.equal(b.punchError, 'fallocate(PUNCH_HOLE) failed: EOPNOTSUPP');
  assert.deepEqual(await b.read(0, 8192), Buffer.alloc(8192));
  assert.equal((await b.mapping(0, 8192))[0].mapped, true, 'still allocated: reported honestly');
  await b.close();
});

test('MemoryBackend: discarding a huge range over few chunks visits the chunks only', async () => {
  const b = new MemoryBackend({ size: 2 ** 40, blockSize: 4096 });
  await b.write(2 ** 39, Buffer.alloc(8192, 1));
  await b.write(4096, Buffer.alloc(4096, 1));
  await b.discard(0, 2 ** 40 - 4096);
  assert.equal(b.allocatedBytes, 0);
});
