import { EventEmitter } from 'node:events';
import { createHash } from 'node:crypto';
import { IscsiSession, sessionTimeouts } from '../iscsi/initiator';
import { discover } from '../iscsi/discovery';
import { formatHostPort } from '../iscsi/url';
import { rootLogger, type Logger } from '../log';
import type { DigestPref, TimeoutsConfig } from '../config';
import type { SessionAuth } from '../credentials';
import { FairGate } from './fair-gate';
import { sessionPaths, sessionCount, pathOfSession, type Portal, type SessionPath } from './paths';
import type { SessionStatus } from './status';
import type { TargetPortGroup } from '../scsi/parse';
import type { LunInfo } from '../scsi/identify';

/** What identifies one pool of sessions: everything a login depends on. */
export interface TargetSpec {
  target: string;
  /** The configured portals (discovery may add more once the pool starts). */
  portals: Portal[];
  discoverPortals?: boolean;
  ifaces?: string[];
  initiatorName: string;
  auth?: SessionAuth;
  digest: DigestPref;
  timeouts: TimeoutsConfig;
  /** An export that asked for sessions of its own (config `ownSessions`): its name. */
  own?: string;
}

/** One LUN that uses a target's sessions (a BridgedExport). */
export interface LunUser {
  readonly name: string;
  /** Its LUN is open: there is an identity to check after a login. */
  readonly lunOpen: boolean;
  /**
   * After a login of `sess`, before anything queued is sent on it: check
   * that this LUN is still the device it was. Rejects with ELUN_CHANGED when
   * it is another one; other rejections fail the login. `identify` runs one
   * identification per LUN number for all the users of that LUN.
   */
  checkLogin(sess: IscsiSession, index: number, identify?: SharedIdentify): Promise<void>;
  /** The LUN is another device now (its I/O fails with err), or itself again (undefined). */
  refuseLun(err: Error | undefined): void;
  /** Its LUN number on the target, once open. */
  readonly lunNumber: number | undefined;
  /** Another user of the same LUN read its port groups' states (see shareAlua). */
  learnAlua(groups: readonly TargetPortGroup[]): void;
}

/**
 * The identification of LUN `lun` on one new login: `run` the first time it
 * is asked for, the same result for every other user of that LUN (an export
 * and the device mapping it), so a login costs one identity check per LUN.
 */
export type SharedIdentify = (lun: number, run: () => Promise<LunInfo>) => Promise<LunInfo>;

/** The pool key: the spec with its secrets hashed, never kept in the clear. */
export function targetKey(s: TargetSpec): string {
  const a = s.auth;
  const secret = (x: string | Buffer | undefined) => (x === undefined ? null : createHash('sha256').update(x).digest('hex'));
  return JSON.stringify([
    s.target,
    s.portals.map((p) => formatHostPort(p.host, p.port)).sort(),
    s.discoverPortals ?? false,
    s.ifaces ?? [],
    s.initiatorName,
    a ? [a.user, secret(a.secret), a.targetUser ?? null, secret(a.targetSecret)] : null,
    s.digest,
    s.timeouts,
    s.own ?? null,
  ]);
}

/** Commands in flight over one target's sessions, all LUNs together: this many per session. */
export const SLOTS_PER_SESSION = 128;

/**
 * The iSCSI sessions of one target (one key), shared by every LUN opened
 * through them, as open-iscsi reaches every LUN of a target over one
 * session per portal. A LUN joining a pool that is up logs in nothing.
 * After every login each LUN checks its own identity: a LUN that changed
 * is refused alone, unless every LUN did (then the target is another one,
 * and the session refuses it, as with one LUN).
 *
 * Events: 'session' (s: IscsiSession, index): a session joined the pool.
 */
