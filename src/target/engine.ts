// The target side of one iSCSI connection (RFC 7143), without a socket:
// bytes (or decoded PDUs) in, encoded PDUs out through the `io` callbacks.
//
// Each connection is its own session (MaxConnections=1, ErrorRecoveryLevel=0).
// States: login -> full-feature -> logout -> closed.
//
// Command window: ExpCmdSN advances as commands arrive in order; commands
// ahead of it wait in `ordered`. MaxCmdSN = (lowest CmdSN still running, or
// ExpCmdSN) + queueDepth - 1, so it never decreases and at most queueDepth
// commands are outstanding. Commands start in CmdSN order; their backend I/O
// may complete in any order (SIMPLE task attribute semantics).

import { randomBytes } from 'node:crypto';
import { ProtocolError } from '../errors';
import type { Logger } from '../log';
import { rootLogger } from '../log';
import {
  AsyncEvent, BHS_LENGTH, DEFAULT_MAX_RECV_DSL, LoginStage, LogoutReason, LogoutResponseCode, Opcode, opcodeName,
  RejectReason, RESERVED_TAG, TmfFunction, TmfResponse,
} from '../iscsi/constants';
import { crc32c, digestBytes, DigestError } from '../iscsi/crc32c';
import { PduFramer } from '../iscsi/framer';
import { KEYS, parseNumber } from '../iscsi/negotiation';
import { normalizeIscsiName } from '../iscsi/names';
import {
  decodeFrame, decodeLun, DigestOptions, EMPTY, encodePduVectors, Frame, InitiatorPdu, LoginRequestPdu,
  ScsiCommandPdu, TargetPdu, DataOutPdu, TaskMgmtRequestPdu, TextRequestPdu, LogoutRequestPdu, NopOutPdu,
} from '../iscsi/pdu';
import { snAdd, snGt, snGte, snLt, snLte } from '../iscsi/serial';
import { encodeText, splitText, TextCollector, TextPair } from '../iscsi/text';
import { SK } from '../scsi/sense';
import { SAM_STAT_BUSY, SAM_STAT_CHECK_CONDITION, SAM_STAT_GOOD, SAM_STAT_TASK_SET_FULL } from '../scsi/transport';
import type { FaultController, MalformedKind } from './faults';
import { DEFAULT_TARGET_LIMITS, TargetLoginEngine, type ChapConfig, type TargetEntry, type TargetLimits } from './login-engine';
import { fixedSense, LogicalUnits, ScsiResult, MAX_TRANSFER_BYTES } from './scsi-device';

// The login-phase types live with the login engine; re-exported for importers of engine.ts.
export { DEFAULT_TARGET_LIMITS } from './login-engine';
export type { ChapConfig, TargetEntry, TargetLimits } from './login-engine';

export interface EngineIo {
  /** Write these buffers in order (one PDU). */
  write(bufs: Buffer[]): void;
  /** Close after what was written has been flushed (after a logout). */
  end(): void;
  /** Drop the connection now; with flushFirst, after what was written has gone out (half-PDU fault). */
  destroy(flushFirst?: boolean): void;
}

export interface SessionInfo {
  initiatorName: string;
  isid: number;
  targetName?: string;
  sessionType: 'Normal' | 'Discovery';
  tsih: number;
}

export interface EngineOptions {
  targets: ReadonlyMap<string, TargetEntry>;
  /** The portal the initiator reached us on, for SendTargets ("host:port"). */
  localAddress: { host: string; port: number };
  io: EngineIo;
  faults?: FaultController;
  log?: Logger;
  limits?: Partial<TargetLimits>;
  /** Send a NOP-In ping every so often in full feature phase (0 = never). */
  nopInIntervalMs?: number;
  /** Drop the connection when a ping is not answered in this time (default 2 x interval, at least 5 s). */
  nopInTimeoutMs?: number;
  /** TSIH for a new session (nonzero). */
  allocateTsih?: () => number;
  /** Called when login completes (session reinstatement is the caller's business). */
  onLoggedIn?: (s: SessionInfo) => void;
  /** Called once when the connection ends. */
  onClosed?: (reason: string) => void;
  /** CHAP account required of discovery sessions (else CHAP is used there only if the initiator prefers it). */
  discoveryChap?: ChapConfig;
  /** Random bytes (CHAP challenges); injectable for tests. */
  random?: (n: number) => Buffer;
}

export type EngineState = 'login' | 'full-feature' | 'logout' | 'closed';

interface Task {
  itt: number;
  cmdSN: number;
  immediate: boolean;
  lun: bigint;
  lunNum: number;
  cdb: Buffer;
  edtl: number;
  read: boolean;
  write: boolean;
  /** Write data, assembled (undefined: nothing expected, or discarding). */
  buf?: Buffer;
  discard: boolean;
  received: number;
  unsolicitedEnd: number;
  nextR2TOffset: number;
  r2ts: Map<number, { offset: number; length: number; received: number; dataSN: number }>;
  /** Unsolicited Data-Out sequence: next DataSN and BufferOffset expected (DataPDUInOrder=Yes). */
  unsolDataSN: number;
  unsolOffset: number;
  r2tSN: number;
  inOrder: boolean;
  started: boolean;
  aborted: boolean;
  digestFailed: boolean;
  sequenceError?: boolean;
  /** Immediate data waiting for the task's buffer. */
  imm?: Buffer;
  /** Holds maxBufferedWriteBytes budget (its whole EDTL). */
  reserved?: boolean;
  half: boolean;
  malformed?: MalformedKind;
  /** Resolves when the task is finished (response sent or suppressed). */
  done: Promise<void>;
  finish: () => void;
  invalid?: ScsiResult;
}


let nextEngineId = 1;

export class TargetConnectionEngine {
  readonly id = nextEngineId++;
  state: EngineState = 'login';
  readonly log: Logger;
  readonly limits: TargetLimits;
  private readonly framer: PduFramer;
  private readonly io: EngineIo;
  private readonly faults?: FaultController;
  private digests: DigestOptions = { headerDigest: false, dataDigest: false };

