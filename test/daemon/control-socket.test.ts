// The control socket against other local users: run as root, these tests act
// as other users with setpriv (util-linux). A socket (or its directory) made
// first by another user is refused by `status` and by `serve`; a daemon's own
// socket sits in a 0700 directory, mode 0600; a peer of another uid is
// refused (SO_PEERCRED) even when the file mode would let it in; a non-root
// client that is denied is told to use sudo; ops are looked up as the
// handlers' own keys, and what is not JSON is EINVAL.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { answer, startControlServer } from '../../src/daemon/control';
import { CLI, run, runTool, tmpdir, until } from '../helpers/process';

const isRoot = process.getuid?.() === 0;
const hasSetpriv = fs.existsSync('/usr/bin/setpriv') || fs.existsSync('/bin/setpriv');
const skip = !isRoot || !hasSetpriv ? 'needs root and setpriv (util-linux)' : false;
const NOBODY = 65534;
/** A uid with no passwd entry, one per test process (so parallel runs do not meet in /tmp). */
const USER = 20000 + (process.pid % 20000);

/** A command line run as `uid` with a clean environment: no XDG_RUNTIME_DIR, HOME of its own. */
function asUser(uid: number, home: string, argv: string[]): [string, string[]] {
  return ['setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'env', '-i', `PATH=${process.env.PATH}`, `HOME=${home}`, ...argv]];
}

function cliAs(uid: number, home: string, args: string[], timeoutMs = 20000) {
  const [cmd, argv] = asUser(uid, home, [process.execPath, CLI, ...args]);
  return runTool(cmd, argv, timeoutMs);
}

function homeFor(t: { after: (f: () => void) => void }, uid: number): string {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'control-home-'));
  fs.chownSync(home, uid, uid);
  t.after(() => fs.rmSync(home, { recursive: true, force: true }));
  return home;
}

/** Another user's server on `p` that answers every request with a fake status. */
function squatter(p: string, t: { after: (f: () => unknown) => void }, ownDir = true) {
  const js = `const net=require('net'),fs=require('fs'),path=require('path');const p=${JSON.stringify(p)};` +
    (ownDir ? 'fs.mkdirSync(path.dirname(p),{recursive:true});fs.chmodSync(path.dirname(p),0o777);' : '') +
    `net.createServer((s)=>s.end(JSON.stringify({result:{pid:1,initiatorName:'iqn.fake:squatter',listen:[],exports:[],clients:[]}})+'\\n'))` +
    '.listen(p,()=>{fs.chmodSync(p,0o777);console.log("squatting")});';
  const [cmd, argv] = asUser(NOBODY, '/', [process.execPath, '-e', js]);
  const r = run(cmd, argv, { t, timeoutMs: 60_000 });
  return r;
}

test('a control socket another user made first is refused by status and serve', { skip, timeout: 60_000 }, async (t) => {
  const home = homeFor(t, USER);
  const sock = path.join(os.tmpdir(), `iscsi-nbd-${USER}`, 'control.sock');
  fs.rmSync(path.dirname(sock), { recursive: true, force: true });
  t.after(() => fs.rmSync(path.dirname(sock), { recursive: true, force: true }));
  squatter(sock, t);
  await until(() => fs.existsSync(sock), 10_000, 'the squatter socket');

  const st = await cliAs(USER, home, ['status']);
  assert.equal(st.code, 6, st.err);
  assert.doesNotMatch(st.out, /squatter/, 'the squatter\'s answer is never printed');
  assert.match(st.err, new RegExp(`the directory /tmp/iscsi-nbd-${USER} belongs to uid ${NOBODY} \\(nobody\\), not to you or root`));

  const started = Date.now();
  const sv = await cliAs(USER, home, ['serve']);
  assert.equal(sv.code, 6, `serve does not run without its control socket: ${sv.err}`);
  assert.match(sv.err, /belongs to uid 65534 \(nobody\)/);
  assert.ok(Date.now() - started < 15_000, 'refused at once');
});

test('a socket file of another user in a shared (sticky) directory is refused too', { skip, timeout: 60_000 }, async (t) => {
  const home = homeFor(t, USER);
  const sock = path.join(os.tmpdir(), `iscsi-nbd-squat-${process.pid}.sock`);
  t.after(() => fs.rmSync(sock, { force: true }));
  // /tmp is shared, but sticky: only the file's owner is in question.
  squatter(sock, t, false);
  await until(() => fs.existsSync(sock), 10_000, 'the squatter socket');
  const st = await cliAs(USER, home, ['status', '--control', sock]);
  assert.equal(st.code, 6, st.err);
  assert.match(st.err, /the control socket .* belongs to uid 65534 \(nobody\), not to you or root/);
});

