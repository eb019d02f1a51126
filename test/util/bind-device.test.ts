// The interface-binding helper (src/util/bind-device.ts) and what is built on
// it, without any iSCSI: its errors (an unknown interface is ENODEV, a
// refused bind is EPERM with the CAP_NET_RAW hint), a connection through `lo`
// that carries bytes, the source-address form, the config and flag checks of
// `ifaces`, and which portal × interface each session of an export uses.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { constants } from 'node:os';
import {
  bindError, connectBound, ifaceProblem, InterfaceError, BoundConnectError, sourceAddressOf,
} from '../../src/util/bind-device';
import { tcpConnect, type TcpLink } from '../../src/iscsi/connection';
import { analyseConfig } from '../../src/config';
import { parseMapRequest } from '../../src/daemon/map-spec';
import { pathOfSession, sessionCount, sessionPaths } from '../../src/bridge/manager';
import { exitCodeFor, EXIT_CONFIG } from '../../src/cli/common';

const linux = process.platform === 'linux';

async function echoServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const srv = net.createServer((s) => s.on('data', (d) => s.write(d)).on('error', () => undefined));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return { port: (srv.address() as net.AddressInfo).port, close: () => new Promise((r) => srv.close(() => r())) };
}

/** Write `text`, resolve with what comes back (tcpConnect's sockets read into their chunk reader, not 'data'). */
function roundTrip(link: net.Socket | TcpLink, text: string): Promise<string> {
  const sock = 'socket' in link ? link.socket : link;
  const reader = 'reader' in link ? link.reader : undefined;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no echo within 5 s')), 5000);
    const done = (d: Buffer): void => {
      clearTimeout(timer);
      resolve(d.toString());
    };
    if (reader) reader.onChunk = done;
    else sock.once('data', done);
    sock.once('error', reject);
    sock.write(text);
  });
}

