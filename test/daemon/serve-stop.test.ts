// Graceful stop of `iscsi-nbd serve`: SIGTERM while fio and a libnbd writer
// are busy. The daemon exits 0 within seconds, logs out of tgtd, and every
// write it acknowledged is on the target.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startTgtdWithLuns } from '../helpers/tgtd';
import { startBridge, runCli, tmpdir, describeRun } from '../helpers/bridge';
import { nbdPython } from '../helpers/libnbd';
import { skipUnless } from '../helpers/tools';
import { run } from '../helpers/process';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const REGION = 32 * MiB; // the writer's region starts here
const BLOCKS = 256; // 16 MiB

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

test('SIGTERM while clients write: exit 0 within seconds, sessions logged out, acknowledged writes on the target', { skip: skipUnless('tgtd', 'tgtadm', 'nbdinfo', 'nbdsh', 'fio'), timeout: 120_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({ targets: [{ luns: [{ size: 64 * MiB }] }] });
  t.after(() => tgt.stop());
  const b = await startBridge({ exports: [['disk', tgt.url(1, 1)]], sessions: 2, logLevel: 'info' });
  t.after(() => b.stop());
  const dir = tmpdir(t);

  const nexus = async () => (await tgt.tgtadm(['--lld', 'iscsi', '--op', 'show', '--mode', 'target'])).match(/I_T nexus: \d+/g)?.length ?? 0;
  assert.equal(await nexus(), 2, 'two iSCSI sessions while serving');

  // fio on [0, 32 MiB) for longer than the test waits.
  const fio = run('fio', ['--name=busy', '--ioengine=nbd', `--uri=${b.uri('disk')}`, '--rw=randwrite', '--bs=64k', '--size=32M',
    '--iodepth=16', '--numjobs=2', '--time_based', '--runtime=30', '--output-format=json'], { timeoutMs: 60000, cwd: dir });

  // A libnbd writer on [32 MiB, 48 MiB): 8 writes in flight, each block's
  // content names its generation; every acknowledged (block, generation) is printed.
  const writer = nbdPython(`
import struct
h = connect(sys.argv[1])
REGION, BLOCK, BLOCKS = ${REGION}, ${BLOCK}, ${BLOCKS}
def content(i, gen):
    return struct.pack('>II', i, gen) * (BLOCK // 8)
inflight = []
n = 0
print('START', flush=True)
try:
    while True:
        while len(inflight) < 8:
            i, gen = n % BLOCKS, n // BLOCKS
            buf = nbd.Buffer.from_bytearray(bytearray(content(i, gen)))
            c = h.aio_pwrite(buf, REGION + i * BLOCK)
            inflight.append((c, i, gen, buf))
            n += 1
        h.poll(-1)
        still = []
        for item in inflight:
            if h.aio_command_completed(item[0]):
                print('ACK', item[1], item[2])
            else:
                still.append(item)
        inflight = still
except Exception as e:
    print('END', type(e).__name__, str(e).replace('\\n', ' '), flush=True)
for item in inflight:
    print('ISSUED', item[1], item[2])
print('ISSUED', n)
`, [b.uri('disk')], { timeoutMs: 60000, unbuffered: true });
  await sleep(1500);
  // The control socket answers while the clients are busy.
  const status = await runCli(['status', '--control', b.control, '--json'], { timeoutMs: 15000 });
  assert.equal(status.code, 0, describeRun(status, 'iscsi-nbd status'));
  const sj = JSON.parse(status.stdout);
  const ex = sj.exports.find((e: { name: string }) => e.name === 'disk');
  assert.equal(ex.state, 'ready');
  assert.equal(ex.sessions.length, 2);
  assert.ok(ex.sessions.every((s: { state: string }) => s.state === 'logged-in'), status.stdout);
  assert.ok(ex.clients >= 3, `fio's two connections and the writer: ${ex.clients}`);
  await sleep(500);
  const before = await nexus();
  const t0 = Date.now();
  const st = await b.stop(20_000);
  const stopMs = Date.now() - t0;
  assert.equal(st.signal, null, `the daemon was not killed: ${b.output().slice(-3000)}`);
  assert.equal(st.code, 0, `exit code: ${b.output().slice(-3000)}`);
  assert.ok(stopMs < 10_000, `stopped in ${stopMs} ms`);
  assert.match(b.output(), /stopping: draining NBD clients/);
  assert.match(b.output(), /"msg":"stopped"/);
  assert.equal(before, 2);

  const w = await writer;
  const f = await fio;
  assert.equal(w.timedOut, false, 'the writer saw the connection end');
  assert.equal(f.timedOut, false, 'fio saw the connection end');
  assert.match(w.stdout, /^END /m, describeRun(w, 'writer'));

  // Every acknowledged write (or a later one to the same block) is in the backing file.
  const acked = new Map<number, number>();
  for (const m of w.stdout.matchAll(/^ACK (\d+) (\d+)$/gm)) {
    const i = Number(m[1]);
    acked.set(i, Math.max(acked.get(i) ?? -1, Number(m[2])));
  }
  assert.ok(acked.size > 0, describeRun(w, 'writer acknowledged nothing'));
  const issued = Number(/^ISSUED (\d+)$/m.exec(w.stdout)?.[1]);
  t.diagnostic(`stopped in ${stopMs} ms; writer: ${issued} writes issued, ${acked.size} blocks acknowledged; ${w.stdout.match(/^END .*$/m)?.[0]}`);
  const fd = fs.openSync(tgt.lunInfo(1, 1).path, 'r');
  try {
    const buf = Buffer.alloc(BLOCK);
    for (const [i, gen] of acked) {
      fs.readSync(fd, buf, 0, BLOCK, REGION + i * BLOCK);
      const gotI = buf.readUInt32BE(0);
      const gotGen = buf.readUInt32BE(4);
      assert.equal(gotI, i, `block ${i} holds block ${gotI}'s data`);
      assert.ok(gotGen >= gen, `block ${i}: generation ${gotGen} on the target, ${gen} was acknowledged`);
      assert.ok(gotGen * BLOCKS + i < issued, `block ${i}: generation ${gotGen} was never sent`);
      // The whole block is one write, not torn.
      assert.ok(buf.equals(Buffer.alloc(BLOCK, buf.subarray(0, 8))), `block ${i} is torn`);
    }
  } finally {
    fs.closeSync(fd);
  }

  // The daemon logged out: tgtd has no sessions left.
  let left = await nexus();
  for (let i = 0; i < 20 && left > 0; i++) {
    await sleep(100);
    left = await nexus();
  }
  assert.equal(left, 0, 'tgtd still shows sessions after the daemon exited');
});
