// The login phase of the target side of one iSCSI connection (RFC 7143
// section 6): security negotiation (CHAP, mutual CHAP), operational key
// answers, and the stage machine. No socket and no sequence numbers: step()
// says what to answer to each Login Request and TargetConnectionEngine
// (engine.ts) sends it, with StatSN and the command window, and enters full
// feature phase with fullFeatureSettings().

import { timingSafeEqual } from 'node:crypto';
import type { Logger } from '../log';
import { DEFAULT_MAX_RECV_DSL, LoginStage } from '../iscsi/constants';
import { chapResponse, decodeChapBinary, encodeChapBinary, isSupportedChapAlgorithm, chapDigestLength } from '../iscsi/chap';
import { KEYS, parseNumber } from '../iscsi/negotiation';
import { normalizeIscsiName } from '../iscsi/names';
import { EMPTY, type DigestOptions, type LoginRequestPdu } from '../iscsi/pdu';
import { TextCollector, TextPair } from '../iscsi/text';
import type { FaultController } from './faults';
import type { LogicalUnits } from './scsi-device';

const SECURITY_KEYS = new Set(['AuthMethod', 'CHAP_A', 'CHAP_I', 'CHAP_C', 'CHAP_N', 'CHAP_R']);
const DEFAULT_CHAP_ORDER = [5, 6, 7, 8];

export interface TargetLoginOptions {
  targets: ReadonlyMap<string, TargetEntry>;
  /** CHAP account required of discovery sessions (else CHAP is used there only if the initiator prefers it). */
  discoveryChap?: ChapConfig;
  /** TSIH for a new session (nonzero). */
  allocateTsih?: () => number;
  faults?: FaultController;
  limits: TargetLimits;
  /** Random bytes (CHAP challenges). */
  random: (n: number) => Buffer;
  log: Logger;
}

/** What to answer to one Login Request. */
export type LoginOutcome =
  /** A Login Response (transit to nsg or not) with these keys. */
  | { kind: 'respond'; transit: boolean; nsg: number; pairs: TextPair[] }
  /** The final Login Response (transit to full feature phase); the session has its TSIH. */
  | { kind: 'complete'; nsg: number; pairs: TextPair[] }
  /** Refuse with this status (class << 8 | detail) and close after it is sent. */
  | { kind: 'fail'; status: number; why: string };

export interface FullFeatureSettings {
  params: { maxBurstLength: number; firstBurstLength: number; maxOutstandingR2T: number; immediateData: boolean; initialR2T: boolean };
  digests: DigestOptions;
  /** Our MaxRecvDataSegmentLength as declared (the default if we declared none). */
  maxRecvDataSegmentLength: number;
  /** The initiator's MaxRecvDataSegmentLength: our largest data segment. */
  peerMrdsl: number;
}

export interface ChapConfig {
  user: string;
  secret: string;
  /** Mutual CHAP: the name and secret this target answers the initiator's challenge with. */
  mutualUser?: string;
  mutualSecret?: string;
  /** Algorithms accepted, in the order of preference used when the initiator offers several (default MD5, SHA-1, SHA-256, SHA3-256). */
  algorithms?: number[];
}

export interface TargetEntry {
  name: string;
  alias?: string;
  units: LogicalUnits;
  chap?: ChapConfig;
}

/** What the target accepts in operational negotiation. */
export interface TargetLimits {
  maxRecvDataSegmentLength: number;
  maxBurstLength: number;
  firstBurstLength: number;
  maxOutstandingR2T: number;
  immediateData: boolean;
  initialR2T: boolean;
  /** Digest values acceptable to us, in order. */
  headerDigest: ('CRC32C' | 'None')[];
  dataDigest: ('CRC32C' | 'None')[];
  /** Commands the initiator may have outstanding (CmdSN window). */
  queueDepth: number;
  /** Write data buffered per connection before R2Ts are held back (a single command may exceed it). */
  maxBufferedWriteBytes: number;
}

