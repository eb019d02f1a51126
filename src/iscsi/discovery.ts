// SendTargets discovery (RFC 7143 section 4.3, appendix C): a Discovery
// session, one Text Request "SendTargets=All" (the engine follows C-bit and
// TTT continuations), the answer parsed, then Logout.
//
// The answer is a sequence of TargetName=... each followed by zero or more
// TargetAddress=host[:port],tpgt (IPv6 in brackets). A target without a
// TargetAddress is reachable through the portal we asked.

import { ProtocolError } from '../errors';
import { rootLogger, type Logger } from '../log';
import { ISCSI_PORT, LogoutReason } from './constants';
import { formatPortal, openConnection, Portal } from './connection';
import { parseTargetAddress } from './login';
import { DigestPreference } from './negotiation';
import { randomIsid } from './pdu';
import { SessionEngine } from './session';
import type { TextPair } from './text';
import type { DigestMode, SessionTimeouts } from './initiator';

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
  auth?: { user: string; secret: string | Buffer; targetUser?: string; targetSecret?: string | Buffer };
  digest?: DigestMode;
  timeouts?: Partial<Pick<SessionTimeouts, 'connectMs' | 'loginMs' | 'logoutMs'>> & { textMs?: number };
  log?: Logger;
}

const DIGEST: Record<DigestMode, DigestPreference> = {
  none: 'None',
  crc32c: 'CRC32C',
  'prefer-crc32c': 'CRC32C,None',
  'prefer-none': 'None,CRC32C',
};

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

/** Ask a portal which targets it offers. Rejects with LoginError/TransportError/ProtocolError. */
export async function discover(opts: DiscoverOptions): Promise<DiscoveredTarget[]> {
  const log = (opts.log ?? rootLogger()).child({ component: 'iscsi-discovery', portal: formatPortal(opts.portal) });
  const digest = DIGEST[opts.digest ?? 'none'];
  const t = opts.timeouts ?? {};
  const { conn, login, portal } = await openConnection({
    portal: opts.portal,
    login: {
      initiatorName: opts.initiatorName,
      sessionType: 'Discovery',
      isid: randomIsid(),
      tsih: 0,
      cid: 0,
      itt: 0,
      cmdSN: 1,
      auth: opts.auth,
      proposal: { headerDigest: digest, dataDigest: digest },
    },
    connectTimeoutMs: t.connectMs,
    loginTimeoutMs: t.loginMs,
    log,
  });
  const engine = new SessionEngine({
    params: { ...login, maxBurstLength: login.maxBurstLength || 262144 },
    cmdSN: login.cmdSN,
    expStatSN: login.expStatSN,
    expCmdSN: login.expCmdSN,
    maxCmdSN: login.maxCmdSN,
    onSend: (b) => conn.send(b),
    log,
  });
  engine.on('fatal', (err: Error) => conn.close(err));
  conn.on('closed', (reason: Error) => engine.fail(reason));
  conn.attach((pdu) => engine.receive(pdu));
  try {
    const pairs = await engine.text([['SendTargets', 'All']], t.textMs ?? 30000);
    const targets = parseSendTargets(pairs, portal);
    log.debug({ targets: targets.length }, 'SendTargets answered');
    await engine.logout(LogoutReason.CLOSE_SESSION, t.logoutMs ?? 5000).catch((e: Error) => {
      log.debug({ err: e.message }, 'discovery logout not acknowledged');
    });
    return targets;
  } finally {
    engine.shutdown();
    conn.close();
  }
}