  /** The login phase (login-engine.ts): who the initiator is, what was negotiated. */
  private readonly login: TargetLoginEngine;

  // full feature phase
  private statSN = 1;
  private expCmdSN = 0;
  private maxCmdSNSent = 0;
  /** Peer's MaxRecvDataSegmentLength: our largest data segment (from login, then Text negotiation). */
  private peerMrdslValue = DEFAULT_MAX_RECV_DSL;
  get peerMrdsl(): number {
    return this.peerMrdslValue;
  }
  private set peerMrdsl(n: number) {
    this.peerMrdslValue = n;
  }
  private params = {
    maxBurstLength: 262144, firstBurstLength: 65536, maxOutstandingR2T: 1, immediateData: true, initialR2T: true,
  };
  private readonly tasks = new Map<number, Task>();
  private reservedBytes = 0;
  private readonly bufferWaiters: Task[] = [];
  private readonly recentlyFinished = new Set<number>();
  private readonly ordered = new Map<number, () => void>();
  private nextTtt = 1;
  private readonly textCollector = new TextCollector(64 * 1024, { allowDuplicates: false });
  private textPending: { itt: number; ttt: number; pieces: Buffer[] } | undefined;

  // pings
  private pingTimer: NodeJS.Timeout | undefined;
  private readonly pings = new Map<number, number>();
  private readonly nopInIntervalMs: number;
  private readonly nopInTimeoutMs: number;
  private logoutTimer: NodeJS.Timeout | undefined;

  // output
  private readonly outQueue: { bufs: Buffer[]; at: number; half: boolean }[] = [];
  private outTimer: NodeJS.Timeout | undefined;
  private endAfterFlush = false;
  private unsubscribeFaults: (() => void) | undefined;
  private closeReason = '';

  constructor(private readonly opts: EngineOptions) {
    this.io = opts.io;
    this.faults = opts.faults;
    this.limits = { ...DEFAULT_TARGET_LIMITS, ...opts.limits };
    this.log = (opts.log ?? rootLogger()).child({ conn: this.id });
    this.login = new TargetLoginEngine({
      targets: opts.targets, discoveryChap: opts.discoveryChap, allocateTsih: opts.allocateTsih, faults: opts.faults,
      limits: this.limits, random: opts.random ?? randomBytes, log: this.log,
    });
    this.nopInIntervalMs = opts.nopInIntervalMs ?? 0;
    this.nopInTimeoutMs = opts.nopInTimeoutMs ?? Math.max(5000, 2 * this.nopInIntervalMs);
    this.framer = new PduFramer({
      maxDataSegmentLength: DEFAULT_MAX_RECV_DSL,
      onFrame: (f) => this.onFrame(f),
      onDataDigestError: (e, f) => this.onDataDigestError(e, f),
    });
    if (this.faults) this.unsubscribeFaults = this.faults.onChange(() => this.pump());
  }

  get closed(): boolean {
    return this.state === 'closed';
  }

  get outstandingTasks(): number {
    return this.tasks.size;
  }

  get session(): SessionInfo {
    const l = this.login;
    return { initiatorName: l.initiatorName, isid: l.isid, targetName: l.target?.name, sessionType: l.sessionType, tsih: l.tsih };
  }

  /** The initiator's name (from its login). */
  get initiatorName(): string {
    return this.login.initiatorName;
  }

  /** The target logged in to (Normal sessions). */
  get target(): TargetEntry | undefined {
    return this.login.target;
  }

  private get sessionType(): 'Normal' | 'Discovery' {
    return this.login.sessionType;
  }

  /** Negotiated values (for tests and logs). */
  get negotiatedParams(): ReadonlyMap<string, string> {
    return this.login.negotiated;
  }

  /**
   * Test hook (documented, not for product code): pretend the initiator
   * declared this MaxRecvDataSegmentLength, below the 512 the protocol
   * allows, to exercise splitting into many small PDUs.
   */
  testSetPeerMrdsl(n: number): void {
    this.peerMrdsl = n;
  }

  private setState(s: EngineState): void {
    if (this.state === s) return;
    this.log.debug({ from: this.state, to: s }, 'connection state');
    this.state = s;
  }

  // ------------------------------------------------------------ input

  /** Feed bytes from the socket. */
  receive(chunk: Buffer): void {
    if (this.state === 'closed') return;
    try {
      this.framer.push(chunk);
    } catch (e) {
      this.fail(e);
    }
  }

  /** Feed one decoded PDU (unit tests). */
  receivePdu(pdu: InitiatorPdu): void {
    if (this.state === 'closed') return;
    try {
      this.dispatch(pdu, undefined);
    } catch (e) {
      this.fail(e);
    }
  }

  private fail(e: unknown): void {
    const msg = e instanceof Error ? e.message : String(e);
    this.log.warn({ err: msg }, 'dropping connection');
    this.close(`error: ${msg}`);
  }

  private onFrame(frame: Frame): void {
    if (this.state === 'closed') return;
    const op = frame.bhs[0] & 0x3f;
    const known = op === Opcode.NOP_OUT || op === Opcode.SCSI_COMMAND || op === Opcode.TASK_MGMT_REQUEST ||
      op === Opcode.LOGIN_REQUEST || op === Opcode.TEXT_REQUEST || op === Opcode.DATA_OUT ||
      op === Opcode.LOGOUT_REQUEST || op === Opcode.SNACK_REQUEST;
    if (!known) {
      if (this.state === 'login') throw new ProtocolError(`${opcodeName(op)} PDU during login`);
      this.reject(RejectReason.COMMAND_NOT_SUPPORTED, frame.bhs);
      return;
    }
    const pdu = decodeFrame(frame) as InitiatorPdu;
    this.dispatch(pdu, frame.bhs);
  }

