// The logger's key rules (src/log.ts header): one key once per line, whatever
// child loggers and log calls bind; pretty output is one line per event and
// coloured only on a terminal; tell() never mixes plain text into JSON logs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createLogger, rootLogger, setRootLogger, stderrIsJson, tell, type Logger } from '../../src/log';
import { DuplicateKeyError, parseLogLines, parseStrict } from './strict-json';
import { onPath } from '../helpers/tools';

const LOG_JS = path.resolve(__dirname, '..', '..', 'src', 'log.js');

function withFile<T>(fn: (file: string) => T): T {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'log-keys-'));
  try {
    return fn(path.join(dir, 'log'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function jsonLogger(file: string): Logger {
  return createLogger({ level: 'trace', pretty: false, destination: file });
}

test('the strict parser rejects a repeated key at any depth and reads what JSON.parse reads', () => {
  assert.throws(() => parseStrict('{"a":1,"b":2,"a":3}'), DuplicateKeyError);
  assert.throws(() => parseStrict('{"x":{"k":1,"k":1}}'), (e: unknown) => e instanceof DuplicateKeyError && e.path === 'x');
  assert.throws(() => parseStrict('[{"a":1},{"b":[{"c":1,"c":2}]}]'), DuplicateKeyError);
  assert.throws(() => parseStrict('{"a\\u0062":1,"ab":2}'), DuplicateKeyError, 'escapes are compared decoded');
  assert.throws(() => parseStrict('{"a":1}x'), SyntaxError);
  assert.throws(() => parseStrict('{"a":1,}'), SyntaxError);
  assert.throws(() => parseStrict(''), SyntaxError);
  for (const t of ['{"a":{"a":{"a":1}},"b":[1,2,{"a":null}],"c":"x\\"y","d":-1.5e3,"e":true,"f":{}}', '[]', '"s"', '{"__proto__":1}']) {
    assert.deepEqual(parseStrict(t), JSON.parse(t));
  }
  assert.throws(() => parseLogLines('{"a":1}\n{"a":1,"a":2}\n', 'stderr'), /stderr line 2/);
  assert.throws(() => parseLogLines('{"a":1}\nplain text\n', 'stderr'), /stderr line 2/);
  assert.equal(parseLogLines('{"level":30}\n{"level":40}\n', 'stderr').length, 2);
});

test('component once, then layer; a key bound again keeps one value; same values are not repeated', () => {
  withFile((file) => {
    const root = jsonLogger(file);
    // The daemon's chain for a login: component devices -> export -> session+portal
    // -> iscsi-initiator (+target) -> connection (+portal) -> iscsi-login (+target, cid).
    const exp = root.child({ component: 'devices' }).child({ export: 'a' });
    const sess = exp.child({ session: 0, portal: '10.0.0.1:3260' }).child({ component: 'iscsi-initiator', target: 'iqn.x:t' });
    const conn = sess.child({ portal: '10.0.0.1:3260' });
    const login = conn.child({ component: 'iscsi-login', target: 'iqn.x:t', cid: 0 });
    const redirected = sess.child({ portal: '10.0.0.2:3260' });
    const lun = exp.child({ lun: 1 }).child({ export: 'a' }); // LunExport binds export again
    login.debug({ from: 'idle', to: 'operational' }, 'login state');
    sess.child({ component: 'iscsi-session' }).debug('session engine state');
    redirected.info('iSCSI connection state');
    lun.info('LUN opened');
    sess.info({ portal: '10.0.0.1:3260', tsih: 1 }, 'iSCSI session logged in'); // same as bound: dropped
    sess.info({ portal: '10.0.0.9:3260', tsih: 2 }, 'iSCSI session logged in'); // differs: this line's portal
    sess.info({ component: 'probe' }, 'field component'); // a component field below one: layer
    root.child({ conn: 1, remote: 'r' }).debug({ option: 'GO', msg: 'no such export' }, 'option refused');
    root.info({ pid: 1, level: 'x', time: 'y', hostname: 'h' }, 'own keys'); // no hostname in our lines: a field like any other
    root.info({ msg: 'only the field' });
    const text = fs.readFileSync(file, 'utf8');
    const lines = parseLogLines(text, 'log'); // throws on any repeated key
    assert.equal(lines.length, 10, text);
    const [l0, l1, l2, l3, l4, l5, l6, l7, l8, l9] = lines;
    assert.deepEqual(
      { ...l0, level: 0, time: 0, pid: 0 },
      { level: 0, time: 0, pid: 0, component: 'devices', export: 'a', session: 0, portal: '10.0.0.1:3260', layer: 'iscsi-login', target: 'iqn.x:t', cid: 0, from: 'idle', to: 'operational', msg: 'login state' },
    );
    assert.equal(l1.component, 'devices');
    assert.equal(l1.layer, 'iscsi-session');
    assert.equal(l2.portal, '10.0.0.2:3260', 'the connection reached another portal: its value');
    assert.equal(l3.export, 'a');
    assert.equal(l3.lun, 1);
    assert.equal(l4.portal, '10.0.0.1:3260');
    assert.equal(l4.tsih, 1);
    assert.equal(l5.portal, '10.0.0.9:3260');
    assert.equal(l5.tsih, 2);
    assert.equal(l5.layer, 'iscsi-initiator');
    assert.equal(l6.component, 'devices');
    assert.equal(l6.layer, 'probe');
    assert.equal(l7.msg, 'option refused');
    assert.equal(l7.detail, 'no such export');
    assert.equal(l8.pid, process.pid);
    assert.equal(l8.pidField, 1);
    assert.equal(l8.levelField, 'x');
    assert.equal(l8.timeField, 'y');
    assert.equal(l8.hostname, 'h');
    assert.equal(l8.level, 30);
    assert.equal(l9.msg, 'only the field');
    // The parent loggers are untouched by their children.
    assert.deepEqual(exp.bindings(), { component: 'devices', export: 'a' });
    assert.deepEqual(conn.bindings(), { component: 'devices', export: 'a', session: 0, portal: '10.0.0.1:3260', layer: 'iscsi-initiator', target: 'iqn.x:t' });
  });
});

test('a component bound where nothing above names one stays the component', () => {
  withFile((file) => {
    const root = jsonLogger(file);
    root.child({ target: 'iqn.x:t' }).child({ component: 'iscsi-initiator', target: 'iqn.x:t' }).child({ portal: 'p' }).child({ component: 'iscsi-login', cid: 0 }).info('x');
    root.child({ component: 'target' }).child({ component: 'target' }).child({ conn: 3 }).info('y');
    const [a, b] = parseLogLines(fs.readFileSync(file, 'utf8'), 'log');
    assert.equal(a.component, 'iscsi-initiator');
    assert.equal(a.layer, 'iscsi-login');
    assert.equal(b.component, 'target');
    assert.equal(b.layer, undefined, 'the same component twice is not a layer');
  });
});

test('secrets stay out of merged bindings', () => {
  withFile((file) => {
    const root = jsonLogger(file);
    const url = 'iscsi://u%Sup3rSecretK@h/iqn.x:y/0';
    root.child({ url }).child({ url, session: url }).info({ url }, 'x');
    const text = fs.readFileSync(file, 'utf8');
    assert.ok(!text.includes('Sup3rSecretK'), text);
    const [l] = parseLogLines(text, 'log');
    assert.equal(l.url, 'iscsi://u%[redacted]@h/iqn.x:y/0');
    assert.equal(l.session, 'iscsi://u%[redacted]@h/iqn.x:y/0');
  });
});

test('pretty output: one line per event, errors too, no colour when not on a terminal', () => {
  withFile((file) => {
    const l = createLogger({ level: 'info', pretty: true, destination: file });
    l.child({ component: 'exports', export: 'a' }).info({ flags: { readOnly: false, flush: true }, list: [1, 2] }, 'NBD client connected');
    l.warn({ err: new Error('boom') }, 'with an error');
    l.warn({ err: 'connection reset', pending: 2 }, 'iSCSI connection lost');
    l.error(Object.assign(new TypeError('bad'), { code: 'EBAD' }));
    l.info('plain');
    const text = fs.readFileSync(file, 'utf8');
    const lines = text.trimEnd().split('\n');
    assert.equal(lines.length, 5, text);
    for (const s of lines) assert.match(s, /^\[\d\d:\d\d:\d\d\.\d{3}\] (INFO|WARN|ERROR): /);
    assert.match(lines[0], /NBD client connected \{"component":"exports","export":"a","flags":\{"readOnly":false,"flush":true\},"list":\[1,2\]\}$/);
    assert.match(lines[1], /with an error \{"err":"boom"\}$/);
    assert.match(lines[2], /iSCSI connection lost \{"err":"connection reset","pending":2\}$/);
    assert.match(lines[3], /ERROR: bad \{"err":"TypeError: bad \[EBAD\]"\}$/);
    assert.ok(!text.includes('\u001b['), 'no ANSI colours in a file');
  });
});

test('pretty output on a terminal is coloured, one line per event (NO_COLOR turns colour off)', { skip: onPath('script') ? false : 'no script(1)', timeout: 30000 }, () => {
  const prog = `const {createLogger}=require(${JSON.stringify(LOG_JS)});const l=createLogger({level:'info'});` +
    `l.child({component:'exports'}).info({a:{b:1},c:[1,2]},'event one');l.warn('event two');`;
  const run = (env: NodeJS.ProcessEnv): string => {
    const e = { ...env };
    delete e.NODE_TEST_CONTEXT;
    const r = spawnSync('script', ['-qfec', `${process.execPath} -e ${JSON.stringify(prog)}`, '/dev/null'], { env: e, encoding: 'utf8', timeout: 20000 });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout;
  };
  const env = { ...process.env };
  delete env.NO_COLOR;
  delete env.FORCE_COLOR;
  const out = run({ ...env, TERM: 'xterm' });
  const lines = out.split(/\r?\n/).filter((s) => s.trim() !== '');
  assert.equal(lines.length, 2, out);
  assert.match(lines[0], /event one/);
  assert.match(lines[0], /"b":1/);
  assert.ok(out.includes('\u001b['), `coloured on a terminal: ${JSON.stringify(out)}`);
  const plain = run({ ...env, TERM: 'xterm', NO_COLOR: '1' });
  assert.ok(!plain.includes('\u001b['), JSON.stringify(plain));
  assert.equal(plain.split(/\r?\n/).filter((s) => s.trim() !== '').length, 2, plain);
});

test('tell(): plain text unless stderr carries JSON logs, then a JSON line whatever the level', () => {
  const before = rootLogger();
  const writes: string[] = [];
  const orig = process.stderr.write;
  try {
    (process.stderr as { write: unknown }).write = (s: string) => {
      writes.push(String(s));
      return true;
    };
    withFile((file) => {
      setRootLogger(createLogger({ level: 'warn', pretty: true, destination: file }));
      assert.equal(stderrIsJson(), false);
      tell('error', 'cannot connect', { code: 'ECONNECT' }, 'iscsi-nbd: cannot connect [ECONNECT]');
      assert.deepEqual(writes, ['iscsi-nbd: cannot connect [ECONNECT]\n']);
      writes.length = 0;

      setRootLogger(createLogger({ level: 'silent', pretty: false, destination: file }));
      assert.equal(stderrIsJson(), false, 'silent logs: plain text mixes with nothing');
      tell('warn', 'w');
      assert.deepEqual(writes, ['iscsi-nbd: w\n']);
      writes.length = 0;

      setRootLogger(createLogger({ level: 'warn', pretty: false, destination: file }));
      assert.equal(stderrIsJson(), true);
      tell('error', 'cannot connect', { code: 'ECONNECT' });
      tell('info', 'copy progress', { phase: 'copy', pct: 10 }, 'copy: 10%');
      assert.deepEqual(writes, [], 'nothing plain');
      const lines = parseLogLines(fs.readFileSync(file, 'utf8'), 'log');
      assert.deepEqual(lines.map((l) => [l.level, l.msg]), [[50, 'cannot connect'], [30, 'copy progress']]);
      assert.equal(lines[0].code, 'ECONNECT');
      assert.equal(lines[1].pct, 10);
    });
  } finally {
    (process.stderr as { write: unknown }).write = orig;
    setRootLogger(before);
  }
});
