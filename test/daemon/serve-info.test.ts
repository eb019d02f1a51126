// `iscsi-nbd serve` in front of a real tgtd: what NBD clients see of the
// exports (nbdinfo --json / --list / --map), and read-only exports.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startTgtdWithLuns } from '../helpers/tgtd';
import { startBridge, describeRun } from '../helpers/bridge';
import { nbdPython } from '../helpers/libnbd';
import { skipUnless } from '../helpers/tools';
import { run } from '../helpers/process';

const MiB = 1024 * 1024;

test('nbdinfo on tgtd LUNs: sizes, block sizes, capabilities, --list, read-only, --map after a trim', { skip: skipUnless('tgtd', 'tgtadm', 'nbdinfo', 'nbdsh'), timeout: 120_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({
    targets: [{ luns: [{ size: 16 * MiB }, { size: 32 * MiB, blockSize: 4096, thin: true }] }],
  });
  t.after(() => tgt.stop());
  const b = await startBridge({
    exports: [['d512', tgt.url(1, 1)], ['d4k', tgt.url(1, 2)]],
    sessions: 2,
  });
  t.after(() => b.stop());

  const info = async (name: string) => {
    const r = await run('nbdinfo', ['--json', b.uri(name)], { timeoutMs: 20000 });
    assert.equal(r.code, 0, describeRun(r, 'nbdinfo --json'));
    return JSON.parse(r.stdout).exports[0] as Record<string, unknown>;
  };
  const e512 = await info('d512');
  assert.equal(e512['export-name'], 'd512');
  assert.equal(e512['export-size'], 16 * MiB);
  assert.equal(e512.block_size_minimum, 512);
  assert.equal(e512.is_read_only, false);
  for (const k of ['can_flush', 'can_fua', 'can_zero', 'can_multi_conn']) assert.equal(e512[k], true, `d512 ${k}`);
  assert.equal(e512.can_trim, false, 'a thick tgtd LUN has no UNMAP, so no trim');

  const e4k = await info('d4k');
  assert.equal(e4k['export-size'], 32 * MiB);
  assert.equal(e4k.block_size_minimum, 4096);
  assert.equal(e4k.is_read_only, false);
  for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn']) assert.equal(e4k[k], true, `d4k ${k}`);
  assert.ok((e4k.block_size_maximum as number) >= 4096 && (e4k.block_size_maximum as number) <= 32 * MiB);

  const l = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${b.port}`], { timeoutMs: 20000 });
  assert.equal(l.code, 0, describeRun(l, 'nbdinfo --list'));
  assert.deepEqual(JSON.parse(l.stdout).exports.map((x: { 'export-name': string }) => x['export-name']).sort(), ['d4k', 'd512']);

  if (process.env.CI || (await run('sh', ['-c', 'command -v nbd-client'], { timeoutMs: 5000 })).code === 0) {
    const nc = await run('nbd-client', ['-l', '127.0.0.1', String(b.port)], { timeoutMs: 20000 });
    assert.equal(nc.code, 0, describeRun(nc, 'nbd-client -l'));
    assert.match(nc.stdout, /^d512/m);
    assert.match(nc.stdout, /^d4k/m);
  }

  // Write data on the thin LUN, trim part of it, and look at the map.
  const w = await nbdPython(`
h = connect(sys.argv[1])
h.pwrite(b'\\x5a' * (4 * 1024 * 1024), 0)
h.flush()
h.trim(1024 * 1024, 1024 * 1024)
h.flush()
assert h.pread(4096, 0) == b'\\x5a' * 4096
assert h.pread(4096, 2 * 1024 * 1024) == b'\\x5a' * 4096
h.shutdown()
`, [b.uri('d4k')], { timeoutMs: 30000 });
  assert.equal(w.code, 0, describeRun(w, 'write+trim'));
  const m = await run('nbdinfo', ['--map', '--json', b.uri('d4k')], { timeoutMs: 20000 });
  assert.equal(m.code, 0, describeRun(m, 'nbdinfo --map'));
  const map = JSON.parse(m.stdout) as Array<{ offset: number; length: number; type: number }>;
  const at = (off: number) => map.find((x) => x.offset <= off && off < x.offset + x.length)!;
  assert.equal(at(0).type & 1, 0, `written data is allocated: ${m.stdout}`);
  assert.equal(at(1024 * 1024).type & 1, 1, `the trimmed range is a hole: ${m.stdout}`);
  assert.equal(at(2 * MiB - 4096).type & 1, 1, `the trimmed range is a hole to its end: ${m.stdout}`);
  assert.equal(at(2 * MiB).type & 1, 0, `data after the trim is allocated: ${m.stdout}`);
  assert.equal(at(8 * MiB).type & 1, 1, `never-written space is a hole: ${m.stdout}`);
  // The hole reads as zeros; odd trims, zeroes and block status requests.
  const z = await nbdPython(`
h = connect(sys.argv[1], strict=False, meta=True)
size = h.get_size()
MiB = 1024 * 1024
res['hole_zero'] = h.pread(MiB, MiB) == bytes(MiB)
# A trim smaller than a block unmaps nothing and leaves the data alone.
tryit('trim_sub_block', lambda: h.trim(512, 2 * MiB + 512))
res['sub_trim_kept'] = h.pread(4096, 2 * MiB) == b'\x5a' * 4096
# A trim with ragged edges unmaps only the whole blocks inside.
tryit('trim_ragged', lambda: h.trim(3 * 4096, 2 * MiB + 4096 + 512))
res['ragged_edges_kept'] = h.pread(512, 2 * MiB + 4096) == b'\x5a' * 512 and h.pread(512, 2 * MiB + 4 * 4096) == b'\x5a' * 512
tryit('trim_past_end', lambda: h.trim(8192, size - 4096))
tryit('trim_fua', lambda: h.trim(4096, 3 * MiB, nbd.CMD_FLAG_FUA))
res['trim_fua_zero'] = h.pread(4096, 3 * MiB) == bytes(4096)
tryit('zero_unmap', lambda: h.zero(MiB // 2, 3 * MiB + 8192))
tryit('zero_no_hole', lambda: h.zero(8192, 2 * MiB + 65536, nbd.CMD_FLAG_NO_HOLE))
tryit('zero_fast', lambda: h.zero(MiB // 4, 3 * MiB + 8192, nbd.CMD_FLAG_FAST_ZERO))
res['zeroed'] = h.pread(MiB // 2, 3 * MiB + 8192) == bytes(MiB // 2) and h.pread(8192, 2 * MiB + 65536) == bytes(8192)
res['after_zero'] = h.pread(4096, 3 * MiB + 8192 + MiB // 2) == b'\x5a' * 4096
ext = []
tryit('block_status', lambda: h.block_status(2 * MiB, 0, lambda ctx, off, entries, err: ext.append(list(entries)) or 0))
# [0, 1M) data, [1M, 2M) the trimmed hole.
e = ext[0] if len(ext) == 1 else []
res['extents'] = e[:4]
tryit('block_status_past_end', lambda: h.block_status(8192, size - 4096, lambda *a: 0))
tryit('block_status_unaligned', lambda: h.block_status(1000, 2 * MiB + 512, lambda *a: 0))
res['connected'] = h.aio_is_ready()
h.shutdown()
done()`, [b.uri('d4k')], { timeoutMs: 20000 });
  assert.equal(z.code, 0, describeRun(z, 'thin LUN requests'));
  assert.deepEqual(JSON.parse(z.stdout.trim()), {
    hole_zero: true, trim_sub_block: 0, sub_trim_kept: true, trim_ragged: 0, ragged_edges_kept: true,
    trim_past_end: 22, trim_fua: 0, trim_fua_zero: true, zero_unmap: 0, zero_no_hole: 0, zero_fast: 0, zeroed: true, after_zero: true,
    block_status: 0, extents: [MiB, 0, MiB, 3], block_status_past_end: 22, block_status_unaligned: 22, connected: true,
  });
});

test('--read-only: nbdinfo says read-only and writes fail with EPERM', { skip: skipUnless('tgtd', 'tgtadm', 'nbdinfo', 'nbdsh'), timeout: 90_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({ targets: [{ luns: [{ size: 8 * MiB }] }] });
  t.after(() => tgt.stop());
  const b = await startBridge({ exports: [['ro', tgt.url(1, 1)]], readOnly: true, sessions: 1 });
  t.after(() => b.stop());
  const r = await run('nbdinfo', ['--json', b.uri('ro')], { timeoutMs: 20000 });
  assert.equal(r.code, 0, describeRun(r, 'nbdinfo'));
  const e = JSON.parse(r.stdout).exports[0];
  assert.equal(e.is_read_only, true);
  assert.equal(e['export-size'], 8 * MiB);
  assert.equal(e.can_flush, true, 'flush stays harmless on a read-only export');
  for (const k of ['can_fua', 'can_trim', 'can_zero', 'can_fast_zero']) assert.equal(e[k], false, `read-only: ${k}`);
  const w = await nbdPython(`
h = connect(sys.argv[1], strict=False, meta=True)
tryit('write', lambda: h.pwrite(b'x' * 512, 0))
tryit('zero', lambda: h.zero(512, 0))
tryit('trim', lambda: h.trim(512, 0))
res['read'] = h.pread(512, 0) == bytes(512)
h.shutdown()
done()`, [b.uri('ro')], { timeoutMs: 20000 });
  assert.equal(w.code, 0, describeRun(w, 'nbdsh'));
  assert.deepEqual(JSON.parse(w.stdout.trim()), { write: 1, zero: 1, trim: 1, read: true });
  // Nothing reached the backing file.
  const fd = fs.openSync(tgt.lunInfo(1, 1).path, 'r');
  const buf = Buffer.alloc(512);
  fs.readSync(fd, buf, 0, 512, 0);
  fs.closeSync(fd);
  assert.ok(buf.equals(Buffer.alloc(512)));
});
