// SendTargets discovery (RFC 7143 section 4.3, appendix C): a Discovery
// session, one Text Request "SendTargets=All" (the engine follows C-bit and
// TTT continuations), the answer parsed, then Logout.
//
// The answer is a sequence of TargetName=... each followed by zero or more
// TargetAddress=host[:port],tpgt (IPv6 in brackets). A target without a
// TargetAddress is reachable through the portal we asked.
//
// Authentication on the discovery session is the target's choice, and targets
// differ: tgtd wants CHAP there only when an account is bound to discovery;
// LIO in its default setup takes CHAP when offered CHAP,None and then fails
// ("CHAP user or password not set for Initiator ACL") because it has no
// discovery credentials. So with credentials we offer AuthMethod=CHAP,None,
// and when the target refuses the login we try once more the other way
// (without CHAP after CHAP; with CHAP after a remembered no-CHAP portal).
// This is for discovery only: Normal sessions never fall back to no
// authentication.

import { IscsiNbdError, LoginError, ProtocolError } from '../errors';
import { rootLogger, type Logger } from '../log';
import { ISCSI_PORT, LogoutReason } from './constants';
import type { ChapCredentials } from './chap';
import { openConnection } from './open';
import { DIGEST_PROPOSAL, type DigestMode } from './digest';
import { ConnectionLink } from './link';
import { loginHint, parseTargetAddress, withAclHint, withoutHint } from './login';
import { TARGET_QUIRKS, type TargetQuirks } from './quirks';
import { randomIsid } from './pdu';
import type { TextPair } from './text';
import type { SessionTimeouts } from './initiator';
import { formatHostPort, type Portal } from './url';

export interface DiscoveredPortal {
  host: string;
  port: number;
  /** Target portal group tag; -1 when the target did not give one. */
  tpgt: number;
}

export interface DiscoveredTarget {
  name: string;
  portals: DiscoveredPortal[];
}

export interface DiscoverOptions {
  portal: Portal;
  initiatorName: string;
  auth?: ChapCredentials;
  digest?: DigestMode;
  timeouts?: Partial<Pick<SessionTimeouts, 'connectMs' | 'loginMs' | 'logoutMs'>> & { textMs?: number };
  log?: Logger;
  /** The network interface (or source address) the discovery session leaves through. */
  iface?: string;
  /** What is known of targets (a portal that refuses CHAP on discovery, ...); the process's by default. */
  quirks?: TargetQuirks;
}

/** Parse a SendTargets answer into targets and their portals. */
export function parseSendTargets(pairs: readonly TextPair[], defaultPortal: Portal): DiscoveredTarget[] {
  const out: DiscoveredTarget[] = [];
  let cur: DiscoveredTarget | undefined;
  for (const [key, value] of pairs) {
    if (key === 'TargetName') {
      if (value === '') throw new ProtocolError('SendTargets answer with an empty TargetName');
      cur = { name: value, portals: [] };
      out.push(cur);
    } else if (key === 'TargetAddress') {
      if (!cur) throw new ProtocolError('SendTargets answer has a TargetAddress before any TargetName');
      const a = parseTargetAddress(value);
      cur.portals.push({ host: a.address, port: a.port, tpgt: a.targetPortalGroupTag ?? -1 });
    }
    // TargetAlias and anything else: not needed.
  }
  for (const t of out) {
    if (t.portals.length === 0) t.portals.push({ host: defaultPortal.host, port: defaultPortal.port || ISCSI_PORT, tpgt: -1 });
  }
  return out;
}

/** How a discovery login authenticates: offering CHAP (and None), or not offering CHAP. */
export type DiscoveryAuthMode = 'chap' | 'none';

/**
 * The order of discovery logins to try: without credentials only one; with
 * them CHAP first (the target picks from CHAP,None), then without, unless
 * this portal is known to refuse CHAP on discovery, then the other way round.
 */
export function discoveryAuthPlan(portal: string, hasCredentials: boolean, quirks: TargetQuirks = TARGET_QUIRKS): DiscoveryAuthMode[] {
  if (!hasCredentials) return ['none'];
  return quirks.discoveryRefusesChap(portal) ? ['none', 'chap'] : ['chap', 'none'];
}

/** A refusal that another authentication choice might get past. */
function isAuthRefusal(e: unknown): boolean {
  return e instanceof LoginError && e.code === 'EAUTH';
}

