// `iscsi-nbd check-config FILE`: exit codes and messages that name key and line.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from '../helpers/process';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'check-config-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
}

test('a good file: exit 0 and the exports listed', { timeout: 30000 }, () => {
  const secret = file('alice.secret', 'pw\n');
  const p = file('good.yaml', [
    'listen: [127.0.0.1:10809, "unix:/run/iscsi-nbd.sock"]',
    'metrics: 0.0.0.0:9810',
    'logLevel: debug',
    'timeouts: {replacement: 60, nopInterval: 0}',
    'exports:',
    '  - name: vol1',
    '    url: iscsi://10.0.0.1/iqn.2003-01.org.example:disk/1',
    '    portals: ["10.0.1.1:3260"]',
    `    chap: {user: alice, secretFile: ${secret}}`,
    '  - name: vol2',
    '    url: iscsi://10.0.0.2:3261/iqn.2003-01.org.example:disk2/0',
    '',
  ].join('\n'));
  const r = runCli(['check-config', p]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /good\.yaml: OK \(2 exports: vol1, vol2\)/);
});

test('schema errors: exit 6, every bad key named with its line', { timeout: 30000 }, () => {
  const p = file('bad.yaml', 'sessions: 0\ndigest: md5\nexports:\n  - name: a\n    url: iscsi://h/iqn.2000-01.x:y/0\n    readonly: true\n  - name: b\n');
  const r = runCli(['check-config', p]);
  assert.equal(r.code, 6, r.out + r.err);
  assert.match(r.err, /bad\.yaml:1: sessions: must be >= 1/);
  assert.match(r.err, /bad\.yaml:2: digest: must be one of none, crc32c, prefer-crc32c, prefer-none/);
  assert.match(r.err, /bad\.yaml:6: exports\.0\.readonly: unknown key "readonly"/);
  assert.match(r.err, /bad\.yaml:7: exports\.1: missing key "url"/);
});

test('what the schema cannot see: bad URL, bad listen address, unreadable secret file', { timeout: 30000 }, () => {
  const p = file('semantic.yaml', [
    'listen: "h:99999"',
    'exports:',
    '  - name: a',
    '    url: iscsi://user%hunter2secret@h/not-an-iqn/0',
    '  - name: b',
    '    url: iscsi://h/iqn.2000-01.x:y/0',
    '    chap: {user: bob, secretFile: /nonexistent/bob.secret}',
    '',
  ].join('\n'));
  const r = runCli(['check-config', p]);
  assert.equal(r.code, 6, r.out + r.err);
  assert.match(r.err, /listen: bad port/);
  assert.match(r.err, /exports\.0 \(a\)\.url: invalid iSCSI URL/);
  assert.match(r.err, /exports\.1 \(b\)\.chap\.secretFile: cannot read \/nonexistent\/bob\.secret/);
  assert.doesNotMatch(r.err, /hunter2secret/, 'a password in a bad URL is not echoed');
});

test('YAML syntax errors, missing files and usage', { timeout: 30000 }, () => {
  const syn = runCli(['check-config', file('syntax.yaml', 'exports:\n  - name: a\n   url: [\n')]);
  assert.equal(syn.code, 6);
  assert.match(syn.err, /syntax\.yaml:\d+: YAML syntax error/);
  const missing = runCli(['check-config', path.join(dir, 'nope.yaml')]);
  assert.equal(missing.code, 6);
  assert.match(missing.err, /cannot read config file .*nope\.yaml/);
  const usage = runCli(['check-config']);
  assert.equal(usage.code, 2);
});

test('a YAML syntax error is reported alone, without an "exports: none" line', { timeout: 30000 }, () => {
  const r = runCli(['check-config', file('syntax.yaml', 'exports: [\n  - name: a\n')]);
  assert.equal(r.code, 6, r.err);
  assert.match(r.err, /syntax\.yaml:2: YAML syntax error/);
  assert.doesNotMatch(r.err, /exports: none/);
});

