// Scripted in-process fake targets: for SessionEngine tests a manual clock,
// a capture of everything the engine sends (split with the framer and
// decoded) and builders for target PDUs; for IscsiSession tests a TCP fake
// target with a trivial login and scriptable full feature phase.

import net from 'node:net';
import { PduFramer } from '../../src/iscsi/framer';
import {
  AsyncMessagePdu, DataInPdu, decodeFrame, EMPTY, encodePduVectors, LoginRequestPdu, LogoutResponsePdu, NopInPdu, Pdu,
  R2tPdu, RejectPdu, ScsiCommandPdu, ScsiResponsePdu, TaskMgmtRequestPdu, TaskMgmtResponsePdu, TextResponsePdu,
} from '../../src/iscsi/pdu';
import { decodeText, encodeText, TextPair } from '../../src/iscsi/text';
import { EngineClock, EngineParams, SessionEngine, SessionEngineOptions } from '../../src/iscsi/session-engine';

export class ManualClock implements EngineClock {
  t = 1_000_000;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): number {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers.delete(h as number);
  }
  get pending(): number {
    return this.timers.size;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (let guard = 0; guard < 10000; guard++) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
  }
}

export const BASE_PARAMS: EngineParams = {
  headerDigest: false,
  dataDigest: false,
  immediateData: true,
  initialR2T: true,
  maxXmitDataSegmentLength: 8192,
  maxBurstLength: 262144,
  firstBurstLength: 65536,
  maxOutstandingR2T: 1,
  errorRecoveryLevel: 0,
  dataPDUInOrder: true,
  dataSequenceInOrder: true,
};

export interface Harness {
  e: SessionEngine;
  clock: ManualClock;
  /** Decoded PDUs sent, in order. */
  sent: Pdu[];
  /** Raw batches given to onSend. */
  batches: Buffer[][];
  fatal: Error[];
  take(): Pdu[];
}

export function setup(
  over: Partial<Omit<SessionEngineOptions, 'params' | 'onSend'>> & { params?: Partial<EngineParams> } = {},
): Harness {
  const clock = (over.clock as ManualClock | undefined) ?? new ManualClock();
  const params = { ...BASE_PARAMS, ...over.params };
  const sent: Pdu[] = [];
  const batches: Buffer[][] = [];
  const framer = new PduFramer({
    headerDigest: params.headerDigest, dataDigest: params.dataDigest, maxDataSegmentLength: 1 << 24,
    onFrame: (f) => {
      // Copy: the engine's buffers are views of caller data.
      sent.push(decodeFrame({ bhs: Buffer.from(f.bhs), ahs: Buffer.from(f.ahs), data: Buffer.from(f.data) }));
    },
  });
  const e = new SessionEngine({
    cmdSN: 1, expStatSN: 1, expCmdSN: 1, maxCmdSN: 64, ...over, clock, params,
    onSend: (bufs) => {
      batches.push(bufs);
      framer.push(Buffer.concat(bufs));
    },
  });
  const fatal: Error[] = [];
  e.on('fatal', (err: Error) => fatal.push(err));
  return {
    e, clock, sent, batches, fatal,
    take: () => sent.splice(0, sent.length),
  };
}

export const SN = { statSN: 1, expCmdSN: 1, maxCmdSN: 64 };

export function dataIn(itt: number, o: Partial<DataInPdu> = {}): DataInPdu {
  return {
    opcode: 0x25, final: false, ack: false, overflow: false, underflow: false, statusPresent: false, status: 0,
    lun: 0n, itt, ttt: 0xffffffff, statSN: 0, expCmdSN: SN.expCmdSN, maxCmdSN: SN.maxCmdSN, dataSN: 0,
    bufferOffset: 0, residualCount: 0, data: EMPTY, ...o,
  };
}

export function scsiResp(itt: number, o: Partial<ScsiResponsePdu> = {}): ScsiResponsePdu {
  return {
    opcode: 0x21, bidiOverflow: false, bidiUnderflow: false, overflow: false, underflow: false, response: 0,
    status: 0, itt, snackTag: 0, statSN: SN.statSN, expCmdSN: SN.expCmdSN, maxCmdSN: SN.maxCmdSN, expDataSN: 0,
    bidiReadResidualCount: 0, residualCount: 0, sense: EMPTY, responseData: EMPTY, ...o,
  };
}

