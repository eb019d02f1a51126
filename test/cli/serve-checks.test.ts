// `serve` and `check-config` as subprocesses: every check serve makes before
// logging in (config problems with their lines, TLS files, taken ports, a
// --tls-cert without --tls), check-config reporting the same in one pass,
// and the nbd-client/nbdtab lines serve prints once exports are ready.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { TargetServer } from '../../src/target/server';
import { MemoryBackend } from '../../src/target/backend';
import { attachInstructions } from '../../src/cli/serve';
import { runCli, describeRun, tmpdir, CLI } from '../helpers/bridge';
import { freePort } from '../helpers/ports';

const TGT = 'iqn.2026-11.test.iscsi-nbd:serve-checks';
const INITIATOR = 'iqn.2026-11.test.iscsi-nbd:serve-checks-i';
const FAKE_CERT = '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n';
const FAKE_KEY = '-----BEGIN PRIVATE KEY-----\nMIIBfake\n-----END PRIVATE KEY-----\n';

function env(dir: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ISCSI_NBD_') && k !== 'NODE_TEST_CONTEXT') e[k] = v;
  return { ...e, ISCSI_NBD_STATE_DIR: dir, ...extra };
}

function write(dir: string, name: string, text: string): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
}

/** Hold a TCP port for the test's duration. */
async function holdPort(t: { after: (f: () => Promise<void>) => void }): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  t.after(() => new Promise<void>((r) => srv.close(() => r())));
  return (srv.address() as net.AddressInfo).port;
}

/** Start `serve`, wait until stdout+stderr match `ready` (or it exits), then SIGTERM it; bounded. */
function serveUntil(args: string[], e: NodeJS.ProcessEnv, ready: RegExp, timeoutMs = 30_000): Promise<{ out: string; err: string; code: number | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI(), 'serve', ...args], { env: e, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let stopping = false;
    const stop = (): void => {
      if (stopping) return;
      stopping = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 8000).unref();
    };
    const timer = setTimeout(stop, timeoutMs);
    const check = (): void => {
      if (ready.test(out + err)) setTimeout(stop, 300); // a moment for anything printed after
    };
    child.stdout.on('data', (d) => { out += d; check(); });
    child.stderr.on('data', (d) => { err += d; check(); });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ out, err, code });
    });
  });
}

test('serve prints the nbd-client and nbdtab lines of each ready export with --print-attach, not otherwise', { timeout: 90_000 }, async (t) => {
  const s = new TargetServer({
    targets: [{
      name: TGT,
      luns: [
        { lun: 0, backend: new MemoryBackend({ size: 8 << 20, blockSize: 4096, identitySeed: 'a' }) },
        { lun: 1, backend: new MemoryBackend({ size: 8 << 20, blockSize: 512, identitySeed: 'b' }) },
      ],
    }],
  });
  await s.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => s.close());
  const dir = tmpdir(t, 'serve-attach-');
  const port = await freePort();
  const args = ['--listen', String(port), '--initiator-name', INITIATOR, '--control', path.join(dir, 'c.sock'), '--log-level', 'warn', '--sessions', '1',
    '--export', `big=iscsi://${s.portal}/${TGT}/0`, '--export', `small=iscsi://${s.portal}/${TGT}/1`];
  const r = await serveUntil([...args, '--print-attach'], env(dir), /\/etc\/nbdtab: nbd1/);
  assert.match(r.out, new RegExp(`^  nbd-client 127\\.0\\.0\\.1 ${port} /dev/nbd0 -N big -b 4096$`, 'm'), r.out + r.err);
  assert.match(r.out, new RegExp(`^  /etc/nbdtab: nbd0  127\\.0\\.0\\.1  big  bs=4096,port=${port}$`, 'm'));
  assert.match(r.out, new RegExp(`^  nbd-client 127\\.0\\.0\\.1 ${port} /dev/nbd1 -N small -b 512$`, 'm'));
  assert.match(r.out, /^export "big" is ready \(4096-byte blocks\)/m);
  assert.match(r.out, /ignores port= in \/etc\/nbdtab/);
  // stdout is a pipe here: scripts get nothing unless they ask.
  const port2 = await freePort();
  const q = await serveUntil(args.map((a) => (a === String(port) ? String(port2) : a === 'warn' ? 'info' : a)), env(dir), /serving NBD/);
  assert.equal(q.out, '', 'no attach lines when stdout is not a terminal');
  assert.match(q.err, /serving NBD/);
});

