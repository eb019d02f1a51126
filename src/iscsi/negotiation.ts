// Login/operational text keys (RFC 7143 section 13, RFC 7144 for
// iSCSIProtocolLevel) and the initiator's side of their negotiation.
//
// Declarative keys state a fact about the sender (e.g. the largest data
// segment IT can receive) and get no answer. Negotiated keys get an answer
// computed with the key's result function: min/max for numbers, AND/OR for
// booleans, first acceptable value of the offer for lists. Special answers:
// NotUnderstood (unknown key), Irrelevant (key not applicable), Reject.

import { ConfigError, ProtocolError } from '../errors';
import type { TextPair } from './text';

export type KeyKind = 'declarative' | 'negotiated';
export type KeyType = 'boolean' | 'numeric' | 'list' | 'string';
export type ResultFunction = 'min' | 'max' | 'and' | 'or' | 'list' | 'none';
export type KeyScope = 'session' | 'connection';
/** When a key may be sent: LO = leading login only, IO = first login PDU, ALL, FFPO, security stage. */
export type KeyUse = 'leading-only' | 'initialize-only' | 'all' | 'ffp-only' | 'security' | 'legacy';

export interface KeyDef {
  name: string;
  kind: KeyKind;
  type: KeyType;
  result: ResultFunction;
  scope: KeyScope;
  use: KeyUse;
  sender: 'initiator' | 'target' | 'both';
  min?: number;
  max?: number;
  /** For list keys: the values defined by the RFC. */
  values?: readonly string[];
  /** RFC default, as text. */
  default?: string;
}

const MAX_24 = 16777215;

function k(d: KeyDef): [string, KeyDef] {
  return [d.name, d];
}