export class TargetSessions extends EventEmitter {
  readonly sessions: IscsiSession[] = [];
  readonly portals: Portal[];
  readonly gate = new FairGate(0);
  private readonly users = new Set<LunUser>();
  /** Acquired and not released (the pool closes at 0). */
  refs = 0;
  private paths: SessionPath[] = [];
  private started?: Promise<void>;
  private closing?: Promise<void>;
  private readonly log: Logger;

  constructor(readonly key: string, readonly id: string, private readonly spec: TargetSpec, log?: Logger, private readonly onClosed?: () => void) {
    super();
    this.setMaxListeners(0);
    this.portals = spec.portals.map((p) => ({ ...p }));
    this.log = (log ?? rootLogger()).child({ pool: id });
  }

  get target(): string {
    return this.spec.target;
  }

  get ifaces(): string[] | undefined {
    return this.spec.ifaces;
  }

  /** The names of the LUNs using the pool. */
  get luns(): string[] {
    return [...this.users].map((u) => u.name);
  }

  /** Log in the first session (once for every LUN of the pool). Rejects with a message a person can act on. */
  start(): Promise<void> {
    this.started ??= this.first();
    return this.started;
  }

  private async first(): Promise<void> {
    if (this.spec.discoverPortals) await this.addDiscoveredPortals();
    this.paths = sessionPaths(this.portals, this.spec.ifaces);
    const s = this.newSession(this.paths[0], 0);
    try {
      await s.connect();
    } catch (err) {
      s.close();
      this.sessions.length = 0;
      throw err;
    }
  }

  /**
   * At least `wanted` sessions (the largest any of its LUNs asked for, and
   * one per path), each new one logged in or retrying in the background.
   */
  async ensure(wanted: number): Promise<void> {
    await this.start();
    const count = sessionCount(this.paths, wanted);
    const more: Promise<void>[] = [];
    for (let i = this.sessions.length; i < count; i++) {
      const s = this.newSession(pathOfSession(this.paths, i), i);
      more.push(
        s.connect().catch((err) => {
          this.log.warn({ err, session: i }, 'extra session could not log in yet; it keeps retrying');
          s.retryInBackground();
        }),
      );
    }
    await Promise.all(more);
  }

  attach(u: LunUser): void {
    this.users.add(u);
  }

  detach(u: LunUser): void {
    this.users.delete(u);
  }

  private newSession(path: SessionPath, index: number): IscsiSession {
    const { portal, iface } = path;
    const s = new IscsiSession({
      portal,
      ...(iface !== undefined ? { iface } : {}),
      targetName: this.spec.target,
      initiatorName: this.spec.initiatorName,
      auth: this.spec.auth,
      digest: this.spec.digest,
      timeouts: sessionTimeouts(this.spec.timeouts),
      reconnect: true,
      log: this.log.child({ session: index, portal: formatHostPort(portal.host, portal.port), ...(iface !== undefined ? { iface } : {}) }),
      verifyLogin: (sess) => this.verify(sess, index),
    });
    // Every LUN's pool, health and metrics listen to the shared session.
    s.setMaxListeners(0);
    this.sessions.push(s);
    this.gate.setMax(SLOTS_PER_SESSION * this.sessions.length);
    this.emit('session', s, index);
    return s;
  }

  /**
   * What one user's REPORT TARGET PORT GROUPS said, for the other users of the
   * same LUN (an export and a device mapping it each keep a view): the states
   * belong to the LUN, and a view that sends no I/O gets no unit attention to
   * tell it, so it would read through the path it last knew was optimized.
   */
  shareAlua(from: LunUser, lun: number, groups: readonly TargetPortGroup[]): void {
    for (const u of this.users) {
      if (u !== from && u.lunOpen && u.lunNumber === lun) u.learnAlua(groups);
    }
  }