export function r2t(itt: number, o: Partial<R2tPdu> = {}): R2tPdu {
  return {
    opcode: 0x31, lun: 0n, itt, ttt: 0x100, statSN: SN.statSN, expCmdSN: SN.expCmdSN, maxCmdSN: SN.maxCmdSN,
    r2tSN: 0, bufferOffset: 0, desiredDataTransferLength: 0, ...o,
  };
}

export function nopIn(o: Partial<NopInPdu> = {}): NopInPdu {
  return {
    opcode: 0x20, lun: 0n, itt: 0xffffffff, ttt: 0xffffffff, statSN: SN.statSN, expCmdSN: SN.expCmdSN,
    maxCmdSN: SN.maxCmdSN, data: EMPTY, ...o,
  };
}

export function tmfResp(itt: number, response: number, o: Partial<TaskMgmtResponsePdu> = {}): TaskMgmtResponsePdu {
  return { opcode: 0x22, response, itt, statSN: SN.statSN, expCmdSN: SN.expCmdSN, maxCmdSN: SN.maxCmdSN, ...o };
}

export function asyncMsg(event: number, o: Partial<AsyncMessagePdu> = {}): AsyncMessagePdu {
  return {
    opcode: 0x32, lun: 0n, statSN: SN.statSN, expCmdSN: SN.expCmdSN, maxCmdSN: SN.maxCmdSN, asyncEvent: event,
    asyncVCode: 0, parameter1: 0, parameter2: 0, parameter3: 0, data: EMPTY, ...o,
  };
}

export function reject(reason: number, header: Buffer, o: Partial<RejectPdu> = {}): RejectPdu {
  return { opcode: 0x3f, reason, statSN: SN.statSN, expCmdSN: SN.expCmdSN, maxCmdSN: SN.maxCmdSN, dataSN: 0, data: header, ...o };
}

export function textResp(itt: number, o: Partial<TextResponsePdu> = {}): TextResponsePdu {
  return {
    opcode: 0x24, final: true, continue: false, lun: 0n, itt, ttt: 0xffffffff, statSN: SN.statSN,
    expCmdSN: SN.expCmdSN, maxCmdSN: SN.maxCmdSN, data: EMPTY, ...o,
  };
}

export function logoutResp(itt: number, o: Partial<LogoutResponsePdu> = {}): LogoutResponsePdu {
  return {
    opcode: 0x26, response: 0, itt, statSN: SN.statSN, expCmdSN: SN.expCmdSN, maxCmdSN: SN.maxCmdSN,
    time2Wait: 0, time2Retain: 0, ...o,
  };
}

/** A pattern buffer (byte i = f(i)). */
export function pattern(n: number, seed = 1): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

// ------------------------------------------------------------------ TCP fake target


export interface FakeConn {
  readonly index: number;
  readonly sock: net.Socket;
  /** PDUs received in full feature phase. */
  readonly received: Pdu[];
  send(pdu: Pdu, corruptDataDigest?: boolean): void;
  nextStatSN(): number;
  readonly expCmdSN: number;
  readonly maxCmdSN: number;
  close(): void;
}

export interface FakeTargetOptions {
  /** Answer CRC32C to digest offers that include it. */
  digests?: boolean;
  /** Handle a SCSI Command; return false to use the default (GOOD, zero data). */
  onCommand?: (c: FakeConn, cmd: ScsiCommandPdu) => boolean | void;
  /** Called when a connection enters full feature phase. */
  onLoggedIn?: (c: FakeConn) => void;
  onTmf?: (c: FakeConn, tmf: TaskMgmtRequestPdu) => boolean | void;
  /** Listen address (default 127.0.0.1). */
  host?: string;
}

export interface FakeTarget {
  readonly port: number;
  readonly conns: FakeConn[];
  logins: number;
  close(): Promise<void>;
}

/** Answer a login proposal the simplest valid way: echo numbers/booleans, pick a digest. */
function answerLogin(req: LoginRequestPdu, digests: boolean): TextPair[] {
  const out: TextPair[] = [];
  for (const [k, v] of decodeText(req.data)) {
    if (k === 'HeaderDigest' || k === 'DataDigest') {
      out.push([k, digests && v.split(',').includes('CRC32C') ? 'CRC32C' : 'None']);
    } else if (['InitialR2T', 'ImmediateData', 'MaxBurstLength', 'FirstBurstLength', 'MaxConnections', 'MaxOutstandingR2T',
      'DefaultTime2Wait', 'DefaultTime2Retain', 'DataPDUInOrder', 'DataSequenceInOrder', 'ErrorRecoveryLevel'].includes(k)) {
      out.push([k, v]);
    }
  }
  out.push(['MaxRecvDataSegmentLength', '65536'], ['TargetPortalGroupTag', '1']);
  return out;
}

