// What a scrape promises: families at 0 as soon as an export is added, errno
// labels as names, no spaces in label values, every export series gone after
// forgetExport, standard process_*/nodejs_* names, build info, reload and
// mapped-device families.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  Metrics, countSense, DEVICE_STATES, NBD_ERRNO_NAMES, NBD_OPS, SENSE_KEY_LABELS, SESSION_STATES, errnoLabel, senseKeyLabel,
} from '../../src/metrics';
import { IscsiNbdError, RequestError, nbdErrnoOf, type ErrorCode } from '../../src/errors';
import { SAM_STAT_CHECK_CONDITION } from '../../src/scsi/transport';
import { addExport, fakeSource, find, parseText, serve, sessionsOf, senseData, type Scrape } from './scrape';

const scrape = async (m: Metrics): Promise<Scrape> => parseText(await m.text());
const ERRNOS = Object.values(NBD_ERRNO_NAMES);

// A Record over ErrorCode: the compiler insists on every code, so a new one is checked too.
const ALL_CODES: Record<ErrorCode, true> = {
  EBADURL: true, EBADNAME: true, ECONFIG: true, ECONNECT: true, ECONNLOST: true, ETIMEOUT: true, EPROTO: true, EDIGEST: true,
  ELOGIN: true, EAUTH: true, ENOTARGET: true, ETARGETBUSY: true, EREDIRECT: true, ENODEV: true, ESCSI_RETRY: true, ESCSI_ABORTED: true,
  ESCSI_NOSPACE: true, ESCSI_WRITE_PROTECT: true, ESCSI_NOMEDIUM: true, ESCSI_INVALID: true, ESCSI_MEDIUM: true, ESCSI_IO: true,
  ESCSI_UNSUPPORTED: true, ELUN_CHANGED: true, ENOLUN: true, EINVAL: true, ENOSPC: true, EPERM: true, EOVERFLOW: true,
  ENOTSUP: true, ESHUTDOWN: true, EIO: true, ENOMEM: true,
};

test('every errno the NBD table can return has a name label', () => {
  for (const code of Object.keys(ALL_CODES) as ErrorCode[]) {
    const errno = nbdErrnoOf(new IscsiNbdError(code, 'x'));
    assert.ok(NBD_ERRNO_NAMES[errno], `${code} -> errno ${errno} has no name`);
    assert.match(errnoLabel(errno), /^E[A-Z]+$/);
  }
  assert.equal(errnoLabel(nbdErrnoOf(new Error('plain'))), 'EIO');
  assert.doesNotMatch(errnoLabel(4242), /^\d+$/, 'even an unknown errno is not a bare number');
});

test('sense key labels have no spaces', () => {
  assert.equal(senseKeyLabel(0x06), 'UNIT_ATTENTION');
  assert.equal(senseKeyLabel(0x05), 'ILLEGAL_REQUEST');
  assert.equal(senseKeyLabel(0x0c), 'RESERVED_0x0C');
  assert.equal(senseKeyLabel(undefined), 'NO_SENSE_DATA');
  assert.equal(new Set(SENSE_KEY_LABELS).size, 17);
  for (const l of SENSE_KEY_LABELS) assert.match(l, /^[A-Za-z0-9_]+$/);
});

