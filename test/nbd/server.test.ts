import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { NbdServer, NbdServerOptions, NbdConnectionInfo } from '../../src/nbd/server';
import * as C from '../../src/nbd/constants';
import { MemoryExport, memoryRegistry } from '../helpers/memory-export';
import tls from 'node:tls';
import { u32, opt, infoData, req, parseOptReplies } from './util';
import { makePki } from '../helpers/pki';

class RawClient {
  readonly sock: net.Socket;
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed: Promise<void>;
  isClosed = false;
  constructor(target: number | string) {
    this.sock = typeof target === 'number' ? net.connect(target, '127.0.0.1') : net.connect(target);
    this.sock.on('data', (d) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    this.sock.on('error', () => undefined);
    this.closed = new Promise((r) => this.sock.on('close', () => { this.isClosed = true; this.wake(); r(); }));
  }
  private wake(): void { const w = this.waiters; this.waiters = []; w.forEach((f) => f()); }
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.isClosed) throw new Error(`closed with ${this.buf.length}/${n} bytes`);
      if (Date.now() > deadline) throw new Error('read timeout');
      await new Promise<void>((r) => { this.waiters.push(r); setTimeout(r, 50); });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  write(b: Buffer): void { this.sock.write(b); }
  destroy(): void { this.sock.destroy(); }
  /** Greeting, flags, GO on `name`; returns the transmission flags. */
  async go(name: string, extra: Buffer[] = []): Promise<number> {
    await this.read(18);
    this.write(Buffer.concat([u32(3), ...extra, opt(C.OPT_GO, infoData(name))]));
    let flags = -1;
    for (;;) {
      const h = await this.read(20);
      const len = h.readUInt32BE(16);
      const d = await this.read(len);
      const type = h.readUInt32BE(12);
      if (type === C.REP_INFO && d.readUInt16BE(0) === C.INFO_EXPORT) flags = d.readUInt16BE(10);
      if (type === C.REP_ACK && h.readUInt32BE(8) === C.OPT_GO) return flags;
      if (type >= 0x80000000 && h.readUInt32BE(8) === C.OPT_GO) throw new Error(`GO refused ${type.toString(16)}`);
    }
  }
}

async function start(t: { after: (f: () => Promise<void>) => void }, opts: Partial<NbdServerOptions> = {}, exps = [new MemoryExport({ name: 'disk', size: 1 << 20 })]) {
  const srv = new NbdServer({ exports: memoryRegistry(...exps), ...opts });
  const a = await srv.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => srv.close({ drainMs: 500 }));
  return { srv, port: (a as net.AddressInfo).port, exps };
}

async function until(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('GO, pipelined first request, stats and events', async (t) => {
  const { srv, port, exps } = await start(t);
  exps[0].poke(0, Buffer.from('abcd'));
  const states: string[] = [];
  srv.on('state', (i: NbdConnectionInfo) => states.push(i.state));
  const c = new RawClient(port);
  t.after(() => c.destroy());
  await c.read(18);
  // GO and the first READ in one segment: the READ must be handed to the transmission phase.
  c.write(Buffer.concat([u32(3), opt(C.OPT_GO, infoData('disk')), req(C.CMD_READ, 9, 0, 4)]));
  const { replies } = parseOptReplies(await c.read(20 + 12 + 20 + 14 + 20));
  assert.equal(replies[replies.length - 1].type, C.REP_ACK);
  const r = await c.read(16 + 4);
  assert.equal(r.readUInt32BE(0), 0x67446698);
  assert.equal(r.readBigUInt64BE(8), 9n);
  assert.equal(r.subarray(16).toString(), 'abcd');
  const [info] = srv.connections();
  assert.equal(info.state, 'transmission');
  assert.equal(info.exportName, 'disk');
  assert.equal(info.tls, false);
  assert.ok(info.bytesRead > 0 && info.bytesWritten > 0);
  assert.match(info.remote, /^127\.0\.0\.1:\d+$/);
  assert.equal(exps[0].attached, 1);
  let disc: NbdConnectionInfo | undefined;
  srv.on('disconnect', (i: NbdConnectionInfo) => (disc = i));
  c.write(req(C.CMD_DISC, 10, 0, 0));
  await c.closed;
  await until(() => disc !== undefined);
  assert.equal(disc!.state, 'closed');
  assert.equal(exps[0].attached, 0);
  assert.deepEqual(states.slice(0, 1), ['transmission']);
  assert.equal(srv.connections().length, 0);
});

test('handshake time limit closes idle connections', async (t) => {
  const { srv, port } = await start(t, { handshakeTimeoutMs: 200 });
  const c = new RawClient(port);
  t.after(() => c.destroy());
  await c.read(18);
  await c.closed;
  assert.equal(srv.connections().length, 0);
});

test('handshake cap evicts the longest-idle handshaking connection', async (t) => {
  const { srv, port } = await start(t, { maxHandshakes: 3 });
  const cs = [new RawClient(port), new RawClient(port), new RawClient(port)];
  t.after(() => cs.forEach((c) => c.destroy()));
  for (const c of cs) await c.read(18);
  cs[1].write(u32(3)); // activity: cs[0] is now the longest idle
  await until(() => srv.connections().length === 3);
  await new Promise((r) => setTimeout(r, 20));
  const d = new RawClient(port);
  t.after(() => d.destroy());
  const flags = await d.go('disk');
  await cs[0].closed;
  assert.equal(cs[1].isClosed, false);
  assert.equal(cs[2].isClosed, false);
  assert.equal(flags & C.FLAG_HAS_FLAGS, 1);
});

test('connection cap: a new connection is refused when no handshake can be evicted', async (t) => {
  const { port } = await start(t, { maxConnections: 2 });
  const a = new RawClient(port), b = new RawClient(port);
  t.after(() => { a.destroy(); b.destroy(); });
  await a.go('disk');
  await b.go('disk');
  const c = new RawClient(port);
  t.after(() => c.destroy());
  await c.closed;
  // The others are unaffected.
  a.write(req(C.CMD_FLUSH, 1, 0, 0));
  assert.equal((await a.read(16)).readUInt32BE(4), 0);
});

test('a bad request magic drops that connection only', async (t) => {
  const { port } = await start(t);
  const a = new RawClient(port), b = new RawClient(port);
  t.after(() => { a.destroy(); b.destroy(); });
  await a.go('disk');
  await b.go('disk');
  a.write(Buffer.alloc(28, 0x77));
  await a.closed;
  b.write(req(C.CMD_READ, 5, 0, 8));
  const r = await b.read(24);
  assert.equal(r.readUInt32BE(4), 0);
  assert.equal(b.isClosed, false);
});

test('close(): new requests fail with ESHUTDOWN, in-flight ones complete, then the connection ends', async (t) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const exp = new MemoryExport({ name: 'disk', size: 1 << 20, before: async (op) => { if (op === 'write') await gate; } });
  const { srv, port } = await start(t, {}, [exp]);
  const c = new RawClient(port);
  t.after(() => c.destroy());
  await c.go('disk');
  c.write(req(C.CMD_WRITE, 1, 0, 4, 0, Buffer.from('keep')));
  await until(() => srv.connections()[0]?.inFlight === 1);
  const closing = srv.close({ drainMs: 5000 });
  await until(() => srv.connections()[0]?.state === 'draining');
  c.write(req(C.CMD_READ, 2, 0, 4));
  const r2 = await c.read(16);
  assert.equal(r2.readBigUInt64BE(8), 2n);
  assert.equal(r2.readUInt32BE(4), 108);
  release();
  const r1 = await c.read(16);
  assert.equal(r1.readBigUInt64BE(8), 1n);
  assert.equal(r1.readUInt32BE(4), 0);
  await closing;
  await c.closed;
  assert.equal(exp.peek(0, 4).toString(), 'keep');
  // Listening stopped.
  const d = new RawClient(port);
  await d.closed;
});