test('an interface that does not exist: InterfaceError ENODEV that names it', { skip: !linux && 'Linux only' }, async () => {
  const err = await connectBound({ host: '127.0.0.1', port: 9, device: 'nosuchif0', timeoutMs: 2000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof InterfaceError, `got ${String(err)}`);
  assert.equal(err.code, 'ENODEV');
  assert.equal(err.errno, 'ENODEV');
  assert.equal(err.iface, 'nosuchif0');
  assert.match(err.message, /network interface "nosuchif0" does not exist/);
  assert.equal(exitCodeFor(err), EXIT_CONFIG, 'a missing interface is a configuration mistake (exit 6)');
});

test('the connection adapter passes the interface error through unchanged', { skip: !linux && 'Linux only' }, async () => {
  await assert.rejects(tcpConnect({ host: '127.0.0.1', port: 9 }, 2000, undefined, undefined, 'nosuchif0'),
    (e: unknown) => e instanceof InterfaceError && e.code === 'ENODEV' && /nosuchif0/.test(e.message));
});

test('a bind that is not permitted: EPERM that says it needs CAP_NET_RAW', () => {
  for (const errno of [constants.errno.EPERM, constants.errno.EACCES]) {
    const e = bindError('eth1', errno);
    assert.equal(e.code, 'EPERM');
    assert.match(e.message, /"eth1".*needs CAP_NET_RAW \(root\)/);
  }
  const other = bindError('eth1', constants.errno.EINVAL);
  assert.equal(other.code, 'ECONNECT');
  assert.match(other.message, /EINVAL/);
});

test('bound to lo: the connection carries bytes; a closed port is ECONNREFUSED', { skip: !linux && 'Linux only' }, async () => {
  const srv = await echoServer();
  try {
    const sock = await connectBound({ host: '127.0.0.1', port: srv.port, device: 'lo', timeoutMs: 5000 });
    try {
      assert.equal(sock.remotePort, srv.port);
      assert.equal(await roundTrip(sock, 'ping'), 'ping');
    } finally {
      sock.destroy();
    }
    // Through the adapter too (the iSCSI connection's socket: onread buffer, no delay).
    const s2 = await tcpConnect({ host: '127.0.0.1', port: srv.port }, 5000, undefined, undefined, 'lo');
    try {
      assert.equal(await roundTrip(s2, 'through the adapter'), 'through the adapter');
    } finally {
      s2.socket.destroy();
    }
  } finally {
    await srv.close();
  }
  const closed = await echoServer();
  const port = closed.port;
  await closed.close();
  const err = await connectBound({ host: '127.0.0.1', port, device: 'lo', timeoutMs: 5000 }).then(() => undefined, (e: unknown) => e);
  assert.ok(err instanceof BoundConnectError);
  assert.equal(err.code, 'ECONNECT');
  assert.equal(err.errno, 'ECONNREFUSED');
  await assert.rejects(tcpConnect({ host: '127.0.0.1', port }, 5000, undefined, undefined, 'lo'), /through lo: connection refused/);
});

test('an aborted bound connect rejects with ESHUTDOWN', { skip: !linux && 'Linux only' }, async () => {
  const ac = new AbortController();
  ac.abort();
  const srv = await echoServer();
  try {
    await assert.rejects(tcpConnect({ host: '127.0.0.1', port: srv.port }, 5000, undefined, ac.signal, 'lo'), (e: unknown) => (e as { code?: string }).code === 'ESHUTDOWN');
  } finally {
    await srv.close();
  }
});

test('an iface given as an address binds by source address; an address not of this host is ENODEV', async () => {
  assert.equal(sourceAddressOf('127.0.0.1'), '127.0.0.1');
  assert.equal(sourceAddressOf('eth1'), undefined);
  assert.throws(() => sourceAddressOf('192.0.2.123'), (e: unknown) => e instanceof InterfaceError && e.code === 'ENODEV' && /192\.0\.2\.123/.test(e.message));
  const srv = await echoServer();
  try {
    const sock = await tcpConnect({ host: '127.0.0.1', port: srv.port }, 5000, undefined, undefined, '127.0.0.1');
    try {
      assert.equal(sock.socket.localAddress, '127.0.0.1');
      assert.equal(await roundTrip(sock, 'pong'), 'pong');
    } finally {
      sock.socket.destroy();
    }
  } finally {
    await srv.close();
  }
});

test('ifaces: names or addresses; anything else is refused where it was written', () => {
  assert.equal(ifaceProblem('eth1'), undefined);
  assert.equal(ifaceProblem('enp0s31f6.100'), undefined);
  assert.equal(ifaceProblem('10.0.0.5'), undefined);
  assert.equal(ifaceProblem('fe80::1'), undefined);
  assert.match(ifaceProblem('averyveryverylongname')!, /longer than an interface name/);
  assert.match(ifaceProblem('eth 1')!, /neither an interface name/);
  assert.match(ifaceProblem('')!, /want an interface name/);

  const ok = analyseConfig([
    'ifaces: [eth1, eth2]',
    'exports:',
    '  - name: db',
    '    url: iscsi://10.0.0.1/iqn.2003-01.org.example:db/1',
    '    ifaces: [eth3]',
    'devices:',
    '  - url: db',
    '    ifaces: [10.0.0.5]',
  ].join('\n'), 'x.yaml');
  assert.deepEqual(ok.problems.filter((p) => p.severity === 'error'), []);
  assert.deepEqual(ok.config!.ifaces, ['eth1', 'eth2']);
  assert.deepEqual(ok.config!.exports[0].ifaces, ['eth3']);
  assert.deepEqual(ok.config!.devices[0].ifaces, ['10.0.0.5']);

  const bad = analyseConfig(['ifaces: [eth1, "bad name"]', 'exports:', '  - name: db', '    url: iscsi://h/iqn.2003-01.org.example:db/1', '    ifaces: []'].join('\n'), 'x.yaml');
  const msgs = bad.problems.filter((p) => p.severity === 'error').map((p) => `${p.line} ${p.key}: ${p.message}`);
  assert.ok(msgs.some((m) => /^1 ifaces\.1: .*neither an interface name/.test(m)), msgs.join('\n'));
  assert.ok(msgs.some((m) => /^5 exports\.0\.ifaces/.test(m)), msgs.join('\n'));

  // map's control request carries them, checked.
  assert.deepEqual(parseMapRequest({ url: 'iscsi://h/iqn.2003-01.org.example:db/1', ifaces: ['eth1', 'eth2'] }).ifaces, ['eth1', 'eth2']);
  assert.equal(parseMapRequest({ url: 'iscsi://h/iqn.2003-01.org.example:db/1' }).ifaces, undefined);
  assert.throws(() => parseMapRequest({ url: 'db', ifaces: ['eth1', 'eth1'] }), /given twice/);
  assert.throws(() => parseMapRequest({ url: 'db', ifaces: 'eth1' }), /--iface/);
});

test('sessions: one per interface per portal, `sessions` a minimum, round robin beyond', () => {
  const a = { host: '10.0.0.1', port: 3260 };
  const b = { host: '10.0.1.1', port: 3260 };
  // Without interfaces: as before, one path per portal.
  assert.deepEqual(sessionPaths([a, b], undefined), [{ portal: a }, { portal: b }]);
  assert.equal(sessionCount(sessionPaths([a], undefined), 2), 2);
  const one = sessionPaths([a], ['eth1', 'eth2']);
  assert.deepEqual(one, [{ portal: a, iface: 'eth1' }, { portal: a, iface: 'eth2' }]);
  assert.equal(sessionCount(one, 1), 2, 'two interfaces and one portal are two paths even with sessions: 1');
  const four = sessionPaths([a, b], ['eth1', 'eth2']);
  assert.equal(sessionCount(four, 2), 4);
  assert.deepEqual(four.map((p) => `${p.portal.host}/${p.iface}`), ['10.0.0.1/eth1', '10.0.0.1/eth2', '10.0.1.1/eth1', '10.0.1.1/eth2']);
  assert.equal(sessionCount(one, 3), 3);
  assert.deepEqual([0, 1, 2].map((i) => pathOfSession(one, i).iface), ['eth1', 'eth2', 'eth1']);
});
