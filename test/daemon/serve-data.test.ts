// Data integrity through `iscsi-nbd serve` onto a real tgtd: nbdcopy round
// trip, qemu-img compare, qemu-io patterns, fio with verification on several
// connections, and concurrent sub-block writes on a 4 KiB-block LUN.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { startTgtdWithLuns } from '../helpers/tgtd';
import { startBridge, tmpdir, describeRun } from '../helpers/bridge';
import { nbdPython } from '../helpers/libnbd';
import { skipUnless } from '../helpers/tools';
import { run } from '../helpers/process';

const MiB = 1024 * 1024;

function sha256File(file: string, length?: number): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(4 * MiB);
    let pos = 0;
    const end = length ?? fs.fstatSync(fd).size;
    while (pos < end) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, end - pos), pos);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** A file of random data with one all-zero stretch (so sparse handling is exercised). */
function randomFile(file: string, size: number, zeroFrom: number, zeroTo: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    for (let pos = 0; pos < size; pos += 4 * MiB) {
      const n = Math.min(4 * MiB, size - pos);
      const chunk = pos >= zeroFrom && pos + n <= zeroTo ? Buffer.alloc(n) : crypto.randomBytes(n);
      fs.writeSync(fd, chunk, 0, n, pos);
    }
  } finally {
    fs.closeSync(fd);
  }
}

