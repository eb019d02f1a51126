// Login redirection (temporary and permanent) through a scripted redirector
// in front of a real tgtd.

import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { IscsiNbdError } from '../../src/errors';
import { PduFramer } from '../../src/iscsi/framer';
import { IscsiSession } from '../../src/iscsi/initiator';
import { decodeFrame, encodePdu } from '../../src/iscsi/pdu';
import { encodeText } from '../../src/iscsi/text';
import { startTgtdWithLuns } from '../helpers/tgtd';

const skip = fs.existsSync('/usr/sbin/tgtd') ? false : 'tgtd not installed';

/** A portal that answers every Login Request with a redirection to `to()`. */
async function redirector(t: TestContext, detail: 1 | 2, to: () => string): Promise<{ port: number; logins: number }> {
  const state = { port: 0, logins: 0 };
  const socks = new Set<net.Socket>();
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on('close', () => socks.delete(sock));
    sock.on('error', () => undefined);
    const framer = new PduFramer({
      onFrame: (f) => {
        const req = decodeFrame(f);
        if (req.opcode !== 0x03) return;
        state.logins++;
        sock.write(encodePdu({
          opcode: 0x23, transit: false, continue: false, csg: req.csg, nsg: 0, versionMax: 0, versionActive: 0,
          isid: req.isid, tsih: 0, itt: req.itt, statSN: 0, expCmdSN: req.cmdSN, maxCmdSN: req.cmdSN,
          statusClass: 1, statusDetail: detail, data: encodeText([['TargetAddress', to()]]),
        }));
      },
    });
    sock.on('data', (c) => {
      try {
        framer.push(c);
      } catch {
        sock.destroy();
      }
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  state.port = (srv.address() as net.AddressInfo).port;
  t.after(() => {
    for (const s of socks) s.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  });
  return state;
}

test('login redirection: temporary keeps the original portal, permanent replaces it; loops end with EREDIRECT', { skip }, async (t) => {
  const d = await startTgtdWithLuns({ targets: [{ luns: [{ size: 1 << 20 }] }] });
  t.after(() => d.stop());
  const target = `127.0.0.1:${d.port},1`;

  const tmp = await redirector(t, 1, () => target);
  const s1 = new IscsiSession({ portal: { host: '127.0.0.1', port: tmp.port }, targetName: d.iqn(1), initiatorName: 'iqn.2026-11.test:r' });
  t.after(() => s1.close());
  await s1.connect();
  assert.equal(tmp.logins, 1);
  assert.equal(s1.stats.portal, `127.0.0.1:${tmp.port}`);
  await s1.logout();

  const perm = await redirector(t, 2, () => target);
  const s2 = new IscsiSession({ portal: { host: '127.0.0.1', port: perm.port }, targetName: d.iqn(1), initiatorName: 'iqn.2026-11.test:r' });
  t.after(() => s2.close());
  await s2.connect();
  assert.equal(s2.stats.portal, `127.0.0.1:${d.port}`);
  await s2.logout();

  const loop: { port: number; logins: number } = await redirector(t, 1, () => `127.0.0.1:${loop.port}`);
  const s3 = new IscsiSession({ portal: { host: '127.0.0.1', port: loop.port }, targetName: d.iqn(1), initiatorName: 'iqn.2026-11.test:r' });
  t.after(() => s3.close());
  await assert.rejects(s3.connect(), (e: IscsiNbdError) => e.code === 'EREDIRECT');
  assert.equal(loop.logins, 6);
});
