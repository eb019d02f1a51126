// One test file's daemon fixture: a private tgtd with the file's LUNs, a
// state dir, and serve() that starts `iscsi-nbd serve` there (JSON logs,
// metrics and control socket on free ports) and waits until it serves. The
// tgtd, every daemon and the dir are gone after the file.

import { before, after } from 'node:test';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports';
import { httpGet, startCli, until, type Proc } from './process';
import { startTgtdWithLuns, type Tgtd, type TgtdSpec } from './tgtd';

export interface Served { p: Proc; nbd: number; metrics: number; control: string }

export interface DaemonFixture {
  /** The file's tgtd (throws before `before` ran). */
  readonly tgtd: Tgtd;
  /** The state dir every daemon of the file shares (ISCSI_NBD_STATE_DIR). */
  readonly dir: string;
  serve(args: string[], env?: Record<string, string>): Promise<Served>;
}

export function daemonFixture(o: { prefix: string; skip: unknown; tgtd: TgtdSpec }): DaemonFixture {
  let tgtd: Tgtd | undefined;
  let dir = '';
  const procs: Proc[] = [];
  before(async () => {
    if (o.skip) return;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), o.prefix));
    tgtd = await startTgtdWithLuns(o.tgtd);
  }, { timeout: 60000 });
  after(async () => {
    for (const p of procs) await p.stop();
    await tgtd?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  }, { timeout: 60000 });
  return {
    get tgtd(): Tgtd {
      if (!tgtd) throw new Error('the fixture tgtd is not running');
      return tgtd;
    },
    get dir(): string {
      return dir;
    },
    async serve(args, env = {}) {
      const nbd = await freePort();
      const metrics = await freePort();
      const control = path.join(dir, `control-${nbd}.sock`);
      const p = startCli(['serve', '--listen', `127.0.0.1:${nbd}`, '--metrics', `127.0.0.1:${metrics}`, '--control', control,
        '--log-format', 'json', '--sessions', '1', ...args], { ISCSI_NBD_STATE_DIR: dir, ...env });
      procs.push(p);
      await p.waitFor(/"msg":"serving NBD"/, 30000);
      await until(async () => (await httpGet(metrics, '/healthz')).status === 200, 10000, '/healthz');
      return { p, nbd, metrics, control };
    },
  };
}