export const DEFAULT_TARGET_LIMITS: TargetLimits = {
  maxRecvDataSegmentLength: 262144,
  maxBurstLength: 16776192,
  firstBurstLength: 262144,
  maxOutstandingR2T: 16,
  immediateData: true,
  initialR2T: false,
  headerDigest: ['CRC32C', 'None'],
  dataDigest: ['CRC32C', 'None'],
  queueDepth: 128,
  maxBufferedWriteBytes: 256 * 1024 * 1024,
};

function fail(status: number, why: string): LoginOutcome {
  return { kind: 'fail', status, why };
}

export class TargetLoginEngine {
  private loginStarted = false;
  isid = 0;
  tsih = 0;
  cid = 0;
  sessionType: 'Normal' | 'Discovery' = 'Normal';
  initiatorName = '';
  target: TargetEntry | undefined;
  private authState: 'start' | 'need-chap-a' | 'need-chap-r' | 'done' = 'start';
  private authMethod: 'None' | 'CHAP' | undefined;
  private chapAlg = 0;
  private chapId = 0;
  private chapChallenge: Buffer = EMPTY;
  private readonly loginText = new TextCollector(64 * 1024);
  /** Operational keys answered (key -> our answer). */
  readonly negotiated = new Map<string, string>();
  private mrdslDeclared = false;
  private tpgtSent = false;
  private currentStage = -1;
  /** The initiator's declared MaxRecvDataSegmentLength. */
  private peerMrdsl = DEFAULT_MAX_RECV_DSL;
  private readonly log: Logger;
  private readonly limits: TargetLimits;

  constructor(private readonly opts: TargetLoginOptions) {
    this.log = opts.log;
    this.limits = opts.limits;
  }

  /** A Login Request has been seen (the ISID and CID are known). */
  get started(): boolean {
    return this.loginStarted;
  }

