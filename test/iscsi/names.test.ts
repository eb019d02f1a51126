import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { isValidIscsiName, normalizeIscsiName, parseInitiatorNameFile, resolveInitiatorName } from '../../src/iscsi/names';
import { ConfigError } from '../../src/errors';

test('names: valid iqn/eui/naa, normalised', () => {
  assert.equal(normalizeIscsiName('iqn.2003-01.org.linux-iscsi.host:sn.ABC'), 'iqn.2003-01.org.linux-iscsi.host:sn.abc');
  assert.equal(normalizeIscsiName('IQN.2001-04.com.example'), 'iqn.2001-04.com.example');
  assert.equal(normalizeIscsiName('iqn.2001-04.com.example:storage:diskarrays-sn-a8675309'), 'iqn.2001-04.com.example:storage:diskarrays-sn-a8675309');
  assert.equal(normalizeIscsiName('iqn.2000-01.com.synology:DS.Target-1.abc_def'), 'iqn.2000-01.com.synology:ds.target-1.abc_def');
  assert.equal(normalizeIscsiName('eui.02004567a425678d'), 'eui.02004567A425678D');
  assert.equal(normalizeIscsiName('naa.52004567BA64678D'), 'naa.52004567BA64678D');
  assert.equal(normalizeIscsiName('naa.62004567BA64678D0123456789ABCDEF'), 'naa.62004567BA64678D0123456789ABCDEF');
});

test('names: invalid ones are ConfigError EBADNAME with a reason', () => {
  for (const bad of [
    '', 'foo', 'iqn.', 'iqn.2001.com.example', 'iqn.2001-13.com.example', 'iqn.01-04.com.example',
    'iqn.2001-04.', 'iqn.2001-04.com..example', 'iqn.2001-04.com.example:has space', 'iqn.2001-04.com.example:a/b',
    'eui.0200', 'eui.02004567A425678G', 'naa.1234', `iqn.2001-04.com.example:${'x'.repeat(210)}`,
  ]) {
    assert.throws(() => normalizeIscsiName(bad), (e: unknown) => e instanceof ConfigError && e.code === 'EBADNAME', bad);
    assert.equal(isValidIscsiName(bad), false);
  }
  // 223 bytes is the limit
  const base = 'iqn.2001-04.com.example:';
  assert.ok(isValidIscsiName(base + 'x'.repeat(223 - base.length)));
  assert.ok(!isValidIscsiName(base + 'x'.repeat(224 - base.length)));
});

test('names: initiatorname file parsing', () => {
  assert.equal(parseInitiatorNameFile('## DO NOT EDIT\n#InitiatorName=iqn.x\nInitiatorName=iqn.1993-08.org.debian:01:abc\n'), 'iqn.1993-08.org.debian:01:abc');
  assert.equal(parseInitiatorNameFile('nothing here'), undefined);
});

test('names: resolution order option > system > state > generated (persisted)', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iscsi-names-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sys = path.join(dir, 'initiatorname.iscsi');
  const state = path.join(dir, 'sub', 'initiatorname');
  assert.deepEqual(resolveInitiatorName({ explicit: 'IQN.2020-01.io.x:Me', systemFile: sys, stateFile: state }), { name: 'iqn.2020-01.io.x:me', source: 'option' });
  assert.throws(() => resolveInitiatorName({ explicit: 'bogus', systemFile: sys, stateFile: state }), ConfigError);
  // nothing exists: generate and persist
  const g = resolveInitiatorName({ systemFile: sys, stateFile: state, random: () => Buffer.from('a1b2c3d4e5f6', 'hex') });
  assert.deepEqual(g, { name: 'iqn.2026-11.io.iscsi-nbd:a1b2c3d4e5f6', source: 'generated' });
  assert.equal(fs.readFileSync(state, 'utf8'), 'InitiatorName=iqn.2026-11.io.iscsi-nbd:a1b2c3d4e5f6\n');
  // second run: same name from the state file
  assert.deepEqual(resolveInitiatorName({ systemFile: sys, stateFile: state, random: () => Buffer.alloc(6) }), { name: g.name, source: 'state' });
  // open-iscsi's name wins over ours
  fs.writeFileSync(sys, 'InitiatorName=iqn.1993-08.org.debian:01:deadbeef\n');
  assert.deepEqual(resolveInitiatorName({ systemFile: sys, stateFile: state }), { name: 'iqn.1993-08.org.debian:01:deadbeef', source: 'system' });
  // a broken system file is ignored
  fs.writeFileSync(sys, 'InitiatorName=garbage\n');
  assert.equal(resolveInitiatorName({ systemFile: sys, stateFile: state }).source, 'state');
  assert.equal(resolveInitiatorName({ systemFile: null, stateFile: state }).source, 'state');
  // unwritable state location
  const blocker = path.join(dir, 'file');
  fs.writeFileSync(blocker, '');
  assert.throws(() => resolveInitiatorName({ systemFile: null, stateFile: path.join(blocker, 'x', 'name') }), (e: unknown) => e instanceof ConfigError && e.code === 'ECONFIG');
});