/** Every RFC 7143 key (plus obsolete RFC 3720 marker keys old targets still send). */
export const KEYS: ReadonlyMap<string, KeyDef> = new Map([
  k({ name: 'AuthMethod', kind: 'negotiated', type: 'list', result: 'list', scope: 'connection', use: 'security', sender: 'both', values: ['CHAP', 'None', 'KRB5', 'SRP', 'SPKM1', 'SPKM2'], default: 'None' }),
  k({ name: 'HeaderDigest', kind: 'negotiated', type: 'list', result: 'list', scope: 'connection', use: 'initialize-only', sender: 'both', values: ['CRC32C', 'None'], default: 'None' }),
  k({ name: 'DataDigest', kind: 'negotiated', type: 'list', result: 'list', scope: 'connection', use: 'initialize-only', sender: 'both', values: ['CRC32C', 'None'], default: 'None' }),
  k({ name: 'MaxConnections', kind: 'negotiated', type: 'numeric', result: 'min', scope: 'session', use: 'leading-only', sender: 'both', min: 1, max: 65535, default: '1' }),
  k({ name: 'SendTargets', kind: 'declarative', type: 'string', result: 'none', scope: 'session', use: 'ffp-only', sender: 'initiator' }),
  k({ name: 'TargetName', kind: 'declarative', type: 'string', result: 'none', scope: 'session', use: 'initialize-only', sender: 'both' }),
  k({ name: 'InitiatorName', kind: 'declarative', type: 'string', result: 'none', scope: 'session', use: 'initialize-only', sender: 'initiator' }),
  k({ name: 'TargetAlias', kind: 'declarative', type: 'string', result: 'none', scope: 'session', use: 'all', sender: 'target' }),
  k({ name: 'InitiatorAlias', kind: 'declarative', type: 'string', result: 'none', scope: 'session', use: 'all', sender: 'initiator' }),
  k({ name: 'TargetAddress', kind: 'declarative', type: 'string', result: 'none', scope: 'session', use: 'all', sender: 'target' }),
  k({ name: 'TargetPortalGroupTag', kind: 'declarative', type: 'numeric', result: 'none', scope: 'session', use: 'initialize-only', sender: 'target', min: 0, max: 65535 }),
  k({ name: 'InitialR2T', kind: 'negotiated', type: 'boolean', result: 'or', scope: 'session', use: 'leading-only', sender: 'both', default: 'Yes' }),
  k({ name: 'ImmediateData', kind: 'negotiated', type: 'boolean', result: 'and', scope: 'session', use: 'leading-only', sender: 'both', default: 'Yes' }),
  k({ name: 'MaxRecvDataSegmentLength', kind: 'declarative', type: 'numeric', result: 'none', scope: 'connection', use: 'all', sender: 'both', min: 512, max: MAX_24, default: '8192' }),
  k({ name: 'MaxBurstLength', kind: 'negotiated', type: 'numeric', result: 'min', scope: 'session', use: 'leading-only', sender: 'both', min: 512, max: MAX_24, default: '262144' }),
  k({ name: 'FirstBurstLength', kind: 'negotiated', type: 'numeric', result: 'min', scope: 'session', use: 'leading-only', sender: 'both', min: 512, max: MAX_24, default: '65536' }),
  k({ name: 'DefaultTime2Wait', kind: 'negotiated', type: 'numeric', result: 'max', scope: 'session', use: 'leading-only', sender: 'both', min: 0, max: 3600, default: '2' }),
  k({ name: 'DefaultTime2Retain', kind: 'negotiated', type: 'numeric', result: 'min', scope: 'session', use: 'leading-only', sender: 'both', min: 0, max: 3600, default: '20' }),
  k({ name: 'MaxOutstandingR2T', kind: 'negotiated', type: 'numeric', result: 'min', scope: 'session', use: 'leading-only', sender: 'both', min: 1, max: 65535, default: '1' }),
  k({ name: 'DataPDUInOrder', kind: 'negotiated', type: 'boolean', result: 'or', scope: 'session', use: 'leading-only', sender: 'both', default: 'Yes' }),
  k({ name: 'DataSequenceInOrder', kind: 'negotiated', type: 'boolean', result: 'or', scope: 'session', use: 'leading-only', sender: 'both', default: 'Yes' }),
  k({ name: 'ErrorRecoveryLevel', kind: 'negotiated', type: 'numeric', result: 'min', scope: 'session', use: 'leading-only', sender: 'both', min: 0, max: 2, default: '0' }),
  k({ name: 'SessionType', kind: 'declarative', type: 'list', result: 'none', scope: 'session', use: 'leading-only', sender: 'initiator', values: ['Discovery', 'Normal'], default: 'Normal' }),
  k({ name: 'TaskReporting', kind: 'negotiated', type: 'list', result: 'list', scope: 'session', use: 'leading-only', sender: 'both', values: ['RFC3720', 'ResponseFence', 'FastAbort'], default: 'RFC3720' }),
  k({ name: 'iSCSIProtocolLevel', kind: 'negotiated', type: 'numeric', result: 'min', scope: 'session', use: 'leading-only', sender: 'both', min: 0, max: 31, default: '1' }),
  // RFC 3720 markers, removed by RFC 7143; RFC 3720 targets may still offer them.
  k({ name: 'OFMarker', kind: 'negotiated', type: 'boolean', result: 'and', scope: 'connection', use: 'legacy', sender: 'both', default: 'No' }),
  k({ name: 'IFMarker', kind: 'negotiated', type: 'boolean', result: 'and', scope: 'connection', use: 'legacy', sender: 'both', default: 'No' }),
  k({ name: 'OFMarkInt', kind: 'negotiated', type: 'string', result: 'none', scope: 'connection', use: 'legacy', sender: 'both', default: '2048' }),
  k({ name: 'IFMarkInt', kind: 'negotiated', type: 'string', result: 'none', scope: 'connection', use: 'legacy', sender: 'both', default: '2048' }),
]);

export const SPECIAL_VALUES: ReadonlySet<string> = new Set(['NotUnderstood', 'Irrelevant', 'Reject']);

