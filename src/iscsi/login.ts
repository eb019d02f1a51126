// The initiator's login state machine (RFC 7143 6.3, 11.12, 11.13), without
// a socket: start() gives the first Login Request, receive() takes each
// Login Response and says what to send next, or that login is done, or that
// the target redirects us. Failures throw LoginError/ProtocolError.
//
// Stages: security (CSG 0: AuthMethod, CHAP) -> operational (CSG 1) -> full
// feature (NSG 3). Without credentials we start in the operational stage.
// InitiatorName/TargetName/SessionType go in the first PDU only (FreeBSD
// ctld drops the connection if InitiatorName comes again).

import type { TargetQuirks } from './quirks';
import { ConfigError, LoginError, ProtocolError, type ErrorCode } from '../errors';
import { rootLogger, type Logger } from '../log';
import { ISCSI_PORT, ISCSI_VERSION, LoginStage } from './constants';
import { ChapInitiator, DEFAULT_CHAP_ALGORITHMS, type ChapCredentials } from './chap';
import { NegotiatedParams, OperationalNegotiation, ProposalOptions } from './negotiation';
import { EMPTY, LoginRequestPdu, LoginResponsePdu } from './pdu';
import { snAdd } from './serial';
import { encodeText, splitText, TextCollector, TextPair } from './text';

export interface LoginAuth extends ChapCredentials {
  /** Also offer AuthMethod=None (default: true unless mutual CHAP is configured). */
  allowNone?: boolean;
}

export interface LoginOptions {
  initiatorName: string;
  initiatorAlias?: string;
  /** Required for a Normal session. */
  targetName?: string;
  sessionType?: 'Normal' | 'Discovery';
  isid: number;
  /** 0 for a new session; the session's TSIH to add/reinstate a connection. */
  tsih?: number;
  cid?: number;
  itt?: number;
  /** CmdSN carried by the login requests (the session's next CmdSN). */
  cmdSN?: number;
  expStatSN?: number;
  auth?: LoginAuth;
  /**
   * Without credentials, still go through the security stage with
   * AuthMethod=None (open-iscsi does; libiscsi skips it). Default false.
   */
  securityStageWithoutAuth?: boolean;
  /** CHAP_A offer, most preferred first; [5] when retrying for targets that reject a list. */
  chapAlgorithms?: readonly number[];
  proposal?: ProposalOptions;
  /** Bound on Login Request/Response round trips. */
  maxRoundTrips?: number;
  random?: (n: number) => Buffer;
  /** What is known of targets (challenges we sent); the process's by default. */
  quirks?: TargetQuirks;
  logger?: Logger;
}

export interface LoginResult extends NegotiatedParams {
  tsih: number;
  isid: number;
  cid: number;
  /** CmdSN for the first command (login requests do not advance it). */
  cmdSN: number;
  /** StatSN of the final Login Response + 1. */
  expStatSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  /** CHAP algorithm used, 0 without authentication. */
  chapAlgorithm: number;
  mutualAuthenticated: boolean;
}

export interface LoginRedirect {
  address: string;
  port: number;
  permanent: boolean;
  targetPortalGroupTag?: number;
}

export type LoginStep = { send: LoginRequestPdu } | { done: LoginResult } | { redirect: LoginRedirect };

/**
 * The target refused our CHAP_A list (old LIO, Synology), or failed our
 * answer computed with a non-MD5 algorithm (tgt/IET use 7 for SHA-1).
 * Retry with a new connection and chapAlgorithms: [5].
 */
export class ChapAlgorithmRejectedError extends LoginError {
  readonly retryWithMd5 = true;
}

type SecPhase = 'authmethod' | 'chap-a' | 'chap-r' | 'done';
type Status = 'idle' | 'security' | 'operational' | 'done' | 'failed';