  /** One Login Request (a PDU of the exchange): what to answer. */
  step(req: LoginRequestPdu): LoginOutcome {
    if (!this.loginStarted) {
      this.loginStarted = true;
      this.isid = req.isid;
      this.cid = req.cid;
    }
    if (req.versionMin > 0) return fail(0x0205, `unsupported version ${req.versionMin}`);
    if (req.csg === 2 || req.csg === 3 || (req.transit && (req.nsg === 2 || req.nsg <= req.csg))) {
      return fail(0x0200, `bad stage transition CSG=${req.csg} NSG=${req.nsg}`);
    }
    if (req.isid !== this.isid) return fail(0x0200, 'ISID changed during login');
    if (req.tsih !== 0) return fail(0x020a, 'adding a connection to a session is not supported');
    const pairs = this.loginText.add(req.data, req.continue);
    if (pairs === undefined) {
      // More text to come (C bit): acknowledge with an empty response.
      return { kind: 'respond', transit: false, nsg: 0, pairs: [] };
    }
    const keys = new Map<string, string>(pairs);
    const first = this.currentStage === -1;
    if (first) {
      const iname = keys.get('InitiatorName');
      if (!iname) return fail(0x0207, 'no InitiatorName');
      try {
        this.initiatorName = normalizeIscsiName(iname, 'InitiatorName');
      } catch {
        return fail(0x0200, `bad InitiatorName ${iname}`);
      }
      const st = keys.get('SessionType') ?? 'Normal';
      if (st !== 'Normal' && st !== 'Discovery') return fail(0x0209, `SessionType ${st}`);
      this.sessionType = st;
      if (st === 'Normal') {
        const tn = keys.get('TargetName');
        if (!tn) return fail(0x0207, 'no TargetName');
        let norm: string;
        try {
          norm = normalizeIscsiName(tn, 'TargetName');
        } catch {
          return fail(0x0203, `unknown target ${tn}`);
        }
        this.target = this.opts.targets.get(norm);
        if (!this.target) return fail(0x0203, `unknown target ${tn}`);
      }
      const rej = this.opts.faults?.takeLoginReject();
      if (rej) return fail((rej.statusClass << 8) | rej.statusDetail, 'fault injection');
      this.log.debug({ initiator: this.initiatorName, target: this.target?.name, sessionType: st }, 'login started');
    }
    if (req.csg !== this.currentStage) this.currentStage = req.csg;

    const answers: TextPair[] = [];
    if (first && this.sessionType === 'Normal' && !this.tpgtSent) {
      answers.push(['TargetPortalGroupTag', '1']);
      if (this.target?.alias) answers.push(['TargetAlias', this.target.alias]);
      this.tpgtSent = true;
    }
    // Normal sessions: the target's account, required if set. Discovery sessions: the
    // discoveryChap account (required), else any target's account when the initiator prefers CHAP.
    let accounts: ChapConfig[];
    let chapRequired: boolean;
    if (this.sessionType === 'Normal') {
      accounts = this.target?.chap ? [this.target.chap] : [];
      chapRequired = accounts.length > 0;
    } else if (this.opts.discoveryChap) {
      accounts = [this.opts.discoveryChap];
      chapRequired = true;
    } else {
      accounts = [...this.opts.targets.values()].flatMap((t) => (t.chap ? [t.chap] : []));
      chapRequired = false;
    }
    const chap = chapRequired ? accounts[0] : undefined;

    if (req.csg === LoginStage.SECURITY_NEGOTIATION) {
      const sec = this.securityStep(keys, accounts, chapRequired, answers);
      if (sec !== undefined) return fail(sec.status, sec.why);
      for (const [k, v] of pairs) if (!SECURITY_KEYS.has(k)) this.answerOperational(k, v, answers, first);
    } else {
      if (chap && this.authState !== 'done') return fail(0x0201, 'operational stage without authentication');
      if (this.authState === 'start' && this.authMethod === undefined) this.authState = 'done';
      for (const [k, v] of pairs) {
        if (SECURITY_KEYS.has(k)) return fail(0x0200, `${k} in the operational stage`);
        this.answerOperational(k, v, answers, first);
      }
      if (!this.mrdslDeclared) {
        answers.push(['MaxRecvDataSegmentLength', String(this.limits.maxRecvDataSegmentLength)]);
        this.mrdslDeclared = true;
      }
    }

    let transit = false;
    if (req.transit) {
      if (req.csg === LoginStage.SECURITY_NEGOTIATION) {
        if (this.authState === 'done') transit = true;
        else if (this.authState === 'start' && !chap) {
          this.authState = 'done';
          transit = true;
        } else if (this.authState === 'start' && chap) {
          return fail(0x0201, 'authentication required');
        }
      } else {
        transit = true;
      }
    }
    if (transit && req.nsg === LoginStage.FULL_FEATURE_PHASE && !this.mrdslDeclared) {
      // Skipping the operational stage: declare our limit anyway.
      answers.push(['MaxRecvDataSegmentLength', String(this.limits.maxRecvDataSegmentLength)]);
      this.mrdslDeclared = true;
    }
    if (transit && req.nsg === LoginStage.FULL_FEATURE_PHASE) {
      this.tsih = this.opts.allocateTsih?.() ?? 1;
      return { kind: 'complete', nsg: req.nsg, pairs: answers };
    }
    return { kind: 'respond', transit, nsg: req.nsg, pairs: answers };
  }