export type DigestPreference = 'None' | 'CRC32C' | 'CRC32C,None' | 'None,CRC32C' | readonly ('None' | 'CRC32C')[];

export interface ProposalOptions {
  headerDigest?: DigestPreference;
  dataDigest?: DigestPreference;
  /** What we can receive; 262144 by default. */
  maxRecvDataSegmentLength?: number;
  maxBurstLength?: number;
  firstBurstLength?: number;
  maxOutstandingR2T?: number;
  maxConnections?: number;
  immediateData?: boolean;
  initialR2T?: boolean;
  errorRecoveryLevel?: number;
  defaultTime2Wait?: number;
  defaultTime2Retain?: number;
  dataPDUInOrder?: boolean;
  dataSequenceInOrder?: boolean;
  initiatorAlias?: string;
}

export const DEFAULT_PROPOSAL = {
  headerDigest: 'None',
  dataDigest: 'None',
  maxRecvDataSegmentLength: 262144,
  maxBurstLength: MAX_24 - 1023, // 16776192, the largest multiple of 1024 allowed
  firstBurstLength: 262144,
  maxOutstandingR2T: 1,
  maxConnections: 1,
  immediateData: true,
  initialR2T: false,
  errorRecoveryLevel: 0,
  defaultTime2Wait: 2,
  defaultTime2Retain: 0,
  dataPDUInOrder: true,
  dataSequenceInOrder: true,
} as const;

/** Operational parameters in force after login. */
export interface NegotiatedParams {
  headerDigest: boolean;
  dataDigest: boolean;
  maxConnections: number;
  initialR2T: boolean;
  immediateData: boolean;
  /** Ours: the largest data segment we accept (set the framer's limit to it). */
  maxRecvDataSegmentLength: number;
  /** The target's MaxRecvDataSegmentLength: the largest data segment we may send. */
  maxXmitDataSegmentLength: number;
  maxBurstLength: number;
  /** 0 when irrelevant (InitialR2T=Yes and ImmediateData=No). */
  firstBurstLength: number;
  defaultTime2Wait: number;
  defaultTime2Retain: number;
  maxOutstandingR2T: number;
  dataPDUInOrder: boolean;
  dataSequenceInOrder: boolean;
  errorRecoveryLevel: number;
  taskReporting: string;
  iscsiProtocolLevel: number;
  targetAlias?: string;
  targetPortalGroupTag?: number;
  /** Keys the target did not understand, for the logs. */
  notUnderstood: string[];
}

function digestList(p: DigestPreference, what: string): string[] {
  const list = typeof p === 'string' ? p.split(',').map((s) => s.trim()) : [...p];
  if (list.length === 0 || list.some((v) => v !== 'None' && v !== 'CRC32C') || new Set(list).size !== list.length) {
    throw new ConfigError('ECONFIG', `${what} must be a list of CRC32C and None, got ${JSON.stringify(p)}`);
  }
  return list;
}

function checkRange(name: string, v: number): number {
  const d = KEYS.get(name)!;
  if (!Number.isInteger(v) || v < d.min! || v > d.max!) {
    throw new ConfigError('ECONFIG', `${name} must be an integer in ${d.min}..${d.max}, got ${v}`);
  }
  return v;
}

const yn = (b: boolean): string => (b ? 'Yes' : 'No');

/** Parse a numerical value (decimal, 0x hex); undefined if malformed. */
export function parseNumber(s: string): number | undefined {
  if (/^\d{1,16}$/.test(s)) return Number(s);
  if (/^0[xX][0-9a-fA-F]{1,13}$/.test(s)) return parseInt(s.slice(2), 16);
  return undefined;
}

/**
 * Our offers for the operational stage, favouring throughput. A discovery
 * session only negotiates digests and MaxRecvDataSegmentLength.
 */