const LOGIN_STATUS_TEXT: Record<number, [ErrorCode, string]> = {
  0x0200: ['ELOGIN', 'initiator error (the target did not accept our login request)'],
  0x0201: ['EAUTH', 'authentication failed: check the CHAP user name and secret (and whether the target requires CHAP)'],
  0x0202: ['EAUTH', 'authorization failure: this initiator name is not allowed to access the target'],
  0x0203: ['ENOTARGET', 'target not found'],
  0x0204: ['ENOTARGET', 'target removed'],
  0x0205: ['ELOGIN', 'unsupported iSCSI version'],
  0x0206: ['ELOGIN', 'too many connections on this session'],
  0x0207: ['ELOGIN', 'missing parameter'],
  0x0208: ['ELOGIN', 'cannot include this connection in the session'],
  0x0209: ['ELOGIN', 'session type not supported by the target'],
  0x020a: ['ELOGIN', 'session does not exist (TSIH unknown to the target)'],
  0x020b: ['ELOGIN', 'invalid request during login'],
  0x0300: ['ELOGIN', 'target error'],
  0x0301: ['ETARGETBUSY', 'service unavailable (target busy); retry later'],
  0x0302: ['ETARGETBUSY', 'target out of resources; retry later'],
};

/** LoginError for a failed Login Response status. */
export function loginStatusError(statusClass: number, statusDetail: number, targetName?: string): LoginError {
  const st = (statusClass << 8) | statusDetail;
  const hex = `0x${st.toString(16).padStart(4, '0')}`;
  const known = LOGIN_STATUS_TEXT[st];
  const code: ErrorCode = known ? known[0] : 'ELOGIN';
  let text = known ? known[1] : statusClass === 2 ? 'initiator error' : statusClass === 3 ? 'target error' : 'unexpected status';
  if ((st === 0x0203 || st === 0x0204) && targetName) text += `: ${targetName}`;
  // tgtd and LIO answer "not found" too when the target exists but its ACL does not list us.
  if (st === 0x0203) text += ' (or its ACL does not list this initiator)';
  return new LoginError(code, `iSCSI login failed, status ${hex}: ${text}`, statusClass, statusDetail);
}

/**
 * The tail of every login failure that an ACL can cause (ENOTARGET, EAUTH):
 * the initiator name the target saw, which is what its ACL must list.
 */
export function aclHint(initiatorName: string): string {
  return `logged in as ${initiatorName}; add this name to the target's ACL (or pass --initiator-name)`;
}

/** How a login authenticated itself, for the advice a refusal gets. */
export interface LoginAuthContext {
  /** The CHAP user offered, if any. */
  chapUser?: string;
  /** Mutual CHAP was asked for. */
  mutual?: boolean;
}

/** Where the advice starts in a login error's message (so it is added once, and can be replaced). */
export const HINT_MARK = '; logged in as ';

/** The message without the advice withAclHint() added. */
export function withoutHint(message: string): string {
  const i = message.indexOf(HINT_MARK);
  return i < 0 ? message : message.slice(0, i);
}

/**
 * The advice for a refused login, by what can cause it: not in the ACL
 * (ENOTARGET, authorization failure), no CHAP given to a target that wants
 * it, a CHAP secret that is wrong, or mutual CHAP failing on the target's
 * side. Every one names the initiator name the target saw.
 */
export function loginHint(err: LoginError, initiatorName: string, auth: LoginAuthContext): string {
  const as = `logged in as ${initiatorName}`;
  const mutualFailed = /mutual CHAP|target secret|target answered mutual/.test(err.message);
  if (err.code !== 'EAUTH' || err.statusDetail === 0x02) return aclHint(initiatorName);
  if (mutualFailed) return `${as}; the target did not pass mutual CHAP: check the target user and secret (target_user=, --target-chap-secret-file)`;
  if (!auth.chapUser) return `${as} without CHAP; the target may want CHAP: give a user and secret (iscsi://USER@host/..., with --chap-secret-file or $ISCSI_NBD_CHAP_SECRET)`;
  return `${as} with CHAP user ${auth.chapUser}; check the secret (some targets refuse a name missing from their ACL the same way: add it, or pass --initiator-name)`;
}

/** Add loginHint() to an ENOTARGET/EAUTH login error (once). */
export function withAclHint<E>(err: E, initiatorName: string, auth: LoginAuthContext = {}): E {
  if (err instanceof LoginError && (err.code === 'EAUTH' || err.code === 'ENOTARGET') && !err.message.includes(HINT_MARK)) {
    err.message = `${err.message}; ${loginHint(err, initiatorName, auth)}`;
  }
  return err;
}

