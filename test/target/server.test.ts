// TargetServer over real sockets, with a small codec-built initiator, and the CLI.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, execFile } from 'node:child_process';
import { PduFramer } from '../../src/iscsi/framer';
import { decodeFrame, encodePdu, EMPTY, InitiatorPdu, TargetPdu } from '../../src/iscsi/pdu';
import { encodeText } from '../../src/iscsi/text';
import { MemoryBackend } from '../../src/target/backend';
import { TargetServer } from '../../src/target/server';
import { freePort, waitForPort } from '../helpers/ports';

const TGT = 'iqn.2026-11.io.test:srv';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class MiniInitiator {
  readonly sock: net.Socket;
  readonly pdus: TargetPdu[] = [];
  closed = false;
  readonly framer = new PduFramer({ maxDataSegmentLength: 1 << 24, onFrame: (f) => this.pdus.push(decodeFrame(f) as TargetPdu) });
  cmdSN = 1;
  itt = 1;

  constructor(port: number) {
    this.sock = net.connect(port, '127.0.0.1');
    this.sock.on('data', (c) => this.framer.push(c));
    this.sock.on('close', () => { this.closed = true; });
    this.sock.on('error', () => undefined);
  }

  send(p: InitiatorPdu): void {
    this.sock.write(encodePdu(p));
  }

  async wait(pred: (p: TargetPdu) => boolean, ms = 3000): Promise<TargetPdu> {
    const end = Date.now() + ms;
    for (;;) {
      const i = this.pdus.findIndex(pred);
      if (i >= 0) return this.pdus.splice(i, 1)[0];
      if (Date.now() > end) throw new Error('timeout waiting for a PDU');
      await sleep(3);
    }
  }

  async waitClosed(ms = 3000): Promise<void> {
    const end = Date.now() + ms;
    while (!this.closed && Date.now() < end) await sleep(5);
    assert.ok(this.closed, 'connection closed');
  }

  async login(isid = 0x800000000099): Promise<void> {
    this.send({
      opcode: 0x03, transit: true, continue: false, csg: 1, nsg: 3, versionMax: 0, versionMin: 0, isid, tsih: 0,
      itt: this.itt++, cid: 0, cmdSN: this.cmdSN, expStatSN: 0,
      data: encodeText([['InitiatorName', 'iqn.2026-11.io.test:mini'], ['TargetName', TGT], ['SessionType', 'Normal']]),
    });
    const r = await this.wait((p) => p.opcode === 0x23);
    assert.equal((r as Extract<TargetPdu, { opcode: 0x23 }>).statusClass, 0);
  }

  tur(): number {
    const itt = this.itt++;
    this.send({ opcode: 0x01, immediate: false, final: true, read: false, write: false, attr: 1, lun: 0n, itt, expectedDataTransferLength: 0, cmdSN: this.cmdSN++, expStatSN: 0, cdb: Buffer.alloc(6), data: EMPTY });
    return itt;
  }

  read(blocks: number): number {
    const itt = this.itt++;
    const cdb = Buffer.from([0x28, 0, 0, 0, 0, 0, 0, 0, blocks, 0]);
    this.send({ opcode: 0x01, immediate: false, final: true, read: true, write: false, attr: 1, lun: 0n, itt, expectedDataTransferLength: blocks * 512, cmdSN: this.cmdSN++, expStatSN: 0, cdb, data: EMPTY });
    return itt;
  }

  destroy(): void {
    this.sock.destroy();
  }
}

async function server(t: { after: (fn: () => Promise<void>) => void }): Promise<TargetServer> {
  const s = new TargetServer({ targets: [{ name: TGT, luns: [{ lun: 0, backend: new MemoryBackend({ size: 8 << 20 }) }] }] });
  await s.listen({ port: 0 });
  t.after(() => s.close());
  return s;
}

