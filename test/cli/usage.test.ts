// Command-line conventions, with the CLI run as a subprocess: -h and -V in
// every command, usage errors (exit 2) that point at the command's --help,
// --log-level choices, duplicate --export names, URLs without a LUN where
// one is needed, shell completion, and listen addresses given as a port.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseListen, parseConfig } from '../../src/config';
import { parseListenAddress } from '../../src/cli/target';
import { parseLunUrl, parsePortalUrl } from '../../src/iscsi/url';
import { commandOf } from '../../src/cli/main';

const ROOT = path.resolve(__dirname, '../../..');
const BIN = path.join(ROOT, 'bin/iscsi-nbd.js');
const VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const COMMANDS = ['discover', 'serve', 'demo', 'target', 'status', 'copy', 'check-config', 'map', 'unmap', 'list-mapped'];
// Nothing listens on port 1: a command that got as far as connecting would say so.
const NO_LUN = 'iscsi://127.0.0.1:1/iqn.2000-01.org.example:disk';

function cli(args: string[], env: Record<string, string> = {}) {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('ISCSI_NBD_') && k !== 'NODE_TEST_CONTEXT'));
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...clean, ISCSI_NBD_STATE_DIR: '/nonexistent/iscsi-nbd-state', ...env }, encoding: 'utf8', timeout: 20000 });
  return { code: r.status, out: r.stdout, err: r.stderr, all: `exit ${r.status}\n${r.stderr}${r.stdout}` };
}

test('-h and -V work at the top and in every command', { timeout: 120_000 }, () => {
  for (const flag of ['-h', '--help']) {
    const r = cli([flag]);
    assert.equal(r.code, 0, r.all);
    assert.match(r.out, /iscsi-nbd <command> \[options\]/);
    assert.match(r.out, /-h, --help/);
    assert.match(r.out, /-V, --version/);
    assert.match(r.out, /iscsi-nbd completion/);
  }
  assert.equal(cli(['-V']).out.trim(), VERSION);
  for (const c of COMMANDS) {
    const h = cli([c, '-h']);
    assert.equal(h.code, 0, `${c} -h: ${h.all}`);
    assert.match(h.out, new RegExp(`^iscsi-nbd ${c}\\b`, 'm'), `${c} -h shows the command's usage`);
    assert.match(h.out, /-h, --help/, `${c} -h`);
    assert.match(h.out, /-V, --version/, `${c} -h`);
    const v = cli([c, '-V']);
    assert.equal(v.code, 0, `${c} -V: ${v.all}`);
    assert.equal(v.out.trim(), VERSION, `${c} -V`);
  }
});

