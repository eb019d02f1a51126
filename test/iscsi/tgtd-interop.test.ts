// The wire layer against a real target (tgtd): LoginEngine + encoder +
// framer over a plain socket, with no session engine. Checks login without
// auth, CHAP, mutual CHAP, a wrong secret, digests, SendTargets discovery,
// a NOP ping, READ CAPACITY(10), a WRITE/READ round trip and logout.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { execFileSync } from 'node:child_process';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { PduFramer } from '../../src/iscsi/framer';
import { decodeFrame, encodeLun, encodePduVectors, Pdu, randomIsid, ScsiResponsePdu } from '../../src/iscsi/pdu';
import { ChapAlgorithmRejectedError, LoginEngine, LoginOptions, LoginResult } from '../../src/iscsi/login';
import { decodeText, encodeText, SEND_TARGETS_REPEATABLE } from '../../src/iscsi/text';
import { LoginError } from '../../src/errors';

function haveTgtd(): boolean {
  try {
    execFileSync('which', ['tgtd', 'tgtadm'], { stdio: 'ignore' });
    return process.getuid?.() === 0;
  } catch {
    return false;
  }
}

const INI = 'iqn.2026-11.io.iscsi-nbd:interop-test';
const CHAP = { user: 'alice', secret: 'alicesecret12' };
const MUTUAL = { user: 'tgtuser', secret: 'targetsecret1' };

/** A tiny blocking PDU pipe: send PDUs, await the next one (with a timeout). */
class Pipe {
  private queue: Pdu[] = [];
  private waiter: ((p: Pdu | Error) => void) | undefined;
  private failure: Error | undefined;
  readonly framer: PduFramer;
  digests = { headerDigest: false, dataDigest: false };
  private readonly header = Buffer.alloc(48);

  private constructor(private readonly sock: net.Socket) {
    this.framer = new PduFramer({
      onFrame: (f) => this.deliver(decodeFrame(f)),
    });
    sock.on('data', (chunk) => {
      try {
        this.framer.push(chunk);
      } catch (e) {
        this.fail(e as Error);
      }
    });
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error('connection closed')));
  }

  static connect(port: number): Promise<Pipe> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => resolve(new Pipe(s)));
      s.once('error', reject);
    });
  }

  private deliver(p: Pdu): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(p);
    } else this.queue.push(p);
  }

  private fail(e: Error): void {
    this.failure ??= e;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(e);
    }
  }

  send(p: Pdu): void {
    const v = encodePduVectors(p, this.digests, this.header);
    this.sock.cork();
    for (const b of v) this.sock.write(Buffer.from(b)); // header buffer is reused: copy for the socket
    this.sock.uncork();
  }

  next(timeoutMs = 5000): Promise<Pdu> {
    const q = this.queue.shift();
    if (q) return Promise.resolve(q);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error('timed out waiting for a PDU'));
      }, timeoutMs);
      this.waiter = (p) => {
        clearTimeout(timer);
        if (p instanceof Error) reject(p);
        else resolve(p);
      };
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

async function loginOnce(pipe: Pipe, o: Omit<LoginOptions, 'isid' | 'initiatorName'>): Promise<LoginResult> {
  const engine = new LoginEngine({ initiatorName: INI, isid: randomIsid(), cid: 0, itt: 1, cmdSN: 1, ...o });
  pipe.send(engine.start());
  for (let i = 0; i < 20; i++) {
    const r = await pipe.next();
    assert.equal(r.opcode, 0x23);
    const step = engine.receive(r as Extract<Pdu, { opcode: 0x23 }>);
    if ('send' in step) pipe.send(step.send);
    else if ('done' in step) {
      pipe.digests = { headerDigest: step.done.headerDigest, dataDigest: step.done.dataDigest };
      pipe.framer.headerDigest = step.done.headerDigest;
      pipe.framer.dataDigest = step.done.dataDigest;
      pipe.framer.maxDataSegmentLength = step.done.maxRecvDataSegmentLength;
      return step.done;
    } else throw new Error('unexpected redirect');
  }
  throw new Error('login loop');
}

