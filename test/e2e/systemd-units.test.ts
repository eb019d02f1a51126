// The systemd units and the fstab advice, checked without a VM (a few seconds):
// - `systemd-analyze verify` accepts scripts/systemd/iscsi-nbd.service, an instance of
//   nbd@.service, and the mount units systemd-fstab-generator makes from fstab.example,
//   with nothing printed (verify exits 0 on an unknown key; it only warns);
// - the generated mounts have the dependencies README promises: the map way's mount is only
//   ordered after iscsi-nbd.service (no Requires=/BindsTo=/PartOf=, which would pass a
//   daemon restart on to the mount), the nbd-client way's requires nbd@nbd1.service, and
//   nbd@.service only Wants= the daemon;
// - README's fstab lines and nbdtab line are fstab.example's and nbdtab.example's.
// The unit files are read from scripts/systemd at run time. verify wants every ExecStart=
// binary to exist: when /usr/local/bin/iscsi-nbd does not (CI), it runs in a private mount
// namespace (unshare -m, root) with a tmpfs on /usr/local/bin holding README's link to
// this checkout's bin/iscsi-nbd.js. The host is not changed.

import { skipUnless } from '../helpers/tools';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fstabEntries, readmeCode, REPO, UNITS_DIR as UNITS } from './systemd-readme';

const INSTALLED = '/usr/local/bin/iscsi-nbd';
const GENERATOR = ['/usr/lib/systemd/system-generators/systemd-fstab-generator', '/lib/systemd/system-generators/systemd-fstab-generator']
  .find((p) => fs.existsSync(p));
const skip = skipUnless('systemd-analyze', 'unshare');

/** The [Unit] lines "Key=value" of a unit file, values split on spaces: Key -> every value. */
function unitDeps(text: string): Map<string, string[]> {
  const deps = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^(\w+)=(.*)$/.exec(line.trim());
    if (!m) continue;
    deps.set(m[1], [...(deps.get(m[1]) ?? []), ...m[2].split(/\s+/).filter(Boolean)]);
  }
  return deps;
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'iscsi-nbd-units-'));
}

test('systemd-analyze verify: the units and the mounts fstab.example makes, with no warning', { skip, timeout: 60_000 }, (t) => {
  assert.ok(GENERATOR, 'systemd-fstab-generator not found (Debian package systemd)');
  const dir = tmpDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const units = path.join(dir, 'units');
  const gen = path.join(dir, 'gen');
  fs.mkdirSync(units);
  fs.mkdirSync(gen);
  // The real files, by link: verify loads a template through an instance name.
  fs.symlinkSync(path.join(UNITS, 'iscsi-nbd.service'), path.join(units, 'iscsi-nbd.service'));
  fs.symlinkSync(path.join(UNITS, 'nbd@.service'), path.join(units, 'nbd@.service'));
  fs.symlinkSync(path.join(UNITS, 'nbd@.service'), path.join(units, 'nbd@nbd1.service'));

  // Both ways' fstab lines, uncommented, through the generator systemd runs at boot.
  const entries = fstabEntries(fs.readFileSync(path.join(UNITS, 'fstab.example'), 'utf8'));
  assert.equal(entries.length, 2, 'fstab.example has the map way and the nbd-client way');
  const fstab = path.join(dir, 'fstab');
  fs.writeFileSync(fstab, entries.map((e) => e.join(' ')).join('\n') + '\n');
  const g = spawnSync(GENERATOR!, [gen, gen, gen], { env: { ...process.env, SYSTEMD_FSTAB: fstab, SYSTEMD_PROC_CMDLINE: '' }, encoding: 'utf8' });
  assert.equal(g.status, 0, `systemd-fstab-generator: ${g.stderr}`);
  const mounts = entries.map((e) => path.join(gen, `${e[1].replace(/^\//, '').replace(/\//g, '-')}.mount`));
  for (const m of mounts) assert.ok(fs.existsSync(m), `the generator made ${path.basename(m)}: ${fs.readdirSync(gen).join(' ')}`);

  const targets = [path.join(units, 'iscsi-nbd.service'), path.join(units, 'nbd@nbd1.service'), ...mounts];
  const verify = `systemd-analyze verify ${targets.map((p) => `'${p}'`).join(' ')}`;
  const script = fs.existsSync(INSTALLED)
    ? verify
    : `set -e; mount -t tmpfs tmpfs /usr/local/bin; ln -s '${path.join(REPO, 'bin/iscsi-nbd.js')}' ${INSTALLED}; ${verify}`;
  const cmd = fs.existsSync(INSTALLED) ? ['sh', '-c', script] : ['unshare', '-m', '--propagation', 'private', 'sh', '-c', script];
  const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 50_000 });
  t.diagnostic(`${cmd.slice(0, -1).join(' ')} '${script}' -> ${r.status}`);
  assert.equal(r.error, undefined, String(r.error));
  assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'systemd-analyze verify printed nothing');
  assert.equal(r.status, 0);

  // What the generated mounts depend on (systemd.mount(5): x-systemd.after= is After= only,
  // x-systemd.requires= is Requires= + After=).
  const db = unitDeps(fs.readFileSync(mounts[0], 'utf8'));
  assert.ok(db.get('After')?.includes('iscsi-nbd.service'), 'the map way mounts after the daemon');
  for (const k of ['Requires', 'BindsTo', 'PartOf', 'Requisite']) {
    assert.ok(!db.get(k)?.includes('iscsi-nbd.service'), `the map way's mount has no ${k}=iscsi-nbd.service (a daemon restart would unmount it)`);
  }
  const scratch = unitDeps(fs.readFileSync(mounts[1], 'utf8'));
  assert.ok(scratch.get('Requires')?.includes('nbd@nbd1.service') && scratch.get('After')?.includes('nbd@nbd1.service'));
});