test('one LUN under several names (exports, devices:) with two writers: a warning naming each', { timeout: 30000 }, () => {
  const p = file('shared.yaml', [
    'exports:',
    '  - {name: a, url: "iscsi://10.0.0.1/iqn.2003-01.org.example:s/1"}',
    '  - {name: b, url: "iscsi://10.0.0.1:3260/IQN.2003-01.org.example:s/1"}',
    '  - {name: c, url: "iscsi://10.0.0.1/iqn.2003-01.org.example:s/2"}',
    '  - {name: r, url: "iscsi://10.0.0.1/iqn.2003-01.org.example:s/2", readOnly: true}',
    'devices:',
    '  - url: c',
    '    readOnly: true',
    '  - url: iscsi://10.0.0.1/iqn.2003-01.org.example:s/1',
    '',
  ].join('\n'));
  const r = runCli(['check-config', p]);
  assert.equal(r.code, 0, r.err);
  const warnings = r.err.split('\n').filter((l) => /the same LUN/.test(l));
  assert.equal(warnings.length, 1, `one LUN with two writers, one with a single writer: ${r.err}`);
  assert.match(warnings[0], /shared\.yaml:9: devices\.1: the same LUN \(iqn\.2003-01\.org\.example:s\/1 on 10\.0\.0\.1:3260\) is used by export "a", export "b", devices\.1, more than one of them writable: two writers/);
  assert.match(r.out, /OK \(4 exports: a, b, c, r; 2 devices; 1 warning\)/);
});

test('plaintext NBD on an address other hosts reach: check-config and serve warn, naming what is exposed', { timeout: 60000 }, () => {
  const url = 'iscsi://127.0.0.1:1/iqn.2003-01.org.example:s/1';
  const p = file('open.yaml', `listen: 0.0.0.0:10809\nexports:\n  - {name: a, url: "${url}"}\n  - {name: b, url: "${url.replace(/1$/, '2')}", readOnly: true}\n`);
  const r = runCli(['check-config', p]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /open\.yaml:1: listen: NBD on 0\.0\.0\.0:10809 is not loopback, and NBD has no password: anyone who can reach it can read and write export a \(TLS is off\)/);
  const loop = runCli(['check-config', file('loop.yaml', `listen: [127.0.0.2:10809, "[::1]:10809", "unix:/tmp/x.sock"]\nexports:\n  - {name: a, url: "${url}"}\n`)]);
  assert.equal(loop.err, '', 'loopback and unix sockets: no warning');
  // serve says it at the start, before it logs in (here it then fails to: --strict, nothing on port 1).
  const s = runCli(['serve', '--strict', '--listen', '0.0.0.0:0', '--export', `a=${url}`, '--control', 'none'], 30000, { ISCSI_NBD_STATE_DIR: dir });
  assert.equal(s.code, 3, s.err);
  assert.match(s.err, /warning: --listen: NBD on 0\.0\.0\.0:0 is not loopback, and NBD has no password: anyone who can reach it can read and write export a \(TLS is off\)/);
});

test('serve keeps file and line in a config error, as check-config does', { timeout: 30000 }, () => {
  const p = file('timeout.yaml', 'exports:\n  - {name: a, url: "iscsi://127.0.0.1:1/iqn.2000-01.x:y/0"}\ntimeouts:\n  replacement: abc\n');
  const r = runCli(['serve', '--config', p, '--control', 'none'], 30000, { ISCSI_NBD_STATE_DIR: dir });
  assert.equal(r.code, 6, r.err);
  assert.match(r.err, /timeout\.yaml:4: timeouts\.replacement: must be number/);
  const flag = runCli(['serve', '--export', 'a=iscsi://127.0.0.1:1/iqn.2000-01.x:y/0', '--replacement-timeout', '-1', '--control', 'none'], 30000, { ISCSI_NBD_STATE_DIR: dir });
  assert.equal(flag.code, 6, flag.err);
  assert.match(flag.err, /--replacement-timeout must be a number of seconds 0\.\.86400, got -1/);
});
