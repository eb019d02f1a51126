// CHAP for iSCSI login (RFC 1994, RFC 7143 12.1.3, algorithms from the IANA
// "PPP Authentication Algorithms" registry as used by RFC 7143 errata/7144:
// 5 = MD5, 6 = SHA-1, 7 = SHA-256, 8 = SHA3-256).
//
//   initiator: CHAP_A=<list>
//   target:    CHAP_A=<a> CHAP_I=<id> CHAP_C=<challenge>
//   initiator: CHAP_N=<user> CHAP_R=H(id || secret || challenge)
//              [mutual: CHAP_I=<our id> CHAP_C=<our challenge>]
//   target:    [mutual: CHAP_N=<target user> CHAP_R=H(our id || target secret || our challenge)]
// Binary values are 0x<hex> or 0b<base64>.

import { TARGET_QUIRKS, type TargetQuirks } from './quirks';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { ConfigError, LoginError, ProtocolError } from '../errors';
import type { TextPair } from './text';

export const ChapAlgorithm = {
  MD5: 5,
  SHA1: 6,
  SHA256: 7,
  SHA3_256: 8,
} as const;

const HASHES: Record<number, { name: string; length: number }> = {
  5: { name: 'md5', length: 16 },
  6: { name: 'sha1', length: 20 },
  7: { name: 'sha256', length: 32 },
  8: { name: 'sha3-256', length: 32 },
};

/** Our default offer, strongest first. */
export const DEFAULT_CHAP_ALGORITHMS: readonly number[] = [7, 6, 5];

export function isSupportedChapAlgorithm(a: number): boolean {
  return a in HASHES;
}

export function chapDigestLength(alg: number): number {
  const h = HASHES[alg];
  if (!h) throw new RangeError(`unsupported CHAP algorithm ${alg}`);
  return h.length;
}

/** H(id || secret || challenge). */
export function chapResponse(alg: number, id: number, secret: Buffer | string, challenge: Buffer): Buffer {
  const h = HASHES[alg];
  if (!h) throw new RangeError(`unsupported CHAP algorithm ${alg}`);
  return createHash(h.name).update(Buffer.from([id & 0xff])).update(secret).update(challenge).digest();
}

/** Decode a 0x-hex or 0b-base64 binary value (ProtocolError if malformed). */
export function decodeChapBinary(value: string, what = 'binary value'): Buffer {
  const p = value.slice(0, 2);
  const body = value.slice(2);
  if (p === '0x' || p === '0X') {
    // An odd digit count is a leading zero nibble.
    if (!/^[0-9a-fA-F]+$/.test(body)) throw new ProtocolError(`${what} is not valid hex`);
    return Buffer.from(body.length % 2 ? `0${body}` : body, 'hex');
  }
  if (p === '0b' || p === '0B') {
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(body) || body.length % 4 === 1) {
      throw new ProtocolError(`${what} is not valid base64`);
    }
    return Buffer.from(body, 'base64');
  }
  throw new ProtocolError(`${what} must start with 0x or 0b`);
}

export function encodeChapBinary(b: Buffer): string {
  return `0x${b.toString('hex')}`;
}

export interface ChapCredentials {
  user: string;
  secret: string | Buffer;
  /** Mutual CHAP: what the target must answer with. */
  targetUser?: string;
  targetSecret?: string | Buffer;
}


/** Bound on a target challenge we accept (bytes, decoded). */
export const MAX_CHALLENGE_BYTES = 8192;

/**
 * The initiator's side of one CHAP exchange. Stateless apart from the
 * algorithm chosen by the target and our mutual challenge.
 */
export class ChapInitiator {
  readonly algorithms: readonly number[];
  private ourId = -1;
  private ourChallenge: Buffer | undefined;
  private alg = 0;
  private readonly random: (n: number) => Buffer;