test('usage errors exit 2 and point at the command\'s --help', { timeout: 60_000 }, () => {
  const cases: Array<[string[], string, RegExp]> = [
    [['serve', '--bogus'], 'serve', /Unknown argument: bogus/],
    [['discover'], 'discover', /Not enough non-option arguments/],
    [['copy', 'only-one'], 'copy', /Not enough non-option arguments/],
    [['check-config', 'a.yaml', 'b.yaml'], 'check-config', /Unknown argument/],
    [['serve', '--sessions', 'many', '--export', `a=${NO_LUN}/0`], 'serve', /--sessions wants a number/],
    [['serve', '--export', `a=${NO_LUN}/0`, '--export', `a=${NO_LUN}/1`], 'serve', /--export: the name "a" is given twice/],
  ];
  for (const [args, cmd, why] of cases) {
    const r = cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.all}`);
    assert.match(r.err, why, args.join(' '));
    assert.match(r.err, new RegExp(`\\(see iscsi-nbd ${cmd} --help\\)`), args.join(' '));
    assert.doesNotMatch(r.err, /cannot connect/, 'refused before connecting anywhere');
  }
  const top = cli(['frobnicate']);
  assert.equal(top.code, 2, top.all);
  assert.match(top.err, /\(see iscsi-nbd --help\)/);
  const none = cli([]);
  assert.equal(none.code, 2, none.all);
  assert.match(none.err, /name a command: discover, serve, demo, target, status, copy, check-config, map, unmap, list-mapped/);
  // Which command a command line is for, for that pointer.
  assert.equal(commandOf(['--log-level', 'x', 'serve', '--listen', '1']), undefined, 'an option value is not skipped: no guessing');
  assert.equal(commandOf(['-h', 'serve']), 'serve');
  assert.equal(commandOf(['nope']), undefined);
});

test('bad values are refused before connecting, naming the flag or variable given: exit 2 for the form, 6 for the value', { timeout: 120_000 }, () => {
  const src = '/nonexistent/x.img';
  const cases: Array<[string[], Record<string, string>, number, RegExp]> = [
    [['copy', src, `${NO_LUN}/0`, '--chunk', 'abc'], {}, 2, /^iscsi-nbd: --chunk wants a number, got "abc"\n\(see iscsi-nbd copy --help\)\n$/],
    [['copy', src, `${NO_LUN}/0`, '--chunk', '0'], {}, 6, /^iscsi-nbd: --chunk must be a whole number 64\.\.32768 \(KiB\) \(got 0\) \[ECONFIG\]\n$/],
    [['copy', src, `${NO_LUN}/0`, '--parallel', '0'], {}, 6, /^iscsi-nbd: --parallel must be a whole number 1\.\.64 \(got 0\) \[ECONFIG\]\n$/],
    [['copy', src, `${NO_LUN}/0`, '--parallel', '1e9'], {}, 6, /^iscsi-nbd: --parallel must be a whole number 1\.\.64 \(got 1000000000\) \[ECONFIG\]\n$/],
    [['map', '--io-timeout', 'abc', `${NO_LUN}/0`], {}, 2, /^iscsi-nbd: --io-timeout wants a number, got "abc"\n\(see iscsi-nbd map --help\)\n$/],
    [['serve', '--export', `a=${NO_LUN}/0`], { ISCSI_NBD_READ_ONLY: 'maybe' }, 2,
      /^iscsi-nbd: ISCSI_NBD_READ_ONLY=maybe is not a yes or no: use 1\/0, true\/false, yes\/no or on\/off \(it stands for --read-only\)\n\(see iscsi-nbd serve --help\)\n$/],
    [['serve', '--export', `a=${NO_LUN}/0`], { ISCSI_NBD_SESSIONS: '0' }, 6, /^iscsi-nbd: ISCSI_NBD_SESSIONS=0: must be a whole number 1\.\.64 \(it stands for --sessions\) \[ECONFIG\]\n$/],
    [['serve', '--export', `a=${NO_LUN}/0`], { ISCSI_NBD_SESSIONS: 'lots' }, 2, /^iscsi-nbd: ISCSI_NBD_SESSIONS=lots is not a number \(it stands for --sessions\)\n/],
    [['discover', '--bogus', '127.0.0.1:1'], {}, 2,
      /^iscsi-nbd: unknown option --bogus: it took "127\.0\.0\.1:1" as its value, which left no room for the command's own argument\n\(see iscsi-nbd discover --help\)\n$/],
  ];
  for (const [args, env, code, want] of cases) {
    const r = cli(args, env);
    const what = `${Object.entries(env).map(([k, v]) => `${k}=${v} `).join('')}${args.join(' ')}`;
    assert.equal(r.code, code, `${what}: ${r.all}`);
    assert.match(r.err, want, what);
  }
});

test('--log-level lists its choices and refuses others (flag and environment)', { timeout: 60_000 }, () => {
  const choices = /Choices: "trace", "debug", "info", "warn", "error", "fatal", "silent"/;
  for (const [args, env] of [
    [['serve', '--log-level', 'loud', '--export', `a=${NO_LUN}/0`], {}],
    [['discover', NO_LUN], { ISCSI_NBD_LOG_LEVEL: 'loud' }],
  ] as Array<[string[], Record<string, string>]>) {
    const r = cli(args, env);
    assert.equal(r.code, 2, r.all);
    assert.match(r.err, /log-level.*loud/s);
    assert.match(r.err, choices);
  }
  assert.match(cli(['serve', '--help']).out, /--log-level .*\[choices: "trace", "debug", "info", "warn", "error", "fatal", "silent"\]/s);
});

test('an iscsi:// URL without a LUN is refused where a LUN is needed, before connecting', { timeout: 60_000 }, () => {
  for (const args of [
    ['serve', '--export', `a=${NO_LUN}`],
    ['map', NO_LUN],
    ['copy', NO_LUN, '/nonexistent/x.img'],
    ['copy', '/nonexistent/x.img', NO_LUN],
  ]) {
    const r = cli(args);
    assert.equal(r.code, 6, `${args.join(' ')}: ${r.all}`);
    assert.match(r.err, /names no LUN \(want iscsi:\/\/host\[:port\]\/iqn\.2000-01\.org\.example:disk\/<lun>; LUN 0 is not assumed\)/, args.join(' '));
    assert.doesNotMatch(r.err, /cannot connect|ECONNECT/);
  }
  assert.throws(() => parseLunUrl('iscsi://h'), /names no target and no LUN/);
  assert.equal(parseLunUrl('iscsi://h/iqn.2000-01.x:y/0').lun, 0);
  // discover takes portal and target URLs, with or without iscsi://.
  assert.deepEqual([parsePortalUrl('10.0.0.1').host, parsePortalUrl('10.0.0.1').port], ['10.0.0.1', 3260]);
  assert.deepEqual([parsePortalUrl('san:3261').host, parsePortalUrl('san:3261').port], ['san', 3261]);
  assert.equal(parsePortalUrl('[fd00::1]:3262').host, 'fd00::1');
  assert.equal(parsePortalUrl('u@san/iqn.2000-01.x:y').target, 'iqn.2000-01.x:y');
  assert.throws(() => parsePortalUrl('http://san/'), /must start with iscsi:\/\//);
  // A config file's exports need one too.
  assert.throws(() => parseConfig(`exports:\n  - name: a\n    url: ${NO_LUN}\n`, 'c.yaml'), /c\.yaml:3: exports\.0 \(a\)\.url: .*names no LUN/);
});

test('a port alone is a port on 127.0.0.1 (serve --listen, --metrics, config listen:, target --listen)', () => {
  assert.deepEqual(parseListen('20003'), { host: '127.0.0.1', port: 20003 });
  assert.deepEqual(parseListen(':20003'), { host: '127.0.0.1', port: 20003 });
  assert.deepEqual(parseListen('9811', 9810), { host: '127.0.0.1', port: 9811 });
  assert.deepEqual(parseListen('0.0.0.0'), { host: '0.0.0.0', port: 10809 });
  assert.throws(() => parseListen('70000'), /bad port/);
  assert.throws(() => parseListen('foo bar:1'), /bad host/);
  assert.throws(() => parseListen('[nope]:1'), /bad host/);
  assert.deepEqual(parseConfig('listen: 20003\nmetrics: 9811\n').listen, ['20003']);
  assert.equal(parseConfig('listen: [20003, "unix:/x"]\n').listen[0], '20003');
  assert.deepEqual(parseListenAddress('20003'), { host: '127.0.0.1', port: 20003 });
  assert.deepEqual(parseListenAddress('0.0.0.0'), { host: '0.0.0.0', port: 3260 });
  assert.deepEqual(parseListenAddress('[::1]:3261'), { host: '::1', port: 3261 });
  assert.throws(() => parseListenAddress('unix:/x'), /not a unix socket/);
});

test('shell completion', { timeout: 30_000 }, () => {
  const r = cli(['completion']);
  assert.equal(r.code, 0, r.all);
  assert.match(r.out, /###-begin-iscsi-nbd-completions-###/);
  assert.match(r.out, /--get-yargs-completions/);
  const c = cli(['--get-yargs-completions', 'iscsi-nbd', 'se']);
  assert.equal(c.code, 0, c.all);
  assert.match(c.out, /^serve$/m);
  const o = cli(['--get-yargs-completions', 'iscsi-nbd', 'serve', '--']);
  assert.match(o.out, /^--tls-cert$/m);
  assert.match(o.out, /^--print-attach$/m);
});

test('help: completion --help is help, options that do not apply are not listed, the ISCSI_NBD_* variables are', { timeout: 60_000 }, () => {
  const comp = cli(['completion', '--help']);
  assert.equal(comp.code, 0, comp.all);
  assert.match(comp.out, /^iscsi-nbd completion\n/);
  assert.match(comp.out, /source <\(iscsi-nbd completion\)/);
  assert.doesNotMatch(comp.out, /_iscsi_nbd|compdef|COMPREPLY/, 'not the script itself');
  for (const c of ['target', 'unmap']) {
    const h = cli([c, '--help']);
    assert.equal(h.code, 0, h.all);
    for (const o of ['--initiator-name', '--chap-secret-file', '--chap-secret-env', '--target-secret-file', '--digest']) {
      assert.doesNotMatch(h.out, new RegExp(`${o}\\b`), `${c} --help lists ${o}, which does not apply`);
    }
    assert.match(h.out, /--log-level/);
  }
  const serve = cli(['serve', '--help']);
  assert.match(serve.out, /Environment \(a flag on the command line wins; both win over the config file\):/);
  for (const v of ['ISCSI_NBD_LISTEN', 'ISCSI_NBD_SESSIONS', 'ISCSI_NBD_READ_ONLY', 'ISCSI_NBD_CHAP_SECRET']) assert.match(serve.out, new RegExp(`^  ${v} `, 'm'), v);
  assert.match(serve.out.replace(/\s+/g, ' '), /default 127\.0\.0\.1:10809 when there are exports; none without/, '--listen says what the code does');
  assert.match(serve.out.replace(/\s+/g, ' '), /NBD has no password/);
  const unmap = cli(['unmap', '--help']);
  assert.match(unmap.out, /^  ISCSI_NBD_STATE_DIR +--state-dir$/m);
  assert.doesNotMatch(unmap.out, /ISCSI_NBD_CHAP_SECRET/);
  assert.doesNotMatch(cli(['check-config', '--help']).out, /^Environment/m, 'no variables, no epilogue');
});
