// The export state machine of the daemon (bin/iscsi-nbd.js serve as a
// subprocess) against a private tgtd: an export whose LUN does not exist is
// reported failed and retried while the other one is served, and becomes
// ready by itself once the LUN exists; --strict refuses such a start; a
// target that goes away makes the export `recovering` (and /readyz 503) until
// it is back; `iscsi-nbd reload` prints the plan and its exit codes; and
// --pid-file.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { daemonFixture, type Served } from '../helpers/daemon';
import { freePort } from '../helpers/ports';
import { skipUnless } from '../helpers/tools';
import { runCliAsync, runTool, httpGet, metricValue, until } from '../helpers/process';

const skip = skipUnless('tgtd', 'tgtadm', 'qemu-io');
const MiB = 1024 * 1024;
const STATES = ['starting', 'ready', 'degraded', 'recovering', 'failed', 'draining', 'closed'];

// LUN 2 is missing on purpose; the first test creates it.
const fx = daemonFixture({
  prefix: 'lifecycle-test-', skip,
  tgtd: { targets: [{ tid: 1, luns: [{ lun: 1, size: 16 * MiB }, { lun: 3, size: 16 * MiB }] }] },
});
const serve = (args: string[]): Promise<Served> => fx.serve(args);

interface StatusExport { name: string; state: string; error?: string; nextRetryInMs?: number }
async function statusOf(control: string): Promise<StatusExport[]> {
  const r = await runCliAsync(['status', '--control', control, '--json'], 15000);
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out).exports as StatusExport[];
}
async function stateOf(control: string, name: string): Promise<string | undefined> {
  return (await statusOf(control)).find((e) => e.name === name)?.state;
}
function oneHot(metrics: string, exp: string): Record<string, number | undefined> {
  return Object.fromEntries(STATES.map((st) => [st, metricValue(metrics, 'iscsi_nbd_export_state', { export: exp, state: st })]));
}

test('a missing LUN: the daemon serves the other export, reports it failed, and opens it once the LUN exists', { skip, timeout: 150000 }, async () => {
  const { p, nbd, metrics, control } = await serve(['--export', `good=${fx.tgtd.url(1, 1)}`, '--export', `bad=${fx.tgtd.url(1, 2)}`]);

  const io = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 0 64k', '-c', 'read -P 0x3c 0 64k', `nbd://127.0.0.1:${nbd}/good`], 30000);
  assert.equal(io.code, 0, `qemu-io on good: ${io.out}${io.err}`);
  // A failed export is not offered: the usual "unknown export" answer.
  const refused = await runTool('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', `nbd://127.0.0.1:${nbd}/bad`], 30000);
  assert.notEqual(refused.code, 0, 'qemu-io on the failed export');

  const st = await statusOf(control);
  assert.equal(st.find((e) => e.name === 'good')?.state, 'ready');
  const bad = st.find((e) => e.name === 'bad')!;
  assert.equal(bad.state, 'failed');
  assert.match(bad.error ?? '', /export "bad": LUN 2/);
  assert.ok(bad.nextRetryInMs !== undefined, 'a retry is scheduled');
  const text = await runCliAsync(['status', '--control', control], 15000);
  assert.equal(text.code, 0, text.err);
  assert.match(text.out, /Export: good \(ready\)/);
  assert.match(text.out, /Export: bad \(failed\)\n\tError: export "bad": LUN 2[^\n]*\n\tRetrying: attempt \d+ (in \d+ s|now)/);

  const rz = await httpGet(metrics, '/readyz');
  assert.equal(rz.status, 503, rz.body);
  const body = JSON.parse(rz.body);
  assert.equal(body.ready, false);
  assert.deepEqual(body.detail.exports.map((e: { name: string; state: string }) => [e.name, e.state]).sort(), [['bad', 'failed'], ['good', 'ready']]);
  assert.deepEqual(body.detail.devices, []);
  assert.equal((await httpGet(metrics, '/healthz')).status, 200);

  const m = (await httpGet(metrics, '/metrics')).body;
  assert.deepEqual(oneHot(m, 'bad'), { starting: 0, ready: 0, degraded: 0, recovering: 0, failed: 1, draining: 0, closed: 0 });
  assert.deepEqual(oneHot(m, 'good'), { starting: 0, ready: 1, degraded: 0, recovering: 0, failed: 0, draining: 0, closed: 0 });

  // The LUN appears: the next retry opens the export, with nobody's help.
  await fx.tgtd.addLun(1, 2, { size: 16 * MiB });
  await until(async () => (await stateOf(control, 'bad')) === 'ready', 90000, 'bad becomes ready');
  const rz2 = await httpGet(metrics, '/readyz');
  assert.equal(rz2.status, 200, rz2.body);
  const io2 = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', '-c', 'read -P 0x5a 0 64k', `nbd://127.0.0.1:${nbd}/bad`], 30000);
  assert.equal(io2.code, 0, `qemu-io on bad once ready: ${io2.out}${io2.err}`);
  assert.equal(oneHot((await httpGet(metrics, '/metrics')).body, 'bad').ready, 1);

  await p.stop();
  const log = p.err();
  // One line per transition, with from and to; each failed attempt once, at warn.
  assert.match(log, /"level":40[^\n]*"export":"bad"[^\n]*"from":"starting","to":"failed"[^\n]*"msg":"export state"/);
  assert.match(log, /"level":30[^\n]*"export":"bad"[^\n]*"from":"failed","to":"ready"[^\n]*"msg":"export state"/);
  assert.match(log, /"level":40[^\n]*"export":"bad"[^\n]*"attempt":1,"retryInMs":\d+[^\n]*"msg":"export could not be opened; retrying"/);
  assert.match(log, /"export":"good"[^\n]*"from":"starting","to":"ready"/);
  await fx.tgtd.deleteLun(1, 2);
});

