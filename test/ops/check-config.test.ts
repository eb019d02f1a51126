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