export function buildProposal(opts: ProposalOptions = {}, sessionType: 'Normal' | 'Discovery' = 'Normal'): TextPair[] {
  const o = { ...DEFAULT_PROPOSAL, ...opts };
  const out: TextPair[] = [
    ['HeaderDigest', digestList(o.headerDigest, 'HeaderDigest').join(',')],
    ['DataDigest', digestList(o.dataDigest, 'DataDigest').join(',')],
  ];
  if (sessionType === 'Normal') {
    const mbl = checkRange('MaxBurstLength', o.maxBurstLength);
    const fbl = checkRange('FirstBurstLength', o.firstBurstLength);
    if (fbl > mbl) throw new ConfigError('ECONFIG', `FirstBurstLength ${fbl} exceeds MaxBurstLength ${mbl}`);
    out.push(
      ['InitialR2T', yn(o.initialR2T)],
      ['ImmediateData', yn(o.immediateData)],
      ['MaxBurstLength', String(mbl)],
      ['FirstBurstLength', String(fbl)],
      ['MaxConnections', String(checkRange('MaxConnections', o.maxConnections))],
      ['MaxOutstandingR2T', String(checkRange('MaxOutstandingR2T', o.maxOutstandingR2T))],
      ['DefaultTime2Wait', String(checkRange('DefaultTime2Wait', o.defaultTime2Wait))],
      ['DefaultTime2Retain', String(checkRange('DefaultTime2Retain', o.defaultTime2Retain))],
      ['DataPDUInOrder', yn(o.dataPDUInOrder)],
      ['DataSequenceInOrder', yn(o.dataSequenceInOrder)],
      ['ErrorRecoveryLevel', String(checkRange('ErrorRecoveryLevel', o.errorRecoveryLevel))],
    );
  }
  out.push(['MaxRecvDataSegmentLength', String(checkRange('MaxRecvDataSegmentLength', o.maxRecvDataSegmentLength))]);
  if (o.initiatorAlias) out.push(['InitiatorAlias', o.initiatorAlias]);
  return out;
}

interface KeyState {
  offered?: string; // what we sent
  value?: string; // value in force (answer, or our answer to the target's offer)
  answered: boolean;
}

/**
 * The initiator side of operational negotiation. proposal() gives the keys
 * for the first operational Login Request; receive() takes each Login
 * Response's keys and returns the answers we owe the target (to put in the
 * next request); result() gives the values in force.
 */
export class OperationalNegotiation {
  private readonly state = new Map<string, KeyState>();
  private readonly prefs: Required<Omit<ProposalOptions, 'initiatorAlias'>>;
  private targetMrdsl = 8192;
  private targetAlias: string | undefined;
  private tpgt: number | undefined;
  private readonly notUnderstood: string[] = [];

  constructor(opts: ProposalOptions = {}, readonly sessionType: 'Normal' | 'Discovery' = 'Normal') {
    this.prefs = { ...DEFAULT_PROPOSAL, ...opts } as Required<Omit<ProposalOptions, 'initiatorAlias'>>;
    this.initial = buildProposal(opts, sessionType);
  }

  private readonly initial: TextPair[];

  /** Keys of our first operational request (marks them offered). */
  proposal(): TextPair[] {
    for (const [key, value] of this.initial) {
      const d = KEYS.get(key);
      if (d?.kind === 'negotiated') this.state.set(key, { offered: value, answered: false });
    }
    return this.initial.map(([key, value]) => [key, value]);
  }

  /** True when every key we offered has been answered. */
  get complete(): boolean {
    for (const s of this.state.values()) if (s.offered !== undefined && !s.answered) return false;
    return true;
  }

  /** Keys we offered that the target has not answered yet. */
  get unanswered(): string[] {
    return [...this.state].filter(([, s]) => s.offered !== undefined && !s.answered).map(([k]) => k);
  }