test('--strict: an export that cannot be opened aborts the start with its exit code', { skip, timeout: 60000 }, async () => {
  const nbd = await freePort();
  const r = await runCliAsync(['serve', '--strict', '--listen', `127.0.0.1:${nbd}`, '--control', path.join(fx.dir, 'strict.sock'), '--sessions', '1',
    '--export', `good=${fx.tgtd.url(1, 1)}`, '--export', `bad=${fx.tgtd.url(1, 2)}`], 45000, { ISCSI_NBD_STATE_DIR: fx.dir });
  assert.equal(r.code, 5, r.err.slice(-3000));
  assert.match(r.err, /export "bad": LUN 2/);
});

test('the target goes away: recovering and /readyz 503 with the detail, then ready again', { skip, timeout: 120000 }, async () => {
  const { p, metrics, control } = await serve(['--export', `a=${fx.tgtd.url(1, 1)}`, '--replacement-timeout', '120', '--command-timeout', '10']);
  assert.equal((await httpGet(metrics, '/readyz')).status, 200);
  await fx.tgtd.kill();
  try {
    const r = await until(async () => {
      const x = await httpGet(metrics, '/readyz');
      return x.status === 503 && JSON.parse(x.body).detail.exports[0].state === 'recovering' ? x : undefined;
    }, 30000, '/readyz 503 with a recovering export');
    assert.deepEqual(JSON.parse(r.body), { ready: false, detail: { exports: [{ name: 'a', state: 'recovering' }], devices: [] } });
    assert.equal(await stateOf(control, 'a'), 'recovering');
    const text = await runCliAsync(['status', '--control', control], 15000);
    assert.match(text.out, /Export: a \(recovering\)/);
    assert.equal(oneHot((await httpGet(metrics, '/metrics')).body, 'a').recovering, 1);
    assert.equal((await httpGet(metrics, '/healthz')).status, 200);
  } finally {
    await fx.tgtd.restart();
  }
  await until(async () => (await httpGet(metrics, '/readyz')).status === 200, 60000, '/readyz 200 after the restart');
  assert.equal(await stateOf(control, 'a'), 'ready');
  await p.stop();
  assert.match(p.err(), /"from":"ready","to":"recovering"/);
  assert.match(p.err(), /"from":"recovering","to":"ready"/);
});