/** Parse a TargetAddress value: host[:port][,tpgt], IPv6 in brackets. */
export function parseTargetAddress(value: string): { address: string; port: number; targetPortalGroupTag?: number } {
  let v = value.trim();
  let tpgt: number | undefined;
  const comma = v.lastIndexOf(',');
  if (comma >= 0 && !v.slice(comma).includes(']')) {
    const t = v.slice(comma + 1);
    if (!/^\d{1,5}$/.test(t) || +t > 65535) throw new ProtocolError(`bad portal group tag in TargetAddress=${value}`);
    tpgt = +t;
    v = v.slice(0, comma);
  }
  let address: string;
  let port = ISCSI_PORT;
  let portStr: string | undefined;
  if (v.startsWith('[')) {
    const close = v.indexOf(']');
    if (close < 0) throw new ProtocolError(`bad TargetAddress=${value}`);
    address = v.slice(1, close);
    const rest = v.slice(close + 1);
    if (rest !== '' && !rest.startsWith(':')) throw new ProtocolError(`bad TargetAddress=${value}`);
    portStr = rest === '' ? undefined : rest.slice(1);
  } else {
    const colon = v.lastIndexOf(':');
    address = colon >= 0 ? v.slice(0, colon) : v;
    portStr = colon >= 0 ? v.slice(colon + 1) : undefined;
  }
  if (address === '' || /[\s/]/.test(address)) throw new ProtocolError(`bad TargetAddress=${value}`);
  if (portStr !== undefined) {
    if (!/^\d{1,5}$/.test(portStr) || +portStr < 1 || +portStr > 65535) throw new ProtocolError(`bad port in TargetAddress=${value}`);
    port = +portStr;
  }
  const r: { address: string; port: number; targetPortalGroupTag?: number } = { address, port };
  if (tpgt !== undefined) r.targetPortalGroupTag = tpgt;
  return r;
}

export class LoginEngine {
  private status: Status = 'idle';
  private readonly log: Logger;
  private readonly sessionType: 'Normal' | 'Discovery';
  private readonly isid: number;
  private tsih: number;
  private readonly cid: number;
  private readonly itt: number;
  private readonly cmdSN: number;
  private expStatSN: number;
  private expCmdSN = 0;
  private maxCmdSN = 0;
  private csg: number = LoginStage.SECURITY_NEGOTIATION;
  private nsg: number = LoginStage.OPERATIONAL_NEGOTIATION;
  private transit = false;
  private secPhase: SecPhase = 'authmethod';
  private offeredAuth: string[] = [];
  private readonly chap: ChapInitiator | undefined;
  private readonly neg: OperationalNegotiation;
  private proposalSent = false;
  private readonly collector = new TextCollector(64 * 1024);
  private outPieces: Buffer[] = [];
  private roundTrips = 0;
  private readonly maxRoundTrips: number;
  private mutualOk = false;
  private pendingTransit = false;

  constructor(private readonly opts: LoginOptions) {
    this.sessionType = opts.sessionType ?? 'Normal';
    if (this.sessionType === 'Normal' && !opts.targetName) {
      throw new ConfigError('ECONFIG', 'a Normal session needs a target name');
    }
    this.isid = opts.isid;
    this.tsih = opts.tsih ?? 0;
    this.cid = opts.cid ?? 0;
    this.itt = (opts.itt ?? 0) >>> 0;
    this.cmdSN = (opts.cmdSN ?? 0) >>> 0;
    this.expStatSN = (opts.expStatSN ?? 0) >>> 0;
    this.maxRoundTrips = opts.maxRoundTrips ?? 32;
    this.log = (opts.logger ?? rootLogger()).child({ component: 'iscsi-login', target: opts.targetName, cid: this.cid });
    const proposal = { ...opts.proposal };
    delete proposal.initiatorAlias; // sent once, in the first PDU
    this.neg = new OperationalNegotiation(proposal, this.sessionType);
    if (opts.auth) {
      this.chap = new ChapInitiator(opts.auth, opts.chapAlgorithms ?? DEFAULT_CHAP_ALGORITHMS, opts.random, opts.quirks);
    }
  }

  /** Current state, for logs and tests. */
  get state(): Status {
    return this.status;
  }

  private setStatus(s: Status): void {
    if (s !== this.status) this.log.debug({ from: this.status, to: s }, 'login state');
    this.status = s;
  }

