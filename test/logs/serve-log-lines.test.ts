// A real daemon (bin/iscsi-nbd.js serve, JSON logs at debug) against a private
// tgtd, real NBD clients (qemu-io, nbdinfo), then SIGTERM: every line it wrote
// is a JSON object without a repeated key, and each event is one line:
// 'serving NBD' once per listener, 'LUN opened' once per export, each UNIT
// ATTENTION once, a client's connect and disconnect both at info with remote
// and export, an unknown export asked for at warn.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { freePort } from '../helpers/ports';
import { skipUnless } from '../helpers/tools';
import { startCli, runTool, until, type Proc } from '../helpers/process';
import { parseLogLines, type LogLine } from './strict-json';

const skip = skipUnless('tgtd', 'tgtadm', 'qemu-io', 'nbdinfo');
const MiB = 1024 * 1024;
// nbdinfo and qemu-io from the system, whatever else is on PATH.
const SYS_PATH = { PATH: `/usr/bin:/bin:${process.env.PATH ?? ''}` };

let tgtd: Tgtd | undefined;
let dir = '';
let proc: Proc | undefined;

before(async () => {
  if (skip) return;
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'logs-daemon-'));
  tgtd = await startTgtdWithLuns({ targets: [{ tid: 1, luns: [{ size: 16 * MiB }, { size: 16 * MiB }] }] });
}, { timeout: 60000 });

after(async () => {
  await proc?.stop();
  await tgtd?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
}, { timeout: 60000 });

const count = (lines: LogLine[], msg: string, f: (l: LogLine) => boolean = () => true): number => lines.filter((l) => l.msg === msg && f(l)).length;

