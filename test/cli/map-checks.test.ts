// `map`, `unmap` and `list-mapped` when no daemon runs, as a subprocess: map
// checks root, the nbd driver and the device asked for before it starts a
// daemon (a map that cannot work leaves nothing behind); unmap of a device
// nothing was mapped on says so; an empty list says so. A refused control
// request is logged by the daemon, not only told to the client.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { mapPreflight, type MapHost } from '../../src/cli/map';
import { answer } from '../../src/daemon/control';
import { MAPPING_VERSION, MappingStore } from '../../src/daemon/mapping-store';
import { IscsiNbdError } from '../../src/errors';
import type { Logger } from '../../src/log';
import { CLI, runTool, tmpdir } from '../helpers/process';

const URL = 'iscsi://127.0.0.1:1/iqn.2000-01.org.example:disk/0';
const hasSetpriv = fs.existsSync('/usr/bin/setpriv') || fs.existsSync('/bin/setpriv');
const asOther = process.getuid?.() === 0 && hasSetpriv ? false : 'needs root and setpriv (util-linux)';

/** The CLI with a state dir and control socket of the test's own. */
function cli(dir: string, args: string[]) {
  return runTool(process.execPath, [CLI, ...args, '--state-dir', path.join(dir, 'state'), '--control', path.join(dir, 'c.sock')], 20_000);
}

/** Nothing of a daemon was left: no daemon.json, no daemon.log. */
function noDaemonLeft(dir: string): void {
  for (const f of ['daemon.json', 'daemon.log']) assert.equal(fs.existsSync(path.join(dir, 'state', f)), false, `${f} exists: a daemon was started`);
}

test('map as a user other than root says it needs root, and starts no daemon', { skip: asOther, timeout: 30_000 }, async (t) => {
  const dir = tmpdir(t, 'map-checks-');
  fs.chmodSync(dir, 0o777);
  const r = await runTool('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', 'env', '-i', `PATH=${process.env.PATH}`, 'HOME=/',
    process.execPath, CLI, 'map', URL, '--state-dir', path.join(dir, 'state'), '--control', path.join(dir, 'c.sock')], 20_000);
  assert.equal(r.code, 6, r.err);
  assert.match(r.err, /map needs root \(CAP_SYS_ADMIN\) to configure NBD devices: run it with sudo/);
  assert.doesNotMatch(r.err, /nbd module/, 'root first: a user is not sent to modprobe');
  noDaemonLeft(dir);
});

test('map on a kernel without the nbd module says so, and starts no daemon', { skip: fs.existsSync('/sys/module/nbd') ? 'this kernel has nbd' : asOther, timeout: 30_000 }, async (t) => {
  const dir = tmpdir(t, 'map-checks-');
  const r = await cli(dir, ['map', URL]);
  assert.equal(r.code, 6, r.err);
  assert.match(r.err, /nbd module/);
  noDaemonLeft(dir);
});

test('mapPreflight: root, then the nbd module, then the device asked for', (t) => {
  const sys = tmpdir(t, 'map-sysfs-');
  const host = (o: Partial<MapHost> = {}): MapHost => ({ uid: 0, sysfs: sys, hasModule: () => false, ...o });
  assert.throws(() => mapPreflight(undefined, host({ uid: 1000 })), /needs root/);
  assert.throws(() => mapPreflight(undefined, host()), /this kernel has no nbd module \(`modinfo nbd` finds none\)/);
  assert.throws(() => mapPreflight(undefined, host({ hasModule: () => true })), /no nbd module loaded: run `modprobe nbd`/);
  fs.mkdirSync(path.join(sys, 'module', 'nbd'), { recursive: true });
  mapPreflight(undefined, host());
  fs.mkdirSync(path.join(sys, 'block', 'nbd3'), { recursive: true });
  fs.writeFileSync(path.join(sys, 'block', 'nbd3', 'pid'), '4242\n');
  fs.mkdirSync(path.join(sys, 'block', 'nbd4'), { recursive: true });
  assert.throws(() => mapPreflight(3, host()), /\/dev\/nbd3 is in use already \(served by pid 4242\): pick another --device or leave it out/);
  mapPreflight(4, host());
  mapPreflight(9, host()); // not there yet: the kernel makes it
});

test('unmap with no daemon: nothing mapped is said plainly; a recorded device still waits for a daemon', { timeout: 30_000 }, async (t) => {
  const dir = tmpdir(t, 'map-checks-');
  const none = await cli(dir, ['unmap', '/dev/nbd0']);
  assert.equal(none.code, 6, none.err);
  assert.match(none.err, /nothing is mapped on \/dev\/nbd0: no daemon serves .*state, and it has no record of that device/);
  assert.doesNotMatch(none.err, /keeps its I\/O waiting/);

  new MappingStore(path.join(dir, 'state')).save({
    version: MAPPING_VERSION, index: 1, url: URL, backendId: 'x', identity: 'naa.1', blockSize: 512, size: '1048576', connections: 1, readOnly: false,
    ioTimeout: 15, reattachTimeout: 120, mappedAt: new Date().toISOString(),
  } as never);
  const rec = await cli(dir, ['unmap', '/dev/nbd1']);
  assert.equal(rec.code, 1, rec.err);
  assert.match(rec.err, /no daemon serves .*: start it .*the device keeps its I\/O waiting/);
});

test('an empty list-mapped says so', { timeout: 30_000 }, async (t) => {
  const dir = tmpdir(t, 'map-checks-');
  const r = await cli(dir, ['list-mapped']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /^no devices are mapped \(state dir .*state\)$/m);
  const js = await cli(dir, ['list-mapped', '--json']);
  assert.deepEqual(JSON.parse(js.out), []);
});

test('a control request that fails is logged by the daemon with its op and error', async () => {
  const lines: Array<{ fields: Record<string, unknown>; msg: string }> = [];
  const log = { warn: (fields: Record<string, unknown>, msg: string) => lines.push({ fields, msg }) } as unknown as Logger;
  const handlers = { map: () => { throw new IscsiNbdError('ECONNECT', 'cannot connect to 127.0.0.1:1'); } };
  const a = JSON.parse(await answer(handlers, '{"op":"map","url":"iscsi://u%secret@h/iqn.x:y/0"}', log)) as { error: { code: string } };
  assert.equal(a.error.code, 'ECONNECT');
  assert.equal(lines.length, 1);
  assert.equal(lines[0].msg, 'control request failed');
  assert.deepEqual(lines[0].fields, { op: 'map', code: 'ECONNECT', err: 'cannot connect to 127.0.0.1:1' });
});