  /** The first Login Request. */
  start(): LoginRequestPdu {
    if (this.status !== 'idle') throw new Error('LoginEngine.start() called twice');
    const keys: TextPair[] = [['InitiatorName', this.opts.initiatorName]];
    if (this.opts.initiatorAlias) keys.push(['InitiatorAlias', this.opts.initiatorAlias]);
    keys.push(['SessionType', this.sessionType]);
    if (this.sessionType === 'Normal') keys.push(['TargetName', this.opts.targetName!]);
    if (this.chap) {
      const allowNone = this.opts.auth!.allowNone ?? !this.chap.mutual;
      this.offeredAuth = allowNone ? ['CHAP', 'None'] : ['CHAP'];
      keys.push(['AuthMethod', this.offeredAuth.join(',')]);
      this.setStatus('security');
      return this.request(LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION, false, keys);
    }
    if (this.opts.securityStageWithoutAuth) {
      this.offeredAuth = ['None'];
      keys.push(['AuthMethod', 'None']);
      this.setStatus('security');
      return this.request(LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION, true, keys);
    }
    this.secPhase = 'done';
    this.setStatus('operational');
    keys.push(...this.operationalProposal());
    return this.request(LoginStage.OPERATIONAL_NEGOTIATION, LoginStage.FULL_FEATURE_PHASE, true, keys);
  }

  private operationalProposal(): TextPair[] {
    this.proposalSent = true;
    return this.neg.proposal();
  }

  private request(csg: number, nsg: number, transit: boolean, keys: TextPair[] | null): LoginRequestPdu {
    if (++this.roundTrips > this.maxRoundTrips) {
      throw new ProtocolError(`login did not finish within ${this.maxRoundTrips} exchanges`);
    }
    this.csg = csg;
    this.nsg = nsg;
    let data: Buffer = EMPTY;
    let cont = false;
    if (keys !== null) {
      // Login text may not exceed 8192 bytes per PDU until negotiated.
      const pieces = splitText(encodeText(keys), 8192);
      data = pieces[0];
      this.outPieces = pieces.slice(1);
      this.pendingTransit = transit;
      cont = this.outPieces.length > 0;
    } else if (this.outPieces.length > 0) {
      data = this.outPieces.shift()!;
      cont = this.outPieces.length > 0;
      transit = this.pendingTransit;
    }
    // T and C are never both set.
    this.transit = transit && !cont;
    const pdu: LoginRequestPdu = {
      opcode: 0x03,
      transit: this.transit,
      continue: cont,
      csg,
      nsg: this.transit ? nsg : 0,
      versionMax: ISCSI_VERSION,
      versionMin: ISCSI_VERSION,
      isid: this.isid,
      tsih: this.tsih,
      itt: this.itt,
      cid: this.cid,
      cmdSN: this.cmdSN,
      expStatSN: this.expStatSN,
      data,
    };
    this.log.debug({ csg, nsg: pdu.nsg, transit: pdu.transit, cont, bytes: data.length }, 'login request');
    return pdu;
  }

  /** Process a Login Response; see LoginStep. */
  receive(resp: LoginResponsePdu): LoginStep {
    if (this.status === 'idle' || this.status === 'done' || this.status === 'failed') {
      throw new ProtocolError(`unexpected Login Response in state ${this.status}`);
    }
    try {
      return this.step(resp);
    } catch (e) {
      this.setStatus('failed');
      throw withAclHint(e, this.opts.initiatorName, { chapUser: this.chap ? this.opts.auth?.user : undefined, mutual: this.chap?.mutual });
    }
  }

