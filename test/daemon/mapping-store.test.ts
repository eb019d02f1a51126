import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MappingStore, MappingRecord } from '../../src/daemon/mapping-store';

function rec(index: number, over: Partial<MappingRecord> = {}): MappingRecord {
  return {
    version: 1, index, url: `iscsi://127.0.0.1/iqn.2000-01.x:t/${index + 1}`, backendId: `iscsi-nbd:naa.${index}`, identity: `naa.${index}`,
    blockSize: 4096, size: '1073741824', connections: 1, readOnly: false, ioTimeout: 30, reattachTimeout: 120, mappedAt: '2026-12-02T00:00:00Z', ...over,
  };
}

function tmpStore(): MappingStore {
  return new MappingStore(fs.mkdtempSync(path.join(os.tmpdir(), 'maps-')));
}

test('mapping records round-trip, one file per device, private to root', () => {
  const s = tmpStore();
  s.save(rec(0));
  s.save(rec(3, { readOnly: true }));
  const { records, problems } = s.load();
  assert.deepEqual(problems, []);
  assert.deepEqual(records.map((r) => [r.index, r.readOnly]), [[0, false], [3, true]]);
  assert.equal(fs.statSync(path.join(s.dir, 'nbd3.json')).mode & 0o777, 0o600);
  assert.deepEqual(fs.readdirSync(s.dir).sort(), ['nbd0.json', 'nbd3.json'], 'no temporary file is left behind');
  s.remove(0);
  assert.deepEqual(s.load().records.map((r) => r.index), [3]);
  assert.equal(s.get(3)?.identity, 'naa.3');
});

test('a torn or corrupt record is named and loses no other mapping', () => {
  const s = tmpStore();
  s.save(rec(1));
  s.save(rec(2));
  const full = fs.readFileSync(path.join(s.dir, 'nbd2.json'), 'utf8');
  fs.writeFileSync(path.join(s.dir, 'nbd2.json'), full.slice(0, full.length / 2)); // torn
  fs.writeFileSync(path.join(s.dir, 'nbd5.json'), JSON.stringify({ ...rec(5), size: 'big' })); // wrong shape
  fs.writeFileSync(path.join(s.dir, 'nbd6.json'), JSON.stringify(rec(7))); // the wrong device
  fs.writeFileSync(path.join(s.dir, 'nbd8.json'), JSON.stringify({ ...rec(8), digest: 'md5' })); // a digest mode we do not have
  s.save({ ...rec(3), digest: 'crc32c' });
  fs.writeFileSync(path.join(s.dir, 'nbd9.json.123.tmp'), '{'); // an interrupted write
  const { records, problems } = s.load();
  assert.deepEqual(records.map((r) => [r.index, r.digest]), [[1, undefined], [3, 'crc32c']]);
  assert.equal(problems.length, 4);
  assert.match(problems[0].message, /nbd2\.json: .*JSON/);
  assert.match(problems[1].message, /nbd5\.json: not a mapping record/);
  assert.match(problems[2].message, /nbd6\.json: it describes nbd7, not nbd6/);
  assert.match(problems[3].message, /nbd8\.json: not a mapping record/);
  for (const p of problems) assert.match(p.message, /not reattached/);
});

test('every truncation of a record is reported, never taken as a mapping', () => {
  const s = tmpStore();
  s.save(rec(4));
  const f = path.join(s.dir, 'nbd4.json');
  const full = fs.readFileSync(f, 'utf8').trimEnd();
  for (let n = 0; n < full.length; n++) {
    fs.writeFileSync(f, full.slice(0, n));
    const { records, problems } = s.load();
    assert.equal(records.length, 0, `cut at ${n}`);
    assert.equal(problems.length, 1, `cut at ${n}`);
  }
});

test('a state dir that does not exist yet has no mappings', () => {
  const s = new MappingStore(path.join(os.tmpdir(), `none-${process.pid}-${Date.now()}`));
  assert.deepEqual(s.load(), { records: [], problems: [] });
});