test('attachInstructions: wildcard and unix addresses, port 10809, names nbdtab cannot hold', () => {
  const tcp = (address: string, port: number) => ({ address, port, family: address.includes(':') ? 'IPv6' : 'IPv4' });
  const a = attachInstructions([{ name: 'db', blockSize: 4096 }], [tcp('0.0.0.0', 10809)]);
  assert.match(a, /^ {2}nbd-client 127\.0\.0\.1 10809 \/dev\/nbd0 -N db -b 4096$/m);
  assert.match(a, /^ {2}\/etc\/nbdtab: nbd0 {2}127\.0\.0\.1 {2}db {2}bs=4096$/m);
  assert.doesNotMatch(a, /ignores port=/);
  assert.match(attachInstructions([{ name: 'v', blockSize: 512 }], [tcp('::', 10809)]), /nbd-client ::1 10809/);
  const u = attachInstructions([{ name: 'v', blockSize: 512 }], ['/run/x.sock']);
  assert.match(u, /nbd-client -unix \/run\/x\.sock \/dev\/nbd0 -N v -b 512/);
  assert.match(u, /nbdtab: nbd0 {2}\/run\/x\.sock {2}v {2}bs=512,unix/);
  const q = attachInstructions([{ name: "it's here", blockSize: 512 }], [tcp('127.0.0.1', 10809)]);
  assert.match(q, /-N 'it'\\''s here' -b 512/);
  assert.match(q, /nbdtab: \(not possible/);
  assert.equal(attachInstructions([], [tcp('127.0.0.1', 1)]), '');
});

test('a taken metrics or NBD port is refused before any login, in the same words', { timeout: 60_000 }, async (t) => {
  const dir = tmpdir(t, 'serve-ports-');
  const taken = await holdPort(t);
  const dead = await freePort();
  const exp = ['--export', `v=iscsi://127.0.0.1:${dead}/${TGT}/0`, '--initiator-name', INITIATOR, '--control', path.join(dir, 'c.sock')];
  const m = await runCli(['serve', '--listen', String(await freePort()), '--metrics', `127.0.0.1:${taken}`, ...exp], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(m.code, 6, describeRun(m, 'metrics port taken'));
  assert.match(m.stderr, new RegExp(`cannot serve metrics on 127\\.0\\.0\\.1:${taken}: the address is in use \\(another iscsi-nbd\\?\\)\\. Pick another with --metrics HOST:PORT`));
  assert.doesNotMatch(m.stderr, /cannot connect/, 'checked before logging in');
  const mp = await runCli(['serve', '--listen', String(await freePort()), '--metrics', String(taken), ...exp], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(mp.code, 6, describeRun(mp, 'metrics port (alone) taken'));
  assert.match(mp.stderr, /cannot serve metrics on 127\.0\.0\.1:\d+: the address is in use/);
  const n = await runCli(['serve', '--listen', String(taken), ...exp], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(n.code, 6, describeRun(n, 'NBD port taken'));
  assert.match(n.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${taken}: the address is in use \\(another iscsi-nbd or nbd-server\\?\\)\\. Pick another with --listen HOST:PORT`));
  assert.doesNotMatch(n.stderr, /cannot connect/);
});

test('TLS files are checked before any login; --tls-cert without --tls is a warning', { timeout: 60_000 }, async (t) => {
  const dir = tmpdir(t, 'serve-tls-');
  const dead = await freePort();
  const exp = ['--listen', String(await freePort()), '--export', `v=iscsi://127.0.0.1:${dead}/${TGT}/0`, '--initiator-name', INITIATOR, '--control', path.join(dir, 'c.sock')];
  const notPem = write(dir, 'cert.txt', 'hello\n');
  const cert = write(dir, 'cert.pem', FAKE_CERT);
  const key = write(dir, 'key.pem', FAKE_KEY);
  const bad = await runCli(['serve', ...exp, '--tls', 'on', '--tls-cert', notPem, '--tls-key', path.join(dir, 'missing.pem')], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(bad.code, 6, describeRun(bad, 'bad TLS files'));
  assert.match(bad.stderr, new RegExp(`--tls-cert: ${notPem.replace(/[.]/g, '\\.')} is not a PEM file`));
  assert.match(bad.stderr, /--tls-key: cannot read .*missing\.pem: no such file/);
  assert.doesNotMatch(bad.stderr, /cannot connect/, 'both found before any login');
  const swapped = await runCli(['serve', ...exp, '--tls', 'require', '--tls-cert', key, '--tls-key', cert], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(swapped.code, 6, describeRun(swapped, 'swapped'));
  assert.match(swapped.stderr, /--tls-cert: .*key\.pem holds no certificate: it holds a private key \(swapped with the key\?\)/);
  assert.match(swapped.stderr, /--tls-key: .*cert\.pem holds no private key: it holds a certificate \(swapped with the certificate\?\)/);
  // --strict: an export that cannot be opened ends the start (exit 3) instead of being retried.
  const noMode = await runCli(['serve', '--strict', ...exp, '--tls-cert', cert], { timeoutMs: 30_000, env: env(dir) });
  assert.match(noMode.stderr, /^iscsi-nbd: warning: --tls-cert: ignored without --tls on or --tls require \(TLS is off\)$/m);
  assert.equal(noMode.code, 3, describeRun(noMode, 'went on to log in (nothing listens there)'));
  const good = await runCli(['serve', '--strict', ...exp, '--tls', 'on', '--tls-cert', cert, '--tls-key', key], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(good.code, 3, describeRun(good, 'PEM files that look right: on to the login'));
});

const BAD_CONFIG = (dir: string) => [
  'listen: foo.invalid',                                   // 1
  'tls:',                                                  // 2
  '  mode: on',                                            // 3
  `  cert: ${path.join(dir, 'nope.pem')}`,                 // 4
  `  key: ${path.join(dir, 'plain.txt')}`,                 // 5
  'exports:',                                              // 6
  '  - name: a',                                           // 7
  '    url: iscsi://127.0.0.1:1/iqn.2000-01.x:y',           // 8
  '  - name: b',                                           // 9
  '    url: iscsi://127.0.0.1:1/iqn.2000-01.x:y/1',         // 10
  '  - name: a',                                           // 11
  '    url: iscsi://127.0.0.1:1/iqn.2000-01.x:y/2',         // 12
  'devices:',                                              // 13
  '  - url: nosuchexport',                                 // 14
  '',
].join('\n');

test('check-config: every problem serve would refuse, in one pass, each with its line', { timeout: 60_000 }, async (t) => {
  const dir = tmpdir(t, 'check-config-cli-');
  write(dir, 'plain.txt', 'not pem\n');
  const file = write(dir, 'bad.yaml', BAD_CONFIG(dir));
  const r = await runCli(['check-config', file], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(r.code, 6, describeRun(r, 'check-config'));
  const f = file.replace(/[.]/g, '\\.');
  const want = [
    new RegExp(`${f}:1: listen: cannot resolve "foo\\.invalid"`),
    new RegExp(`${f}:4: tls\\.cert: cannot read .*nope\\.pem: no such file`),
    new RegExp(`${f}:5: tls\\.key: .*plain\\.txt is not a PEM file`),
    new RegExp(`${f}:8: exports\\.0 \\(a\\)\\.url: invalid iSCSI URL .*names no LUN`),
    new RegExp(`${f}:11: exports\\.2\\.name: the name "a" is used twice \\(first at line 7\\)`),
    new RegExp(`${f}:14: devices\\.0\\.url: "nosuchexport" is neither an iscsi:// URL nor the name of an export`),
  ];
  for (const re of want) assert.match(r.stderr, re);

  // serve refuses the same file before logging in anywhere, with the same lines, all at once
  // (the DNS lookup of listen hosts comes after the rest).
  const s = await runCli(['serve', '--config', file, '--control', path.join(dir, 'c.sock')], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(s.code, 6, describeRun(s, 'serve --config'));
  for (const re of want.slice(1)) assert.match(s.stderr, re);
  assert.doesNotMatch(s.stderr, /cannot connect/);
  // Once those are fixed, the listen host that does not resolve.
  const file2 = write(dir, 'bad2.yaml', 'listen: foo.invalid\nexports:\n  - {name: a, url: "iscsi://127.0.0.1:1/iqn.2000-01.x:y/0"}\n');
  const s2 = await runCli(['serve', '--config', file2, '--control', path.join(dir, 'c.sock')], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(s2.code, 6, describeRun(s2, 'serve --config bad2'));
  assert.match(s2.stderr, new RegExp(`${file2.replace(/[.]/g, '\\.')}:1: listen: cannot resolve "foo\\.invalid"`));
  assert.doesNotMatch(s2.stderr, /cannot connect/);
});

test('check-config: an empty export list is a warning, as in serve (a map-only config); a good file passes', { timeout: 60_000 }, async (t) => {
  const dir = tmpdir(t, 'check-config-empty-');
  const empty = await runCli(['check-config', write(dir, 'empty.yaml', 'initiatorName: iqn.2026-01.org.example:h\n')], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(empty.code, 0, describeRun(empty, 'no exports, no devices'));
  assert.match(empty.stderr, /^iscsi-nbd: warning: .*empty\.yaml: exports: none, and no devices: nothing to serve/m);
  assert.match(empty.stdout, /empty\.yaml: OK \(0 exports; 1 warning\)/);
  const list = await runCli(['check-config', write(dir, 'list.yaml', 'sessions: 1\nexports: []\n')], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(list.code, 0, describeRun(list, 'exports: []'));
  assert.match(list.stderr, /list\.yaml:2: exports: none, and no devices/);
  const dev = await runCli(['check-config', write(dir, 'dev.yaml', 'sessions: 1\ndevices:\n  - url: iscsi://10.0.0.1/iqn.2000-01.x:y/1\n')], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(dev.code, 0, describeRun(dev, 'devices only'));
  assert.match(dev.stderr, /^iscsi-nbd: warning: .*dev\.yaml:2: exports: none: NBD clients get nothing here; only the devices: are mapped$/m);
  assert.match(dev.stdout, /dev\.yaml: OK \(0 exports; 1 device; 1 warning\)/);
  const good = await runCli(['check-config', write(dir, 'good.yaml', 'listen: 20003\nmetrics: localhost:9811\nexports:\n  - {name: a, url: "iscsi://10.0.0.1/iqn.2000-01.x:y/0"}\n')], { timeoutMs: 30_000, env: env(dir) });
  assert.equal(good.code, 0, describeRun(good, 'good'));
  assert.equal(good.stderr, '');
  assert.match(good.stdout, /good\.yaml: OK \(1 export: a\)/);
  // A file with no exports still starts a daemon (for `iscsi-nbd map`), with the warning.
  const s = await runCli(['serve', '--config', write(dir, 'bare.yaml', 'sessions: 1\n'), '--listen', `127.0.0.1:${await freePort()}`, '--metrics', `127.0.0.1:${await holdPort(t)}`,
    '--control', path.join(dir, 'c.sock')], { timeoutMs: 30_000, env: env(dir) });
  assert.match(s.stderr, /^iscsi-nbd: warning: .*bare\.yaml: exports: none, and no devices/m);
  assert.match(s.stderr, /cannot serve metrics/, 'and went on (stopped here by the taken metrics port)');
});
