// `promtool check metrics` over a real scrape: every family the daemon can
// expose, populated (requests, errors, sense keys, sessions, reloads, devices),
// must lint clean. Skipped only when promtool is missing outside CI.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Metrics, countSense } from '../../src/metrics';
import { RequestError, ScsiError } from '../../src/errors';
import { SAM_STAT_CHECK_CONDITION, SAM_STAT_GOOD } from '../../src/scsi/transport';
import { addExport, fakeSource, httpGet, serve, sessionsOf, senseData } from './scrape';

const probe = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
const missing = probe.error !== undefined || probe.status !== 0;
const skip = missing && process.env.CI !== 'true' ? 'promtool is not installed (apt-get install prometheus)' : false;

test('promtool check metrics finds no problem in a populated scrape', { skip, timeout: 60000 }, async () => {
  assert.ok(!missing, 'promtool must be installed in CI (Debian package prometheus)');
  const metrics = new Metrics();
  const source = fakeSource(metrics);
  const { mem, exp } = addExport(metrics, 'disk-a');
  addExport(metrics, 'disk-b');
  source.push(sessionsOf('disk-a', 2), sessionsOf('disk-b', 1));

  exp.attach();
  await exp.write(0n, Buffer.alloc(4096, 1), false);
  await exp.read(0n, 4096, Buffer.alloc(4096));
  await exp.flush();
  mem.fail({ op: 'write', error: new RequestError('ENOSPC', 'full'), times: 1 });
  await assert.rejects(exp.write(0n, Buffer.alloc(512), true));
  mem.fail({ op: 'read', error: new ScsiError('ESCSI_MEDIUM', 'unrecovered read error', SAM_STAT_CHECK_CONDITION, 3), times: 1 });
  await assert.rejects(exp.read(0n, 512, Buffer.alloc(512)));
  mem.fail({ op: 'trim', error: new Error('not one of ours'), times: 1 });
  await assert.rejects(exp.trim(0n, 512, false));

  const replies = [senseData(0x06), undefined, senseData(0x03)];
  const scsi = countSense(
    { maxTransferBytes: 1 << 20, execute: async () => ({ status: SAM_STAT_CHECK_CONDITION, sense: replies.shift(), residual: 0 }) },
    metrics,
    'disk-a',
  );
  for (let i = 0; i < 3; i++) await scsi.execute({ lun: 0, cdb: Buffer.alloc(6) });
  const good = countSense({ maxTransferBytes: 1 << 20, execute: async () => ({ status: SAM_STAT_GOOD, residual: 0 }) }, metrics, 'disk-a');
  await good.execute({ lun: 0, cdb: Buffer.alloc(6) });

  metrics.sessionReconnects.inc({ export: 'disk-a', session: '1', portal: '127.0.0.2:3260' });
  metrics.recordReload(true);
  metrics.recordReload(false);
  metrics.setDevices([
    { device: '/dev/nbd0', state: 'attached' },
    { device: '/dev/nbd1', state: 'reattaching' },
  ]);
  metrics.recordAttach('/dev/nbd1', 'reattached');
  metrics.recordAttach('/dev/nbd1', 'adopted');

  const srv = await serve(metrics);
  try {
    const r = await httpGet(srv.port, '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.type, /^text\/plain; version=0\.0\.4/);
    // Make sure the scrape really has what we recorded before trusting a clean lint.
    for (const name of ['iscsi_nbd_nbd_errors_total', 'iscsi_nbd_scsi_sense_total', 'iscsi_nbd_iscsi_session_state', 'iscsi_nbd_device_state', 'iscsi_nbd_reload_total', 'process_cpu_seconds_total']) {
      assert.ok(r.body.includes(`\n${name}{`) || r.body.includes(`\n${name} `), `${name} in the scrape`);
    }
    const lint = spawnSync('promtool', ['check', 'metrics'], { input: r.body, encoding: 'utf8' });
    assert.equal(lint.error, undefined);
    assert.equal(`${lint.stdout}${lint.stderr}`, '', 'promtool check metrics printed problems');
    assert.equal(lint.status, 0, 'promtool check metrics exit status');
  } finally {
    exp.detach();
    await srv.close();
  }
});