test('nbdcopy 256 MiB in and out through the bridge, sha256 equal; qemu-img compare; qemu-io patterns', { skip: skipUnless('tgtd', 'tgtadm', 'nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io'), timeout: 180_000 }, async (t) => {
  const SIZE = 256 * MiB;
  const tgt = await startTgtdWithLuns({ targets: [{ luns: [{ size: SIZE }] }] });
  t.after(() => tgt.stop());
  const b = await startBridge({ exports: [['disk', tgt.url(1, 1)]], sessions: 2 });
  t.after(() => b.stop());
  const dir = tmpdir(t);
  const src = path.join(dir, 'src.img');
  const dst = path.join(dir, 'dst.img');
  randomFile(src, SIZE, 64 * MiB, 96 * MiB);
  // Make the zero stretch non-zero on the target first, so that a copy that
  // skipped it (sparse) without zeroing would be caught.
  ok(await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x77 64M 32M', b.uri('disk')], { timeoutMs: 60000 }), 'qemu-io prefill');
  ok(await run('nbdcopy', ['--connections=2', src, b.uri('disk')], { timeoutMs: 120000 }), 'nbdcopy in');
  ok(await run('nbdcopy', ['--connections=2', b.uri('disk'), dst], { timeoutMs: 120000 }), 'nbdcopy out');
  const want = sha256File(src);
  assert.equal(sha256File(dst), want, 'the copy read back through NBD');
  // What tgtd stored, read directly from its backing file.
  assert.equal(sha256File(tgt.lunInfo(1, 1).path, SIZE), want, 'the backing file on the target');
  ok(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', b.uri('disk'), src], { timeoutMs: 120000 }), 'qemu-img compare');

  // qemu-io patterns at the start of the export, then a local reference image to compare.
  const cmds = ['write -P 0xab 0 1M', 'write -z 1M 512K', 'write -P 0xcd 2M 1M', 'discard 2M 512K', 'flush', 'write -P 0x11 -f 3M 4k',
    'read -P 0xab 0 1M', 'read -P 0 1M 512K', 'read -P 0xcd 2560K 512K', 'read -P 0x11 3M 4k'];
  const q = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), b.uri('disk')], { timeoutMs: 60000 });
  ok(q, 'qemu-io');
  assert.doesNotMatch(q.stdout + q.stderr, /Pattern verification failed|error/i);
  // The discard on a thick LUN is a no-op (no trim advertised): 2M..2560K keeps 0xcd.
  const q2 = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xcd 2M 512K', b.uri('disk')], { timeoutMs: 30000 });
  ok(q2, 'qemu-io read after discard');
  assert.doesNotMatch(q2.stdout + q2.stderr, /Pattern verification failed/i);
  // Rebuild the same bytes in the source file and compare again.
  ok(await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 1M', '-c', 'write -z 1M 512K', '-c', 'write -P 0xcd 2M 1M', '-c', 'write -P 0x11 3M 4k', src], { timeoutMs: 30000 }), 'qemu-io reference');
  ok(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', b.uri('disk'), src], { timeoutMs: 120000 }), 'qemu-img compare after patterns');
});

test('fio nbd engine: 4 connections, iodepth 32, crc32c verify, no errors', { skip: skipUnless('tgtd', 'tgtadm', 'nbdinfo', 'fio'), timeout: 150_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({ targets: [{ luns: [{ size: 64 * MiB }] }] });
  t.after(() => tgt.stop());
  const b = await startBridge({ exports: [['disk', tgt.url(1, 1)]], sessions: 2 });
  t.after(() => b.stop());
  const dir = tmpdir(t);
  // Each job is its own libnbd connection, on its own 16 MiB slice.
  const r = await run('fio', ['--verify_state_save=0', '--name=bridgeverify', '--ioengine=nbd', `--uri=${b.uri('disk')}`,
    '--rw=randwrite', '--bs=4k', '--size=8M', '--offset_increment=16M', '--numjobs=4', '--iodepth=32',
    '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--runtime=60', '--output-format=json'], { timeoutMs: 120000, cwd: dir });
  ok(r, 'fio');
  const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
  assert.equal(j.jobs.length, 4);
  for (const job of j.jobs) {
    assert.equal(job.error, 0, `fio job ${job.jobname} error`);
    assert.ok(job.write.io_bytes > 0, 'fio wrote');
    assert.ok(job.read.io_bytes > 0, 'fio read back for verification');
  }
  assert.doesNotMatch(r.stderr, /verify: bad|crc32c: verify failed|bad magic/i);
});

test('4 KiB LUN: concurrent 512-byte writes into the same blocks (read-modify-write) all land', { skip: skipUnless('tgtd', 'tgtadm', 'nbdinfo', 'nbdsh'), timeout: 90_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({ targets: [{ luns: [{ size: 8 * MiB, blockSize: 4096 }] }] });
  t.after(() => tgt.stop());
  const b = await startBridge({ exports: [['disk', tgt.url(1, 1)]], sessions: 2 });
  t.after(() => b.stop());
  // Two connections, each with many writes in flight at once (aio), every
  // 512-byte sector of 16 blocks written with a distinct pattern; the
  // sectors of one 4 KiB block are interleaved between the connections.
  const r = await nbdPython(`
uri = sys.argv[1]
BLOCKS = 16
def pat(sector, rnd):
    return bytes([(sector * 7 + rnd * 13 + 1) & 0xff]) * 512
hs = []
for i in range(2):
    hs.append(connect(uri, strict=False))  # libnbd would refuse sub-4K requests itself
# Fill with a background pattern first (aligned).
hs[0].pwrite(b'\\xee' * (BLOCKS * 4096 + 8192), 0)
hs[0].flush()
expect = bytearray(b'\\xee' * (BLOCKS * 4096 + 8192))
for rnd in range(3):
    cookies = []
    for s in range(BLOCKS * 8):
        h = hs[s % 2]
        off = 4096 + s * 512
        data = pat(s, rnd)
        expect[off:off + 512] = data
        cookies.append((h, h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off)))
    for h, c in cookies:
        while not h.aio_command_completed(c):
            h.poll(-1)
got = hs[1].pread(len(expect), 0)
if got != bytes(expect):
    bad = [i // 512 for i in range(0, len(expect), 512) if got[i:i+512] != bytes(expect[i:i+512])]
    print('MISMATCH sectors', bad[:20])
    sys.exit(1)
# 1536-byte writes straddling block boundaries (a partial head and tail
# block each), each sharing a block with the next one, all in flight at once.
cookies = []
for k in range(8):
    off = 4096 * (k + 1) + 3584
    data = bytes([0x30 + k]) * 1536
    expect[off:off + 1536] = data
    h = hs[k % 2]
    cookies.append((h, h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off)))
for h, c in cookies:
    while not h.aio_command_completed(c):
        h.poll(-1)
got = hs[0].pread(len(expect), 0)
if got != bytes(expect):
    print('MISMATCH2')
    sys.exit(1)
# Random stress: 3000 random 512-byte writes over the 16 blocks, 32 in flight
# per connection; connection 0 owns the even sectors, 1 the odd ones, and a
# sector is never the target of two writes in flight at once, so the final
# bytes are known. Neighbouring sectors of one block are constantly written
# concurrently from both connections.
import random
rng = random.Random(7)
SECT = BLOCKS * 8
inflight = [dict(), dict()]  # cookie -> (sector, buf)
busy = set()
done = 0
issued = 0
while done < 3000:
    for ci in (0, 1):
        h = hs[ci]
        while len(inflight[ci]) < 32 and issued < 3000:
            s = rng.randrange(ci, SECT, 2)
            if s in busy:
                break
            off = 4096 + s * 512
            data = bytes([rng.randrange(256)]) * 512
            expect[off:off + 512] = data
            buf = nbd.Buffer.from_bytearray(bytearray(data))
            inflight[ci][h.aio_pwrite(buf, off)] = (s, buf)
            busy.add(s)
            issued += 1
    for ci in (0, 1):
        h = hs[ci]
        if inflight[ci]:
            h.poll(5)
            for c in list(inflight[ci]):
                if h.aio_command_completed(c):
                    busy.discard(inflight[ci].pop(c)[0])
                    done += 1
assert len(expect) == BLOCKS * 4096 + 8192
got = hs[1].pread(len(expect), 0)
if got != bytes(expect):
    bad = [i // 512 for i in range(0, len(expect), 512) if got[i:i+512] != bytes(expect[i:i+512])]
    print('MISMATCH3 sectors', bad[:20])
    sys.exit(1)
print('OK')
for h in hs:
    h.shutdown()
`, [b.uri('disk')], { timeoutMs: 60000 });
  assert.equal(r.code, 0, describeRun(r, 'rmw script'));
  assert.equal(r.stdout.trim(), 'OK', describeRun(r, 'rmw script'));
});

function ok(r: { code: number | null; stdout: string; stderr: string; timedOut: boolean; signal: NodeJS.Signals | null }, what: string): void {
  assert.equal(r.timedOut, false, `${what} timed out`);
  assert.equal(r.code, 0, describeRun(r, what));
}