test('counters of an export exist at 0 as soon as it is added', async () => {
  const m = new Metrics(false);
  addExport(m, 'a');
  const s = await scrape(m);
  for (const op of NBD_OPS) {
    assert.deepEqual(find(s, 'iscsi_nbd_nbd_requests_total', { export: 'a', op }).map((x) => x.value), [0], `requests ${op}`);
    assert.deepEqual(find(s, 'iscsi_nbd_nbd_request_duration_seconds_count', { export: 'a', op }).map((x) => x.value), [0], `latency ${op}`);
    for (const errno of ERRNOS) {
      assert.deepEqual(find(s, 'iscsi_nbd_nbd_errors_total', { export: 'a', op, errno }).map((x) => x.value), [0], `errors ${op} ${errno}`);
    }
  }
  for (const op of ['read', 'write']) assert.deepEqual(find(s, 'iscsi_nbd_nbd_bytes_total', { export: 'a', op }).map((x) => x.value), [0]);
  for (const sense_key of SENSE_KEY_LABELS) assert.deepEqual(find(s, 'iscsi_nbd_scsi_sense_total', { export: 'a', sense_key }).map((x) => x.value), [0]);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_requests_in_flight', { export: 'a' }).map((x) => x.value), [0]);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_connections', { export: 'a' }).map((x) => x.value), [0]);
  assert.deepEqual(find(s, 'iscsi_nbd_reload_total').map((x) => [x.labels.result, x.value]).sort(), [['failure', 0], ['success', 0]]);
});

test('a second InstrumentedExport for the same name does not reset its counters', async () => {
  const m = new Metrics(false);
  const { exp } = addExport(m, 'a');
  await exp.read(0n, 512, Buffer.alloc(512));
  await exp.read(0n, 512, Buffer.alloc(512));
  addExport(m, 'a');
  const s = await scrape(m);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_requests_total', { export: 'a', op: 'read' }).map((x) => x.value), [2]);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_request_duration_seconds_count', { export: 'a', op: 'read' }).map((x) => x.value), [2]);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_bytes_total', { export: 'a', op: 'read' }).map((x) => x.value), [1024]);
});

test('requests count every completion, errors by errno name; no label value has a space', async () => {
  const m = new Metrics(false);
  const { mem, exp } = addExport(m, 'a');
  await exp.write(0n, Buffer.alloc(1000), false);
  mem.fail({ op: 'write', error: new RequestError('ENOSPC', 'full'), times: 1 });
  await assert.rejects(exp.write(0n, Buffer.alloc(10), false));
  mem.fail({ op: 'flush', error: new Error('anything else'), times: 1 });
  await assert.rejects(exp.flush());
  const sense = [senseData(0x06), undefined];
  const t = countSense({ maxTransferBytes: 65536, execute: async () => ({ status: SAM_STAT_CHECK_CONDITION, sense: sense.shift(), residual: 0 }) }, m, 'a');
  await t.execute({ lun: 0, cdb: Buffer.alloc(6) });
  await t.execute({ lun: 0, cdb: Buffer.alloc(6) });
  fakeSource(m).push(sessionsOf('a'));
  m.setDevices([{ device: '/dev/nbd0', state: 'handing-over' }]);

  const s = await scrape(m);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_requests_total', { export: 'a', op: 'write' }).map((x) => x.value), [2]);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_requests_total', { export: 'a', op: 'flush' }).map((x) => x.value), [1]);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_errors_total', { export: 'a', op: 'write', errno: 'ENOSPC' }).map((x) => x.value), [1]);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_errors_total', { export: 'a', op: 'flush', errno: 'EIO' }).map((x) => x.value), [1]);
  assert.deepEqual(find(s, 'iscsi_nbd_nbd_bytes_total', { export: 'a', op: 'write' }).map((x) => x.value), [1000]);
  assert.deepEqual(find(s, 'iscsi_nbd_scsi_sense_total', { export: 'a', sense_key: 'UNIT_ATTENTION' }).map((x) => x.value), [1]);
  assert.deepEqual(find(s, 'iscsi_nbd_scsi_sense_total', { export: 'a', sense_key: 'NO_SENSE_DATA' }).map((x) => x.value), [1]);

  const errnoValues = s.samples.filter((x) => 'errno' in x.labels).map((x) => x.labels.errno);
  assert.ok(errnoValues.length > 0);
  for (const v of errnoValues) assert.match(v, /^E[A-Z]+$/, `errno label ${v} is not a name`);
  for (const x of s.samples) {
    for (const [k, v] of Object.entries(x.labels)) assert.doesNotMatch(v, /\s/, `${x.name}{${k}="${v}"} has a space`);
  }
});

