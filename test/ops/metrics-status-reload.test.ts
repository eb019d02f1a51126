// Operating the daemon against a private tgtd: /metrics after real I/O, /healthz,
// /readyz (200, and 503 once the target is gone), `status` and `status --json`,
// no CHAP secret in logs/metrics/status, SIGHUP reload that adds and removes
// exports without disturbing a busy one, and `copy` round trips.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { daemonFixture, type Served } from '../helpers/daemon';
import { freePort } from '../helpers/ports';
import { skipUnless } from '../helpers/tools';
import { nbdPython } from '../helpers/libnbd';
import { runCliAsync, runTool, httpGet, metricValue, until, sleep } from '../helpers/process';

const skip = skipUnless('tgtd', 'tgtadm', 'qemu-io', 'nbdsh');
const SECRET = 'S3cretPassw0rdOps';
const TSECRET = 'Mutu4lSecretXyz';
const MiB = 1024 * 1024;

function url(tid: number, lun: number): string {
  return fx.tgtd.url(tid, lun);
}
function chapUrl(): string {
  return `iscsi://opsuser%${SECRET}@${fx.tgtd.portal}/${fx.tgtd.iqn(2)}/1?target_user=opstarget&target_password=${TSECRET}`;
}

const fx = daemonFixture({
  prefix: 'ops-test-', skip,
  tgtd: {
    targets: [
      { tid: 1, luns: [{ size: 32 * MiB }, { size: 32 * MiB }, { size: 32 * MiB, thin: true }, { size: 16 * MiB }] },
      { tid: 2, luns: [{ size: 16 * MiB }], chap: { user: 'opsuser', secret: SECRET }, mutualChap: { user: 'opstarget', secret: TSECRET } },
    ],
  },
});
const serve = (args: string[], env: Record<string, string> = {}): Promise<Served> => fx.serve(args, env);

