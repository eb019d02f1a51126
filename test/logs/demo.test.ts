// `npm start` (the demo): "Next steps" comes first, not a screenful of log
// lines. The demo logs at warn unless --log-level says otherwise.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../helpers/ports';
import { startCli, type Proc } from '../helpers/process';
import { parseLogLines } from './strict-json';

const dirs: string[] = [];
const procs: Proc[] = [];

after(async () => {
  for (const p of procs) await p.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
}, { timeout: 30000 });

async function demo(extra: string[]): Promise<{ out: string; err: string }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'logs-demo-'));
  dirs.push(dir);
  const port = await freePort();
  const p = startCli(['demo', '--data-dir', dir, '--size', '16M', '--listen', `127.0.0.1:${port}`, '--control', path.join(dir, 'control.sock'), '--log-format', 'json', ...extra],
    { ISCSI_NBD_STATE_DIR: dir });
  procs.push(p);
  await p.waitFor(/Next steps/, 60000);
  const seen = { out: p.out(), err: p.err() };
  await p.stop();
  const exit = await p.exited;
  assert.equal(exit.code, 0, `the demo stops cleanly on SIGTERM (${JSON.stringify(exit)}):\n${p.err().slice(-3000)}`);
  return seen;
}

test('the demo opens with its instructions: warnings only unless --log-level is given', { timeout: 120000 }, async () => {
  const quiet = await demo([]);
  assert.match(quiet.out, /^\niscsi-nbd demo is serving export "demo"/);
  const lines = parseLogLines(quiet.err, 'stderr');
  assert.deepEqual(lines.filter((l) => l.level < 40), [], 'nothing below warn by default');
  assert.ok(lines.length <= 2, `a few lines at most before "Next steps":\n${quiet.err}`);

  const chatty = await demo(['--log-level', 'info']);
  const info = parseLogLines(chatty.err, 'stderr');
  assert.ok(info.some((l) => l.msg === 'embedded iSCSI target running'), '--log-level info brings the info lines back');
  assert.equal(info.filter((l) => l.msg === 'serving NBD').length, 1);
  assert.equal(info.filter((l) => l.msg === 'LUN opened').length, 1, 'once, with the demo\'s two sessions');
});

test('Ctrl-C on the demo says so at the default level, then it stops cleanly', { timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'logs-demo-'));
  dirs.push(dir);
  const p = startCli(['demo', '--data-dir', dir, '--size', '16M', '--listen', `127.0.0.1:${await freePort()}`, '--control', path.join(dir, 'control.sock')],
    { ISCSI_NBD_STATE_DIR: dir });
  procs.push(p);
  await p.waitFor(/Next steps/, 60000);
  process.kill(p.child.pid!, 'SIGINT');
  const exit = await p.exited;
  assert.equal(exit.code, 0, p.err());
  const stop = parseLogLines(p.err(), 'stderr').find((l) => /^demo: Ctrl-C: stopping/.test(String(l.msg)));
  assert.ok(stop, `a line on Ctrl-C:\n${p.err()}`);
  assert.equal(stop.level, 40);
});
