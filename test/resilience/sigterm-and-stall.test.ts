// The daemon as a separate process (bin/iscsi-nbd.js serve) in front of an
// embedded target in this process: graceful shutdown on SIGTERM during
// writes, and the bridge's memory while the target stalls under deep
// queues of 1 MiB writes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { skipUnless } from '../helpers/tools';
import { freePort, waitForPort } from '../helpers/ports';
import { exportUrl, INITIATOR, MiB, onCleanup, startTargets, type After } from './env';
import { PY } from '../helpers/libnbd';
import { run, sleep, startCli, type Proc } from '../helpers/process';

interface Daemon {
  proc: Proc;
  port: number;
}

async function startDaemon(t: After, targetPort: number, extra: string[] = []): Promise<Daemon> {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resilience-daemon-'));
  const proc = startCli([
    'serve', '--listen', `127.0.0.1:${port}`, '--export', `d=${exportUrl(targetPort)}`, '--sessions', '1',
    '--control', path.join(dir, 'control.sock'), '--log-level', 'warn', ...extra,
  ], { ISCSI_NBD_INITIATOR_NAME: INITIATOR, XDG_STATE_HOME: dir, XDG_RUNTIME_DIR: dir });
  onCleanup(t, async () => {
    try {
      process.kill(-proc.child.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
    await proc.exited;
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await waitForPort(port, '127.0.0.1', 20000).catch((e) => {
    throw new Error(`daemon did not come up: ${(e as Error).message}\n${proc.err()}`);
  });
  return { proc, port };
}

test('SIGTERM during writes: no acknowledged write lost, new requests get ESHUTDOWN', { skip: skipUnless('python3'), timeout: 90000 }, async (t) => {
  const tg = await startTargets(t);
  const d = await startDaemon(t, tg.ports[0]);
  // 16 writes in flight, cycling over 16000 4 KiB slots until the server
  // stops answering; each write's byte is its sequence number (mod 251, +1).
  const script = `
import nbd, json, sys
h = nbd.NBD()
h.connect_uri("nbd://127.0.0.1:${d.port}/d")
last = {}
failed = []
errs = {}
state = {"seq": 0, "stop": False}
SLOTS = 16000
def issue():
    seq = state["seq"]
    state["seq"] += 1
    off = (seq % SLOTS) * 4096
    val = seq % 251 + 1
    def cb(err):
        if err.value == 0:
            last[off] = val
        else:
            errs[err.value] = errs.get(err.value, 0) + 1
            failed.append([off, val])
            state["stop"] = True
        return 1
    h.aio_pwrite(bytes([val]) * 4096, off, completion=cb)
print("ready", flush=True)
try:
    while True:
        while not state["stop"] and h.aio_in_flight() < 16:
            issue()
        if h.aio_in_flight() == 0:
            break
        h.poll(-1)
except nbd.Error as e:
    errs["closed"] = errs.get("closed", 0) + 1
print(json.dumps({"last": last, "failed": failed, "errs": errs, "issued": state["seq"]}), flush=True)
`;
  const client = run(PY, ['-c', script], { timeoutMs: 60000, t });
  await sleep(2000);
  process.kill(d.proc.child.pid!, 'SIGTERM');
  const code = await Promise.race([d.proc.exited.then((e) => e.code), sleep(40000).then(() => 'timeout')]);
  assert.equal(code, 0, `daemon exit: ${code}\n${d.proc.err().slice(-3000)}`);
  const r = await client;
  assert.equal(r.timedOut, false);
  const lines = r.stdout.trim().split('\n');
  const res = JSON.parse(lines[lines.length - 1]) as { last: Record<string, number>; failed: [number, number][]; errs: Record<string, number>; issued: number };
  const acked = Object.entries(res.last);
  assert.ok(acked.length > 16, `some writes acknowledged before the stop (${acked.length})`);
  assert.ok((res.errs['108'] ?? 0) > 0, `new requests got ESHUTDOWN: ${JSON.stringify(res.errs)}`);
  // Writes that failed may or may not have reached the disk; acknowledged ones must have.
  const maybe = new Map<number, Set<number>>();
  for (const [off, val] of res.failed) {
    if (!maybe.has(off)) maybe.set(off, new Set());
    maybe.get(off)!.add(val);
  }
  for (const [offText, val] of acked) {
    const off = Number(offText);
    const got = (await tg.backend.read(off, 4096))[0];
    assert.ok(got === val || maybe.get(off)?.has(got), `acknowledged write at ${off}: want ${val}, disk has ${got}`);
    assert.ok((await tg.backend.read(off, 4096)).equals(Buffer.alloc(4096, got)), `whole block at ${off}`);
  }
  const res2 = { acked: acked.map(([k]) => k), errs: res.errs };
  t.diagnostic(`issued ${res.issued}, acked slots ${res2.acked.length}, errors ${JSON.stringify(res2.errs)}`);
});

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

// 128 x 1 MiB requests may be buffered by the NBD side (its per-connection
// limit), so the bound is that plus the process's own ~100 MiB.
const RSS_BOUND_MIB = 300;

test(`stalled target under iodepth=128 bs=1M writes: bridge RSS stays under ${RSS_BOUND_MIB} MiB`, { skip: skipUnless('fio'), timeout: 90000 }, async (t) => {
  const tg = await startTargets(t, { size: 1024 * MiB });
  const d = await startDaemon(t, tg.ports[0], ['--command-timeout', '60', '--replacement-timeout', '60']);
  const base = rssMiB(d.proc.child.pid!);
  tg.faults.set({ stall: true });
  const fio = run('fio', [
    '--name=deep', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${d.port}/d`, '--rw=write', '--bs=1M', '--iodepth=128',
    '--size=1024M', '--time_based', '--runtime=12', '--output-format=json',
  ], { timeoutMs: 30000, t });
  let max = 0;
  const samples: number[] = [];
  for (let i = 0; i < 20; i++) {
    await sleep(500);
    const r = rssMiB(d.proc.child.pid!);
    samples.push(Math.round(r));
    max = Math.max(max, r);
  }
  t.diagnostic(`RSS baseline ${Math.round(base)} MiB, samples ${samples.join(' ')} MiB`);
  assert.ok(max < RSS_BOUND_MIB, `RSS peaked at ${Math.round(max)} MiB`);
  // No growth while stalled: the last samples are not above the middle ones by more than noise.
  const mid = Math.max(...samples.slice(8, 12));
  const end = Math.max(...samples.slice(16));
  assert.ok(end <= mid + 32, `RSS grows while stalled: ${mid} -> ${end} MiB`);
  tg.faults.clear();
  try {
    process.kill(-(fio.pid ?? 0), 'SIGKILL');
  } catch {
    /* done already */
  }
  await fio;
});
