import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CONFIG_SCHEMA, parseConfig, parseExportFlag, parseListen, plaintextProblem } from '../src/config';
import { buildConfig as buildFromArgs, ServeArgs } from '../src/cli/serve';
import { applyEnvOptions } from '../src/cli/common';

/** What the command line does: ISCSI_NBD_* variables fill the options it left out, then the config is built. */
function buildConfig(argv: ServeArgs) {
  const a = { ...argv } as Record<string, unknown>;
  applyEnvOptions(a, () => true);
  return buildFromArgs(a as ServeArgs);
}
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

const everyKey = `
listen: 0.0.0.0:10809
initiatorName: iqn.2026-11.org.example:host1
sessions: 3
digest: crc32c
ifaces: [eth1, eth2]
readOnly: true
logLevel: warn
metrics: 127.0.0.1:9810
control: /run/iscsi-nbd/control.sock
tls: {mode: require, cert: /c.pem, key: /k.pem, ca: /ca.pem, verifyClient: true}
timeouts: {replacement: 1, command: 2, login: 3, connect: 4, nopInterval: 5, nopTimeout: 6, handshake: 7, io: 8, reattach: 9}
stateDir: /var/lib/iscsi-nbd-test
connections: 2
devices:
  - url: v
    device: /dev/nbd3
    connections: 1
    readOnly: true
    digest: crc32c
    ifaces: [eth3]
exports:
  - name: v
    url: iscsi://h/iqn.2000-01.x:y/0
    description: a volume
    sessions: 1
    readOnly: false
    portals: ["h2:3261"]
    discoverPortals: true
    ifaces: [10.0.0.5]
    digest: none
    chap: {user: u, secret: s, secretFile: /f, secretEnv: E, targetUser: t, targetSecret: ts, targetSecretFile: /g, targetSecretEnv: F}
    ownSessions: true
`;

test('every key of the schema is accepted and carried through', () => {
  const c = parseConfig(everyKey, 'all.yaml');
  assert.deepEqual(c.listen, ['0.0.0.0:10809']);
  assert.equal(c.initiatorName, 'iqn.2026-11.org.example:host1');
  assert.equal(c.readOnly, true);
  assert.equal(c.logLevel, 'warn');
  assert.equal(c.metrics, '127.0.0.1:9810');
  assert.equal(c.control, '/run/iscsi-nbd/control.sock');
  assert.deepEqual(c.tls, { mode: 'require', cert: '/c.pem', key: '/k.pem', ca: '/ca.pem', verifyClient: true });
  assert.deepEqual(c.timeouts, { replacement: 1, command: 2, login: 3, connect: 4, nopInterval: 5, nopTimeout: 6, handshake: 7, io: 8, reattach: 9 });
  assert.equal(c.stateDir, '/var/lib/iscsi-nbd-test');
  assert.equal(c.connections, 2);
  assert.deepEqual(c.devices, [{ url: 'v', device: '/dev/nbd3', connections: 1, readOnly: true, digest: 'crc32c', ifaces: ['eth3'] }]);
  assert.deepEqual(c.ifaces, ['eth1', 'eth2']);
  assert.deepEqual(c.exports[0].ifaces, ['10.0.0.5']);
  assert.equal(c.exports[0].discoverPortals, true);
  assert.equal(c.exports[0].ownSessions, true);
  assert.equal(c.exports[0].chap?.targetSecretEnv, 'F');
  // Every property the schema knows appears in this document.
  const props = (o: { properties?: Record<string, unknown> }): string[] => Object.keys(o.properties ?? {});
  const schema = CONFIG_SCHEMA as unknown as { properties: Record<string, { properties?: Record<string, unknown>; items?: { properties: Record<string, { properties?: Record<string, unknown> }> } }> };
  for (const k of props(schema)) assert.match(everyKey, new RegExp(`^${k}:`, 'm'), k);
  for (const k of props(schema.properties.tls)) assert.match(everyKey, new RegExp(`\\b${k}:`), `tls.${k}`);
  for (const k of props(schema.properties.exports.items!)) assert.match(everyKey, new RegExp(`\\b${k}:`), `exports.${k}`);
  for (const k of props(schema.properties.exports.items!.properties.chap)) assert.match(everyKey, new RegExp(`\\b${k}:`), `chap.${k}`);
  for (const k of props(schema.properties.devices.items!)) assert.match(everyKey, new RegExp(`\\b${k}:`), `devices.${k}`);
});