  private step(resp: LoginResponsePdu): LoginStep {
    if (resp.opcode !== 0x23) throw new ProtocolError(`expected a Login Response, got opcode ${(resp as { opcode: number }).opcode}`);
    if (resp.itt !== this.itt) throw new ProtocolError(`Login Response ITT 0x${resp.itt.toString(16)} does not match 0x${this.itt.toString(16)}`);
    this.expStatSN = snAdd(resp.statSN, 1);
    this.expCmdSN = resp.expCmdSN;
    this.maxCmdSN = resp.maxCmdSN;
    this.log.debug({ statusClass: resp.statusClass, statusDetail: resp.statusDetail, csg: resp.csg, nsg: resp.nsg, transit: resp.transit, cont: resp.continue }, 'login response');

    if (resp.statusClass === 1) return { redirect: this.redirect(resp) };
    if (resp.statusClass !== 0) {
      const err = loginStatusError(resp.statusClass, resp.statusDetail, this.opts.targetName);
      const chap = this.chap;
      if (chap && this.secPhase === 'chap-a' && chap.algorithms.length > 1 && resp.statusClass === 2) {
        throw new ChapAlgorithmRejectedError('EAUTH', `${err.message} (after our CHAP_A=${chap.offer()} offer; retry with MD5 only)`, resp.statusClass, resp.statusDetail);
      }
      // tgt and IET-derived targets take CHAP_A=7 to mean SHA-1 (RFC 7143/IANA: SHA-256), so
      // our SHA-256 answer fails. A failure right after a non-MD5 answer is retried with MD5.
      if (chap && this.secPhase === 'chap-r' && chap.algorithm !== 5 && chap.algorithms.includes(5) &&
          resp.statusClass === 2 && resp.statusDetail <= 1) {
        throw new ChapAlgorithmRejectedError('EAUTH', `${err.message} (after answering with CHAP algorithm ${chap.algorithm}; some targets mis-number CHAP algorithms, retry with MD5 only)`, resp.statusClass, resp.statusDetail);
      }
      throw err;
    }
    if (resp.versionActive !== ISCSI_VERSION) throw new ProtocolError(`target chose iSCSI version ${resp.versionActive}`);
    if (resp.isid !== this.isid) throw new ProtocolError('Login Response ISID does not match ours');
    if (resp.csg !== this.csg) throw new ProtocolError(`Login Response CSG ${resp.csg}, expected ${this.csg}`);
    if (resp.transit && resp.continue) throw new ProtocolError('Login Response with both T and C set');
    if (resp.transit) {
      if (!this.transit) throw new ProtocolError('target transited to the next stage though we did not ask');
      if (resp.nsg <= this.csg || resp.nsg > this.nsg || resp.nsg === 2) {
        throw new ProtocolError(`Login Response NSG ${resp.nsg} invalid after NSG ${this.nsg}`);
      }
    }
    if (this.tsih !== 0 && resp.tsih !== this.tsih) throw new ProtocolError(`target changed TSIH to ${resp.tsih}`);

    // Our own text spans PDUs: the target acknowledges each piece.
    if (this.outPieces.length > 0) {
      return { send: this.request(this.csg, this.nsg, true, null) };
    }
    // The target's text spans PDUs: ask for the rest with an empty request,
    // keeping our T/NSG so the target may still transit at the end.
    if (resp.continue) {
      this.collector.add(resp.data, true);
      return { send: this.request(this.csg, this.nsg, this.transit, []) };
    }
    const pairs = this.collector.add(resp.data, false) ?? [];
    const keys = new Map(pairs);

    if (this.csg === LoginStage.SECURITY_NEGOTIATION) return this.security(resp, pairs, keys);
    return this.operational(resp, pairs);
  }

  private security(resp: LoginResponsePdu, pairs: TextPair[], keys: Map<string, string>): LoginStep {
    this.neg.noteTargetKeys(pairs);
    const chap = this.chap;
    switch (this.secPhase) {
      case 'authmethod': {
        const m = keys.get('AuthMethod');
        if (m === undefined && !resp.transit) {
          // Some targets answer over several exchanges; keep asking.
          return { send: this.request(LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION, this.transit, []) };
        }
        const chosen = m ?? 'None';
        if (!this.offeredAuth.includes(chosen)) {
          throw new LoginError('EAUTH', `target answered AuthMethod=${chosen} to our AuthMethod=${this.offeredAuth.join(',')}`);
        }
        if (chosen === 'None') {
          this.secPhase = 'done';
          this.log.debug('target chose AuthMethod=None');
          if (resp.transit) return this.enterOperational(resp);
          return { send: this.request(LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION, true, []) };
        }
        if (resp.transit) throw new LoginError('EAUTH', 'target left the security stage before CHAP was done');
        this.secPhase = 'chap-a';
        return { send: this.request(LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION, false, [['CHAP_A', chap!.offer()]]) };
      }
      case 'chap-a': {
        if (!chap) throw new Error('unreachable: CHAP phase without credentials');
        const a = keys.get('CHAP_A');
        if (a === undefined || a === 'Reject' || a === 'NotUnderstood' || a === 'Irrelevant') {
          if (chap.algorithms.length > 1) {
            throw new ChapAlgorithmRejectedError('EAUTH', `target rejected CHAP_A=${chap.offer()}; retry with MD5 only`);
          }
          throw new LoginError('EAUTH', `target rejected CHAP_A=${chap.offer()}`);
        }
        if (resp.transit) throw new LoginError('EAUTH', 'target left the security stage before CHAP was done');
        const answer = chap.respond(keys);
        this.secPhase = 'chap-r';
        this.log.debug({ algorithm: chap.algorithm, mutual: chap.mutual }, 'answering CHAP challenge');
        return { send: this.request(LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION, true, answer) };
      }
      case 'chap-r': {
        if (!chap) throw new Error('unreachable: CHAP phase without credentials');
        if (chap.mutual && !this.mutualOk) {
          if (keys.has('CHAP_N') || keys.has('CHAP_R') || resp.transit) {
            chap.verifyTarget(keys);
            this.mutualOk = true;
            this.log.debug('target passed mutual CHAP');
          }
        }
        if (resp.transit) {
          this.secPhase = 'done';
          return this.enterOperational(resp);
        }
        return { send: this.request(LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION, true, []) };
      }
      default: {
        // AuthMethod=None agreed, waiting for the target to transit.
        if (resp.transit) return this.enterOperational(resp);
        return { send: this.request(LoginStage.SECURITY_NEGOTIATION, LoginStage.OPERATIONAL_NEGOTIATION, true, []) };
      }
    }
  }

