// Bad and odd NBD requests through `iscsi-nbd serve` onto a real tgtd, sent
// with libnbd's strict mode off: each gets the spec's answer, the connection
// survives, and the data on the LUN is untouched (or changed exactly where a
// valid request said).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startTgtdWithLuns } from '../helpers/tgtd';
import { startBridge } from '../helpers/bridge';
import { nbdJson } from '../helpers/libnbd';
import { skipUnless } from '../helpers/tools';

const MiB = 1024 * 1024;

test('bad requests get the spec answer, the connection survives, data is untouched; sub-block writes on a 4 KiB LUN', { skip: skipUnless('tgtd', 'tgtadm', 'nbdinfo', 'nbdsh'), timeout: 120_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({ targets: [{ luns: [{ size: 40 * MiB }, { size: 40 * MiB, blockSize: 4096 }] }] });
  t.after(() => tgt.stop());
  const b = await startBridge({ exports: [['d512', tgt.url(1, 1)], ['d4k', tgt.url(1, 2)]], sessions: 2 });
  t.after(() => b.stop());
  const res = await nbdJson('nbdsh script', `
# ---- 512-byte LUN ----
h = connect(sys.argv[1], strict=False)
size = h.get_size()
# Known, non-zero content everywhere we poke.
h.pwrite(os.urandom(1024 * 1024), 0)
h.pwrite(os.urandom(1024 * 1024), size - 1024 * 1024)
h.flush()
before = digest(h)
tryit('read_past_end', lambda: h.pread(1024, size - 512))
tryit('read_at_end', lambda: h.pread(512, size))
tryit('write_past_end', lambda: h.pwrite(b'x' * 1024, size - 512))
tryit('zero_past_end', lambda: h.zero(1024, size - 512))
tryit('misaligned_read', lambda: h.pread(100, 1))
tryit('misaligned_write', lambda: h.pwrite(b'y' * 100, 0))
tryit('misaligned_offset_write', lambda: h.pwrite(b'y' * 512, 7))
tryit('unknown_flag_read', lambda: h.pread(512, 0, 1 << 7))
tryit('unknown_flag_write', lambda: h.pwrite(b'u' * 512, 0, 1 << 9))
tryit('zero_len_read', lambda: h.pread(0, 0))
tryit('zero_len_write', lambda: h.pwrite(b'', 0))
tryit('zero_len_zero', lambda: h.zero(0, 0))
tryit('oversized_read', lambda: h.pread(33 * 1024 * 1024, 0))
tryit('oversized_write', lambda: h.pwrite(b'z' * (33 * 1024 * 1024), 0))
tryit('fua_flush', lambda: h.flush(nbd.CMD_FLAG_FUA))
res['connected_512'] = h.aio_is_ready()
res['unchanged_512'] = digest(h) == before
# A valid write still works on the same connection afterwards.
tryit('write_ok', lambda: h.pwrite(b'k' * 512, 4096, nbd.CMD_FLAG_FUA))
res['readback'] = h.pread(512, 4096) == b'k' * 512
h.shutdown()

# ---- 4096-byte LUN ----
g = connect(sys.argv[2], strict=False)
gsize = g.get_size()
res['min_4k'] = g.get_block_size(nbd.SIZE_MINIMUM)
base = bytearray(os.urandom(64 * 1024))
g.pwrite(bytes(base), 0)
g.pwrite(os.urandom(64 * 1024), gsize - 64 * 1024)
g.flush()
tail_before = hashlib.sha256(g.pread(64 * 1024, gsize - 64 * 1024)).hexdigest()
# A 512-byte write at offset 512: read-modify-write of block 0.
tryit('sub_block_write', lambda: g.pwrite(b'\\x55' * 512, 512))
base[512:1024] = b'\\x55' * 512
# Sub-block reads.
res['sub_block_read'] = g.pread(512, 512) == b'\\x55' * 512
res['sub_block_read_edge'] = g.pread(1024, 3584 + 4096 - 1024) == bytes(base[3584 + 4096 - 1024:3584 + 4096])
# A write straddling a block boundary with FUA, and a sub-block zero.
tryit('straddle_write_fua', lambda: g.pwrite(b'\\x66' * 1536, 8192 - 512, nbd.CMD_FLAG_FUA))
base[8192 - 512:8192 + 1024] = b'\\x66' * 1536
tryit('sub_block_zero', lambda: g.zero(1024, 12288 + 1536))
base[12288 + 1536:12288 + 2560] = bytes(1024)
tryit('sub_block_fast_zero', lambda: g.zero(512, 20480 + 512, nbd.CMD_FLAG_FAST_ZERO))
# Refused before anything is zeroed, even the whole block in the middle.
tryit('ragged_fast_zero', lambda: g.zero(4096 + 1024, 28672 - 512, nbd.CMD_FLAG_FAST_ZERO))
tryit('aligned_fast_zero', lambda: g.zero(4096, 36864, nbd.CMD_FLAG_FAST_ZERO))
base[36864:40960] = bytes(4096)
# Below the 512-byte request alignment the answer is EINVAL.
tryit('sub_sector_write', lambda: g.pwrite(b'q' * 100, 4096))
tryit('sub_sector_offset_read', lambda: g.pread(512, 3))
tryit('read_past_end_4k', lambda: g.pread(1024, gsize - 512))
tryit('write_past_end_4k', lambda: g.pwrite(b'x' * 1024, gsize - 512))
# The largest request (32 MiB) at a sub-block offset: one read-modify-write
# spanning 8193 blocks, and a read of the same span.
big = os.urandom(32 * 1024 * 1024)
tryit('big_unaligned_write', lambda: g.pwrite(big, 4 * 1024 * 1024 + 512))
res['big_unaligned_read'] = g.pread(32 * 1024 * 1024, 4 * 1024 * 1024 + 512) == big
res['big_edges'] = g.pread(512, 4 * 1024 * 1024) == bytes(512) and g.pread(3584, 36 * 1024 * 1024 + 512) == bytes(3584)
res['layout_4k'] = g.pread(64 * 1024, 0) == bytes(base)
res['tail_4k_unchanged'] = hashlib.sha256(g.pread(64 * 1024, gsize - 64 * 1024)).hexdigest() == tail_before
res['connected_4k'] = g.aio_is_ready()
g.shutdown()

# ---- like the kernel: simple replies only, no block size asked, 512-byte I/O on the 4 KiB LUN ----
k = connect(sys.argv[2], strict=False, structured=False, block_size=False)
res['kernel_structured'] = k.get_structured_replies_negotiated()
tryit('kernel_write_512', lambda: k.pwrite(b'\x77' * 512, 16384 + 1536, nbd.CMD_FLAG_FUA))
base[16384 + 1536:16384 + 2048] = b'\x77' * 512
tryit('kernel_zero_512', lambda: k.zero(512, 16384 + 2560))
base[16384 + 2560:16384 + 3072] = bytes(512)
res['kernel_read_512'] = k.pread(512, 16384 + 1536) == b'\x77' * 512
tryit('kernel_read_past_end', lambda: k.pread(512, gsize))
res['kernel_layout'] = k.pread(64 * 1024, 0) == bytes(base)
k.shutdown()
done()
`, [b.uri('d512'), b.uri('d4k')], { timeoutMs: 90000 });
  const EINVAL = 22, ENOSPC = 28, ENOTSUP = 95;
  assert.deepEqual(res, {
    read_past_end: EINVAL, read_at_end: EINVAL, write_past_end: ENOSPC, zero_past_end: ENOSPC,
    misaligned_read: EINVAL, misaligned_write: EINVAL, misaligned_offset_write: EINVAL,
    unknown_flag_read: EINVAL, unknown_flag_write: EINVAL,
    zero_len_read: 0, zero_len_write: 0, zero_len_zero: 0,
    oversized_read: EINVAL, oversized_write: EINVAL, fua_flush: 0,
    connected_512: true, unchanged_512: true, write_ok: 0, readback: true,
    min_4k: 4096, sub_block_write: 0, sub_block_read: true, sub_block_read_edge: true,
    straddle_write_fua: 0, sub_block_zero: 0, sub_block_fast_zero: ENOTSUP, ragged_fast_zero: ENOTSUP, aligned_fast_zero: 0,
    sub_sector_write: EINVAL, sub_sector_offset_read: EINVAL, read_past_end_4k: EINVAL, write_past_end_4k: ENOSPC,
    big_unaligned_write: 0, big_unaligned_read: true, big_edges: true,
    layout_4k: true, tail_4k_unchanged: true, connected_4k: true,
    kernel_structured: false, kernel_write_512: 0, kernel_zero_512: 0, kernel_read_512: true, kernel_read_past_end: EINVAL, kernel_layout: true,
  });
  // The 4 KiB LUN's backing file agrees with what the client saw.
  const fd = fs.openSync(tgt.lunInfo(1, 2).path, 'r');
  const blk = Buffer.alloc(4096);
  fs.readSync(fd, blk, 0, 4096, 0);
  fs.closeSync(fd);
  assert.ok(blk.subarray(512, 1024).equals(Buffer.alloc(512, 0x55)), 'the sub-block write reached the target');
});
