// The VM scenarios' lock across processes: alone waits for shared holders, shared waits
// for (and while) a process that holds it alone. Children are real processes, as the
// runner's workers are; the lock has a name of its own here.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { lockExclusive, lockShared } from './exclusive';

const NAME = `lock-test-${process.pid}`;

/** A child that takes the lock (kind), prints "held", keeps it holdMs, prints "released" and exits. */
function child(kind: 'shared' | 'alone', holdMs: number): { events: string[]; done: Promise<void> } {
  const events: string[] = [];
  const code = `const l=require(${JSON.stringify(require.resolve('./exclusive'))});` +
    `(async()=>{const r=await l.${kind === 'shared' ? 'lockShared' : 'lockExclusive'}(${JSON.stringify(NAME)},30000);` +
    `console.log('held');await new Promise(x=>setTimeout(x,${holdMs}));r();console.log('released');})();`;
  const c = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  let buf = '';
  c.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      events.push(`${buf.slice(0, i)}@${Date.now()}`);
      buf = buf.slice(i + 1);
    }
  });
  return { events, done: new Promise((r) => c.once('exit', () => r())) };
}

const at = (events: string[], what: string): number => Number(events.find((e) => e.startsWith(`${what}@`))?.split('@')[1]);
async function until(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !ok(); i++) await new Promise((r) => setTimeout(r, 25));
  assert.ok(ok());
}

test('lock: alone waits for every shared holder; two shared holders run together', { timeout: 30_000 }, async () => {
  const a = child('shared', 1500);
  const b = child('shared', 1500);
  await until(() => at(a.events, 'held') > 0 && at(b.events, 'held') > 0);
  const release = await lockExclusive(NAME, 20_000);
  const got = Date.now();
  release();
  await Promise.all([a.done, b.done]);
  assert.ok(got >= at(a.events, 'released') && got >= at(b.events, 'released'), `alone at ${got}, after ${a.events} and ${b.events}`);
});

test('lock: shared waits while another process holds it alone, then takes it', { timeout: 30_000 }, async () => {
  const x = child('alone', 1500);
  await until(() => at(x.events, 'held') > 0);
  const release = await lockShared(NAME, 20_000);
  const got = Date.now();
  release();
  await x.done;
  assert.ok(got >= at(x.events, 'released'), `shared at ${got}, after ${x.events}`);
});

test('lock: a dead holder does not block, alone or shared', { timeout: 30_000 }, async () => {
  const x = child('alone', 60_000);
  await until(() => at(x.events, 'held') > 0);
  // Killed while holding: its file stays, its pid is gone.
  const pid = Number(fs.readFileSync(path.join(os.tmpdir(), `iscsi-nbd-test-${NAME}.lock`), 'utf8'));
  process.kill(pid, 'SIGKILL');
  await x.done;
  const r1 = await lockShared(NAME, 5_000);
  r1();
  const r2 = await lockExclusive(NAME, 5_000);
  r2();
});