  /** After a login: every open LUN checks itself, together. */
  private async verify(sess: IscsiSession, index: number): Promise<void> {
    const users = [...this.users].filter((u) => u.lunOpen);
    if (users.length === 0) return; // the first login: identities come from it
    const found = new Map<number, Promise<LunInfo>>();
    const identify: SharedIdentify = (lun, run) => {
      let p = found.get(lun);
      if (!p) found.set(lun, (p = run()));
      return p;
    };
    const results = await Promise.allSettled(users.map((u) => u.checkLogin(sess, index, identify)));
    const changed: Array<[LunUser, Error]> = [];
    for (let i = 0; i < users.length; i++) {
      const r = results[i];
      if (r.status === 'fulfilled') continue;
      const err = r.reason as Error;
      if ((err as { code?: string }).code !== 'ELUN_CHANGED') throw err;
      changed.push([users[i], err]);
    }
    // Every LUN is another device: it is another target behind the address. The session refuses it.
    if (changed.length === users.length) {
      for (const u of users) u.refuseLun(undefined);
      throw changed[0][1];
    }
    for (const [u, err] of changed) u.refuseLun(err);
  }

  private async addDiscoveredPortals(): Promise<void> {
    try {
      const targets = await discover({
        portal: this.portals[0],
        ...(this.spec.ifaces ? { iface: this.spec.ifaces[0] } : {}),
        initiatorName: this.spec.initiatorName,
        auth: this.spec.auth,
        digest: this.spec.digest,
        log: this.log,
      });
      const t = targets.find((x) => x.name === this.spec.target);
      for (const p of t?.portals ?? []) {
        if (!this.portals.some((q) => q.host === p.host && q.port === p.port)) this.portals.push({ host: p.host, port: p.port });
      }
    } catch (err) {
      this.log.warn({ err }, 'portal discovery failed; using the configured portals');
    }
  }

  /** Log out of every session and close them (the last LUN is gone). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.onClosed?.();
      await Promise.all(
        this.sessions.map(async (s) => {
          try {
            if (s.state === 'logged-in') await s.logout();
          } catch (err) {
            this.log.debug({ err }, 'logout failed');
          } finally {
            s.close();
          }
        }),
      );
    })();
    return this.closing;
  }

  /** Close at once, without logging out (an open abandoned while it logged in). */
  abort(): void {
    for (const s of this.sessions) s.close();
  }

  sessionStatus(): SessionStatus[] {
    return this.sessions.map((s, index) => ({ index, state: s.state, inFlight: s.inFlight, ...s.stats, ...(s.refused ? { refused: s.refused.message } : {}) }));
  }
}

/**
 * Every target pool of the daemon, by key: the NBD exports and the mapped
 * devices of one target share it.
 */
export class TargetRegistry {
  private readonly pools = new Map<string, TargetSessions>();
  private readonly ids = new Map<string, number>();
  constructor(private readonly log?: Logger) {}

  /**
   * The pool for `spec`, made (and its first login started) if there is
   * none; release() it when done.
   */
  acquire(spec: TargetSpec, log?: Logger): TargetSessions {
    const key = targetKey(spec);
    let t = this.pools.get(key);
    if (!t) {
      const base = `${spec.target}@${spec.portals.map((p) => formatHostPort(p.host, p.port)).join(',')}${spec.own ? `#${spec.own}` : ''}`;
      const n = (this.ids.get(base) ?? 0) + 1;
      this.ids.set(base, n);
      const id = n === 1 ? base : `${base}#${n}`;
      const made: TargetSessions = new TargetSessions(key, id, spec, log ?? this.log, () => {
        if (this.pools.get(key) === made) this.pools.delete(key);
      });
      t = made;
      this.pools.set(key, t);
      // A pool whose first login failed is forgotten now: the next open starts a new one.
      t.start().catch(() => {
        if (this.pools.get(key) === made) this.pools.delete(key);
      });
    }
    t.refs++;
    return t;
  }

  /** Give back an acquired pool; the last one out logs out. */
  async release(t: TargetSessions): Promise<void> {
    t.refs--;
    if (t.refs > 0) return;
    await t.close();
  }

  list(): TargetSessions[] {
    return [...this.pools.values()];
  }
}