  private onDataDigestError(e: DigestError, frame: Frame): void {
    this.log.warn({ itt: e.itt, opcode: e.opcode }, 'data digest error');
    this.reject(RejectReason.DATA_DIGEST_ERROR, frame.bhs);
    const op = frame.bhs[0] & 0x3f;
    if (op === Opcode.DATA_OUT) {
      // ERL 0: the task ends with CHECK CONDITION (ABORTED COMMAND, protocol service CRC error)
      // once its data is accounted for.
      const itt = frame.bhs.readUInt32BE(16);
      const t = this.tasks.get(itt);
      if (t) {
        t.digestFailed = true;
        const pdu = decodeFrame({ bhs: frame.bhs, ahs: EMPTY, data: frame.data }) as DataOutPdu;
        this.onDataOut(pdu, true);
      }
      return;
    }
    // A command or other PDU lost: its CmdSN is a hole we cannot fill at ERL 0.
    this.close('data digest error on a non-Data-Out PDU');
  }

  private dispatch(pdu: InitiatorPdu, bhs: Buffer | undefined): void {
    if (this.log.isLevelEnabled('trace')) {
      const p = pdu as { itt?: number; cmdSN?: number; immediate?: boolean; cdb?: Buffer };
      this.log.trace({ op: opcodeName(pdu.opcode), itt: p.itt, cmdSN: p.cmdSN, imm: p.immediate, cdb: p.cdb?.subarray(0, 16).toString('hex') }, 'PDU in');
    }
    if (this.state === 'login') {
      if (pdu.opcode !== Opcode.LOGIN_REQUEST) throw new ProtocolError(`${opcodeName(pdu.opcode)} PDU during login`);
      this.onLogin(pdu);
      return;
    }
    if (this.state !== 'full-feature' && this.state !== 'logout') return;
    switch (pdu.opcode) {
      case Opcode.DATA_OUT:
        this.onDataOut(pdu, false);
        return;
      case Opcode.SNACK_REQUEST:
        this.reject(RejectReason.COMMAND_NOT_SUPPORTED, bhs ?? EMPTY);
        return;
      case Opcode.LOGIN_REQUEST:
        this.reject(RejectReason.PROTOCOL_ERROR, bhs ?? EMPTY);
        return;
      case Opcode.SCSI_COMMAND:
        this.onScsiCommand(pdu);
        return;
      case Opcode.NOP_OUT:
        if (pdu.itt === RESERVED_TAG) {
          // Answer to our ping, or a plain ExpStatSN update; never consumes a CmdSN.
          if (pdu.ttt !== RESERVED_TAG) this.pings.delete(pdu.ttt);
          return;
        }
        this.sequenced(pdu.cmdSN, pdu.immediate, () => this.onNopOut(pdu));
        return;
      case Opcode.TASK_MGMT_REQUEST:
        this.sequenced(pdu.cmdSN, pdu.immediate, () => void this.onTmf(pdu).catch((e) => this.fail(e)));
        return;
      case Opcode.TEXT_REQUEST:
        this.sequenced(pdu.cmdSN, pdu.immediate, () => this.onText(pdu));
        return;
      case Opcode.LOGOUT_REQUEST:
        this.sequenced(pdu.cmdSN, pdu.immediate, () => void this.onLogout(pdu).catch((e) => this.fail(e)));
        return;
      default:
        return;
    }
  }

  // ------------------------------------------------------------ CmdSN ordering

  private get maxCmdSN(): number {
    let base = this.expCmdSN;
    for (const t of this.tasks.values()) if (!t.immediate && snLt(t.cmdSN, base)) base = t.cmdSN;
    const m = snAdd(base, this.limits.queueDepth - 1);
    if (snGt(m, this.maxCmdSNSent)) this.maxCmdSNSent = m;
    return this.maxCmdSNSent;
  }

  /** Run `fn` in CmdSN order (immediate PDUs at once). Returns false if the PDU was outside the window. */
  private sequenced(cmdSN: number, immediate: boolean, fn: () => void): boolean {
    if (immediate) {
      fn();
      return true;
    }
    if (cmdSN === this.expCmdSN) {
      this.expCmdSN = snAdd(this.expCmdSN, 1);
      fn();
      for (let next = this.ordered.get(this.expCmdSN); next; next = this.ordered.get(this.expCmdSN)) {
        this.ordered.delete(this.expCmdSN);
        this.expCmdSN = snAdd(this.expCmdSN, 1);
        next();
      }
      return true;
    }
    if (snGt(cmdSN, this.expCmdSN) && snLte(cmdSN, this.maxCmdSN) && !this.ordered.has(cmdSN)) {
      this.ordered.set(cmdSN, fn);
      return true;
    }
    this.log.debug({ cmdSN, expCmdSN: this.expCmdSN }, 'PDU outside the command window ignored');
    return false;
  }

  // ------------------------------------------------------------ output

  private send(pdu: TargetPdu, half = false): void {
    if (this.state === 'closed') return;
    let bufs = encodePduVectors(pdu, this.digests);
    if (pdu.opcode === Opcode.DATA_IN && this.digests.dataDigest && pdu.data.length > 0 && this.faults?.takeCorruptDigest()) {
      const d = Buffer.from(bufs[bufs.length - 1]);
      d[0] ^= 0xff;
      bufs = [...bufs.slice(0, -1), d];
    }
    this.enqueue(bufs, half);
  }

  private enqueue(bufs: Buffer[], half = false): void {
    const delay = this.faults?.delayMs ?? 0;
    this.outQueue.push({ bufs, at: delay > 0 ? Date.now() + delay : 0, half });
    this.pump();
  }

  private pump(): void {
    if (this.state === 'closed') return;
    while (this.outQueue.length > 0) {
      if (this.faults?.stalled) return;
      const head = this.outQueue[0];
      const wait = head.at - Date.now();
      if (wait > 0) {
        if (!this.outTimer) {
          this.outTimer = setTimeout(() => {
            this.outTimer = undefined;
            this.pump();
          }, wait);
        }
        return;
      }
      this.outQueue.shift();
      if (head.half) {
        const all = Buffer.concat(head.bufs);
        this.io.write([all.subarray(0, Math.max(1, all.length >> 1))]);
        this.finishClose('fault: connection dropped in the middle of a PDU', false, true);
        return;
      }
      this.io.write(head.bufs);
    }
    if (this.endAfterFlush) {
      this.endAfterFlush = false;
      this.finishClose('logged out', true);
    }
  }

