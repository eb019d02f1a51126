// A portal in front of the embedded target that authenticates like LIO does
// without credentials for a session type: offered AuthMethod=CHAP first, it
// takes CHAP, then fails the login when the CHAP_A exchange comes ("CHAP
// user or password not set for Initiator ACL", status 0x0201). Every other
// login (None first, or no AuthMethod at all) is passed, byte for byte, to
// the backend portal, which does the rest. Each first Login Request is
// recorded: session type and the AuthMethod offered.

import net from 'node:net';
import { PduFramer } from '../../src/iscsi/framer';
import { decodeFrame, encodePduVectors, LoginRequestPdu, LoginResponsePdu } from '../../src/iscsi/pdu';
import { decodeText, encodeText } from '../../src/iscsi/text';

export interface LoginSeen {
  sessionType: 'Normal' | 'Discovery';
  /** The AuthMethod value offered, or undefined when the initiator skipped the security stage. */
  authMethod?: string;
  /** What the front did with it. */
  outcome: 'refused-chap' | 'passed';
}

export interface LioFront {
  readonly port: number;
  readonly portal: string;
  readonly logins: LoginSeen[];
  /** Session types whose CHAP logins are refused (change at will). */
  refuseChapOn: Set<'Normal' | 'Discovery'>;
  /** Where passed logins go (change at will). */
  backend: { host: string; port: number };
  close(): Promise<void>;
}

function response(req: LoginRequestPdu, o: Partial<LoginResponsePdu>): LoginResponsePdu {
  return {
    opcode: 0x23, transit: false, continue: false, csg: 0, nsg: 0, versionMax: 0, versionActive: 0,
    isid: req.isid, tsih: 0, itt: req.itt, statSN: 1, expCmdSN: req.cmdSN, maxCmdSN: req.cmdSN + 1,
    statusClass: 0, statusDetail: 0, data: Buffer.alloc(0), ...o,
  } as LoginResponsePdu;
}

export async function startLioFront(backend: { host: string; port: number }, refuseChapOn: Array<'Normal' | 'Discovery'>): Promise<LioFront> {
  const socks = new Set<net.Socket>();
  const front = {
    port: 0, portal: '', logins: [] as LoginSeen[], refuseChapOn: new Set(refuseChapOn), backend,
    close: async () => undefined,
  } as LioFront;
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on('close', () => socks.delete(sock));
    sock.on('error', () => undefined);
    const pending: Buffer[] = [];
    let state: 'first' | 'chap-a' | 'done' = 'first';
    const send = (pdu: LoginResponsePdu): void => {
      if (!sock.destroyed) sock.write(Buffer.concat(encodePduVectors(pdu, { headerDigest: false, dataDigest: false })));
    };
    const onData = (c: Buffer): void => {
      if (state === 'first') pending.push(c);
      try {
        framer.push(c);
      } catch {
        sock.destroy();
      }
    };
    const framer = new PduFramer({
      maxDataSegmentLength: 1 << 20,
      onFrame: (f) => {
        const pdu = decodeFrame({ bhs: Buffer.from(f.bhs), ahs: Buffer.from(f.ahs), data: Buffer.from(f.data) });
        if (pdu.opcode !== 0x03) {
          sock.destroy();
          return;
        }
        if (state === 'first') {
          const keys = new Map(decodeText(pdu.data));
          const sessionType = keys.get('SessionType') === 'Discovery' ? 'Discovery' : 'Normal';
          const authMethod = keys.get('AuthMethod');
          const chapFirst = authMethod !== undefined && authMethod.split(',')[0] === 'CHAP';
          if (chapFirst && front.refuseChapOn.has(sessionType)) {
            front.logins.push({ sessionType, authMethod, outcome: 'refused-chap' });
            state = 'chap-a';
            const answer: [string, string][] = [['AuthMethod', 'CHAP']];
            if (sessionType === 'Normal') answer.unshift(['TargetPortalGroupTag', '1']);
            send(response(pdu, { csg: 0, nsg: 0, data: encodeText(answer) }));
            return;
          }
          front.logins.push({ sessionType, authMethod, outcome: 'passed' });
          state = 'done';
          sock.off('data', onData);
          const b = net.connect(front.backend.port, front.backend.host);
          b.on('error', () => sock.destroy());
          sock.on('close', () => b.destroy());
          b.on('close', () => sock.destroy());
          b.write(Buffer.concat(pending));
          sock.pipe(b);
          b.pipe(sock);
          return;
        }
        if (state === 'chap-a') {
          // LIO: chap_server_open() finds no CHAP user/password for the ACL: authentication failure.
          state = 'done';
          send(response(pdu, { csg: 0, nsg: 0, statusClass: 2, statusDetail: 1 }));
          setImmediate(() => sock.end());
        }
      },
    });
    sock.on('data', onData);
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (srv.address() as net.AddressInfo).port;
  Object.assign(front, { port, portal: `127.0.0.1:${port}` });
  front.close = () => {
    for (const s of socks) s.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  };
  return front;
}