  /**
   * Process the target's keys. Returns our answers to keys the target
   * offered. Throws ProtocolError for answers outside what we offered.
   */
  receive(pairs: readonly TextPair[]): TextPair[] {
    const replies: TextPair[] = [];
    for (const [key, value] of pairs) {
      const d = KEYS.get(key);
      if (!d) {
        // Unknown, including X-/X# extension keys: we do not speak them.
        if (!SPECIAL_VALUES.has(value)) replies.push([key, 'NotUnderstood']);
        continue;
      }
      if (d.kind === 'declarative') {
        this.declared(d, value);
        continue;
      }
      if (d.use === 'security') throw new ProtocolError(`${key} in the operational stage`);
      const st = this.state.get(key);
      if (st?.offered !== undefined) {
        if (st.answered) {
          if (st.value !== value) throw new ProtocolError(`target answered ${key} twice (${st.value}, ${value})`);
          continue;
        }
        st.value = this.checkAnswer(d, st.offered, value);
        st.answered = true;
        continue;
      }
      if (st) {
        if (st.value !== value) throw new ProtocolError(`target offered ${key} twice`);
        continue;
      }
      if (SPECIAL_VALUES.has(value)) continue; // nothing to answer
      const answer = this.answerOffer(d, value);
      this.state.set(key, { value: SPECIAL_VALUES.has(answer) ? undefined : answer, answered: true });
      replies.push([key, answer]);
    }
    return replies;
  }

  private declared(d: KeyDef, value: string): void {
    switch (d.name) {
      case 'MaxRecvDataSegmentLength': {
        const n = parseNumber(value);
        if (n === undefined || n < d.min! || n > d.max!) {
          throw new ProtocolError(`target declared MaxRecvDataSegmentLength=${value}, outside ${d.min}..${d.max}`);
        }
        this.targetMrdsl = n;
        break;
      }
      case 'TargetAlias':
        this.targetAlias = value;
        break;
      case 'TargetPortalGroupTag': {
        const n = parseNumber(value);
        if (n === undefined || n > 65535) throw new ProtocolError(`bad TargetPortalGroupTag=${value}`);
        this.tpgt = n;
        break;
      }
      default:
        break; // TargetAddress (redirects are handled by the login engine), echoes
    }
  }

  /** Validate the target's answer to our offer; returns the value in force (undefined = default). */
  private checkAnswer(d: KeyDef, offered: string, answer: string): string | undefined {
    if (answer === 'NotUnderstood') {
      this.notUnderstood.push(d.name);
      return undefined;
    }
    if (answer === 'Irrelevant' || answer === 'Reject') return undefined;
    const bad = (): never => {
      throw new ProtocolError(`target answered ${d.name}=${answer} to our offer ${d.name}=${offered}`);
    };
    switch (d.type) {
      case 'boolean': {
        if (answer !== 'Yes' && answer !== 'No') bad();
        if (d.result === 'and' && offered === 'No' && answer === 'Yes') bad();
        if (d.result === 'or' && offered === 'Yes' && answer === 'No') bad();
        return answer;
      }
      case 'numeric': {
        const n = parseNumber(answer);
        const ours = parseNumber(offered)!;
        if (n === undefined || n < d.min! || n > d.max!) bad();
        if (d.result === 'min' && n! > ours) bad();
        if (d.result === 'max' && n! < ours) bad();
        return String(n);
      }
      case 'list': {
        if (!offered.split(',').includes(answer)) bad();
        return answer;
      }
      default:
        return answer;
    }
  }

  /** Our answer to a key the target offered first. */
  private answerOffer(d: KeyDef, offer: string): string {
    if (this.sessionType === 'Discovery' && d.scope === 'session' && d.use === 'leading-only') return 'Irrelevant';
    switch (d.name) {
      case 'OFMarker':
      case 'IFMarker':
        return 'No';
      case 'OFMarkInt':
      case 'IFMarkInt':
        return 'Irrelevant';
      default:
        break;
    }
    const mine = this.preference(d.name);
    switch (d.type) {
      case 'boolean': {
        if (offer !== 'Yes' && offer !== 'No') return 'Reject';
        const m = mine === 'Yes';
        const t = offer === 'Yes';
        return yn(d.result === 'and' ? m && t : m || t);
      }
      case 'numeric': {
        const n = parseNumber(offer);
        if (n === undefined || n < d.min! || n > d.max!) return 'Reject';
        const m = parseNumber(mine)!;
        return String(d.result === 'max' ? Math.max(m, n) : Math.min(m, n));
      }
      case 'list': {
        const acceptable = mine.split(',');
        const pick = offer.split(',').find((v) => acceptable.includes(v));
        return pick ?? 'Reject';
      }
      default:
        return 'NotUnderstood';
    }
  }