test('forgetExport deletes every series labelled with the export, pushed or sampled, and nothing else', async () => {
  const m = new Metrics(false);
  const source = fakeSource(m);
  const a = addExport(m, 'a');
  addExport(m, 'b');
  source.push(sessionsOf('a', 2), sessionsOf('b', 1));
  a.exp.attach();
  await a.exp.read(0n, 4096, Buffer.alloc(4096));
  a.mem.fail({ op: 'read', error: new RequestError('EINVAL', 'bad'), times: 1 });
  await assert.rejects(a.exp.read(0n, 1, Buffer.alloc(1)));
  a.exp.detach();
  // What ExportManager pushes per session.
  m.sessionState.set({ export: 'a', session: '0', portal: '127.0.0.1:3260', target: 'iqn.2003-01.org.example:disk1' }, 1);
  m.sessionReconnects.inc({ export: 'a', session: '1', portal: '127.0.0.2:3260' });
  countSense({ maxTransferBytes: 1, execute: async () => ({ status: SAM_STAT_CHECK_CONDITION, sense: senseData(0x02), residual: 0 }) }, m, 'a')
    .execute({ lun: 0, cdb: Buffer.alloc(6) });
  await new Promise((r) => setImmediate(r));

  const before = await scrape(m);
  const families = new Set(before.samples.filter((x) => x.labels.export === 'a').map((x) => x.name.replace(/_(bucket|sum|count)$/, '')));
  // Every family with an export label is populated for 'a' here, so the check below covers them all.
  const exportFamilies = (m.registry.getMetricsAsArray() as unknown as Array<{ name: string; labelNames: string[] }>).filter((x) => x.labelNames.includes('export')).map((x) => x.name);
  assert.deepEqual([...families].sort(), [...exportFamilies].sort());
  for (const st of SESSION_STATES) assert.equal(find(before, 'iscsi_nbd_iscsi_session_state', { export: 'a', session: '1', state: st }).length, 1);
  assert.deepEqual(find(before, 'iscsi_nbd_iscsi_reconnects_total', { export: 'a', session: '0' }).map((x) => x.value), [0], 'reconnects of a sampled session start at 0');

  source.splice(0, 1); // the daemon removes the export from its manager first
  await m.forgetExport('a');
  const after = await scrape(m);
  assert.deepEqual(after.samples.filter((x) => x.labels.export === 'a').map((x) => `${x.name}${JSON.stringify(x.labels)}`), []);
  for (const name of exportFamilies) {
    if (name === 'iscsi_nbd_nbd_request_duration_seconds') continue;
    assert.ok(find(after, name, { export: 'b' }).length > 0, `${name} of b survives`);
  }

  // Added again: back at 0.
  addExport(m, 'a');
  const again = await scrape(m);
  assert.deepEqual(find(again, 'iscsi_nbd_nbd_requests_total', { export: 'a', op: 'read' }).map((x) => x.value), [0]);
  assert.deepEqual(find(again, 'iscsi_nbd_nbd_errors_total', { export: 'a', op: 'read', errno: 'EINVAL' }).map((x) => x.value), [0]);
});

test('process and runtime metrics keep their standard names; build info', async () => {
  const m = new Metrics();
  const s = await scrape(m);
  for (const name of ['process_cpu_seconds_total', 'process_start_time_seconds', 'nodejs_heap_size_total_bytes', 'nodejs_eventloop_lag_seconds']) {
    assert.equal(find(s, name).length, 1, `${name} exists`);
  }
  assert.ok(find(s, 'process_resident_memory_bytes').length === 1 || process.platform !== 'linux');
  for (const name of s.types.keys()) {
    assert.doesNotMatch(name, /^iscsi_nbd_(process|nodejs)_/, `${name} keeps the prefix`);
    assert.match(name, /^(iscsi_nbd_|process_|nodejs_)/, `${name}: ours must start with iscsi_nbd_`);
  }
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string };
  assert.deepEqual(find(s, 'iscsi_nbd_build_info').map((x) => [x.labels, x.value]), [[{ version: pkg.version, node_version: process.version }, 1]]);
  assert.equal(s.types.get('iscsi_nbd_build_info'), 'gauge');
});