  /** Drop the connection (idempotent). */
  close(reason = 'closed'): void {
    this.finishClose(reason, false);
  }

  private finishClose(reason: string, graceful: boolean, flushFirst = false): void {
    if (this.state === 'closed') return;
    this.closeReason = reason;
    this.setState('closed');
    this.log.debug({ reason }, 'connection closed');
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.outTimer) clearTimeout(this.outTimer);
    if (this.logoutTimer) clearTimeout(this.logoutTimer);
    this.unsubscribeFaults?.();
    this.outQueue.length = 0;
    for (const t of this.tasks.values()) {
      t.aborted = true;
      t.finish();
    }
    this.tasks.clear();
    this.ordered.clear();
    this.bufferWaiters.length = 0;
    if (graceful) this.io.end();
    else this.io.destroy(flushFirst);
    this.opts.onClosed?.(reason);
  }

  get reasonClosed(): string {
    return this.closeReason;
  }

  private statusFields(): { statSN: number; expCmdSN: number; maxCmdSN: number } {
    return { statSN: this.statSN++ >>> 0, expCmdSN: this.expCmdSN, maxCmdSN: this.maxCmdSN };
  }

  private windowFields(): { statSN: number; expCmdSN: number; maxCmdSN: number } {
    return { statSN: this.statSN >>> 0, expCmdSN: this.expCmdSN, maxCmdSN: this.maxCmdSN };
  }

  private reject(reason: number, bhs: Buffer): void {
    this.send({ opcode: 0x3f, reason, ...this.statusFields(), dataSN: 0, data: Buffer.from(bhs.subarray(0, BHS_LENGTH)) });
  }

  // ------------------------------------------------------------ login

  private loginResponse(req: LoginRequestPdu, o: { transit: boolean; nsg: number; status?: number; pairs?: TextPair[] }): void {
    const status = o.status ?? 0;
    this.maxCmdSNSent = snAdd(this.expCmdSN, this.limits.queueDepth - 1);
    const data = o.pairs && o.pairs.length > 0 ? encodeText(o.pairs) : EMPTY;
    this.send({
      opcode: 0x23, transit: o.transit, continue: false, csg: req.csg, nsg: o.transit ? o.nsg : 0,
      versionMax: 0, versionActive: 0, isid: this.login.isid, tsih: status === 0 && o.transit && o.nsg === LoginStage.FULL_FEATURE_PHASE ? this.login.tsih : 0,
      itt: req.itt, statSN: this.statSN++ >>> 0, expCmdSN: this.expCmdSN, maxCmdSN: this.maxCmdSNSent,
      statusClass: status >> 8, statusDetail: status & 0xff, data,
    });
  }

  private loginFail(req: LoginRequestPdu, status: number, why: string): void {
    this.log.info({ status: `0x${status.toString(16).padStart(4, '0')}`, initiator: this.login.initiatorName, why }, 'login refused');
    this.loginResponse(req, { transit: false, nsg: 0, status });
    this.endAfterFlush = true;
    this.pump();
  }

  private onLogin(req: LoginRequestPdu): void {
    if (!this.login.started) this.expCmdSN = req.cmdSN;
    const out = this.login.step(req);
    switch (out.kind) {
      case 'fail':
        this.loginFail(req, out.status, out.why);
        return;
      case 'respond':
        this.loginResponse(req, out);
        return;
      case 'complete':
        this.loginResponse(req, { transit: true, nsg: out.nsg, pairs: out.pairs });
        this.enterFullFeature();
        return;
    }
  }

  private enterFullFeature(): void {
    const ff = this.login.fullFeatureSettings();
    this.params = ff.params;
    this.digests = ff.digests;
    this.peerMrdsl = ff.peerMrdsl;
    this.framer.headerDigest = this.digests.headerDigest;
    this.framer.dataDigest = this.digests.dataDigest;
    this.framer.maxDataSegmentLength = ff.maxRecvDataSegmentLength;
    this.setState('full-feature');
    this.log.info({ initiator: this.initiatorName, target: this.target?.name, type: this.sessionType, tsih: this.login.tsih, ...this.params, ...this.digests, peerMrdsl: this.peerMrdsl }, 'login complete');
    this.opts.onLoggedIn?.(this.session);
    if (this.nopInIntervalMs > 0) {
      this.pingTimer = setInterval(() => this.ping(), this.nopInIntervalMs);
      this.pingTimer.unref?.();
    }
  }

  // ------------------------------------------------------------ NOP

  private ping(): void {
    if (this.state !== 'full-feature') return;
    const now = Date.now();
    for (const [, sent] of this.pings) {
      if (now - sent > this.nopInTimeoutMs) {
        this.log.warn('NOP-In ping not answered: dropping the connection');
        this.close('ping timeout');
        return;
      }
    }
    const ttt = this.newTtt();
    this.pings.set(ttt, now);
    this.send({ opcode: 0x20, lun: 0n, itt: RESERVED_TAG, ttt, ...this.windowFields(), data: EMPTY });
  }

  /** Send a NOP-In ping now (tests); resolves nothing, answers are tracked internally. */
  sendPing(): number {
    const ttt = this.newTtt();
    this.pings.set(ttt, Date.now());
    this.send({ opcode: 0x20, lun: 0n, itt: RESERVED_TAG, ttt, ...this.windowFields(), data: EMPTY });
    return ttt;
  }

  /** Pings sent and not answered yet. */
  get pendingPings(): number {
    return this.pings.size;
  }

  private onNopOut(pdu: NopOutPdu): void {
    if (this.faults?.ignoreNopOut) return;
    this.send({ opcode: 0x20, lun: pdu.lun, itt: pdu.itt, ttt: RESERVED_TAG, ...this.statusFields(), data: pdu.data.length ? Buffer.from(pdu.data) : EMPTY });
  }

  private newTtt(): number {
    const t = this.nextTtt;
    this.nextTtt = this.nextTtt >= 0x7fffffff ? 1 : this.nextTtt + 1;
    return t;
  }

  // ------------------------------------------------------------ SCSI commands

  private onScsiCommand(pdu: ScsiCommandPdu): void {
    if (this.sessionType === 'Discovery') {
      this.reject(RejectReason.PROTOCOL_ERROR, encodePduVectors(pdu)[0]);
      return;
    }
    if (this.tasks.has(pdu.itt)) throw new ProtocolError(`ITT 0x${pdu.itt.toString(16)} already in use`);
    const fault = this.faults?.onCommand();
    if (fault === 'drop') {
      this.close('fault: connection dropped after N commands');
      return;
    }
    const edtl = pdu.expectedDataTransferLength >>> 0;
    const imm = pdu.data;
    if (imm.length > 0) {
      if (!pdu.write) throw new ProtocolError('immediate data on a command without the W bit');
      if (!this.params.immediateData) throw new ProtocolError('immediate data with ImmediateData=No');
      if (imm.length > this.params.firstBurstLength || imm.length > edtl) throw new ProtocolError(`immediate data of ${imm.length} bytes exceeds FirstBurstLength/EDTL`);
    }
    let lunNum = -1;
    try {
      lunNum = decodeLun(pdu.lun);
    } catch {
      lunNum = -1;
    }
    let finish!: () => void;
    const done = new Promise<void>((r) => (finish = r));
    const writeLen = pdu.write ? edtl : 0;
    const unsolicitedEnd = pdu.write
      ? (pdu.final || this.params.initialR2T ? imm.length : Math.min(this.params.firstBurstLength, edtl))
      : 0;
    const discard = writeLen > MAX_TRANSFER_BYTES + 65536;
    const t: Task = {
      itt: pdu.itt, cmdSN: pdu.cmdSN, immediate: pdu.immediate, lun: pdu.lun, lunNum, cdb: Buffer.from(pdu.cdb),
      edtl, read: pdu.read, write: pdu.write, discard, received: 0, unsolicitedEnd,
      nextR2TOffset: unsolicitedEnd, r2ts: new Map(), r2tSN: 0, inOrder: false, started: false, aborted: false,
      digestFailed: false, half: fault === 'half', done, finish, unsolDataSN: 0, unsolOffset: imm.length,
    };
    if (discard) {
      t.invalid = { status: SAM_STAT_CHECK_CONDITION, sense: fixedSense(SK.ILLEGAL_REQUEST, 0x24, 0x00) };
      t.nextR2TOffset = edtl; // no R2T: the command fails once the unsolicited data is in
    } else if (writeLen > 0) {
      if (imm.length === writeLen) t.buf = imm;
      else {
        t.imm = imm;
        // Unsolicited data cannot be held back: its buffer is taken at once.
        if (t.unsolicitedEnd > imm.length) this.reserve(t, true);
      }
    }
    t.received = imm.length;
    // Registered before sequencing, so that it starts before any queued later command it releases.
    this.tasks.set(t.itt, t);
    const inWindow = this.sequenced(pdu.cmdSN, pdu.immediate, () => {
      t.inOrder = true;
      this.maybeStart(t);
    });
    if (!inWindow) {
      this.tasks.delete(t.itt);
      return;
    }
    if (!t.started) this.issueR2Ts(t);
  }

  private dataComplete(t: Task): boolean {
    if (!t.write) return true;
    if (t.discard) return t.received >= t.unsolicitedEnd;
    return t.received >= t.edtl;
  }

  /**
   * Write data is buffered whole before the command runs. Solicited data (R2Ts) is only asked
   * for once the whole buffer fits in maxBufferedWriteBytes (or nothing else is reserved), so
   * the memory held by one connection stays bounded; waiting tasks get their R2Ts in order
   * as others finish.
   */
  private reserve(t: Task, force = false): boolean {
    if (t.reserved) return true;
    if (!force && this.reservedBytes > 0 && this.reservedBytes + t.edtl > this.limits.maxBufferedWriteBytes) return false;
    this.reservedBytes += t.edtl;
    t.reserved = true;
    t.buf = Buffer.alloc(t.edtl);
    if (t.imm) {
      t.imm.copy(t.buf, 0);
      t.imm = undefined;
    }
    return true;
  }

  private release(t: Task): void {
    const i = this.bufferWaiters.indexOf(t);
    if (i >= 0) this.bufferWaiters.splice(i, 1);
    if (!t.reserved) return;
    t.reserved = false;
    this.reservedBytes -= t.edtl;
    while (this.bufferWaiters.length > 0 && this.state !== 'closed') {
      const w = this.bufferWaiters[0];
      if (!this.reserve(w)) break;
      this.bufferWaiters.shift();
      this.issueR2Ts(w);
    }
  }

  private issueR2Ts(t: Task): void {
    if (!t.write || t.aborted || t.nextR2TOffset >= t.edtl) return;
    if (!this.reserve(t)) {
      if (!this.bufferWaiters.includes(t)) this.bufferWaiters.push(t);
      return;
    }
    while (t.write && !t.aborted && t.nextR2TOffset < t.edtl && t.r2ts.size < this.params.maxOutstandingR2T) {
      const len = Math.min(this.params.maxBurstLength, t.edtl - t.nextR2TOffset);
      const ttt = this.newTtt();
      t.r2ts.set(ttt, { offset: t.nextR2TOffset, length: len, received: 0, dataSN: 0 });
      this.send({
        opcode: 0x31, lun: t.lun, itt: t.itt, ttt, ...this.windowFields(), r2tSN: t.r2tSN++,
        bufferOffset: t.nextR2TOffset, desiredDataTransferLength: len,
      });
      t.nextR2TOffset += len;
    }
  }

  private onDataOut(pdu: DataOutPdu, digestFailed: boolean): void {
    const t = this.tasks.get(pdu.itt);
    if (!t) {
      if (this.recentlyFinished.has(pdu.itt)) return; // aborted or failed early: discard quietly
      throw new ProtocolError(`Data-Out for unknown ITT 0x${pdu.itt.toString(16)}`);
    }
    if (!t.write) throw new ProtocolError('Data-Out for a command without the W bit');
    const off = pdu.bufferOffset;
    const len = pdu.data.length;
    if (off + len > t.edtl) throw new ProtocolError(`Data-Out beyond the expected transfer length (${off}+${len} > ${t.edtl})`);
    // DataSN counts from 0 in each sequence; with DataPDUInOrder=Yes offsets follow each other.
    // A PDU out of sequence (but inside its burst) fails the task, not the connection:
    // ABORTED COMMAND / DATA PHASE ERROR once its data is accounted for.
    let outOfOrder = false;
    if (pdu.ttt === RESERVED_TAG) {
      if (off + len > t.unsolicitedEnd) throw new ProtocolError('unsolicited Data-Out beyond FirstBurstLength');
      if (pdu.dataSN !== t.unsolDataSN || off !== t.unsolOffset) outOfOrder = true;
      t.unsolDataSN++;
      t.unsolOffset += len;
    } else {
      const r = t.r2ts.get(pdu.ttt);
      if (!r) throw new ProtocolError(`Data-Out with unknown TTT 0x${pdu.ttt.toString(16)}`);
      if (off < r.offset || off + len > r.offset + r.length) throw new ProtocolError('Data-Out outside its R2T');
      if (pdu.dataSN !== r.dataSN || off !== r.offset + r.received) outOfOrder = true;
      r.dataSN++;
      r.received += len;
      if (r.received >= r.length || pdu.final) t.r2ts.delete(pdu.ttt);
    }
    if (outOfOrder && !t.sequenceError) {
      t.sequenceError = true;
      this.log.warn({ itt: t.itt, dataSN: pdu.dataSN, offset: off }, 'Data-Out out of sequence: failing the task');
    }
    if (!t.buf && !t.discard && len > 0) this.reserve(t, true);
    if (!digestFailed && t.buf && len > 0) pdu.data.copy(t.buf, off);
    t.received += len;
    if (digestFailed) t.digestFailed = true;
    if (t.aborted) return;
    this.issueR2Ts(t);
    this.maybeStart(t);
  }

  private maybeStart(t: Task): void {
    if (t.started || t.aborted || !t.inOrder || !this.dataComplete(t) || this.state === 'closed') return;
    if (!this.tasks.has(t.itt)) return;
    t.started = true;
    this.execute(t).catch((e) => this.fail(e));
  }

  /** Per LUN, the generation of each unit attention source this connection last reported. */
  private readonly capacitySeen = new Map<number, number>();
  private readonly aluaSeen = new Map<number, number>();

  /**
   * A unit attention once per connection after its source moved on (a resize,
   * an ALUA state change). The first command of a connection only records
   * where the source is; INQUIRY, REPORT LUNS and REQUEST SENSE never take one.
   */
  private unseen(seenBy: Map<number, number>, t: Task, generation: number | undefined): boolean {
    if (generation === undefined) return false;
    const seen = seenBy.get(t.lunNum);
    seenBy.set(t.lunNum, generation);
    if (seen === undefined || seen === generation) return false;
    if (t.cdb[0] === 0x12 || t.cdb[0] === 0xa0 || t.cdb[0] === 0x03) {
      seenBy.set(t.lunNum, seen); // still to report
      return false;
    }
    return true;
  }

  /** CAPACITY DATA HAS CHANGED (UA 2A/09). */
  private capacityChanged(t: Task): boolean {
    return this.unseen(this.capacitySeen, t, this.target?.units.get(t.lunNum)?.capacityGeneration);
  }

  /** ASYMMETRIC ACCESS STATE CHANGED (UA 2A/06). */
  private aluaChanged(t: Task): boolean {
    return this.unseen(this.aluaSeen, t, this.target?.units.get(t.lunNum)?.alua?.topology.generation);
  }

  private async execute(t: Task): Promise<void> {
    let result: ScsiResult;
    const units = this.target!.units;
    const st = this.faults?.takeStatus(t.cdb[0]);
    t.malformed = this.faults?.takeMalformed();
    if (t.invalid) result = t.invalid;
    else if (t.digestFailed) result = { status: SAM_STAT_CHECK_CONDITION, sense: fixedSense(SK.ABORTED_COMMAND, 0x47, 0x05) };
    else if (t.sequenceError) result = { status: SAM_STAT_CHECK_CONDITION, sense: fixedSense(SK.ABORTED_COMMAND, 0x4b, 0x00) };
    else if (this.capacityChanged(t)) result = { status: SAM_STAT_CHECK_CONDITION, sense: fixedSense(SK.UNIT_ATTENTION, 0x2a, 0x09) };
    else if (this.aluaChanged(t)) result = { status: SAM_STAT_CHECK_CONDITION, sense: fixedSense(SK.UNIT_ATTENTION, 0x2a, 0x06) };
    else if (st && t.cdb[0] !== 0x12 && t.cdb[0] !== 0xa0) {
      if (st.status === 'busy') result = { status: SAM_STAT_BUSY };
      else if (st.status === 'task-set-full') result = { status: SAM_STAT_TASK_SET_FULL };
      else result = { status: SAM_STAT_CHECK_CONDITION, sense: fixedSense(SK.UNIT_ATTENTION, st.asc ?? 0x29, st.ascq ?? 0x00) };
    } else {
      try {
        result = await units.execute(t.lunNum < 0 ? 0xffffff : t.lunNum, t.cdb, t.buf);
      } catch (e) {
        this.log.error({ err: e }, 'SCSI emulation failed');
        result = { status: SAM_STAT_CHECK_CONDITION, sense: fixedSense(SK.HARDWARE_ERROR, 0x44, 0x00) };
      }
    }
    t.buf = undefined;
    this.complete(t, result);
  }

  private complete(t: Task, r: ScsiResult): void {
    this.release(t);
    this.tasks.delete(t.itt);
    this.rememberFinished(t.itt);
    if (t.aborted || this.state === 'closed') {
      t.finish();
      return;
    }
    if (t.malformed) {
      this.sendMalformed(t, t.malformed);
      t.finish();
      return;
    }
    const pdus: TargetPdu[] = [];
    let data = t.read ? r.data : undefined;
    // Residual: positive = underflow, negative = overflow.
    let residual: number;
    if (t.read) {
      const produced = data?.length ?? 0;
      residual = t.edtl - produced;
      if (data && data.length > t.edtl) data = data.subarray(0, t.edtl);
    } else if (t.write) {
      residual = t.edtl - (r.dataOutNeeded ?? 0);
    } else {
      residual = t.edtl;
    }
    if (t.read && r.status !== SAM_STAT_GOOD && !data) residual = t.edtl;
    const good = r.status === SAM_STAT_GOOD && !r.sense;
    let dataSN = 0;
    if (data && data.length > 0) {
      const mrdsl = this.peerMrdsl;
      const mbl = this.params.maxBurstLength;
      for (let off = 0; off < data.length; ) {
        const burstEnd = (Math.floor(off / mbl) + 1) * mbl;
        const n = Math.min(mrdsl, data.length - off, burstEnd - off);
        const last = off + n >= data.length;
        const withStatus = last && good;
        pdus.push({
          opcode: 0x25, final: last || off + n === burstEnd, ack: false,
          overflow: withStatus && residual < 0, underflow: withStatus && residual > 0,
          statusPresent: withStatus, status: withStatus ? r.status : 0, lun: t.lun, itt: t.itt, ttt: RESERVED_TAG,
          statSN: 0, expCmdSN: 0, maxCmdSN: 0, dataSN: dataSN++, bufferOffset: off,
          residualCount: withStatus ? Math.abs(residual) : 0, data: data.subarray(off, off + n),
        });
        off += n;
      }
      if (good) {
        // The last Data-In carries the status: fill its sequence numbers now.
        const lastPdu = pdus[pdus.length - 1] as Extract<TargetPdu, { opcode: 0x25 }>;
        Object.assign(lastPdu, this.statusFields());
      }
    }
    if (!good || !data || data.length === 0) {
      pdus.push({
        opcode: 0x21, bidiOverflow: false, bidiUnderflow: false, overflow: residual < 0, underflow: residual > 0,
        response: 0, status: r.status, itt: t.itt, snackTag: 0, ...this.statusFields(), expDataSN: dataSN,
        bidiReadResidualCount: 0, residualCount: Math.abs(residual), sense: r.sense ?? EMPTY, responseData: EMPTY,
      });
    }
    for (let i = 0; i < pdus.length; i++) {
      const p = pdus[i];
      if (p.opcode === 0x25 && !p.statusPresent) Object.assign(p, this.windowFields(), { statSN: 0 });
      this.send(p, t.half && i === pdus.length - 1);
    }
    t.finish();
  }

  private rememberFinished(itt: number): void {
    this.recentlyFinished.add(itt);
    if (this.recentlyFinished.size > 1024) {
      const first = this.recentlyFinished.values().next().value as number;
      this.recentlyFinished.delete(first);
    }
  }

  private sendMalformed(t: Task, kind: MalformedKind): void {
    this.log.info({ kind }, 'fault: sending a malformed PDU');
    const resp: TargetPdu = {
      opcode: 0x21, bidiOverflow: false, bidiUnderflow: false, overflow: false, underflow: false, response: 0,
      status: 0, itt: t.itt, snackTag: 0, ...this.statusFields(), expDataSN: 0, bidiReadResidualCount: 0,
      residualCount: 0, sense: EMPTY, responseData: EMPTY,
    };
    const hdr = Buffer.from(encodePduVectors(resp)[0]);
    let extra: Buffer = EMPTY;
    switch (kind) {
      case 'bad-opcode':
        hdr[0] = 0x3c;
        break;
      case 'absurd-dsl':
        hdr[5] = 0xff;
        hdr.writeUInt16BE(0xffff, 6);
        break;
      case 'unknown-itt':
        hdr.writeUInt32BE((t.itt ^ 0x5a5a0000) >>> 0, 16);
        break;
      case 'truncated-ahs':
        // TotalAHSLength says 1 word; that word says the AHS is 64 bytes long.
        hdr[4] = 1;
        extra = Buffer.from([0x00, 0x40, 0x01, 0x00]);
        break;
      case 'bad-offset': {
        const d: TargetPdu = {
          opcode: 0x25, final: true, ack: false, overflow: false, underflow: false, statusPresent: true, status: 0,
          lun: t.lun, itt: t.itt, ttt: RESERVED_TAG, ...this.windowFields(), dataSN: 0,
          bufferOffset: t.edtl + 4096, residualCount: 0, data: Buffer.alloc(512),
        };
        this.send(d);
        return;
      }
    }
    const header = extra.length ? Buffer.concat([hdr, extra]) : hdr;
    const bufs: Buffer[] = [header];
    if (this.digests.headerDigest) bufs.push(digestBytes(crc32c(header)));
    this.enqueue(bufs);
  }

  // ------------------------------------------------------------ task management

  private async onTmf(pdu: TaskMgmtRequestPdu): Promise<void> {
    const respond = (response: number): void => {
      this.send({ opcode: 0x22, response, itt: pdu.itt, ...this.statusFields() });
    };
    let lunNum = -1;
    try {
      lunNum = decodeLun(pdu.lun);
    } catch {
      lunNum = -1;
    }
    const hasLun = this.target?.units.get(lunNum) !== undefined;
    switch (pdu.func) {
      case TmfFunction.ABORT_TASK: {
        const t = this.tasks.get(pdu.referencedTaskTag);
        if (!t) {
          // RFC 7143 11.5.1: a task never received whose RefCmdSN is in the window and before
          // this request: its CmdSN counts as received, and the answer is "function complete".
          // A task already completed (or any other) "does not exist".
          const ref = pdu.refCmdSN;
          const neverReceived = snGte(ref, this.expCmdSN) && snLte(ref, this.maxCmdSN) && snLt(ref, pdu.cmdSN) && !this.ordered.has(ref);
          if (neverReceived) {
            this.sequenced(ref, false, () => undefined);
            respond(TmfResponse.FUNCTION_COMPLETE);
          } else {
            respond(TmfResponse.TASK_DOES_NOT_EXIST);
          }
          return;
        }
        await this.abortTasks([t]);
        respond(TmfResponse.FUNCTION_COMPLETE);
        return;
      }
      case TmfFunction.ABORT_TASK_SET:
      case TmfFunction.LOGICAL_UNIT_RESET: {
        if (!hasLun) {
          respond(TmfResponse.LUN_DOES_NOT_EXIST);
          return;
        }
        await this.abortTasks([...this.tasks.values()].filter((t) => t.lunNum === lunNum));
        this.log.info({ lun: lunNum, func: pdu.func }, 'task management: tasks aborted');
        respond(TmfResponse.FUNCTION_COMPLETE);
        return;
      }
      case TmfFunction.TASK_REASSIGN:
        respond(TmfResponse.TASK_ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED);
        return;
      default:
        respond(TmfResponse.FUNCTION_NOT_SUPPORTED);
    }
  }

  private async abortTasks(list: Task[]): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const t of list) {
      t.aborted = true;
      t.r2ts.clear();
      if (!t.started) {
        this.release(t);
        // Never ran: nothing to wait for. Its CmdSN slot (if still queued) runs as a no-op.
        this.tasks.delete(t.itt);
        this.rememberFinished(t.itt);
        t.finish();
      } else {
        waits.push(t.done);
      }
    }
    await Promise.all(waits);
  }

  // ------------------------------------------------------------ text (SendTargets)

  private onText(pdu: TextRequestPdu): void {
    if (pdu.ttt !== RESERVED_TAG && !this.textCollector.pending) {
      const p = this.textPending;
      if (!p || p.ttt !== pdu.ttt || p.itt !== pdu.itt) {
        this.reject(RejectReason.PROTOCOL_ERROR, encodePduVectors(pdu)[0]);
        return;
      }
      this.sendTextPiece(pdu);
      return;
    }
    const pairs = this.textCollector.add(pdu.data, pdu.continue);
    if (pairs === undefined) {
      this.send({ opcode: 0x24, final: false, continue: false, lun: pdu.lun, itt: pdu.itt, ttt: RESERVED_TAG, ...this.statusFields(), data: EMPTY });
      return;
    }
    const out: TextPair[] = [];
    for (const [k, v] of pairs) {
      if (k === 'SendTargets') out.push(...this.sendTargets(v));
      else if (k === 'MaxRecvDataSegmentLength') {
        const n = parseNumber(v);
        if (n !== undefined && n >= 512 && n <= 16777215) this.peerMrdsl = n;
      } else if (!KEYS.has(k)) out.push([k, 'NotUnderstood']);
      else out.push([k, 'Reject']);
    }
    const data = out.length ? encodeText(out) : EMPTY;
    this.textPending = { itt: pdu.itt, ttt: 0, pieces: splitText(data, this.peerMrdsl) };
    this.sendTextPiece(pdu);
  }

  private sendTextPiece(pdu: TextRequestPdu): void {
    const p = this.textPending!;
    const piece = p.pieces.shift() ?? EMPTY;
    const more = p.pieces.length > 0;
    p.ttt = more ? this.newTtt() : RESERVED_TAG;
    if (!more) this.textPending = undefined;
    this.send({ opcode: 0x24, final: !more, continue: more, lun: pdu.lun, itt: pdu.itt, ttt: p.ttt, ...this.statusFields(), data: piece });
  }

  private sendTargets(value: string): TextPair[] {
    const host = this.opts.localAddress.host.includes(':') ? `[${this.opts.localAddress.host}]` : this.opts.localAddress.host;
    const addr = `${host}:${this.opts.localAddress.port},1`;
    let list: TargetEntry[];
    if (value === 'All') {
      if (this.sessionType !== 'Discovery' && !this.target) return [];
      list = this.sessionType === 'Discovery' ? [...this.opts.targets.values()] : [this.target!];
    } else if (value === '') {
      list = this.target ? [this.target] : [];
    } else {
      let n = value;
      try {
        n = normalizeIscsiName(value);
      } catch {
        /* unknown: empty answer */
      }
      const t = this.opts.targets.get(n);
      list = t && (this.sessionType === 'Discovery' || t === this.target) ? [t] : [];
    }
    const out: TextPair[] = [];
    for (const t of list) out.push(['TargetName', t.name], ['TargetAddress', addr]);
    return out;
  }

  // ------------------------------------------------------------ logout and async

  private async onLogout(pdu: LogoutRequestPdu): Promise<void> {
    this.setState('logout');
    if (this.logoutTimer) clearTimeout(this.logoutTimer);
    if (pdu.reason === LogoutReason.REMOVE_CONNECTION_FOR_RECOVERY) {
      this.send({ opcode: 0x26, response: LogoutResponseCode.RECOVERY_NOT_SUPPORTED, itt: pdu.itt, ...this.statusFields(), time2Wait: 0, time2Retain: 0 });
      return;
    }
    await Promise.all([...this.tasks.values()].filter((t) => t.started).map((t) => t.done));
    if (this.state === 'closed') return;
    this.send({ opcode: 0x26, response: LogoutResponseCode.CLOSED_SUCCESSFULLY, itt: pdu.itt, ...this.statusFields(), time2Wait: 0, time2Retain: 0 });
    this.log.debug({ cid: pdu.cid, reason: pdu.reason }, 'logout');
    this.endAfterFlush = true;
    this.pump();
  }

  /**
   * Ask the initiator to log out (Async Message, AsyncEvent 1). Parameter3 is
   * the time it has to do so; the connection is dropped if it has not by then.
   */
  requestLogout(seconds = 5): boolean {
    if (this.state !== 'full-feature') return false;
    this.faults && this.faults.fired.asyncLogout++;
    this.send({
      opcode: 0x32, lun: 0n, ...this.statusFields(), asyncEvent: AsyncEvent.LOGOUT_REQUEST, asyncVCode: 0,
      parameter1: 0, parameter2: 0, parameter3: seconds, data: EMPTY,
    });
    this.logoutTimer = setTimeout(() => {
      if (this.state === 'full-feature') this.close('no logout after an async logout request');
    }, seconds * 1000 + 2000);
    this.logoutTimer.unref?.();
    return true;
  }
}