  /** Our preferred value of a negotiated key (list: acceptable values in order). */
  private preference(name: string): string {
    const p = this.prefs;
    switch (name) {
      case 'HeaderDigest': return digestList(p.headerDigest, name).join(',');
      case 'DataDigest': return digestList(p.dataDigest, name).join(',');
      case 'MaxConnections': return String(p.maxConnections);
      case 'InitialR2T': return yn(p.initialR2T);
      case 'ImmediateData': return yn(p.immediateData);
      case 'MaxBurstLength': return String(p.maxBurstLength);
      case 'FirstBurstLength': return String(p.firstBurstLength);
      case 'DefaultTime2Wait': return String(p.defaultTime2Wait);
      case 'DefaultTime2Retain': return String(p.defaultTime2Retain);
      case 'MaxOutstandingR2T': return String(p.maxOutstandingR2T);
      case 'DataPDUInOrder': return yn(p.dataPDUInOrder);
      case 'DataSequenceInOrder': return yn(p.dataSequenceInOrder);
      case 'ErrorRecoveryLevel': return String(p.errorRecoveryLevel);
      case 'TaskReporting': return 'RFC3720';
      case 'iSCSIProtocolLevel': return '1';
      default: return KEYS.get(name)?.default ?? '';
    }
  }

  private get(name: string): string {
    return this.state.get(name)?.value ?? KEYS.get(name)!.default!;
  }

  result(): NegotiatedParams {
    const num = (n: string): number => parseNumber(this.get(n))!;
    const bool = (n: string): boolean => this.get(n) === 'Yes';
    const initialR2T = bool('InitialR2T');
    const immediateData = bool('ImmediateData');
    const maxBurstLength = num('MaxBurstLength');
    const r: NegotiatedParams = {
      headerDigest: this.get('HeaderDigest') === 'CRC32C',
      dataDigest: this.get('DataDigest') === 'CRC32C',
      maxConnections: num('MaxConnections'),
      initialR2T,
      immediateData,
      maxRecvDataSegmentLength: this.prefs.maxRecvDataSegmentLength,
      maxXmitDataSegmentLength: this.targetMrdsl,
      maxBurstLength,
      firstBurstLength: initialR2T && !immediateData ? 0 : Math.min(num('FirstBurstLength'), maxBurstLength),
      defaultTime2Wait: num('DefaultTime2Wait'),
      defaultTime2Retain: num('DefaultTime2Retain'),
      maxOutstandingR2T: num('MaxOutstandingR2T'),
      dataPDUInOrder: bool('DataPDUInOrder'),
      dataSequenceInOrder: bool('DataSequenceInOrder'),
      errorRecoveryLevel: num('ErrorRecoveryLevel'),
      taskReporting: this.get('TaskReporting'),
      iscsiProtocolLevel: num('iSCSIProtocolLevel'),
      notUnderstood: [...this.notUnderstood],
    };
    if (this.targetAlias !== undefined) r.targetAlias = this.targetAlias;
    if (this.tpgt !== undefined) r.targetPortalGroupTag = this.tpgt;
    return r;
  }

  /** Declarative/target values learned during the security stage also count. */
  noteTargetKeys(pairs: readonly TextPair[]): void {
    for (const [key, value] of pairs) {
      const d = KEYS.get(key);
      if (d?.kind === 'declarative') this.declared(d, value);
    }
  }
}