test('reloads: counted by result, with the time and outcome of the last one', async () => {
  const m = new Metrics(false);
  const t0 = Date.now() / 1000;
  let s = await scrape(m);
  assert.deepEqual(find(s, 'iscsi_nbd_last_reload_success').map((x) => x.value), [1], 'the start counts as a successful load');
  assert.ok(Math.abs(find(s, 'iscsi_nbd_last_reload_timestamp_seconds')[0].value - t0) < 5);
  m.recordReload(true);
  m.recordReload(false);
  s = await scrape(m);
  assert.deepEqual(find(s, 'iscsi_nbd_reload_total', { result: 'success' }).map((x) => x.value), [1]);
  assert.deepEqual(find(s, 'iscsi_nbd_reload_total', { result: 'failure' }).map((x) => x.value), [1]);
  assert.deepEqual(find(s, 'iscsi_nbd_last_reload_success').map((x) => x.value), [0]);
  const ts = find(s, 'iscsi_nbd_last_reload_timestamp_seconds')[0].value;
  assert.ok(ts >= Math.floor(t0) && ts <= Date.now() / 1000 + 1, `timestamp ${ts} is in seconds`);
  m.recordReload(true);
  assert.deepEqual(find(await scrape(m), 'iscsi_nbd_last_reload_success').map((x) => x.value), [1]);
});

test('mapped devices: one-hot state, reattach counter from 0, gone when no longer listed', async () => {
  const m = new Metrics(false);
  const srv = await serve(m); // through the HTTP server as Prometheus sees it
  try {
    m.setDevices([{ device: '/dev/nbd0', state: 'attaching' }, { device: '/dev/nbd1', state: 'attached' }]);
    let s = await srv.scrape();
    assert.deepEqual(find(s, 'iscsi_nbd_device_state', { device: '/dev/nbd0' }).map((x) => [x.labels.state, x.value]).sort(),
      DEVICE_STATES.map((st) => [st, st === 'attaching' ? 1 : 0]).sort());
    assert.deepEqual(find(s, 'iscsi_nbd_device_reattach_total').map((x) => [x.labels.device, x.value]).sort(), [['/dev/nbd0', 0], ['/dev/nbd1', 0]]);

    m.recordAttach('/dev/nbd0', 'reattached');
    m.recordAttach('/dev/nbd0', 'adopted');
    m.recordAttach('/dev/nbd0', 'adopted');
    m.setDevices([{ device: '/dev/nbd0', state: 'attached' }]);
    s = await srv.scrape();
    assert.deepEqual(find(s, 'iscsi_nbd_device_state', { device: '/dev/nbd0', state: 'attached' }).map((x) => x.value), [1]);
    assert.deepEqual(find(s, 'iscsi_nbd_device_state', { device: '/dev/nbd0', state: 'attaching' }).map((x) => x.value), [0]);
    assert.equal(find(s, 'iscsi_nbd_device_state', { device: '/dev/nbd0' }).reduce((n, x) => n + x.value, 0), 1);
    assert.deepEqual(find(s, 'iscsi_nbd_device_reattach_total').map((x) => [x.labels.device, x.value]), [['/dev/nbd0', 1]]);
    assert.deepEqual(find(s, 'iscsi_nbd_device_adopt_total').map((x) => [x.labels.device, x.value]), [['/dev/nbd0', 2]], 'adoptions counted apart from reattaches');
    assert.deepEqual(find(s, 'iscsi_nbd_device_state', { device: '/dev/nbd1' }), [], 'an unmapped device is dropped');

    m.setDevices([]);
    s = await srv.scrape();
    assert.deepEqual(find(s, 'iscsi_nbd_device_state'), []);
    assert.deepEqual(find(s, 'iscsi_nbd_device_reattach_total'), []);
  } finally {
    await srv.close();
  }
});
