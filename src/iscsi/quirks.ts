// What this process has learnt about targets as it talked to them, kept so a
// later login does not pay for the same lesson again. One object, handed to
// discovery, logins and CHAP; the process shares TARGET_QUIRKS unless a
// caller (a test) gives its own, or resets it.

const MAX_RECENT_CHALLENGES = 1024;

export class TargetQuirks {
  /** Portal+target pairs whose CHAP needed MD5 alone (tgtd and old LIO refuse a CHAP_A list or misnumber SHA-256). */
  private readonly md5Only = new Set<string>();
  /** Portals whose discovery session refused CHAP but took a login without it (LIO's default). */
  private readonly noChapDiscovery = new Set<string>();
  /**
   * Challenges we sent recently, on any connection: a target replaying one as
   * its own challenge wants us to compute the answer for it (RFC 7143 12.1.3
   * forbids answering).
   */
  private readonly challenges = new Set<string>();

  md5OnlyFor(portal: string, targetName?: string): boolean {
    return this.md5Only.has(`${portal} ${targetName ?? ''}`);
  }

  /** Whether this was news (worth a log line). */
  rememberMd5Only(portal: string, targetName?: string): boolean {
    const key = `${portal} ${targetName ?? ''}`;
    if (this.md5Only.has(key)) return false;
    this.md5Only.add(key);
    return true;
  }

  discoveryRefusesChap(portal: string): boolean {
    return this.noChapDiscovery.has(portal);
  }

  rememberDiscoveryAuth(portal: string, chapRefused: boolean): void {
    if (chapRefused) this.noChapDiscovery.add(portal);
    else this.noChapDiscovery.delete(portal);
  }

  rememberChallenge(c: Buffer): void {
    if (this.challenges.size >= MAX_RECENT_CHALLENGES) this.challenges.delete(this.challenges.values().next().value as string);
    this.challenges.add(c.toString('hex'));
  }

  isOurChallenge(c: Buffer): boolean {
    return this.challenges.has(c.toString('hex'));
  }

  /** Forget everything (tests start from a clean slate). */
  reset(): void {
    this.md5Only.clear();
    this.noChapDiscovery.clear();
    this.challenges.clear();
  }
}

/** The process's quirks, unless a caller passes its own. */
export const TARGET_QUIRKS = new TargetQuirks();