test('metrics, health, readiness, status and no secrets anywhere', { skip, timeout: 120000 }, async () => {
  const { p, nbd, metrics, control } = await serve(
    ['--export', `a=${url(1, 1)}`, '--export', `sec=${chapUrl()}`, '--log-level', 'debug'],
  );
  assert.equal((await httpGet(metrics, '/healthz')).status, 200);
  const ready = await httpGet(metrics, '/readyz');
  assert.equal(ready.status, 200, ready.body);
  assert.equal(JSON.parse(ready.body).ready, true);

  // Real I/O through the bridge on both exports.
  for (const name of ['a', 'sec']) {
    const io = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 1M', '-c', 'read -P 0x5a 0 1M', '-c', 'flush', `nbd://127.0.0.1:${nbd}/${name}`], 60000);
    assert.equal(io.code, 0, `qemu-io on ${name}: ${io.out}${io.err}`);
  }

  const m = (await httpGet(metrics, '/metrics')).body;
  assert.ok((metricValue(m, 'iscsi_nbd_nbd_requests_total', { export: 'a', op: 'write' }) ?? 0) > 0, 'write requests counted');
  assert.ok((metricValue(m, 'iscsi_nbd_nbd_requests_total', { export: 'a', op: 'read' }) ?? 0) > 0, 'read requests counted');
  assert.equal(metricValue(m, 'iscsi_nbd_nbd_bytes_total', { export: 'a', op: 'write' }), MiB);
  assert.equal(metricValue(m, 'iscsi_nbd_nbd_bytes_total', { export: 'sec', op: 'read' }), MiB);
  assert.ok((metricValue(m, 'iscsi_nbd_nbd_request_duration_seconds_count', { export: 'a', op: 'read' }) ?? 0) > 0, 'latency histogram');
  assert.equal(metricValue(m, 'iscsi_nbd_nbd_requests_in_flight', { export: 'a' }), 0);
  assert.equal(metricValue(m, 'iscsi_nbd_scsi_commands_queued', { export: 'a' }), 0);
  assert.equal(metricValue(m, 'iscsi_nbd_iscsi_session_up', { export: 'a', session: '0' }), 1);
  assert.equal(metricValue(m, 'iscsi_nbd_iscsi_session_up', { export: 'sec', session: '0' }), 1);
  assert.equal(metricValue(m, 'iscsi_nbd_iscsi_session_state', { export: 'a', state: 'logged-in' }), 1);
  assert.ok((metricValue(m, 'iscsi_nbd_iscsi_cmdsn_window', { export: 'a', portal: fx.tgtd.portal }) ?? 0) > 0, 'CmdSN window');
  assert.equal(metricValue(m, 'iscsi_nbd_iscsi_digest_errors_total', { export: 'a' }), 0);
  assert.ok(metricValue(m, 'iscsi_nbd_iscsi_commands_in_flight', { export: 'a' }) !== undefined);
  // tgtd answers the first command after login with UNIT ATTENTION (power on/reset).
  assert.ok(metricValue(m, 'iscsi_nbd_scsi_sense_total', {}) !== undefined, 'sense keys counted');
  assert.ok((metricValue(m, 'process_cpu_user_seconds_total') ?? 0) > 0, 'process metrics');
  for (const line of m.split('\n')) {
    if (line && !line.startsWith('#')) assert.match(line, /^(iscsi_nbd_|process_|nodejs_)/, `a series outside our prefix and the standard runtime ones: ${line}`);
  }

  // status while a client is attached to "a".
  const holder = nbdPython('h = connect(sys.argv[1])\nimport time; time.sleep(6)', [`nbd://127.0.0.1:${nbd}/a`], { timeoutMs: 20000 });
  try {
    const js = await until(async () => {
      const r = await runCliAsync(['status', '--control', control, '--json'], 15000);
      assert.equal(r.code, 0, r.err);
      const s = JSON.parse(r.out);
      return s.clients.some((c: { exportName?: string }) => c.exportName === 'a') ? s : undefined;
    }, 10000, 'a client in status --json');
    assert.equal(js.pid, p.child.pid);
    assert.deepEqual(js.exports.map((e: { name: string }) => e.name).sort(), ['a', 'sec']);
    const ea = js.exports.find((e: { name: string }) => e.name === 'a');
    assert.equal(ea.state, 'ready');
    assert.equal(ea.sessions[0].state, 'logged-in');
    assert.equal(ea.sessions[0].portal, fx.tgtd.portal);
    assert.ok(ea.sessions[0].window > 0);
    assert.equal(ea.sessions[0].negotiated.chap, 'none');
    assert.equal(js.exports.find((e: { name: string }) => e.name === 'sec').sessions[0].negotiated.chap, 'mutual');
    assert.ok(ea.counters.requests > 0);
    assert.equal(ea.clients, 1);
    const text = await runCliAsync(['status', '--control', control], 15000);
    assert.equal(text.code, 0, text.err);
    assert.match(text.out, /Export: a \(ready\)/);
    assert.match(text.out, /Export: sec \(ready\)/);
    assert.match(text.out, /Session #0: logged-in/);
    assert.match(text.out, new RegExp(`Portal: ${fx.tgtd.portal.replace(/\./g, '\\.')}`));
    assert.match(text.out, /Negotiated: HeaderDigest None  DataDigest None  CHAP mutual/);
    assert.match(text.out, /MaxBurstLength \d+/);
    assert.match(text.out, /Client #\d+: 127\.0\.0\.1:\d+ transmission/);
    assert.match(text.out, /NBD clients: 1/);
    assert.match(text.out, /URL: iscsi:\/\/opsuser%\[redacted\]@/);
    for (const out of [text.out, JSON.stringify(js)]) {
      assert.ok(!out.includes(SECRET) && !out.includes(TSECRET), `secret in status output:\n${out}`);
    }
  } finally {
    await holder;
  }

  const m2 = (await httpGet(metrics, '/metrics')).body;
  assert.ok(!m2.includes(SECRET) && !m2.includes(TSECRET), 'secret in /metrics');
  await p.stop();
  const err = p.err();
  assert.match(err, /"level":20/, 'debug lines were logged');
  assert.match(err, /iscsi session state/, 'session transitions logged');
  assert.match(err, /NBD connection state/, 'NBD transitions logged');
  assert.ok(!err.includes(SECRET), `CHAP secret in the logs:\n${err.split('\n').filter((l) => l.includes(SECRET)).join('\n')}`);
  assert.ok(!err.includes(TSECRET), 'mutual CHAP secret in the logs');
});

test('the password in --export is hidden from ps', { skip, timeout: 60000 }, async () => {
  const { p } = await serve(['--export', `sec=${chapUrl()}`]);
  const cmdline = fs.readFileSync(`/proc/${p.child.pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  assert.ok(!cmdline.includes(SECRET), cmdline);
  await p.stop();
});

test('a wrong CHAP secret: exit 4 (with --strict) and the secret is not echoed', { skip, timeout: 60000 }, async () => {
  const wrong = `iscsi://opsuser%WrongPassw0rdXy@${fx.tgtd.portal}/${fx.tgtd.iqn(2)}/1`;
  const nbd = await freePort();
  // Without --strict the daemon would start and keep retrying the export (test/lifecycle).
  const r = await runCliAsync(['serve', '--strict', '--listen', `127.0.0.1:${nbd}`, '--control', path.join(fx.dir, 'wrong.sock'), '--log-level', 'debug', '--log-format', 'json', '--strict', '--export', `w=${wrong}`], 45000, { ISCSI_NBD_STATE_DIR: fx.dir });
  assert.equal(r.code, 4, r.err.slice(-3000));
  assert.match(r.err, /EAUTH/);
  assert.ok(!r.err.includes('WrongPassw0rdXy'), 'secret echoed');
  const c = await runCliAsync(['copy', wrong, path.join(fx.dir, 'never.img')], 45000, { ISCSI_NBD_STATE_DIR: fx.dir });
  assert.equal(c.code, 4, c.err);
  assert.ok(!c.err.includes('WrongPassw0rdXy'), 'secret echoed by copy');
});

test('SIGHUP adds and removes exports and never drops a busy one', { skip, timeout: 150000 }, async () => {
  const cfgFile = path.join(fx.dir, 'reload.yaml');
  const write = (names: string[]) => {
    const lunOf: Record<string, number> = { a: 1, b: 2, c: 4 };
    fs.writeFileSync(cfgFile, 'exports:\n' + names.map((n) => `  - name: ${n}\n    url: ${url(1, lunOf[n])}\n`).join(''));
  };
  write(['a', 'b']);
  const { p, nbd, control, metrics } = await serve(['--config', cfgFile]);
  const ioB = await runTool('qemu-io', ['-f', 'raw', '-c', 'read 0 64k', `nbd://127.0.0.1:${nbd}/b`], 30000);
  assert.equal(ioB.code, 0, ioB.err);
  assert.ok(metricValue((await httpGet(metrics, '/metrics')).body, 'iscsi_nbd_nbd_requests_total', { export: 'b' }) !== undefined);
  const names = async () => {
    const r = await runCliAsync(['status', '--control', control, '--json'], 15000);
    return (JSON.parse(r.out).exports as { name: string; state: string }[]).map((e) => e.name).sort();
  };
  assert.deepEqual(await names(), ['a', 'b']);

  // A client keeps writing and reading back on "a" across the reload.
  const script = [
    'h = connect(sys.argv[1])',
    'import time',
    'buf = bytes([0xab]) * 65536',
    't = time.time(); n = 0',
    'while time.time() - t < 8:',
    '    off = (n % 64) * 65536',
    '    h.pwrite(buf, off)',
    '    assert h.pread(65536, off) == buf',
    '    n += 1',
    'print("ops", n)',
  ].join('\n');
  const busy = nbdPython(script, [`nbd://127.0.0.1:${nbd}/a`], { timeoutMs: 60000 });
  await sleep(1500);
  write(['a', 'c']);
  process.kill(p.child.pid!, 'SIGHUP');
  await p.waitFor(/"msg":"reload: done"/, 60000);
  assert.deepEqual(await names(), ['a', 'c']);
  const mt = (await httpGet(metrics, '/metrics')).body;
  assert.equal(metricValue(mt, 'iscsi_nbd_iscsi_session_up', { export: 'c' }), 1);
  assert.equal(metricValue(mt, 'iscsi_nbd_iscsi_session_up', { export: 'b' }), undefined, 'removed export still has session series');
  assert.equal(metricValue(mt, 'iscsi_nbd_nbd_requests_total', { export: 'b' }), undefined, 'removed export still has request series');
  const r = await busy;
  assert.equal(r.code, 0, `the busy client on "a" failed across the reload: ${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /ops [1-9]/);
  assert.doesNotMatch(p.err(), /"export":"a"[^\n]*"msg":"reload: export (removed|changed)/);

  // The new export works; an invalid config is refused and changes nothing.
  const io = await runTool('qemu-io', ['-f', 'raw', '-c', 'read 0 64k', `nbd://127.0.0.1:${nbd}/c`], 30000);
  assert.equal(io.code, 0, io.err);
  fs.writeFileSync(cfgFile, 'exports:\n  - name: a\n    ur1: nope\n');
  process.kill(p.child.pid!, 'SIGHUP');
  await p.waitFor(/reload refused/, 20000);
  assert.match(p.err(), /reload\.yaml:3: exports\.0\.ur1: unknown key/);
  assert.deepEqual(await names(), ['a', 'c']);
  await p.stop();
});

test('copy: image -> thin LUN -> image, sparse and verified', { skip, timeout: 180000 }, async () => {
  const img = path.join(fx.dir, 'src.img');
  const out = path.join(fx.dir, 'out.img');
  const size = 32 * MiB;
  const fd = fs.openSync(img, 'w');
  fs.ftruncateSync(fd, size);
  const pieces: Array<[number, Buffer]> = [[0, crypto.randomBytes(MiB)], [17 * MiB + 4096, crypto.randomBytes(64 * 1024)], [size - 4096, crypto.randomBytes(4096)]];
  for (const [off, b] of pieces) fs.writeSync(fd, b, 0, b.length, off);
  fs.closeSync(fd);
  const env = { ISCSI_NBD_STATE_DIR: fx.dir };

  // Dirty the LUN first so that the zeros really have to be written.
  const dirty = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 8M 2M', `iscsi://${fx.tgtd.portal}/${fx.tgtd.iqn(1)}/3`], 60000);
  assert.equal(dirty.code, 0, dirty.err);

  const up = await runCliAsync(['copy', img, url(1, 3), '--verify', '--progress', 'plain'], 120000, env);
  assert.equal(up.code, 0, up.err);
  assert.match(up.out, /copied 33554432 bytes/);
  assert.match(up.out, /verified/);
  assert.match(up.err, /copy: 100%/);
  // The zeros became UNMAP/WRITE SAME on the thin LUN: the 2 MiB we dirtied are deallocated again.
  const backing = fs.statSync(fx.tgtd.lunInfo(1, 3).path);
  assert.ok(backing.blocks * 512 < 3 * MiB, `LUN backing file has ${backing.blocks * 512} bytes allocated`);

  const down = await runCliAsync(['copy', url(1, 3), out, '--verify', '--progress', 'bar'], 120000, env);
  assert.equal(down.code, 0, down.err);
  assert.ok(fs.readFileSync(out).equals(fs.readFileSync(img)), 'round trip changed the data');
  const st = fs.statSync(out);
  assert.equal(st.size, size);
  assert.ok(st.blocks * 512 < 4 * MiB, `output not sparse: ${st.blocks * 512} bytes allocated of ${size}`);

  // On a terminal (a pseudo-terminal from script(1)): a progress bar with throughput and ETA.
  if (fs.existsSync('/usr/bin/script')) {
    const cmd = `node ${JSON.stringify(path.join(__dirname, '..', '..', '..', 'bin', 'iscsi-nbd.js'))} copy ${JSON.stringify(img)} ${JSON.stringify(url(1, 3))}`;
    const tty = await runTool('script', ['-qec', cmd, '/dev/null'], 120000, env);
    assert.equal(tty.code, 0, tty.out);
    assert.match(tty.out, /copy \[[█░]+\] 100% \| 32\.0 MiB of 32\.0 MiB \| [\d.]+ [KMG]?i?B\/s \| ETA/);
  }

  // LUN to LUN.
  const l2l = await runCliAsync(['copy', url(1, 3), url(1, 2), '--verify', '--progress', 'none'], 120000, env);
  assert.equal(l2l.code, 0, l2l.err);
  assert.match(l2l.out, /verified/);

  // A destination smaller than the source is refused.
  const big = path.join(fx.dir, 'big.img');
  fs.writeFileSync(big, Buffer.alloc(0));
  fs.truncateSync(big, 48 * MiB);
  const refused = await runCliAsync(['copy', big, url(1, 3)], 60000, env);
  assert.notEqual(refused.code, 0);
  assert.match(refused.err, /less than the 50331648 bytes/);
  // Nothing to copy to or from: a clear usage error.
  const bad = await runCliAsync(['copy', img, out], 30000, env);
  assert.equal(bad.code, 6);
  assert.match(bad.err, /iscsi:\/\//);
});

test('/readyz turns 503 when the target goes away', { skip, timeout: 90000 }, async () => {
  const { p, metrics } = await serve(['--export', `a=${url(1, 1)}`, '--replacement-timeout', '5', '--command-timeout', '5']);
  assert.equal((await httpGet(metrics, '/readyz')).status, 200);
  await fx.tgtd.kill();
  const r = await until(async () => {
    const x = await httpGet(metrics, '/readyz');
    return x.status === 503 ? x : undefined;
  }, 30000, '/readyz 503');
  assert.equal(JSON.parse(r.body).ready, false);
  assert.equal((await httpGet(metrics, '/healthz')).status, 200, 'still alive');
  await p.stop();
});
