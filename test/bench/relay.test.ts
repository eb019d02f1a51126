// The bench's Node.js floor (scripts/bench/relay.ts): a real child process relaying bytes
// both ways between a client and an upstream server, over AF_UNIX and TCP.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseEndpoint, RelayProcess } from '../../scripts/bench/relay';

/** An upstream that answers every chunk with its bytes reversed, so a reply cannot be an echo of the relay's own. */
function reversingServer(listen: (s: net.Server) => void): Promise<net.Server> {
  const s = net.createServer((c) => {
    c.on('data', (d: Buffer) => c.write(Buffer.from(d).reverse()));
    c.on('error', () => undefined);
  });
  return new Promise((resolve) => { s.once('listening', () => resolve(s)); listen(s); });
}

/** Send `msg` to the relay and collect `msg.length` bytes back. */
function roundTrip(connect: () => net.Socket, msg: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const c = connect();
    const got: Buffer[] = [];
    let n = 0;
    c.on('connect', () => c.write(msg));
    c.on('data', (d: Buffer) => {
      got.push(d);
      n += d.length;
      if (n >= msg.length) { c.destroy(); resolve(Buffer.concat(got)); }
    });
    c.on('error', reject);
  });
}

function socketOfUri(uri: string): string {
  return decodeURIComponent(new URL(uri).searchParams.get('socket')!);
}

test('parseEndpoint: a socket path or HOST:PORT, nothing else', () => {
  assert.deepEqual(parseEndpoint('/run/x.sock'), { path: '/run/x.sock' });
  assert.deepEqual(parseEndpoint('127.0.0.1:10809'), { host: '127.0.0.1', port: 10809 });
  assert.throws(() => parseEndpoint('x.sock'), /not a socket path/);
  assert.throws(() => parseEndpoint('127.0.0.1:70000'), /not a socket path/);
});

test('relay over AF_UNIX: bytes both ways, one process of its own, socket removed on stop', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'relay-'));
  const upPath = path.join(dir, 'up.sock');
  const up = await reversingServer((s) => s.listen(upPath));
  const listen = path.join(dir, 'relay.sock');
  const relay = await RelayProcess.start(upPath, listen, 'bench');
  t.after(async () => { await relay.stop(); up.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  assert.ok(relay.pid > 0 && relay.pid !== process.pid);
  assert.equal(socketOfUri(relay.uri), listen);
  assert.ok(relay.uri.startsWith('nbd+unix:///bench?socket='));
  const msg = Buffer.from('0123456789abcdef'.repeat(1024));
  const back = await roundTrip(() => net.connect(listen), msg);
  assert.deepEqual(back, Buffer.from(msg).reverse());
  await relay.stop();
  assert.equal(fs.existsSync(listen), false);
  assert.throws(() => process.kill(relay.pid, 0), /ESRCH/);
});

test('relay over TCP: a free port on 127.0.0.1, and an upstream that is gone closes the client', async (t) => {
  const up = await reversingServer((s) => s.listen(0, '127.0.0.1'));
  const port = (up.address() as net.AddressInfo).port;
  const relay = await RelayProcess.start(`127.0.0.1:${port}`, null, 'bench');
  t.after(async () => { await relay.stop(); up.close(); });
  const m = /^nbd:\/\/127\.0\.0\.1:(\d+)\/bench$/.exec(relay.uri);
  assert.ok(m, relay.uri);
  const rport = Number(m![1]);
  assert.notEqual(rport, port);
  const back = await roundTrip(() => net.connect(rport, '127.0.0.1'), Buffer.from('hello'));
  assert.equal(back.toString(), 'olleh');

  up.close();
  assert.equal(await refusedSoon(port), true);
  // With nothing upstream, a client of the relay is closed rather than left hanging.
  const ended = await new Promise<boolean>((resolve) => {
    const c = net.connect(rport, '127.0.0.1');
    c.on('close', () => resolve(true));
    c.on('error', () => undefined);
    setTimeout(() => resolve(false), 5000).unref();
  });
  assert.equal(ended, true);
});

/** True once nothing accepts on the port. */
async function refusedSoon(port: number): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    const refused = await new Promise<boolean>((resolve) => {
      const c = net.connect(port, '127.0.0.1');
      c.on('connect', () => { c.destroy(); resolve(false); });
      c.on('error', () => resolve(true));
    });
    if (refused) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}
