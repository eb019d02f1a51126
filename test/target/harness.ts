// Drives a TargetConnectionEngine with codec-built PDUs and decodes what it sends.

import { PduFramer } from '../../src/iscsi/framer';
import { decodeFrame, encodePdu, InitiatorPdu, TargetPdu, EMPTY } from '../../src/iscsi/pdu';
import { decodeText, encodeText, TextPair } from '../../src/iscsi/text';
import { MemoryBackend } from '../../src/target/backend';
import { EngineOptions, TargetConnectionEngine, TargetEntry, TargetLimits, ChapConfig } from '../../src/target/engine';
import { FaultController } from '../../src/target/faults';
import { LogicalUnits, ScsiDevice } from '../../src/target/scsi-device';
import { DigestError } from '../../src/iscsi/crc32c';

export const TARGET = 'iqn.2026-11.io.test:engine';
export const INITIATOR = 'iqn.2026-11.io.test:ini';

export interface HarnessOptions {
  chap?: ChapConfig;
  limits?: Partial<TargetLimits>;
  faults?: FaultController;
  size?: number;
  blockSize?: number;
  readOnly?: boolean;
  nopInIntervalMs?: number;
  nopInTimeoutMs?: number;
}

export class Harness {
  readonly engine: TargetConnectionEngine;
  readonly out: TargetPdu[] = [];
  readonly raw: Buffer[] = [];
  readonly backend: MemoryBackend;
  readonly device: ScsiDevice;
  readonly faults: FaultController;
  ended = false;
  destroyed = false;
  digestErrors: DigestError[] = [];
  framerError: Error | undefined;
  private framer: PduFramer;
  itt = 1;
  cmdSN = 100;

  constructor(o: HarnessOptions = {}) {
    this.backend = new MemoryBackend({ size: o.size ?? 8 * 1024 * 1024, blockSize: o.blockSize ?? 512, readOnly: o.readOnly, identitySeed: 'harness' });
    this.faults = o.faults ?? new FaultController();
    this.device = new ScsiDevice({ backend: this.backend, mediumError: (l, b) => this.faults.mediumError(l, b) });
    const entry: TargetEntry = { name: TARGET, units: new LogicalUnits(new Map([[0, this.device]])), chap: o.chap };
    const other: TargetEntry = { name: 'iqn.2026-11.io.test:other', units: new LogicalUnits(new Map([[0, this.device]])) };
    this.framer = new PduFramer({
      maxDataSegmentLength: 16 * 1024 * 1024,
      onFrame: (f) => this.out.push(decodeFrame(f) as TargetPdu),
      onDataDigestError: (e) => this.digestErrors.push(e),
    });
    const opts: EngineOptions = {
      targets: new Map([[TARGET, entry], [other.name, other]]),
      localAddress: { host: '127.0.0.1', port: 3260 },
      faults: this.faults,
      limits: o.limits,
      nopInIntervalMs: o.nopInIntervalMs,
      nopInTimeoutMs: o.nopInTimeoutMs,
      io: {
        write: (bufs) => {
          const b = Buffer.concat(bufs);
          this.raw.push(b);
          try {
            this.framer.push(b);
          } catch (e) {
            this.framerError = e as Error;
          }
        },
        end: () => { this.ended = true; },
        destroy: () => { this.destroyed = true; },
      },
    };
    this.engine = new TargetConnectionEngine(opts);
  }

  /** Switch our decoding of the target's PDUs to digests (after login). */
  digests(header: boolean, data: boolean): void {
    this.framer.headerDigest = header;
    this.framer.dataDigest = data;
  }

  send(pdu: InitiatorPdu, digests?: { headerDigest: boolean; dataDigest: boolean }): void {
    this.engine.receive(encodePdu(pdu, digests));
  }

  take(): TargetPdu[] {
    return this.out.splice(0, this.out.length);
  }

