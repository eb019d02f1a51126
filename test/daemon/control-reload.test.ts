// Reload through the control socket, on an in-process daemon against tgtd,
// with the config read the way `serve --config` reads it (buildConfig): a
// changed restart-only key (listen) is named as waiting for a restart, a
// file error keeps its file and line, and a reload that changes nothing while
// an export is failed is no success (exit 1 from `iscsi-nbd reload`).

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { skipUnless } from '../helpers/tools';
import { freePort } from '../helpers/ports';
import { runCliAsync } from '../helpers/process';
import { startDaemon, type ReloadOutcome, type RunningDaemon } from '../../src/daemon/daemon';
import { callControl } from '../../src/daemon/control';
import { buildConfig } from '../../src/cli/serve';
import { renderReload } from '../../src/cli/reload';
import { setRootLogger, createLogger } from '../../src/log';

const skip = skipUnless('tgtd', 'tgtadm');
let tgtd: Tgtd;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'control-reload-'));
const logFile = path.join(tmp, 'daemon.log');
/** The daemon's log lines so far. */
const lines = (): Record<string, unknown>[] =>
  fs.readFileSync(logFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);

before(async () => {
  if (skip) return;
  // The daemon's log lines, to see what a reload writes.
  setRootLogger(createLogger({ level: 'info', pretty: false, destination: logFile }));
  tgtd = await startTgtdWithLuns({ targets: [{ luns: [{ size: 16 << 20 }] }] });
}, { timeout: 60_000 });

after(async () => {
  await tgtd?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function serveFile(name: string, text: string): Promise<{ d: RunningDaemon; file: string; control: string; write: (t: string) => void }> {
  const file = path.join(tmp, `${name}.yaml`);
  const control = path.join(tmp, `${name}.sock`);
  fs.writeFileSync(file, text);
  const argv = { config: file, control, 'state-dir': path.join(tmp, name), sessions: 1, 'initiator-name': 'iqn.2026-12.test.iscsi-nbd:reload' };
  const d = await startDaemon(buildConfig(argv, () => undefined), { reloadConfig: () => buildConfig(argv, () => undefined) });
  return { d, file, control, write: (t) => fs.writeFileSync(file, t) };
}

test('reload names a changed listen: it changes only on a restart; the rest of the plan still applies', { skip, timeout: 60_000 }, async () => {
  const [p1, p2] = [await freePort(), await freePort()];
  const exp = `exports:\n  - name: a\n    url: ${tgtd.url(1, 1)}\n`;
  const { d, control, write } = await serveFile('listen', `listen: 127.0.0.1:${p1}\n${exp}`);
  try {
    write(`listen: 127.0.0.1:${p2}\nmetrics: 127.0.0.1:${await freePort()}\n${exp}`);
    const o = await callControl<ReloadOutcome>(control, { op: 'reload' }, 30_000);
    assert.equal(o.ok, true, 'the exports are as asked');
    assert.deepEqual(o.restartNeeded, ['listen', 'metrics']);
    assert.match(renderReload(o), /^ {2}not applied: listen, metrics changed in the file, but change only on a restart/m);
    assert.deepEqual(d.status().listen, [`127.0.0.1:${p1}`], 'the daemon still listens where it did');
    const cli = await runCliAsync(['reload', '--control', control], 30_000);
    assert.equal(cli.code, 0, cli.err);
    assert.match(cli.out, /not applied: listen, metrics changed in the file/);
    assert.ok(lines().some((l) => l.msg === 'reload: these keys change only on a restart (mapped devices stay across it); the daemon runs on with the old values'));

    // An error in the file keeps its file and line, as in check-config.
    write(`listen: 127.0.0.1:${p1}\ntimeouts:\n  replacement: abc\n${exp}`);
    await assert.rejects(callControl(control, { op: 'reload' }, 30_000), /reload refused, the running exports are kept: .*listen\.yaml:3: timeouts\.replacement: must be number/);
  } finally {
    await d.stop();
  }
});

test('a reload with nothing to do while an export is failed is no success', { skip, timeout: 60_000 }, async () => {
  const text = `listen: 127.0.0.1:${await freePort()}\nexports:\n  - name: a\n    url: ${tgtd.url(1, 1)}\n  - name: d\n    url: ${tgtd.url(1, 9)}\n`;
  const { d, control } = await serveFile('failed', text);
  try {
    const o = await callControl<ReloadOutcome>(control, { op: 'reload' }, 30_000);
    assert.deepEqual(o.plan, { remove: [], change: [], add: [], keep: ['a', 'd'] });
    assert.equal(o.ok, false);
    assert.equal(o.errors.length, 1);
    assert.equal(o.errors[0].export, 'd');
    assert.equal(o.errors[0].kept, true);
    const done = lines().filter((l) => l.msg === 'reload: done').pop();
    assert.deepEqual(done?.failed, ['d'], 'the log line names the failed export');
    const cli = await runCliAsync(['reload', '--control', control], 30_000);
    assert.equal(cli.code, 1, cli.out + cli.err);
    assert.match(cli.out, /^reload: no change \(2 kept\)$/m);
    assert.match(cli.out, /^ {2}d: still failed \(retrying\): /m);
    assert.match(cli.err, /reload: 1 export could not be opened and keeps retrying: d/);
  } finally {
    await d.stop();
  }
});
