// Checks shared by the tests that serve many LUNs of one target (tgtd,
// istgt): the TCP connections the kernel counts at the target's port, and a
// round trip on every export whose data names the export.

import assert from 'node:assert/strict';
import { nbdJson } from './libnbd';
import { run } from './process';

/** TCP connections established to the target's port, counted by the kernel (ss). */
export async function connections(port: number): Promise<number> {
  const r = await run('ss', ['-Htn', 'state', 'established', `( dport = :${port} )`], { timeoutMs: 10_000 });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.split('\n').filter((l) => l.trim()).length;
}

/**
 * Over each export: write a block that names it at `offset`, read it back,
 * then read every export's block again (no LUN sees another's data).
 * Returns errno per export (0: all well) and whether each read matched.
 */
export async function roundTrips(br: { port: number }, names: string[], offset: number, tag: string): Promise<Record<string, [number, boolean]>> {
  return nbdJson<Record<string, [number, boolean]>>('round trip on every LUN', `
port, off, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = sys.argv[4:]
hs = {}
for n in names:
    try:
        hs[n] = connect('nbd://127.0.0.1:%s/%s' % (port, n))
    except nbd.Error as e:
        res[n] = [e.errnum or -1, False]
def block(n):
    return (('%s:%s:' % (tag, n)).encode() * 1024)[:4096]
for n, h in hs.items():
    e = err(lambda: h.pwrite(block(n), off))
    res[n] = [e, False]
for n, h in hs.items():
    if res[n][0]:
        continue
    box = {}
    e = err(lambda: box.update(d=h.pread(4096, off)))
    res[n] = [e, e == 0 and box["d"] == block(n)]
    if e == 0 and box["d"] != block(n): res[n + "!"] = box["d"][:40].decode("latin1")
done()
`, [String(br.port), String(offset), tag, ...names], { timeoutMs: 60_000 });
}