test('iscsi-nbd reload: prints the plan; exit 6 for an invalid file, 1 for an export that cannot be opened', { skip, timeout: 150000 }, async () => {
  const cfgFile = path.join(fx.dir, 'reload.yaml');
  const write = (exports: Record<string, number>) => fs.writeFileSync(cfgFile, 'exports:\n' +
    Object.entries(exports).map(([n, lun]) => `  - name: ${n}\n    url: ${fx.tgtd.url(1, lun)}\n`).join(''));
  write({ a: 1 });
  const { p, metrics, control } = await serve(['--config', cfgFile]);

  write({ a: 1, c: 3 });
  const ok = await runCliAsync(['reload', '--control', control], 60000);
  assert.equal(ok.code, 0, ok.err);
  assert.equal(ok.out, [
    'reload: 1 added, 0 removed, 0 changed, 1 kept',
    '  added:   c (ready)',
    '  removed: -',
    '  changed: -',
    '  kept:    a (ready)',
    '',
  ].join('\n'));
  assert.equal(await stateOf(control, 'c'), 'ready');

  fs.writeFileSync(cfgFile, 'exports:\n  - name: a\n    ur1: nope\n');
  const bad = await runCliAsync(['reload', '--control', control], 60000);
  assert.equal(bad.code, 6, bad.out + bad.err);
  assert.match(bad.err, /reload refused, the running exports are kept: .*reload\.yaml:3: exports\.0\.ur1: unknown key/s);
  assert.equal(bad.out, '');
  assert.deepEqual((await statusOf(control)).map((e) => e.name).sort(), ['a', 'c']);

  // c removed, d added on a LUN that does not exist: exit 1, d keeps retrying.
  write({ a: 1, d: 9 });
  const part = await runCliAsync(['reload', '--control', control], 60000);
  assert.equal(part.code, 1, part.out + part.err);
  assert.match(part.out, /^reload: 1 added, 1 removed, 0 changed, 1 kept\n  added:   d \(failed\)\n  removed: c\n/);
  assert.match(part.out, /  d: could not be opened \(retrying\): export "d": LUN 9/);
  assert.match(part.err, /reload: 1 export could not be opened and keeps retrying: d/);
  assert.equal(await stateOf(control, 'd'), 'failed');

  // SIGHUP runs the same reload.
  write({ a: 1 });
  process.kill(p.child.pid!, 'SIGHUP');
  // The reload is done when it is counted, not when d is gone (that happens first).
  const m = await until(async () => {
    const body = (await httpGet(metrics, '/metrics')).body;
    return metricValue(body, 'iscsi_nbd_reload_total', { result: 'success' }) === 2 ? body : undefined;
  }, 30000, 'SIGHUP reload counted');
  assert.deepEqual((await statusOf(control)).map((e) => e.name), ['a']);
  assert.equal(metricValue(m, 'iscsi_nbd_reload_total', { result: 'success' }), 2);
  assert.equal(metricValue(m, 'iscsi_nbd_reload_total', { result: 'failure' }), 2);
  assert.equal(metricValue(m, 'iscsi_nbd_last_reload_success'), 1);
  await p.stop();
});

test('--pid-file: written once serving, removed on stop, and a second daemon with it is refused', { skip, timeout: 90000 }, async () => {
  const pidFile = path.join(fx.dir, 'iscsi-nbd.pid');
  const { p } = await serve(['--export', `a=${fx.tgtd.url(1, 1)}`, '--pid-file', pidFile]);
  assert.equal(fs.readFileSync(pidFile, 'utf8'), `${p.child.pid}\n`);
  const nbd = await freePort();
  const second = await runCliAsync(['serve', '--listen', `127.0.0.1:${nbd}`, '--control', path.join(fx.dir, 'second.sock'),
    '--export', `a=${fx.tgtd.url(1, 1)}`, '--pid-file', pidFile], 30000, { ISCSI_NBD_STATE_DIR: fx.dir });
  assert.equal(second.code, 6, second.err);
  assert.match(second.err, new RegExp(`pid file .*iscsi-nbd\\.pid names iscsi-nbd pid ${p.child.pid}, which still runs`));
  assert.equal(fs.readFileSync(pidFile, 'utf8'), `${p.child.pid}\n`, 'the refused daemon left the pid file alone');
  await p.stop();
  assert.equal(fs.existsSync(pidFile), false, 'pid file removed on stop');

  // A stale pid file (its process is gone) does not stop a start.
  fs.writeFileSync(pidFile, '999999999\n');
  const again = await serve(['--export', `a=${fx.tgtd.url(1, 1)}`, '--pid-file', pidFile]);
  assert.equal(fs.readFileSync(pidFile, 'utf8'), `${again.p.child.pid}\n`);
  await again.p.stop();
  assert.equal(fs.existsSync(pidFile), false);
});
