// IscsiSession against a scripted TCP fake target: behaviour tgtd cannot be
// made to show (async events, target pings, loss of sync, digest errors).

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { IscsiNbdError } from '../../src/errors';
import { AsyncEvent } from '../../src/iscsi/constants';
import { IscsiSession, type IscsiSessionOptions } from '../../src/iscsi/initiator';
import type { AsyncEventInfo } from '../../src/iscsi/session-engine';
import { NopOutPdu, ScsiCommandPdu } from '../../src/iscsi/pdu';
import { asyncMsg, dataIn, FakeConn, FakeTargetOptions, nopIn, scsiResp, startFakeTarget } from './fake-target';

const TUR = Buffer.alloc(6);
const READ10 = Buffer.from([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);

async function fake(t: TestContext, o: FakeTargetOptions = {}) {
  const f = await startFakeTarget(o);
  t.after(() => f.close());
  return f;
}

function session(t: TestContext, port: number, o: Partial<IscsiSessionOptions> = {}): IscsiSession {
  const s = new IscsiSession({
    portal: { host: '127.0.0.1', port },
    targetName: 'iqn.2026-11.test:fake',
    initiatorName: 'iqn.2026-11.test:init',
    backoff: { initialMs: 20, maxMs: 100 },
    timeouts: { nopIntervalMs: 0 },
    ...o,
  });
  t.after(() => s.close());
  return s;
}

function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = (): void => {
      if (cond()) resolve();
      else if (Date.now() > end) reject(new Error('condition not met in time'));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

test('fake: a target NOP-In ping is answered with its LUN and TTT', async (t) => {
  const f = await fake(t, {
    onLoggedIn: (c) => setImmediate(() => c.send(nopIn({ ttt: 0x1234, lun: 0x0003000000000000n, statSN: c.nextStatSN() }))),
  });
  const s = session(t, f.port);
  await s.connect();
  await until(() => f.conns[0].received.some((p) => p.opcode === 0x00));
  const n = f.conns[0].received.find((p) => p.opcode === 0x00) as NopOutPdu;
  assert.equal(n.itt, 0xffffffff);
  assert.equal(n.ttt, 0x1234);
  assert.equal(n.lun, 0x0003000000000000n);
  assert.equal(n.immediate, true);
  await s.logout();
});

test('fake: our NOP-Out pings keep the session alive; an unanswered one triggers recovery', async (t) => {
  const f = await fake(t, {});
  const s = session(t, f.port, { timeouts: { nopIntervalMs: 50, nopTimeoutMs: 100 } });
  await s.connect();
  await until(() => f.conns[0].received.filter((p) => p.opcode === 0x00).length >= 2);
  assert.equal(s.state, 'logged-in');
  // Make the target deaf: pause reading on its socket.
  f.conns[0].sock.pause();
  const lost = new Promise<IscsiNbdError>((r) => s.once('lost', r));
  assert.equal((await lost).code, 'ETIMEOUT');
  await new Promise<void>((r) => s.once('reconnected', () => r()));
  assert.equal(f.logins, 2);
  await s.logout();
});

test('fake: async event 0 (UA) is emitted and the session stays up', async (t) => {
  const f = await fake(t, {
    onCommand: (c, cmd) => {
      c.send(asyncMsg(AsyncEvent.SCSI_ASYNC_EVENT, {
        lun: 0x0001000000000000n, statSN: c.nextStatSN(), expCmdSN: c.expCmdSN, maxCmdSN: c.maxCmdSN,
        data: Buffer.from('0012' + '700006000000000a000000003f0e00000000', 'hex'),
      }));
      c.send(scsiResp(cmd.itt, { statSN: c.nextStatSN(), expCmdSN: c.expCmdSN, maxCmdSN: c.maxCmdSN }));
      return true;
    },
  });
  const s = session(t, f.port);
  const events: AsyncEventInfo[] = [];
  s.on('async', (e: AsyncEventInfo) => events.push(e));
  await s.connect();
  assert.equal((await s.execute({ lun: 1, cdb: TUR })).status, 0);
  assert.equal(events.length, 1);
  assert.equal(events[0].lun, 1);
  assert.equal(events[0].sense![12], 0x3f);
  assert.equal(s.state, 'logged-in');
  assert.equal(f.logins, 1);
  await s.logout();
});

test('fake: async logout request: in-flight commands finish, Logout, reconnect, queued commands run on the new connection', async (t) => {
  let held: { c: FakeConn; cmd: ScsiCommandPdu } | undefined;
  const f = await fake(t, {
    onCommand: (c, cmd) => {
      if (c.index === 0 && cmd.cdb[0] === 0x28 && !held) {
        held = { c, cmd };
        // Ask for a logout while the READ is in flight, answer the READ a bit later.
        c.send(asyncMsg(AsyncEvent.LOGOUT_REQUEST, { parameter3: 3, statSN: c.nextStatSN(), expCmdSN: c.expCmdSN, maxCmdSN: c.maxCmdSN }));
        return true;
      }
      return false;
    },
  });
  const s = session(t, f.port);
  const events: string[] = [];
  s.on('async', (e: AsyncEventInfo) => events.push(e.name));
  await s.connect();
  const read = s.execute({ lun: 0, cdb: READ10, dataInLength: 512 });
  await until(() => events.length === 1);
  // Submitted after the request: must not go out on the old connection.
  const tur = s.execute({ lun: 0, cdb: TUR });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(f.conns[0].received.filter((p) => p.opcode === 0x01).length, 1);
  const { c, cmd } = held!;
  c.send(dataIn(cmd.itt, {
    final: true, statusPresent: true, statSN: c.nextStatSN(), expCmdSN: c.expCmdSN, maxCmdSN: c.maxCmdSN,
    data: Buffer.alloc(512, 1),
  }));
  const r = await read;
  assert.equal(r.status, 0);
  assert.equal(r.data![0], 1);
  assert.equal((await tur).status, 0);
  assert.ok(f.conns[0].received.some((p) => p.opcode === 0x06), 'Logout Request sent on the old connection');
  assert.equal(f.logins, 2);
  assert.ok(f.conns[1].received.some((p) => p.opcode === 0x01 && p.cdb[0] === 0), 'TUR on the new connection');
  assert.equal(s.stats.reconnects, 1);
  await s.logout();
});

test('fake: an unknown ITT from the target drops the connection; the command is reissued', async (t) => {
  const f = await fake(t, {
    onCommand: (c, cmd) => {
      if (c.index === 0) {
        c.send(scsiResp((cmd.itt + 1000) >>> 0, { statSN: c.nextStatSN(), expCmdSN: c.expCmdSN, maxCmdSN: c.maxCmdSN }));
        return true;
      }
      return false;
    },
  });
  const s = session(t, f.port);
  const lost: IscsiNbdError[] = [];
  s.on('lost', (e: IscsiNbdError) => lost.push(e));
  await s.connect();
  const r = await s.execute({ lun: 0, cdb: TUR });
  assert.equal(r.status, 0);
  assert.equal(lost.length, 1);
  assert.equal(lost[0].code, 'EPROTO');
  assert.match(lost[0].message, /unknown ITT/);
  assert.equal(f.logins, 2);
  await s.logout();
});

test('fake: a data digest error drops the connection, counts it, and the read is reissued', async (t) => {
  const f = await fake(t, {
    digests: true,
    onCommand: (c, cmd) => {
      if (c.index === 0 && cmd.read) {
        c.send(dataIn(cmd.itt, {
          final: true, statusPresent: true, statSN: c.nextStatSN(), expCmdSN: c.expCmdSN, maxCmdSN: c.maxCmdSN,
          data: Buffer.alloc(512, 7),
        }), true);
        return true;
      }
      return false;
    },
  });
  const s = session(t, f.port, { digest: 'crc32c' });
  await s.connect();
  assert.equal(s.negotiated!.dataDigest, true);
  const r = await s.execute({ lun: 0, cdb: READ10, dataInLength: 512 });
  assert.equal(r.status, 0);
  assert.equal(r.data![0], 0xa5, 'data of the reissued command');
  assert.equal(s.stats.digestErrors, 1);
  assert.equal(s.stats.reconnects, 1);
  await s.logout();
});

test('fake: close() fails pending commands with ESHUTDOWN and stops reconnecting', async (t) => {
  const f = await fake(t, { onCommand: () => true });
  const s = session(t, f.port);
  await s.connect();
  const p = s.execute({ lun: 0, cdb: TUR });
  const check = assert.rejects(p, (e: IscsiNbdError) => e.code === 'ESHUTDOWN');
  await until(() => f.conns[0].received.length > 0);
  s.close();
  await check;
  assert.equal(s.state, 'closed');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(f.logins, 1);
});

test('fake: command timeout -> ABORT TASK answered: the command fails with ETIMEOUT (retryable), the session stays', async (t) => {
  const tmfs: number[] = [];
  const f = await fake(t, {
    onCommand: (_c, cmd) => cmd.cdb[0] === 0x28, // never answer READs
    onTmf: (_c, tmf) => {
      tmfs.push(tmf.func);
      return false; // default: FUNCTION COMPLETE
    },
  });
  const s = session(t, f.port, { timeouts: { commandMs: 100, nopIntervalMs: 0 } });
  await s.connect();
  await assert.rejects(s.execute({ lun: 0, cdb: READ10, dataInLength: 512 }), (e: IscsiNbdError) => e.code === 'ETIMEOUT');
  assert.deepEqual(tmfs, [1]);
  assert.equal(s.state, 'logged-in');
  assert.equal((await s.execute({ lun: 0, cdb: TUR })).status, 0);
  assert.equal(f.logins, 1);
  await s.logout();
});

test('fake: async event 2 (connection drop) reconnects after Time2Wait and reissues', async (t) => {
  let dropped = false;
  const f = await fake(t, {
    onCommand: (c) => {
      if (c.index === 0 && !dropped) {
        dropped = true;
        c.send(asyncMsg(AsyncEvent.CONNECTION_DROP, { parameter2: 0, parameter3: 0, statSN: c.nextStatSN(), expCmdSN: c.expCmdSN, maxCmdSN: c.maxCmdSN }));
        setTimeout(() => c.close(), 20);
        return true;
      }
      return false;
    },
  });
  const s = session(t, f.port);
  const names: string[] = [];
  s.on('async', (e: AsyncEventInfo) => names.push(e.name));
  await s.connect();
  assert.equal((await s.execute({ lun: 0, cdb: TUR })).status, 0);
  assert.deepEqual(names, ['connection-drop']);
  assert.equal(f.logins, 2);
  await s.logout();
});

test('fake: IPv6 portal', async (t) => {
  let f;
  try {
    f = await startFakeTarget({ host: '::1' });
  } catch {
    t.skip('no IPv6 loopback');
    return;
  }
  t.after(() => f!.close());
  const s = session(t, f.port, { portal: { host: '::1', port: f.port } });
  await s.connect();
  assert.equal(s.stats.portal, `[::1]:${f.port}`);
  assert.equal((await s.execute({ lun: 0, cdb: TUR })).status, 0);
  await s.logout();
});