  async waitFor<T extends TargetPdu>(pred: (p: TargetPdu) => boolean, timeoutMs = 3000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.out.findIndex(pred);
      if (i >= 0) return this.out.splice(i, 1)[0] as T;
      if (Date.now() > deadline) throw new Error(`no matching PDU within ${timeoutMs} ms; have ${this.out.map((p) => p.opcode.toString(16)).join(',')}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  loginPdu(o: { csg: number; nsg: number; transit: boolean; pairs: TextPair[]; isid?: number; tsih?: number }): InitiatorPdu {
    return {
      opcode: 0x03, transit: o.transit, continue: false, csg: o.csg, nsg: o.nsg, versionMax: 0, versionMin: 0,
      isid: o.isid ?? 0x800000000001, tsih: o.tsih ?? 0, itt: 0x1000, cid: 0, cmdSN: this.cmdSN, expStatSN: 0,
      data: encodeText(o.pairs),
    };
  }

  /** One login request; returns the response and its keys. */
  async loginStep(o: { csg: number; nsg: number; transit: boolean; pairs: TextPair[] }): Promise<{ pdu: Extract<TargetPdu, { opcode: 0x23 }>; keys: Map<string, string> }> {
    this.send(this.loginPdu(o));
    const pdu = await this.waitFor<Extract<TargetPdu, { opcode: 0x23 }>>((p) => p.opcode === 0x23);
    return { pdu, keys: new Map(decodeText(pdu.data)) };
  }

  /** Login with AuthMethod=None straight to full feature phase with these operational keys. */
  async login(op: TextPair[] = [], sessionType: 'Normal' | 'Discovery' = 'Normal'): Promise<Map<string, string>> {
    const first: TextPair[] = [['InitiatorName', INITIATOR], ['SessionType', sessionType]];
    if (sessionType === 'Normal') first.push(['TargetName', TARGET]);
    const r1 = await this.loginStep({ csg: 0, nsg: 1, transit: true, pairs: [...first, ['AuthMethod', 'None']] });
    if (r1.pdu.statusClass !== 0) throw new Error(`login failed ${r1.pdu.statusClass}/${r1.pdu.statusDetail}`);
    const r2 = await this.loginStep({ csg: 1, nsg: 3, transit: true, pairs: op });
    if (r2.pdu.statusClass !== 0 || !r2.pdu.transit) throw new Error('operational stage failed');
    return new Map([...r1.keys, ...r2.keys]);
  }

  scsi(cdb: Buffer, o: { read?: boolean; write?: boolean; edtl?: number; data?: Buffer; final?: boolean; itt?: number; cmdSN?: number; immediate?: boolean; lun?: bigint } = {}): number {
    const itt = o.itt ?? this.itt++;
    const cmdSN = o.cmdSN ?? this.cmdSN;
    if (o.cmdSN === undefined && !o.immediate) this.cmdSN++;
    this.send({
      opcode: 0x01, immediate: o.immediate ?? false, final: o.final ?? true, read: o.read ?? false, write: o.write ?? false,
      attr: 1, lun: o.lun ?? 0n, itt, expectedDataTransferLength: o.edtl ?? 0, cmdSN, expStatSN: 0, cdb, data: o.data ?? EMPTY,
    });
    return itt;
  }

  /** Wait for a command's status (SCSI Response or Data-In with S) and collect its Data-In. */
  async result(itt: number, timeoutMs = 3000): Promise<{ status: number; data: Buffer; sense: Buffer; residual: number; underflow: boolean; overflow: boolean; pdus: TargetPdu[] }> {
    const deadline = Date.now() + timeoutMs;
    const pdus: TargetPdu[] = [];
    const chunks: Buffer[] = [];
    for (;;) {
      const i = this.out.findIndex((p) => (p.opcode === 0x25 || p.opcode === 0x21) && p.itt === itt);
      if (i >= 0) {
        const p = this.out.splice(i, 1)[0];
        pdus.push(p);
        if (p.opcode === 0x25) {
          chunks.push(p.data);
          if (p.statusPresent) return { status: p.status, data: Buffer.concat(chunks), sense: EMPTY, residual: p.residualCount, underflow: p.underflow, overflow: p.overflow, pdus };
        } else if (p.opcode === 0x21) {
          return { status: p.status, data: Buffer.concat(chunks), sense: p.sense, residual: p.residualCount, underflow: p.underflow, overflow: p.overflow, pdus };
        }
        continue;
      }
      if (Date.now() > deadline) throw new Error(`no status for ITT ${itt}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }
}

export function cdb10(op: number, lba: number, blocks: number, flags = 0): Buffer {
  const b = Buffer.alloc(10);
  b[0] = op;
  b[1] = flags;
  b.writeUInt32BE(lba, 2);
  b.writeUInt16BE(blocks, 7);
  return b;
}