test('listen on a free port, portal string, close refuses new connections', async () => {
  const s = new TargetServer({ targets: [{ name: TGT, luns: [{ lun: 0, backend: new MemoryBackend({ size: 1 << 20 }) }] }] });
  const a = await s.listen({ host: '127.0.0.1', port: 0 });
  assert.ok(a.port > 0);
  assert.equal(s.portal, `127.0.0.1:${a.port}`);
  assert.deepEqual(s.address(), a);
  const c = new MiniInitiator(a.port);
  await c.login();
  assert.equal(s.connections.length, 1);
  await s.close();
  await c.waitClosed();
  await assert.rejects(new Promise((resolve, reject) => {
    const x = net.connect(a.port, '127.0.0.1', () => { x.destroy(); resolve(undefined); });
    x.on('error', reject);
  }));
});

test('faults over a socket: drop after N commands, half a PDU, stall keeps the socket open', async (t) => {
  const s = await server(t);
  const port = s.address().port;
  const a = new MiniInitiator(port);
  await a.login();
  s.faults.set({ dropAfterCommands: 1 });
  const first = a.tur();
  await a.wait((p) => p.opcode === 0x21 && p.itt === first);
  a.tur();
  await a.waitClosed();

  const b = new MiniInitiator(port);
  await b.login(0x800000000100);
  s.faults.set({ dropMidPduAfterCommands: 0 });
  b.read(8);
  await b.waitClosed();
  assert.ok(!b.framer.idle, 'a partial PDU is left in the framer');

  const c = new MiniInitiator(port);
  await c.login(0x800000000101);
  s.faults.set({ stall: true });
  const itt = c.tur();
  await sleep(100);
  assert.equal(c.pdus.length, 0);
  assert.ok(!c.closed);
  s.faults.clear();
  await c.wait((p) => p.opcode === 0x21 && p.itt === itt);
  c.destroy();
});

test('async logout request from the server; the initiator logs out', async (t) => {
  const s = await server(t);
  const c = new MiniInitiator(s.address().port);
  await c.login();
  assert.equal(s.requestLogout(5), 1);
  const a = await c.wait((p) => p.opcode === 0x32);
  assert.equal((a as Extract<TargetPdu, { opcode: 0x32 }>).asyncEvent, 1);
  c.send({ opcode: 0x06, immediate: true, reason: 0, itt: 77, cid: 0, cmdSN: c.cmdSN, expStatSN: 0 });
  const lo = await c.wait((p) => p.opcode === 0x26);
  assert.equal((lo as Extract<TargetPdu, { opcode: 0x26 }>).response, 0);
  await c.waitClosed();
});

test('session reinstatement: a new login with the same ISID closes the old connection', async (t) => {
  const s = await server(t);
  const a = new MiniInitiator(s.address().port);
  await a.login(0x800000000042);
  const b = new MiniInitiator(s.address().port);
  await b.login(0x800000000042);
  await a.waitClosed();
  assert.ok(!b.closed);
  const itt = b.tur();
  await b.wait((p) => p.opcode === 0x21 && p.itt === itt);
  b.destroy();
});

test('CLI: `iscsi-nbd target` serves memory and file LUNs with CHAP, stops on SIGTERM', async (t) => {
  const root = path.resolve(__dirname, '../../..');
  const bin = path.join(root, 'bin/iscsi-nbd.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tgt-cli-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const file = path.join(dir, 'disk.img');
  const child = spawn(process.execPath, [bin, 'target', '--listen', `127.0.0.1:${port}`, '--lun', '32M', '--lun', file, '--size', '16M',
    '--target-name', 'iqn.2026-11.io.test:cli', '--chap', 'bob:bobsecret1234', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  await waitForPort(port);
  assert.equal(fs.statSync(file).size, 16 << 20);
  const ls = await new Promise<string>((resolve) => execFile('iscsi-ls', ['-i', 'iqn.2026-11.io.test:ini', '-s', `iscsi://bob%bobsecret1234@127.0.0.1:${port}`], { timeout: 30000 }, (_e, so) => resolve(so)));
  if (fs.existsSync('/usr/bin/iscsi-ls')) {
    assert.match(ls, /Lun:0\s+Type:DIRECT_ACCESS \(Size:31M\)/);
    assert.match(ls, /Lun:1\s+Type:DIRECT_ACCESS \(Size:15M\)/);
  }
  assert.match(out, new RegExp(`iSCSI target iqn.2026-11.io.test:cli on 127.0.0.1:${port}`));
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  assert.ok(fs.existsSync(`${file}.alloc`), 'allocation map saved on a clean stop');
});