  private enterOperational(resp: LoginResponsePdu): LoginStep {
    if (resp.nsg === LoginStage.FULL_FEATURE_PHASE) return this.finish(resp);
    this.setStatus('operational');
    return {
      send: this.request(LoginStage.OPERATIONAL_NEGOTIATION, LoginStage.FULL_FEATURE_PHASE, true, this.operationalProposal()),
    };
  }

  private operational(resp: LoginResponsePdu, pairs: TextPair[]): LoginStep {
    const replies = this.neg.receive(pairs);
    if (resp.transit && resp.nsg === LoginStage.FULL_FEATURE_PHASE) {
      if (replies.length > 0) this.log.debug({ keys: replies.map(([k]) => k) }, 'target offered keys while leaving login; ignored');
      return this.finish(resp);
    }
    const keys = this.proposalSent ? replies : [...this.operationalProposal(), ...replies];
    return { send: this.request(LoginStage.OPERATIONAL_NEGOTIATION, LoginStage.FULL_FEATURE_PHASE, true, keys) };
  }

  private finish(resp: LoginResponsePdu): LoginStep {
    if (this.chap && this.chap.mutual && this.secPhase !== 'done') {
      throw new LoginError('EAUTH', 'target skipped mutual CHAP authentication');
    }
    if (this.chap && this.chap.mutual && !this.mutualOk) {
      throw new LoginError('EAUTH', 'target did not authenticate itself (mutual CHAP)');
    }
    if (resp.tsih === 0 && this.sessionType === 'Normal') throw new ProtocolError('final Login Response without a TSIH');
    const unanswered = this.neg.unanswered;
    if (unanswered.length > 0) this.log.debug({ keys: unanswered }, 'keys left unanswered by the target; defaults apply');
    const params = this.neg.result();
    this.tsih = resp.tsih;
    this.setStatus('done');
    const done: LoginResult = {
      ...params,
      tsih: resp.tsih,
      isid: this.isid,
      cid: this.cid,
      cmdSN: this.cmdSN,
      expStatSN: this.expStatSN,
      expCmdSN: this.expCmdSN,
      maxCmdSN: this.maxCmdSN,
      chapAlgorithm: this.chap?.algorithm ?? 0,
      mutualAuthenticated: this.mutualOk,
    };
    this.log.debug({ tsih: done.tsih, headerDigest: done.headerDigest, dataDigest: done.dataDigest, maxBurstLength: done.maxBurstLength, maxXmitDataSegmentLength: done.maxXmitDataSegmentLength }, 'login complete');
    return { done };
  }

  private redirect(resp: LoginResponsePdu): LoginRedirect {
    const permanent = resp.statusDetail === 0x02;
    if (resp.statusDetail !== 0x01 && resp.statusDetail !== 0x02) {
      throw new ProtocolError(`unknown redirection status 0x01${resp.statusDetail.toString(16).padStart(2, '0')}`);
    }
    const pairs = this.collector.add(resp.data, false) ?? [];
    const addr = new Map(pairs).get('TargetAddress');
    if (!addr) throw new ProtocolError('redirection without TargetAddress');
    this.setStatus('done');
    const r = parseTargetAddress(addr);
    this.log.debug({ ...r, permanent }, 'login redirected');
    return { ...r, permanent };
  }
}