  /** Security stage keys; returns a failure, or undefined to go on. */
  private securityStep(keys: Map<string, string>, accounts: ChapConfig[], required: boolean, answers: TextPair[]): { status: number; why: string } | undefined {
    const am = keys.get('AuthMethod');
    if (am !== undefined && this.authMethod === undefined) {
      const offered = am.split(',');
      const ci = offered.indexOf('CHAP');
      const ni = offered.indexOf('None');
      if (required || (accounts.length > 0 && ci >= 0 && (ni < 0 || ci < ni))) {
        if (!offered.includes('CHAP')) return { status: 0x0201, why: `AuthMethod ${am} without CHAP` };
        this.authMethod = 'CHAP';
        this.authState = 'need-chap-a';
      } else if (offered.includes('None')) {
        this.authMethod = 'None';
        this.authState = 'done';
      } else {
        return { status: 0x0201, why: `AuthMethod ${am} without None (no CHAP account configured)` };
      }
      answers.push(['AuthMethod', this.authMethod]);
    }
    if (this.authState === 'need-chap-a' && keys.has('CHAP_A')) {
      const allowed = accounts[0]?.algorithms ?? DEFAULT_CHAP_ORDER;
      const offered = keys.get('CHAP_A')!.split(',').map((s) => Number(s.trim()));
      const pick = offered.find((a) => allowed.includes(a) && isSupportedChapAlgorithm(a));
      if (pick === undefined) return { status: 0x0201, why: `no acceptable CHAP_A in ${keys.get('CHAP_A')}` };
      this.chapAlg = pick;
      this.chapId = this.opts.random(1)[0];
      this.chapChallenge = this.opts.random(Math.max(16, chapDigestLength(pick)));
      answers.push(['CHAP_A', String(pick)], ['CHAP_I', String(this.chapId)], ['CHAP_C', encodeChapBinary(this.chapChallenge)]);
      this.authState = 'need-chap-r';
      return undefined;
    }
    if (this.authState === 'need-chap-r' && (keys.has('CHAP_N') || keys.has('CHAP_R'))) {
      const n = keys.get('CHAP_N');
      const r = keys.get('CHAP_R');
      if (n === undefined || r === undefined) return { status: 0x0201, why: 'CHAP_N or CHAP_R missing' };
      let got: Buffer;
      try {
        got = decodeChapBinary(r, 'CHAP_R');
      } catch {
        return { status: 0x0201, why: 'malformed CHAP_R' };
      }
      const chap = accounts.find((a) => a.user === n);
      const want = chap ? chapResponse(this.chapAlg, this.chapId, chap.secret, this.chapChallenge) : EMPTY;
      if (!chap || got.length !== want.length || !timingSafeEqual(got, want)) {
        return { status: 0x0201, why: `CHAP authentication of "${n}" failed` };
      }
      const ci = keys.get('CHAP_I');
      const cc = keys.get('CHAP_C');
      if (ci !== undefined || cc !== undefined) {
        if (ci === undefined || cc === undefined) return { status: 0x0201, why: 'mutual CHAP: CHAP_I or CHAP_C missing' };
        if (chap.mutualSecret === undefined) return { status: 0x0201, why: 'mutual CHAP requested but no target secret is configured' };
        let theirs: Buffer;
        try {
          theirs = decodeChapBinary(cc, 'CHAP_C');
        } catch {
          return { status: 0x0201, why: 'malformed CHAP_C' };
        }
        const id = Number(ci);
        if (!/^\d{1,3}$/.test(ci) || id > 255 || theirs.length === 0 || theirs.length > 1024) {
          return { status: 0x0201, why: 'bad mutual CHAP_I/CHAP_C' };
        }
        if (theirs.equals(this.chapChallenge)) return { status: 0x0201, why: 'mutual CHAP challenge reflected' };
        answers.push(
          ['CHAP_N', chap.mutualUser ?? this.target?.name ?? 'target'],
          ['CHAP_R', encodeChapBinary(chapResponse(this.chapAlg, id, chap.mutualSecret, theirs))],
        );
      }
      this.authState = 'done';
      this.log.debug({ user: n, alg: this.chapAlg, mutual: ci !== undefined }, 'CHAP authentication succeeded');
    }
    return undefined;
  }