test('serve as a user: its socket in a 0700 directory of its own; status works; others are told to use sudo', { skip, timeout: 60_000 }, async (t) => {
  const home = homeFor(t, USER);
  const dir = path.join(os.tmpdir(), `iscsi-nbd-${USER}`);
  const sock = path.join(dir, 'control.sock');
  fs.rmSync(dir, { recursive: true, force: true });
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const [cmd, argv] = asUser(USER, home, [process.execPath, CLI, 'serve', '--log-format', 'json']);
  const daemon = run(cmd, argv, { t, timeoutMs: 60_000 });
  await until(() => fs.existsSync(sock), 20_000, 'the daemon\'s control socket');
  const d = fs.statSync(dir);
  assert.equal(d.uid, USER);
  assert.equal(d.mode & 0o777, 0o700, 'the directory is the user\'s alone');
  const s = fs.statSync(sock);
  assert.equal(s.uid, USER);
  assert.equal(s.mode & 0o777, 0o600);

  const st = await cliAs(USER, home, ['status', '--json']);
  assert.equal(st.code, 0, st.err);
  const doc = JSON.parse(st.out) as { version?: string; startedAt?: string; listen: string[] };
  assert.match(doc.version ?? '', /^\d+\.\d+\.\d+/);
  assert.ok(doc.startedAt && !Number.isNaN(Date.parse(doc.startedAt)), 'status --json has the start time');
  const text = await cliAs(USER, home, ['status']);
  assert.match(text.out, /^Listening: none \(no NBD listener/m, 'no blank "Listening:"');

  const other = await cliAs(NOBODY, '/', ['status', '--control', sock]);
  assert.equal(other.code, 1, other.err);
  assert.match(other.err, /permission denied on the control socket .*run this command with sudo/);

  process.kill(-daemon.pid!, 'SIGTERM');
  const r = await daemon;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /"msg":"iscsi-nbd starting"/);
  const line = JSON.parse(r.stderr.split('\n').find((l) => l.includes('"iscsi-nbd starting"'))!) as Record<string, unknown>;
  assert.equal(line.control, sock);
  assert.match(String(line.version), /^\d+\.\d+\.\d+/);
  assert.equal(line.stateDir, path.join(home, '.config', 'iscsi-nbd'));
  assert.equal(line.metrics, 'off');
});

test('a peer of another uid is refused by SO_PEERCRED, even through a socket it may open', { skip, timeout: 30_000 }, async (t) => {
  const dir = tmpdir(t, 'control-peer-');
  fs.chmodSync(dir, 0o755);
  const sock = path.join(dir, 'c.sock');
  const srv = await startControlServer(sock, { status: () => ({ ok: true }) });
  t.after(() => new Promise<void>((r) => srv.close(() => r())));
  fs.chmodSync(sock, 0o777); // as if the mode had been left open
  const js = `const s=require('net').connect(${JSON.stringify(sock)});s.on('connect',()=>s.write('{"op":"status"}\\n'));` +
    'let b="";s.on("data",(d)=>b+=d);s.on("end",()=>console.log(b.trim()));';
  const [cmd, argv] = asUser(NOBODY, '/', [process.execPath, '-e', js]);
  const r = await runTool(cmd, argv, 15_000);
  const doc = JSON.parse(r.out) as { error?: { code: string; message: string }; result?: unknown };
  assert.equal(doc.result, undefined, r.out);
  assert.equal(doc.error?.code, 'EPERM');
  assert.match(doc.error!.message, /this daemon answers root only, not uid 65534 \(nobody\)/);
});

test('serve refuses a control socket another daemon holds, before logging in; --control none runs without one and says what will not work', { timeout: 60_000 }, async (t) => {
  const dir = tmpdir(t, 'control-taken-');
  const sock = path.join(dir, 'c.sock');
  const holder = net.createServer(() => undefined);
  await new Promise<void>((r) => holder.listen(sock, () => r()));
  t.after(() => new Promise<void>((r) => holder.close(() => r())));
  const env = { ISCSI_NBD_STATE_DIR: path.join(dir, 'state') };
  const r = await runTool(process.execPath, [CLI, 'serve', '--control', sock, '--export', 'a=iscsi://127.0.0.1:1/iqn.2000-01.org.example:x/0', '--listen', '0'], 20_000, env);
  assert.equal(r.code, 6, r.err);
  assert.match(r.err, /control socket .*c\.sock belongs to another running daemon/);
  assert.doesNotMatch(r.err, /cannot connect|login/i, 'refused before any login');

  const none = run(process.execPath, [CLI, 'serve', '--control', 'none', '--log-format', 'json'], { t, env: { ...process.env, ...env }, timeoutMs: 30_000 });
  await until(() => fs.existsSync(path.join(dir, 'state', 'initiatorname')), 15_000, 'the daemon to start');
  await new Promise((res) => setTimeout(res, 500));
  process.kill(-none.pid!, 'SIGTERM');
  const out = await none;
  assert.equal(out.code, 0, out.stderr);
  assert.match(out.stderr, /no control socket \(--control none\): iscsi-nbd status, map, unmap, list-mapped and reload cannot reach this daemon/);
});

test('control ops are the handlers\' own keys; what is not a JSON request is EINVAL', async () => {
  const handlers = { status: () => ({ up: true }) };
  const ask = async (line: string) => JSON.parse(await answer(handlers, line)) as { result?: unknown; error?: { code: string; message: string } };
  assert.deepEqual((await ask('{"op":"status"}')).result, { up: true });
  for (const op of ['__proto__', 'toString', 'constructor', 'hasOwnProperty', 'valueOf']) {
    const a = await ask(JSON.stringify({ op }));
    assert.equal(a.error?.code, 'EINVAL', op);
    assert.match(a.error!.message, /unknown control request/, op);
    assert.equal(a.result, undefined, op);
  }
  for (const line of ['not json', '{"op":', '[1]', '42', 'null', '{}', '{"op":1}']) {
    const a = await ask(line);
    assert.equal(a.error?.code, 'EINVAL', line);
  }
});