export async function startFakeTarget(opts: FakeTargetOptions = {}): Promise<FakeTarget> {
  const conns: FakeConn[] = [];
  const socks = new Set<net.Socket>();
  const ft = { port: 0, conns, logins: 0, close: async () => undefined } as FakeTarget;
  const srv = net.createServer((sock) => {
    socks.add(sock);
    sock.on('close', () => socks.delete(sock));
    sock.on('error', () => undefined);
    let statSN = 100;
    let expCmdSN = 0;
    let ffp = false;
    let dig = { headerDigest: false, dataDigest: false };
    const conn: FakeConn = {
      index: conns.length,
      sock,
      received: [],
      send(pdu, corrupt) {
        const v = encodePduVectors(pdu, dig);
        const b = Buffer.concat(v);
        if (corrupt) b[b.length - 1] ^= 0xff;
        if (!sock.destroyed) sock.write(b);
      },
      nextStatSN: () => statSN++,
      get expCmdSN() { return expCmdSN; },
      get maxCmdSN() { return (expCmdSN + 31) >>> 0; },
      close: () => sock.destroy(),
    };
    conns.push(conn);
    const framer = new PduFramer({
      maxDataSegmentLength: 1 << 24,
      onFrame: (f) => {
        const pdu = decodeFrame({ bhs: Buffer.from(f.bhs), ahs: Buffer.from(f.ahs), data: Buffer.from(f.data) });
        if (!ffp) {
          if (pdu.opcode !== 0x03) return;
          ft.logins++;
          expCmdSN = pdu.cmdSN;
          const keys = answerLogin(pdu, !!opts.digests);
          const m = new Map(keys);
          conn.send({
            opcode: 0x23, transit: true, continue: false, csg: 1, nsg: 3, versionMax: 0, versionActive: 0,
            isid: pdu.isid, tsih: 7, itt: pdu.itt, statSN: statSN++, expCmdSN, maxCmdSN: conn.maxCmdSN,
            statusClass: 0, statusDetail: 0, data: encodeText(keys),
          });
          ffp = true;
          dig = { headerDigest: m.get('HeaderDigest') === 'CRC32C', dataDigest: m.get('DataDigest') === 'CRC32C' };
          framer.headerDigest = dig.headerDigest;
          framer.dataDigest = dig.dataDigest;
          opts.onLoggedIn?.(conn);
          return;
        }
        conn.received.push(pdu);
        if ('immediate' in pdu && !pdu.immediate && 'cmdSN' in pdu) expCmdSN = (pdu.cmdSN + 1) >>> 0;
        const sn = () => ({ expCmdSN, maxCmdSN: conn.maxCmdSN });
        switch (pdu.opcode) {
          case 0x01: {
            if (opts.onCommand?.(conn, pdu)) return;
            if (pdu.read) {
              conn.send({
                opcode: 0x25, final: true, ack: false, overflow: false, underflow: false, statusPresent: true, status: 0,
                lun: 0n, itt: pdu.itt, ttt: 0xffffffff, statSN: conn.nextStatSN(), ...sn(), dataSN: 0, bufferOffset: 0,
                residualCount: 0, data: Buffer.alloc(pdu.expectedDataTransferLength, 0xa5),
              });
            } else {
              conn.send(scsiResp(pdu.itt, { statSN: conn.nextStatSN(), ...sn() }));
            }
            return;
          }
          case 0x00:
            if (pdu.itt !== 0xffffffff) conn.send(nopIn({ itt: pdu.itt, statSN: conn.nextStatSN(), ...sn(), data: pdu.data }));
            return;
          case 0x02:
            if (opts.onTmf?.(conn, pdu)) return;
            conn.send(tmfResp(pdu.itt, 0, { statSN: conn.nextStatSN(), ...sn() }));
            return;
          case 0x06:
            conn.send(logoutResp(pdu.itt, { statSN: conn.nextStatSN(), ...sn() }));
            setImmediate(() => sock.end());
            return;
          default:
            return;
        }
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
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, opts.host ?? '127.0.0.1', () => resolve());
  });
  (ft as { port: number }).port = (srv.address() as net.AddressInfo).port;
  ft.close = () => {
    for (const s of socks) s.destroy();
    return new Promise<void>((r) => srv.close(() => r()));
  };
  return ft;
}