  /** Answer one operational key (RFC 7143 section 13 result functions). */
  private answerOperational(key: string, value: string, answers: TextPair[], first: boolean): void {
    if (value === 'NotUnderstood' || value === 'Irrelevant' || value === 'Reject') return;
    const d = KEYS.get(key);
    if (!d) {
      answers.push([key, 'NotUnderstood']);
      return;
    }
    if (d.kind === 'declarative') {
      switch (key) {
        case 'MaxRecvDataSegmentLength': {
          const n = parseNumber(value);
          if (n !== undefined && n >= 512 && n <= 16777215) this.peerMrdsl = n;
          return;
        }
        case 'InitiatorName':
        case 'SessionType':
        case 'TargetName':
          if (!first) this.log.debug({ key }, 'identity key repeated in a later login PDU');
          return;
        default:
          return; // InitiatorAlias and others need no answer
      }
    }
    if (this.negotiated.has(key) && d.use !== 'all') {
      // Answered before: repeat the answer.
      answers.push([key, this.negotiated.get(key)!]);
      return;
    }
    const L = this.limits;
    const yn = (b: boolean): string => (b ? 'Yes' : 'No');
    let answer: string;
    switch (d.type) {
      case 'boolean': {
        if (value !== 'Yes' && value !== 'No') { answer = 'Reject'; break; }
        const theirs = value === 'Yes';
        let mine: boolean;
        switch (key) {
          case 'InitialR2T': mine = L.initialR2T; break;
          case 'ImmediateData': mine = L.immediateData; break;
          case 'DataPDUInOrder': case 'DataSequenceInOrder': mine = true; break;
          default: mine = false; // markers
        }
        answer = yn(d.result === 'and' ? mine && theirs : mine || theirs);
        break;
      }
      case 'numeric': {
        const n = parseNumber(value);
        if (n === undefined || n < d.min! || n > d.max!) { answer = 'Reject'; break; }
        let mine: number;
        switch (key) {
          case 'MaxConnections': mine = 1; break;
          case 'MaxBurstLength': mine = L.maxBurstLength; break;
          case 'FirstBurstLength': mine = L.firstBurstLength; break;
          case 'MaxOutstandingR2T': mine = L.maxOutstandingR2T; break;
          case 'DefaultTime2Wait': mine = 0; break;
          case 'DefaultTime2Retain': mine = 0; break;
          case 'ErrorRecoveryLevel': mine = 0; break;
          case 'iSCSIProtocolLevel': mine = 1; break;
          default: mine = n;
        }
        answer = String(d.result === 'max' ? Math.max(mine, n) : Math.min(mine, n));
        break;
      }
      case 'list': {
        let acceptable: string[];
        switch (key) {
          case 'HeaderDigest': acceptable = L.headerDigest; break;
          case 'DataDigest': acceptable = L.dataDigest; break;
          case 'TaskReporting': acceptable = ['RFC3720']; break;
          default: acceptable = [];
        }
        answer = value.split(',').map((s) => s.trim()).find((v) => acceptable.includes(v)) ?? 'Reject';
        break;
      }
      default:
        answer = key === 'OFMarkInt' || key === 'IFMarkInt' ? 'Irrelevant' : 'NotUnderstood';
    }
    this.negotiated.set(key, answer);
    answers.push([key, answer]);
  }

  /** What the full feature phase runs with, from the answers given. */
  fullFeatureSettings(): FullFeatureSettings {
    const num = (k: string, dflt: number): number => {
      const v = this.negotiated.get(k);
      const n = v === undefined ? undefined : parseNumber(v);
      return n ?? dflt;
    };
    const bool = (k: string, dflt: boolean): boolean => {
      const v = this.negotiated.get(k);
      return v === 'Yes' ? true : v === 'No' ? false : dflt;
    };
    const mbl = num('MaxBurstLength', 262144);
    return {
      params: {
        maxBurstLength: mbl,
        firstBurstLength: Math.min(num('FirstBurstLength', 65536), mbl),
        maxOutstandingR2T: num('MaxOutstandingR2T', 1),
        immediateData: bool('ImmediateData', true),
        initialR2T: bool('InitialR2T', true),
      },
      digests: {
        headerDigest: this.negotiated.get('HeaderDigest') === 'CRC32C',
        dataDigest: this.negotiated.get('DataDigest') === 'CRC32C',
      },
      maxRecvDataSegmentLength: this.mrdslDeclared ? this.limits.maxRecvDataSegmentLength : DEFAULT_MAX_RECV_DSL,
      peerMrdsl: this.peerMrdsl,
    };
  }
}