test('the units: restarts of iscsi-nbd reach no other unit; the fd store is on', { skip, timeout: 10_000 }, () => {
  const nbd = unitDeps(fs.readFileSync(path.join(UNITS, 'nbd@.service'), 'utf8'));
  assert.ok(nbd.get('Wants')?.includes('iscsi-nbd.service'));
  assert.ok(nbd.get('After')?.includes('iscsi-nbd.service'));
  for (const k of ['Requires', 'BindsTo', 'PartOf', 'Requisite']) assert.ok(!nbd.get(k)?.includes('iscsi-nbd.service'), `nbd@.service has no ${k}=iscsi-nbd.service`);
  const svc = unitDeps(fs.readFileSync(path.join(UNITS, 'iscsi-nbd.service'), 'utf8'));
  assert.ok(Number(svc.get('FileDescriptorStoreMax')?.[0]) >= 16, 'FileDescriptorStoreMax is set');
  assert.deepEqual(svc.get('Restart'), ['always']);
  assert.ok(svc.get('Before')?.includes('remote-fs-pre.target'));
  for (const k of ['Requires', 'BindsTo', 'PartOf']) assert.equal(svc.get(k), undefined, `iscsi-nbd.service has no ${k}=`);
});

test("README's fstab and nbdtab lines are fstab.example's and nbdtab.example's", () => {
  const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const code = readmeCode();
  assert.deepEqual(fstabEntries(code), fstabEntries(fs.readFileSync(path.join(UNITS, 'fstab.example'), 'utf8')));
  const nbdtab = fs.readFileSync(path.join(UNITS, 'nbdtab.example'), 'utf8').split('\n').filter((l) => /^nbd\d+\s/.test(l));
  const quoted = [...readme.matchAll(/`(nbd\d+ [^`]+)`/g)].map((m) => m[1].replace(/\s+/g, ' '));
  assert.ok(quoted.length > 0, 'README quotes an nbdtab line');
  for (const q of quoted) assert.ok(nbdtab.some((l) => l.replace(/\s+/g, ' ') === q), `README's nbdtab line "${q}" is in nbdtab.example`);
  assert.doesNotMatch(code, /x-systemd\.requires=iscsi-nbd\.service/, 'no README fstab line requires the daemon');
});
