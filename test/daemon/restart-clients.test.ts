// An NBD client of an export (as nbd-client's kernel connection is) across a
// daemon restart through the fd store: the same TCP connection carries on,
// nothing is answered twice, and what was sent while no daemon ran is served.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { freePort } from '../helpers/ports';
import { runCliAsync, runTool } from '../helpers/process';
import { FakeFdStore } from '../helpers/fd-store';
import { startDaemon } from '../../src/daemon/daemon';
import { DEFAULT_TIMEOUTS, type DaemonConfig } from '../../src/config';
import { setRootLogger, createLogger } from '../../src/log';
import { u32 } from '../nbd/util';
import { SimpleRequester } from '../helpers/simple-replies';

const CMD_READ = 0;
const CMD_WRITE = 1;
const NBD_OPT_EXPORT_NAME = 1;

/** A client that negotiates with NBD_OPT_EXPORT_NAME (as old clients do) and then sends requests. */
class Client extends SimpleRequester {
  private hs = Buffer.alloc(0);
  private negotiated!: () => void;
  readonly ready = new Promise<void>((r) => (this.negotiated = r));
  closed = false;

  constructor(sock: net.Socket, exportName: string) {
    super(sock);
    let phase: 'greeting' | 'export' | 'tx' = 'greeting';
    sock.on('close', () => (this.closed = true));
    sock.on('error', () => undefined);
    sock.on('data', (c: Buffer) => {
      if (phase === 'tx') return this.onData(c);
      this.hs = Buffer.concat([this.hs, c]);
      if (phase === 'greeting' && this.hs.length >= 18) {
        this.hs = this.hs.subarray(18);
        phase = 'export';
        const name = Buffer.from(exportName);
        // client flags: FIXED_NEWSTYLE | NO_ZEROES
        sock.write(Buffer.concat([u32(3), Buffer.from('IHAVEOPT'), u32(NBD_OPT_EXPORT_NAME), u32(name.length), name]));
      }
      if (phase === 'export' && this.hs.length >= 10) {
        const rest = this.hs.subarray(10); // size (8) + transmission flags (2), no zeroes
        phase = 'tx';
        this.negotiated();
        if (rest.length) this.onData(rest);
      }
    });
  }
}

let tgtd: Tgtd;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'restart-clients-'));

before(async () => {
  setRootLogger(createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }));
  tgtd = await startTgtdWithLuns({ targets: [{ luns: [{ size: 16 << 20, blockSize: 512 }] }] });
});

after(async () => {
  await tgtd?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('an NBD client across a restart through the fd store: same connection, from where the daemon stopped reading', { timeout: 120_000 }, async () => {
  const port = await freePort();
  const cfg: DaemonConfig = {
    listen: [`127.0.0.1:${port}`], sessions: 1, digest: 'prefer-none', readOnly: false, tls: { mode: 'off' },
    timeouts: { ...DEFAULT_TIMEOUTS }, exports: [{ name: 'e1', url: tgtd.url(1, 1) }], devices: [],
    stateDir: path.join(tmp, 'state'), control: path.join(tmp, 'control.sock'), initiatorName: 'iqn.2026-12.test.iscsi-nbd:clients',
  };
  const store = new FakeFdStore();
  const a = await startDaemon(cfg, { fdStore: store, kernel: async () => { throw new Error('no kernel here'); } });
  const client = new Client(net.connect(port, '127.0.0.1'), 'e1');
  const one = crypto.randomBytes(8192);
  const two = crypto.randomBytes(4096);
  const three = crypto.randomBytes(512);
  try {
    await client.ready;
    assert.equal((await client.io(CMD_WRITE, 0, one.length, one)).error, 0);
  } catch (err) {
    await a.stop('test');
    throw err;
  }
  // Header and part of a WRITE read when the daemon stops.
  const w = client.ioSplit(CMD_WRITE, 65536, two.length, two, 28 + 1000);
  await new Promise((r) => setTimeout(r, 200));
  await a.stop('restart');
  assert.deepEqual(store.names(), ['client.0', 'client.0.state']);
  assert.equal(client.closed, false, 'the client saw no close');
  w.rest();
  const q = client.io(CMD_WRITE, 131072, three.length, three);
  store.restart();
  const b = await startDaemon(cfg, { fdStore: store, kernel: async () => { throw new Error('no kernel here'); } });
  try {
    assert.equal((await w.reply).error, 0, 'the WRITE split across the restart');
    assert.equal((await q).error, 0, 'the WRITE sent while no daemon ran');
    for (const [off, data] of [[0, one], [65536, two], [131072, three]] as const) {
      const r = await client.io(CMD_READ, off, data.length);
      assert.ok(r.data.equals(data), `data at ${off}`);
    }
    assert.equal(b.server.connections().length, 1);
    assert.deepEqual(store.untaken(), []);
    assert.equal(client.closed, false);
  } finally {
    client.sock.destroy();
    await b.stop('test');
  }
});

test('resize EXPORT: new NBD clients get the grown size, the connected one carries on', { timeout: 60_000 }, async () => {
  const port = await freePort();
  const cfg: DaemonConfig = {
    listen: [`127.0.0.1:${port}`], sessions: 1, digest: 'prefer-none', readOnly: false, tls: { mode: 'off' },
    timeouts: { ...DEFAULT_TIMEOUTS }, exports: [{ name: 'e1', url: tgtd.url(1, 1) }], devices: [],
    stateDir: path.join(tmp, 'state-r'), control: path.join(tmp, 'control-r.sock'), initiatorName: 'iqn.2026-12.test.iscsi-nbd:clients',
  };
  const d = await startDaemon(cfg, { kernel: async () => { throw new Error('no kernel here'); } });
  const client = new Client(net.connect(port, '127.0.0.1'), 'e1');
  try {
    await client.ready;
    const size = async (): Promise<string> => (await runTool('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/e1`])).out.trim();
    assert.equal(await size(), String(16 << 20));
    await tgtd.resizeLun(1, 1, 20 << 20);
    // The command a user runs, through the control socket.
    const cli = await runCliAsync(['resize', 'e1', '--control', cfg.control!]);
    assert.equal(cli.code, 0, cli.err);
    assert.equal(cli.out, `e1: grown from ${16 << 20} to ${20 << 20} bytes; new NBD clients see the new size, connected ones keep the old one\n`);
    const [r] = await d.resize('e1');
    assert.deepEqual([r.export, r.was, r.now, r.changed], ['e1', String(20 << 20), String(20 << 20), false]);
    assert.equal(await size(), String(20 << 20), 'a new client sees the new size');
    assert.equal((await client.io(CMD_READ, 0, 512)).error, 0, 'the old client carries on');
    await assert.rejects(d.resize('nope'), /neither a mapped \/dev\/nbdN nor an export/);
    const bad = await runCliAsync(['resize', 'nope', '--control', cfg.control!]);
    assert.equal(bad.code, 6);
    assert.match(bad.err, /"nope" is neither a mapped \/dev\/nbdN nor an export of this daemon/);
  } finally {
    client.sock.destroy();
    await d.stop('test');
    await tgtd.resizeLun(1, 1, 16 << 20).catch(() => undefined);
  }
});