test('interop with tgtd', { skip: !haveTgtd() && 'needs tgtd and root' }, async (t) => {
  const tgtd: Tgtd = await startTgtdWithLuns({
    targets: [
      { iqn: 'iqn.2026-11.test.iscsi-nbd:open', luns: [{ size: 8 << 20 }] },
      { iqn: 'iqn.2026-11.test.iscsi-nbd:chap', luns: [{ size: 1 << 20 }], chap: CHAP },
      { iqn: 'iqn.2026-11.test.iscsi-nbd:mutual', luns: [{ size: 1 << 20 }], chap: CHAP, mutualChap: MUTUAL },
    ],
  });
  t.after(() => tgtd.stop());
  // tgtd only offers digests when configured to.
  await tgtd.setTargetParam(1, 'HeaderDigest', 'CRC32C,None');
  await tgtd.setTargetParam(1, 'DataDigest', 'CRC32C,None');
  const pipes: Pipe[] = [];
  t.after(() => pipes.forEach((p) => p.close()));
  const open = async () => {
    const p = await Pipe.connect(tgtd.port);
    pipes.push(p);
    return p;
  };
  /** Log in on a new connection; like the session engine, retry with MD5 alone when asked to. */
  const login = async (o: Omit<LoginOptions, 'isid' | 'initiatorName'>): Promise<{ p: Pipe; r: LoginResult; retried: boolean }> => {
    const p = await open();
    try {
      return { p, r: await loginOnce(p, o), retried: false };
    } catch (e) {
      if (!(e instanceof ChapAlgorithmRejectedError)) throw e;
      p.close();
      const q = await open();
      return { p: q, r: await loginOnce(q, { ...o, chapAlgorithms: [5] }), retried: true };
    }
  };

  await t.test('discovery session with SendTargets', async () => {
    const { p, r } = await login({ sessionType: 'Discovery' });
    p.send({ opcode: 0x04, immediate: true, final: true, continue: false, lun: 0n, itt: 2, ttt: 0xffffffff, cmdSN: r.cmdSN, expStatSN: r.expStatSN, data: encodeText([['SendTargets', 'All']]) });
    const resp = await p.next();
    assert.equal(resp.opcode, 0x24);
    const pairs = decodeText((resp as Extract<Pdu, { opcode: 0x24 }>).data, { allowDuplicates: SEND_TARGETS_REPEATABLE });
    const names = pairs.filter(([k]) => k === 'TargetName').map(([, v]) => v);
    assert.ok(names.includes('iqn.2026-11.test.iscsi-nbd:open'), JSON.stringify(pairs));
  });

  await t.test('normal session without auth, digests on: NOP, READ CAPACITY, WRITE+READ, logout', async () => {
    const { p, r } = await login({ targetName: 'iqn.2026-11.test.iscsi-nbd:open', proposal: { headerDigest: 'CRC32C,None', dataDigest: 'CRC32C,None' } });
    assert.ok(r.headerDigest && r.dataDigest, 'tgtd accepts CRC32C');
    assert.ok(r.tsih > 0);
    let cmdSN = r.cmdSN;
    let expStatSN = r.expStatSN;
    const lun = encodeLun(1);
    // NOP-Out ping
    p.send({ opcode: 0x00, immediate: true, lun: 0n, itt: 10, ttt: 0xffffffff, cmdSN, expStatSN, data: Buffer.from('ping') });
    const nop = await p.next();
    assert.equal(nop.opcode, 0x20);
    assert.deepEqual((nop as Extract<Pdu, { opcode: 0x20 }>).data, Buffer.from('ping'));
    // READ CAPACITY(10); the first command may meet the power-on UNIT ATTENTION
    let itt = 11;
    const scsiIn = async (cdb: Buffer, len: number): Promise<{ status: number; data: Buffer; sense: Buffer }> => {
      const myItt = itt++;
      p.send({ opcode: 0x01, immediate: false, final: true, read: true, write: false, attr: 1, lun, itt: myItt, expectedDataTransferLength: len, cmdSN: cmdSN++, expStatSN, cdb, data: Buffer.alloc(0) });
      const data = Buffer.alloc(len);
      for (;;) {
        const x = await p.next();
        assert.equal(x.opcode === 0x25 || x.opcode === 0x21 ? (x as { itt: number }).itt : -1, myItt, `unexpected ${x.opcode}`);
        if (x.opcode === 0x25) {
          x.data.copy(data, x.bufferOffset);
          if (x.statusPresent) {
            expStatSN = x.statSN + 1;
            return { status: x.status, data, sense: Buffer.alloc(0) };
          }
          continue;
        }
        const rsp = x as ScsiResponsePdu;
        expStatSN = rsp.statSN + 1;
        return { status: rsp.status, data, sense: rsp.sense };
      }
    };
    const rc10 = Buffer.from([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let rc = await scsiIn(rc10, 8);
    if (rc.status === 2) {
      assert.equal(rc.sense[2] & 0x0f, 6, 'UNIT ATTENTION expected');
      rc = await scsiIn(rc10, 8);
    }
    assert.equal(rc.status, 0);
    assert.equal(rc.data.readUInt32BE(0), (8 << 20) / 512 - 1);
    assert.equal(rc.data.readUInt32BE(4), 512);
    // WRITE(10) 8 blocks with immediate data (ImmediateData=Yes, InitialR2T per target)
    const payload = Buffer.alloc(4096);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
    const immediate = r.immediateData ? payload.subarray(0, Math.min(r.firstBurstLength, r.maxXmitDataSegmentLength, payload.length)) : Buffer.alloc(0);
    p.send({ opcode: 0x01, immediate: false, final: r.initialR2T || immediate.length === payload.length, read: false, write: true, attr: 1, lun, itt: 99, expectedDataTransferLength: 4096, cmdSN: cmdSN++, expStatSN, cdb: Buffer.from([0x2a, 0, 0, 0, 0, 16, 0, 0, 8, 0]), data: immediate });
    let sent = immediate.length;
    let dataSN = 0;
    for (;;) {
      const x = await p.next();
      if (x.opcode === 0x31) {
        // R2T: send what it asks for, in MaxXmitDataSegmentLength pieces
        let off = x.bufferOffset;
        const end = x.bufferOffset + x.desiredDataTransferLength;
        while (off < end) {
          const n = Math.min(end - off, r.maxXmitDataSegmentLength);
          p.send({ opcode: 0x05, final: off + n === end, lun, itt: 99, ttt: x.ttt, expStatSN, dataSN: dataSN++, bufferOffset: off, data: payload.subarray(off, off + n) });
          off += n;
        }
        sent = end;
        continue;
      }
      assert.equal(x.opcode, 0x21, JSON.stringify(x));
      assert.equal((x as ScsiResponsePdu).status, 0);
      expStatSN = (x as ScsiResponsePdu).statSN + 1;
      break;
    }
    assert.equal(sent, 4096);
    // READ(10) it back
    const back = await scsiIn(Buffer.from([0x28, 0, 0, 0, 0, 16, 0, 0, 8, 0]), 4096);
    assert.equal(back.status, 0);
    assert.deepEqual(back.data, payload);
    // Logout
    p.send({ opcode: 0x06, immediate: true, reason: 0, itt: 14, cid: 0, cmdSN, expStatSN });
    const lo = await p.next();
    assert.equal(lo.opcode, 0x26);
    assert.equal((lo as Extract<Pdu, { opcode: 0x26 }>).response, 0);
  });

  await t.test('CHAP one-way, and a wrong secret is an actionable EAUTH', async () => {
    const { r, retried } = await login({ targetName: 'iqn.2026-11.test.iscsi-nbd:chap', auth: CHAP });
    assert.equal(r.chapAlgorithm, 5);
    assert.ok(retried, 'tgt takes CHAP_A=7 as SHA-1: the SHA-256 answer fails and MD5 is retried');
    await assert.rejects(login({ targetName: 'iqn.2026-11.test.iscsi-nbd:chap', auth: { user: CHAP.user, secret: 'wrongsecret12' } }),
      (e: unknown) => e instanceof LoginError && e.code === 'EAUTH' && /CHAP/.test(e.message));
    await assert.rejects(login({ targetName: 'iqn.2026-11.test.iscsi-nbd:chap' }), (e: unknown) => e instanceof LoginError && e.code === 'EAUTH');
  });

  await t.test('mutual CHAP', async () => {
    const { r } = await login({ targetName: 'iqn.2026-11.test.iscsi-nbd:mutual', auth: { ...CHAP, targetUser: MUTUAL.user, targetSecret: MUTUAL.secret } });
    assert.ok(r.mutualAuthenticated);
    await assert.rejects(login({ targetName: 'iqn.2026-11.test.iscsi-nbd:mutual', auth: { ...CHAP, targetUser: MUTUAL.user, targetSecret: 'notthesecret1' } }),
      (e: unknown) => e instanceof LoginError && e.code === 'EAUTH');
  });

  await t.test('unknown target name', async () => {
    await assert.rejects(login({ targetName: 'iqn.2026-11.test.iscsi-nbd:nope' }), (e: unknown) => e instanceof LoginError && e.code === 'ENOTARGET' && /nope/.test(e.message));
  });
});
