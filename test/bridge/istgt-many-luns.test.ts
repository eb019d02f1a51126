// 20 LUNs of istgt (Debian `istgt`) with MaxSessions 16, as its example
// configuration ships it: the LUNs of a target share one pool of sessions
// (connections counted at istgt's port with ss, logins counted in istgt's
// log) and a round trip on every LUN. istgt 20111008 serves at most 16 LUNs per target,
// so the 20 LUNs are 16 of one target and 4 of another (test/helpers/istgt.ts
// says why, and what MaxSessions does and does not limit there).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { skipUnless } from '../helpers/tools';
import { startIstgt, type Istgt } from '../helpers/istgt';
import { connections, roundTrips } from '../helpers/many-luns';
import { onCleanup, startBridge, type Bridge } from '../resilience/env';
import type { ExportConfig } from '../../src/config';

const skip = skipUnless('istgt', 'stdbuf', 'python3', 'ss');
const FAST = { nopInterval: 2, nopTimeout: 4, command: 5, replacement: 60, login: 5, connect: 3 };
// Target name, LUNs: 16 is the most one istgt target holds.
const TARGETS: Array<[string, number]> = [['many', 16], ['more', 4]];

async function istgt(t: { after: (f: () => unknown) => void }): Promise<Istgt> {
  const ist = await startIstgt({ targets: TARGETS.map(([name, luns]) => ({ name, luns, size: 8 * 1024 * 1024 })), maxSessions: 16 });
  onCleanup(t, () => ist.stop());
  return ist;
}

/** One export per LUN, named after its target and LUN (many-0 .. many-15, more-0 .. more-3). */
function exportsOf(ist: Istgt): ExportConfig[] {
  return TARGETS.flatMap(([name, luns]) => Array.from({ length: luns }, (_, l) => ({
    name: `${name}-${l}`, url: ist.url(name, l),
  })));
}

/** Logins istgt accepted (its "Login from ..." lines): one per session here. */
const logins = (ist: Istgt): number => ist.log.split('\n').filter((l) => l.startsWith('Login from ')).length;

function assertAllServing(br: Bridge, specs: ExportConfig[]): void {
  for (const s of specs) {
    const e = br.manager.exports.get(s.name);
    assert.ok(e, `${s.name} was added`);
    assert.ok(e.state === 'ready' && e.isServing, `${s.name}: ${e.state} ${e.lastError?.message ?? ''}`);
  }
}

/** A round trip on every export, then the data is in each LUN's own backing file at that offset. */
async function assertRoundTrips(br: Bridge, ist: Istgt, specs: ExportConfig[], offset: number, tag: string): Promise<void> {
  const names = specs.map((s) => s.name);
  const r = await roundTrips(br, names, offset, tag);
  for (const n of names) assert.deepEqual(r[n], [0, true], `${n}: ${JSON.stringify(r)}`);
  for (const [name, luns] of TARGETS) {
    for (let l = 0; l < luns; l++) {
      const onDisk = fs.readFileSync(ist.lunPath(name, l)).subarray(offset, offset + 4096).toString();
      assert.equal(onDisk, `${tag}:${name}-${l}:`.repeat(1024).slice(0, 4096), `${name} LUN ${l} on disk`);
    }
  }
}

test('istgt with MaxSessions 16, 20 LUNs as 20 exports with sessions 2: one pool per target, 4 connections in all, a round trip on every LUN', { skip, timeout: 60_000 }, async (t) => {
  const ist = await istgt(t);
  const specs = exportsOf(ist);
  const t0 = Date.now();
  const br = await startBridge(t, { exports: specs, sessions: 2, timeouts: FAST });
  t.diagnostic(`20 exports open in ${Date.now() - t0} ms`);
  assertAllServing(br, specs);
  const pools = br.manager.targets.list();
  assert.equal(pools.length, 2, 'one pool per target');
  for (const [name, luns] of TARGETS) {
    const pool = pools.find((p) => p.luns.includes(`${name}-0`));
    assert.ok(pool, `a pool for ${name}`);
    assert.deepEqual([...pool.luns].sort(), specs.filter((s) => s.name.startsWith(`${name}-`)).map((s) => s.name).sort());
    assert.equal(pool.luns.length, luns);
    assert.equal(pool.sessions.length, 2, `${name}: 2 sessions`);
    for (const l of pool.luns) assert.equal(br.manager.exports.get(l)!.status().pool, pool.id, l);
  }
  assert.equal(await connections(ist.port), 4, '2 sessions per target, for 20 LUNs');
  assert.equal(logins(ist), 4, `istgt saw 4 logins:\n${ist.log}`);
  await assertRoundTrips(br, ist, specs, 4096, 'a');
  // A 17th LUN of one target is not there (istgt ignored LUN16): that export is refused and says so.
  await assert.rejects(br.manager.add({ name: 'many-16', url: ist.url('many', 16) }), /no logical unit at LUN 16/);
  assert.equal(await connections(ist.port), 4, 'no login for it');
});

// Not tested here: 20 LUNs with ownSessions (2 sessions each). Tried: istgt 20111008
// accepts all 40, since MaxSessions only sizes its tables (up to 255 sessions per target
// are taken), at one login per second (istgt_iscsi_drop_old_conns sleeps 1 s), so the
// run took 43 s to show nothing the tgtd test of ownSessions does not.