test('serve at debug: unique keys on every line, one line per event', { skip, timeout: 150000 }, async () => {
  const p1 = await freePort();
  const p2 = await freePort();
  const p = startCli([
    'serve', '--export', `a=${tgtd!.url(1, 1)}`, '--export', `b=${tgtd!.url(1, 2)}`,
    '--listen', `127.0.0.1:${p1}`, '--listen', `127.0.0.1:${p2}`, '--control', path.join(dir, 'control.sock'),
    '--sessions', '2', '--log-level', 'debug', '--log-format', 'json',
  ], { ISCSI_NBD_STATE_DIR: dir });
  proc = p;
  await p.waitFor(/"msg":"serving NBD"/, 60000);

  // I/O on each export, each through another listener.
  for (const [name, port] of [['a', p1], ['b', p2]] as const) {
    const io = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', '-c', 'read -P 0x5a 0 1M', '-c', 'flush', `nbd://127.0.0.1:${port}/${name}`], 60000, SYS_PATH);
    assert.equal(io.code, 0, `qemu-io on ${name}: ${io.out}${io.err}`);
  }
  const nope = await runTool('nbdinfo', [`nbd://127.0.0.1:${p1}/nope`], 30000, SYS_PATH);
  assert.notEqual(nope.code, 0, 'nbdinfo on an export that does not exist fails');
  await until(() => (p.err().match(/"msg":"NBD client disconnected"/g) ?? []).length >= 2, 15000, 'both disconnects logged');
  await until(() => /NBD client asked for an unknown export/.test(p.err()), 15000, 'the unknown export logged');

  await p.stop(); // SIGTERM, SIGKILL after 8 s
  const exit = await p.exited;
  assert.equal(exit.code, 0, `clean exit after SIGTERM (${JSON.stringify(exit)}):\n${p.err().slice(-3000)}`);

  // Every line of both streams: a JSON object, no key twice at any depth.
  const err = parseLogLines(p.err(), 'stderr');
  const out = parseLogLines(p.out(), 'stdout');
  const lines = [...out, ...err];
  assert.ok(err.length > 50, `debug logs: ${err.length} lines`);
  for (const l of lines) {
    assert.equal(typeof l.level, 'number');
    assert.equal(typeof l.msg, 'string', JSON.stringify(l));
  }

  // Listeners: one line each, and not a second wording of it.
  const serving = lines.filter((l) => l.msg === 'serving NBD');
  assert.deepEqual(serving.map((l) => l.address).sort(), [`127.0.0.1:${p1}`, `127.0.0.1:${p2}`].sort());
  assert.equal(count(lines, 'NBD server listening'), 0);

  // LUN opened: once per export, although each export's second session checked the LUN's identity.
  for (const e of ['a', 'b']) {
    assert.equal(count(lines, 'LUN opened', (l) => l.export === e), 1, `LUN opened for ${e}`);
    assert.ok(count(lines, 'LUN identity checked', (l) => l.export === e && l.session === 1) >= 1, `the identity check of ${e} ran`);
  }
  assert.equal(count(lines, 'LUN opened'), 2);

  // UNIT ATTENTION: tgtd reports one (29/00 power on/reset) to each new session;
  // each is one line with the command and asc/ascq, followed by its retry.
  const ua = lines.filter((l) => l.msg === 'unit attention');
  assert.ok(ua.length >= 2, `unit attentions seen: ${ua.length}`);
  for (const l of ua) {
    assert.equal(typeof l.cmd, 'string', `a UNIT ATTENTION line names its command: ${JSON.stringify(l)}`);
    assert.equal(typeof l.asc, 'number');
    assert.equal(typeof l.ascq, 'number');
  }
  const key = (l: LogLine): string => `${String(l.export)}/${String(l.session)}/${String(l.cmd)}`;
  const uaBy = new Map<string, number>();
  for (const l of ua) uaBy.set(key(l), (uaBy.get(key(l)) ?? 0) + 1);
  const retryBy = new Map<string, number>();
  for (const l of lines) if (l.msg === 'retrying SCSI command' && l.senseKey === 6) retryBy.set(key(l), (retryBy.get(key(l)) ?? 0) + 1);
  assert.deepEqual([...uaBy].sort(), [...retryBy].sort(), 'one UNIT ATTENTION line per UNIT ATTENTION retried');

  // Clients: connect and disconnect, both at info, with conn, remote and export.
  const connected = lines.filter((l) => l.msg === 'NBD client connected');
  const disconnected = lines.filter((l) => l.msg === 'NBD client disconnected');
  assert.equal(connected.length, 2, JSON.stringify(connected));
  assert.equal(disconnected.length, 2, JSON.stringify(disconnected));
  for (const e of ['a', 'b']) {
    const c = connected.find((l) => l.export === e);
    const d = disconnected.find((l) => l.export === e);
    assert.ok(c && d, `connect and disconnect of ${e}`);
    assert.equal(c.level, 30);
    assert.equal(d.level, c.level, 'the same level');
    assert.equal(d.conn, c.conn);
    assert.equal(d.remote, c.remote);
    assert.match(String(c.remote), /^127\.0\.0\.1:\d+$/);
    assert.equal(typeof d.reason, 'string');
  }

  // An unknown export: one warning with the name and the client.
  const unknown = lines.filter((l) => l.msg === 'NBD client asked for an unknown export');
  assert.equal(unknown.length, 1, JSON.stringify(unknown));
  assert.equal(unknown[0].level, 40);
  assert.equal(unknown[0].export, 'nope');
  assert.match(String(unknown[0].remote), /^127\.0\.0\.1:\d+$/);
  assert.ok(!connected.some((l) => l.conn === unknown[0].conn), 'that client never connected to an export');

  // The key scheme: component once (the daemon half), layer the module, portal and session kept.
  // Sessions belong to the target's pool (shared by its LUNs), not to one export.
  const login = lines.find((l) => l.msg === 'login state' && l.pool === `${tgtd!.iqn(1)}@${tgtd!.portal}`);
  assert.ok(login, 'login lines at debug');
  assert.equal(login.export, undefined, 'a shared session names no export');
  assert.equal(login.component, 'exports');
  assert.equal(login.layer, 'iscsi-login');
  assert.equal(login.portal, tgtd!.portal);
  assert.equal(typeof login.session, 'number');
  assert.equal(login.target, tgtd!.iqn(1));
  const engine = lines.find((l) => l.msg === 'session engine state');
  assert.equal(engine?.layer, 'iscsi-session');
  assert.ok(lines.filter((l) => l.component !== undefined).every((l) => ['exports', 'devices'].includes(String(l.component))), 'component is the daemon half');

  // The run ends with the stop lines, once.
  assert.equal(count(lines, 'stopping: draining NBD clients, flushing and logging out; mapped devices stay for the next daemon'), 1);
  assert.equal(count(lines, 'stopped'), 1);
  assert.equal(err[err.length - 1].msg, 'stopped');
});