/** Ask a portal which targets it offers. Rejects with LoginError/TransportError/ProtocolError. */
export async function discover(opts: DiscoverOptions): Promise<DiscoveredTarget[]> {
  const where = formatHostPort(opts.portal.host, opts.portal.port);
  const log = (opts.log ?? rootLogger()).child({ component: 'iscsi-discovery', portal: where });
  const digest = DIGEST_PROPOSAL[opts.digest ?? 'none'];
  const t = opts.timeouts ?? {};
  const quirks = opts.quirks ?? TARGET_QUIRKS;
  const plan = discoveryAuthPlan(where, opts.auth !== undefined, quirks);
  const failures = new Map<DiscoveryAuthMode, unknown>();
  let opened: Awaited<ReturnType<typeof openConnection>> | undefined;
  for (const [i, mode] of plan.entries()) {
    try {
      opened = await openConnection({
        portal: opts.portal,
        ...(opts.iface !== undefined ? { iface: opts.iface } : {}),
        quirks,
        login: {
          initiatorName: opts.initiatorName,
          sessionType: 'Discovery',
          isid: randomIsid(),
          tsih: 0,
          cid: 0,
          itt: 0,
          cmdSN: 1,
          // Let the target choose: CHAP,None even with mutual CHAP credentials.
          auth: mode === 'chap' ? { ...opts.auth!, allowNone: true } : undefined,
          proposal: { headerDigest: digest, dataDigest: digest },
        },
        connectTimeoutMs: t.connectMs,
        loginTimeoutMs: t.loginMs,
        log,
      });
      if (i > 0) {
        log.info({ auth: mode }, mode === 'none' ? 'discovery session: the target refused CHAP and accepted a login without it' : 'discovery session: the target wanted CHAP after all');
        quirks.rememberDiscoveryAuth(where, mode === 'none');
      }
      break;
    } catch (e) {
      failures.set(mode, e);
      if (!isAuthRefusal(e)) throw withAclHint(e, opts.initiatorName);
      if (i < plan.length - 1) {
        log.info({ err: e, auth: mode }, `discovery login refused ${mode === 'chap' ? 'with' : 'without'} CHAP; trying once ${mode === 'chap' ? 'without' : 'with'} it`);
        continue;
      }
      throw discoveryAuthError(failures, opts.initiatorName, opts.auth?.user);
    }
  }
  const { conn, login, portal } = opened!;
  const link = new ConnectionLink(conn, login, { params: { ...login, maxBurstLength: login.maxBurstLength || 262144 }, cid: 0, log });
  const engine = link.engine;
  link.listen('conn', 'closed', (reason: Error) => engine.fail(reason));
  link.start();
  try {
    const pairs = await engine.text([['SendTargets', 'All']], t.textMs ?? 30000);
    const targets = parseSendTargets(pairs, portal);
    log.debug({ targets: targets.length }, 'SendTargets answered');
    await engine.logout(LogoutReason.CLOSE_SESSION, t.logoutMs ?? 5000).catch((e: Error) => {
      log.debug({ err: e }, 'discovery logout not acknowledged');
    });
    return targets;
  } finally {
    engine.shutdown();
    conn.close();
  }
}

/** The error for a discovery login refused every way we tried: the CHAP attempt's reason, which says most. */
function discoveryAuthError(failures: Map<DiscoveryAuthMode, unknown>, initiatorName: string, chapUser: string | undefined): IscsiNbdError {
  const chap = failures.get('chap') as LoginError | undefined;
  const none = failures.get('none') as LoginError | undefined;
  const e = chap ?? none!;
  // The advice again, for the attempt whose reason is kept (the CHAP one when there was one).
  // (Without CHAP the discovery-credentials advice below says what to give.)
  const hint = chap ? `; ${loginHint(e, initiatorName, { chapUser })}` : `; logged in as ${initiatorName} without CHAP`;
  let msg = withoutHint(e.message);
  if (chap && none) {
    msg += ' (the discovery session was refused both with and without CHAP)';
  } else if (!chap) {
    // No credentials: the portal may want CHAP on its discovery session.
    msg += '; the portal may want CHAP on discovery sessions: give discovery credentials ' +
      '(discover: --discovery-chap USER with --discovery-chap-secret-file FILE or $ISCSI_NBD_DISCOVERY_CHAP_SECRET)';
  }
  e.message = msg + hint;
  return e;
}