test('out-of-range numbers and wrong types name the key and line', () => {
  assert.match(errorOf('timeouts:\n  command: -1\n'), /bad\.yaml:2: timeouts\.command: must be >= 0/);
  assert.match(errorOf('exports:\n  - name: a\n    url: iscsi://h/iqn.2000-01.x:y/0\n    sessions: 65\n'), /bad\.yaml:4: exports\.0\.sessions: must be <= 64/);
  assert.match(errorOf('tls:\n  mode: maybe\n'), /bad\.yaml:2: tls\.mode: must be one of off, on, require/);
  assert.match(errorOf('exports:\n  - name: a\n    url: iscsi://h/iqn.2000-01.x:y/0\n    chap: {user: u, pasword: x}\n'), /bad\.yaml:4: exports\.0\.chap\.pasword: unknown key/);
  assert.match(errorOf('listen: []\n'), /bad\.yaml:1: listen/);
  // A key left empty is YAML null: a wrong type, not "unset".
  assert.match(errorOf('sessions:\n'), /bad\.yaml:1: sessions: must be integer/);
  assert.match(errorOf('exports:\n  - name: a\n    url: iscsi://h/iqn.2000-01.x:y/0\n    chap:\n'), /bad\.yaml:4: exports\.0\.chap: must be object/);
});

test('flags override environment variables, which override the file', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cfg-test-'));
  const file = path.join(dir, 'c.yaml');
  fs.writeFileSync(file, 'listen: 127.0.0.1:1\nsessions: 4\ndigest: none\nmetrics: 127.0.0.1:2\nlogLevel: warn\ntimeouts: {command: 9}\nexports:\n  - {name: a, url: "iscsi://h/iqn.2000-01.x:y/0"}\n');
  const saved = { ...process.env };
  try {
    for (const k of Object.keys(process.env)) if (k.startsWith('ISCSI_NBD_')) delete process.env[k];
    let c = buildConfig({ config: file });
    assert.deepEqual(c.listen, ['127.0.0.1:1']);
    assert.equal(c.sessions, 4);
    assert.equal(c.logLevel, 'warn');
    assert.equal(c.timeouts.command, 9);
    assert.equal(c.timeouts.replacement, 120);
    process.env.ISCSI_NBD_LISTEN = '127.0.0.1:3,127.0.0.1:4';
    process.env.ISCSI_NBD_SESSIONS = '5';
    process.env.ISCSI_NBD_DIGEST = 'crc32c';
    process.env.ISCSI_NBD_METRICS = '127.0.0.1:5';
    process.env.ISCSI_NBD_READ_ONLY = 'yes';
    c = buildConfig({ config: file });
    assert.deepEqual(c.listen, ['127.0.0.1:3', '127.0.0.1:4']);
    assert.equal(c.sessions, 5);
    assert.equal(c.digest, 'crc32c');
    assert.equal(c.metrics, '127.0.0.1:5');
    assert.equal(c.readOnly, true);
    c = buildConfig({ config: file, listen: ['127.0.0.1:6'], sessions: 6, digest: 'prefer-crc32c', metrics: '127.0.0.1:7', 'read-only': false, 'command-timeout': 11, export: ['a=iscsi://h2/iqn.2000-01.x:z/1', 'b=iscsi://h/iqn.2000-01.x:y/2'] });
    assert.deepEqual(c.listen, ['127.0.0.1:6']);
    assert.equal(c.sessions, 6);
    assert.equal(c.digest, 'prefer-crc32c');
    assert.equal(c.metrics, '127.0.0.1:7');
    assert.equal(c.readOnly, false);
    assert.equal(c.timeouts.command, 11);
    assert.deepEqual(c.exports.map((e) => [e.name, e.url]), [['a', 'iscsi://h2/iqn.2000-01.x:z/1'], ['b', 'iscsi://h/iqn.2000-01.x:y/2']]);
    assert.throws(() => buildConfig({ config: file, sessions: 0 }), /--sessions must be 1\.\.64/);
    assert.throws(() => buildConfig({ config: file, tls: 'require' }), /needs --tls-cert and --tls-key/);
    delete process.env.ISCSI_NBD_LISTEN;
    assert.deepEqual(buildConfig({}).listen, [], 'no exports: nothing to listen for; the daemon serves mapped devices only');
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('plaintextProblem: off loopback with plaintext allowed; read-only exports are named as read; require and loopback are quiet', () => {
  const exports = [{ name: 'a', url: 'iscsi://h/iqn.2000-01.x:y/0' }];
  const on = plaintextProblem({ listen: ['[::]:10809'], tls: { mode: 'on' }, exports, readOnly: true });
  assert.equal(on?.address, '[::]:10809');
  assert.match(on!.message, /anyone who can reach it can read export a \(TLS is only offered \(tls\.mode on\)/);
  assert.equal(plaintextProblem({ listen: ['0.0.0.0:10809'], tls: { mode: 'require' }, exports, readOnly: false }), undefined);
  assert.equal(plaintextProblem({ listen: ['127.1.2.3:10809', '10809', 'localhost:1', '[::1]:2', '[::ffff:127.0.0.1]:3', 'unix:/x'], tls: { mode: 'off' }, exports, readOnly: false }), undefined);
  assert.equal(plaintextProblem({ listen: ['0.0.0.0:10809'], tls: { mode: 'off' }, exports: [], readOnly: false }), undefined, 'no exports: nothing exposed');
});