test('unix socket listener and several listeners at once', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { srv, port } = await start(t);
  const sockPath = path.join(dir, 'nbd.sock');
  await srv.listen({ path: sockPath });
  assert.equal(srv.addresses().length, 2);
  const a = new RawClient(sockPath), b = new RawClient(port);
  t.after(() => { a.destroy(); b.destroy(); });
  await a.go('disk');
  await b.go('disk');
  const infos = srv.connections();
  assert.ok(infos.some((i) => i.remote === 'unix' && i.listener === sockPath));
});

test('STARTTLS by hand: a trusted client certificate works, an untrusted one is rejected by the server', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-pki-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  makePki(dir);
  const rd = (f: string) => fs.readFileSync(path.join(dir, f));
  const { srv, port } = await start(t, { tls: { mode: 'require', cert: rd('server-cert.pem'), key: rd('server-key.pem'), ca: rd('ca-cert.pem'), requestClientCert: true } });
  const reasons: string[] = [];
  srv.on('disconnect', (_i: unknown, reason: string) => reasons.push(reason));
  async function attempt(cert: string, key: string): Promise<boolean> {
    const c = new RawClient(port);
    t.after(() => c.destroy());
    await c.read(18);
    c.write(Buffer.concat([u32(1), opt(C.OPT_STARTTLS)]));
    const ack = await c.read(20);
    assert.equal(ack.readUInt32BE(12), C.REP_ACK);
    c.sock.removeAllListeners('data');
    const s = tls.connect({ socket: c.sock, ca: rd('ca-cert.pem'), cert: rd(cert), key: rd(key), servername: 'localhost', minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
    t.after(() => s.destroy());
    s.on('error', () => undefined);
    let closed = false;
    s.once('close', () => (closed = true));
    await new Promise<void>((r) => { s.once('secureConnect', () => r()); s.once('close', () => r()); });
    if (closed) return false;
    // Ask for the export list over TLS; a rejected client sees the connection close instead.
    const got = await new Promise<boolean>((resolve) => {
      let buf = Buffer.alloc(0);
      s.on('data', (d) => { buf = Buffer.concat([buf, d]); if (parseOptReplies(buf).replies.some((r) => r.type === C.REP_ACK)) resolve(true); });
      s.once('close', () => resolve(false));
      s.write(opt(C.OPT_LIST));
    });
    s.destroy();
    return got;
  }
  assert.equal(await attempt('client-cert.pem', 'client-key.pem'), true);
  assert.equal(await attempt('rogue-cert.pem', 'rogue-key.pem'), false);
  await until(() => reasons.some((r) => /client certificate rejected/.test(r)));
});