  constructor(
    private readonly creds: ChapCredentials,
    algorithms: readonly number[] = DEFAULT_CHAP_ALGORITHMS,
    random?: (n: number) => Buffer,
    /** Where challenges we sent are remembered (a target replaying one is refused, on any connection). */
    private readonly quirks: TargetQuirks = TARGET_QUIRKS,
  ) {
    if (algorithms.length === 0) throw new ConfigError('ECONFIG', 'no CHAP algorithm configured');
    for (const a of algorithms) {
      if (!isSupportedChapAlgorithm(a)) throw new ConfigError('ECONFIG', `unsupported CHAP algorithm ${a} (use 5, 6, 7 or 8)`);
    }
    if (creds.user === '') throw new ConfigError('ECONFIG', 'empty CHAP user name');
    if ((creds.targetUser === undefined) !== (creds.targetSecret === undefined)) {
      throw new ConfigError('ECONFIG', 'mutual CHAP needs both the target user and the target secret');
    }
    this.algorithms = algorithms;
    this.random = random ?? randomBytes;
  }

  get mutual(): boolean {
    return this.creds.targetSecret !== undefined;
  }

  /** The algorithm the target chose (0 before). */
  get algorithm(): number {
    return this.alg;
  }

  /** Value of our CHAP_A offer. */
  offer(): string {
    return this.algorithms.join(',');
  }

  /**
   * Answer the target's CHAP_A/CHAP_I/CHAP_C. Returns the keys to send.
   * Throws LoginError (EAUTH) for an algorithm we did not offer or a
   * reflected challenge, ProtocolError for malformed values.
   */
  respond(target: ReadonlyMap<string, string>): TextPair[] {
    const a = target.get('CHAP_A');
    const i = target.get('CHAP_I');
    const c = target.get('CHAP_C');
    if (a === undefined || i === undefined || c === undefined) {
      throw new ProtocolError('target did not send CHAP_A, CHAP_I and CHAP_C');
    }
    if (!/^\d+$/.test(a) || !this.algorithms.includes(+a)) {
      throw new LoginError('EAUTH', `target chose CHAP algorithm "${a}", which we did not offer (${this.offer()})`);
    }
    this.alg = +a;
    if (!/^\d{1,3}$/.test(i) || +i > 255) throw new ProtocolError(`bad CHAP_I "${i}"`);
    const challenge = decodeChapBinary(c, 'CHAP_C');
    if (challenge.length === 0 || challenge.length > MAX_CHALLENGE_BYTES) {
      throw new ProtocolError(`CHAP_C of ${challenge.length} bytes`);
    }
    if ((this.ourChallenge && challenge.equals(this.ourChallenge)) || this.quirks.isOurChallenge(challenge)) {
      throw new LoginError('EAUTH', 'target sent our own CHAP challenge back (reflection attack); refusing');
    }
    const out: TextPair[] = [
      ['CHAP_N', this.creds.user],
      ['CHAP_R', encodeChapBinary(chapResponse(this.alg, +i, this.creds.secret, challenge))],
    ];
    if (this.mutual) {
      this.ourId = this.random(1)[0];
      let ours = this.random(Math.max(16, chapDigestLength(this.alg)));
      // Never send the target's challenge back as ours.
      while (ours.equals(challenge)) ours = this.random(ours.length);
      this.ourChallenge = ours;
      this.quirks.rememberChallenge(ours);
      out.push(['CHAP_I', String(this.ourId)], ['CHAP_C', encodeChapBinary(ours)]);
    }
    return out;
  }

  /** Check the target's mutual CHAP_N/CHAP_R. Throws LoginError (EAUTH). */
  verifyTarget(target: ReadonlyMap<string, string>): void {
    if (!this.mutual || !this.ourChallenge) throw new Error('verifyTarget without a mutual challenge');
    const n = target.get('CHAP_N');
    const r = target.get('CHAP_R');
    if (n === undefined || r === undefined) {
      throw new LoginError('EAUTH', 'target did not answer our CHAP challenge (mutual CHAP): check the target secret setup');
    }
    if (this.creds.targetUser !== undefined && this.creds.targetUser !== '' && n !== this.creds.targetUser) {
      throw new LoginError('EAUTH', `target answered mutual CHAP as "${n}", expected "${this.creds.targetUser}"`);
    }
    const got = decodeChapBinary(r, 'CHAP_R');
    const want = chapResponse(this.alg, this.ourId, this.creds.targetSecret!, this.ourChallenge);
    if (got.length !== want.length || !timingSafeEqual(got, want)) {
      throw new LoginError('EAUTH', 'target failed mutual CHAP authentication (wrong target secret?)');
    }
  }
}
