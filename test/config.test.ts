import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig, parseExportFlag, parseListen } from '../src/config';
import { ConfigError } from '../src/errors';

const good = `
listen:
  - 127.0.0.1:10809
  - unix:/run/iscsi-nbd.sock
sessions: 4
digest: prefer-crc32c
timeouts:
  replacement: 60
exports:
  - name: vol1
    url: iscsi://10.0.0.1/iqn.2003-01.org.example:disk/1
    portals: [10.0.1.1:3260]
    chap:
      user: alice
      secretFile: /etc/iscsi-nbd/alice.secret
  - name: vol2
    url: iscsi://10.0.0.2:3261/iqn.2003-01.org.example:disk2/0
    readOnly: true
`;

test('a good config parses with defaults filled in', () => {
  const c = parseConfig(good, 'good.yaml');
  assert.deepEqual(c.listen, ['127.0.0.1:10809', 'unix:/run/iscsi-nbd.sock']);
  assert.equal(c.sessions, 4);
  assert.equal(c.digest, 'prefer-crc32c');
  assert.equal(c.timeouts.replacement, 60);
  assert.equal(c.timeouts.command, 30);
  assert.equal(c.tls.mode, 'off');
  assert.equal(c.exports.length, 2);
  assert.equal(c.exports[0].chap?.user, 'alice');
  assert.equal(c.exports[1].readOnly, true);
});

function errorOf(text: string): string {
  try {
    parseConfig(text, 'bad.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    assert.equal(err.code, 'ECONFIG');
    return err.message;
  }
  assert.fail('expected a ConfigError');
}

test('an unknown key is named with its line', () => {
  const msg = errorOf('sessions: 2\nexports:\n  - name: a\n    url: iscsi://h/iqn.2000-01.x:y/0\n    sesions: 3\n');
  assert.match(msg, /bad\.yaml:5: exports\.0\.sesions: unknown key "sesions"/);
});

test('a wrong type is named with its line', () => {
  const msg = errorOf('listen: 127.0.0.1:10809\nsessions: many\n');
  assert.match(msg, /bad\.yaml:2: sessions: must be integer/);
});

test('a bad enum value lists the allowed ones', () => {
  const msg = errorOf('digest: md5\n');
  assert.match(msg, /bad\.yaml:1: digest: must be one of none, crc32c, prefer-crc32c, prefer-none/);
});

test('a missing required key is named', () => {
  const msg = errorOf('exports:\n  - name: a\n');
  assert.match(msg, /bad\.yaml:2: exports\.0: missing key "url"/);
});

test('a URL that is not iscsi:// is refused', () => {
  const msg = errorOf('exports:\n  - name: a\n    url: http://x/\n');
  assert.match(msg, /bad\.yaml:3: exports\.0\.url/);
});

test('YAML syntax errors give the line', () => {
  const msg = errorOf('exports:\n  - name: a\n   url: [\n');
  assert.match(msg, /bad\.yaml:\d+: YAML syntax error/);
});

test('duplicate export names are refused', () => {
  const msg = errorOf('exports:\n  - {name: a, url: "iscsi://h/iqn.2000-01.x:y/0"}\n  - {name: a, url: "iscsi://h/iqn.2000-01.x:y/1"}\n');
  assert.match(msg, /used twice/);
});

test('--export NAME=URL and listen addresses', () => {
  assert.deepEqual(parseExportFlag('disk=iscsi://h/iqn.2000-01.x:y/0'), { name: 'disk', url: 'iscsi://h/iqn.2000-01.x:y/0' });
  assert.throws(() => parseExportFlag('disk'), ConfigError);
  assert.throws(() => parseExportFlag('disk=http://x'), ConfigError);
  assert.doesNotMatch((() => { try { parseExportFlag('a=b%secret@c'); } catch (e) { return (e as Error).message; } return ''; })(), /secret/);
  assert.deepEqual(parseListen('127.0.0.1:10809'), { host: '127.0.0.1', port: 10809 });
  assert.deepEqual(parseListen('[::1]:99'), { host: '::1', port: 99 });
  assert.deepEqual(parseListen('0.0.0.0'), { host: '0.0.0.0', port: 10809 });
  assert.deepEqual(parseListen('unix:/run/x.sock'), { path: '/run/x.sock' });
  assert.throws(() => parseListen('h:99999'), ConfigError);
});
