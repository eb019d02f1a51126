import { EventEmitter } from 'node:events';
import type { Export } from './export';
import { LunExport } from './lun-export';
import { InstrumentedExport } from './instrumented';
import { SessionPool } from './pool';
import { checkSameLun, identifyOn, LogicalUnit } from '../scsi/lun';
import { targetPortIds, type TargetPortGroup } from '../scsi/parse';
import type { LunInfo } from '../scsi/identify';
import { withContext } from '../util/context';
import type { IscsiSession } from '../iscsi/initiator';
import { keepAliveClock, systemClock, type EngineClock, type TimerHandle } from '../iscsi/clock';
import { backoffDelay, type ReconnectBackoff } from '../util/backoff';
import { TargetRegistry, type LunUser, type SharedIdentify, type TargetSessions } from './targets';
import type { Portal } from './paths';
import { parseIscsiUrl, parseLunUrl, IscsiUrl, formatHostPort } from '../iscsi/url';
import { ConfigError, IscsiNbdError } from '../errors';
import { rootLogger, Logger } from '../log';
import type { Metrics } from '../metrics';
import { countSense, EXPORT_STATES } from '../metrics';
import type { DigestPref, ExportConfig, TimeoutsConfig } from '../config';
import type { SessionAuth } from '../credentials';
import type { ExportStatus } from './status';

export interface ManagerOptions {
  initiatorName: string;
  sessions: number;
  digest: DigestPref;
  readOnly: boolean;
  timeouts: TimeoutsConfig;
  /** Interfaces (or source addresses) of exports that name none (config top-level `ifaces`). */
  ifaces?: string[];
  /** CHAP credentials for an export (from its URL, config, file or env). */
  authFor: (url: IscsiUrl, spec: ExportConfig) => SessionAuth | undefined;
  metrics?: Metrics;
  log?: Logger;
  /** The daemon's target pools, shared with its other managers (default: one of this manager's own). */
  targets?: TargetRegistry;
  /**
   * Timers of each export's state machine (open retry, identity recheck, ALUA reads);
   * tests inject a manual one. By default the open retry keeps the process alive
   * (an export to open is work to finish) and the others do not.
   */
  clock?: EngineClock;
}

/**
 * One state machine per export (README "Export states"):
 *
 *   starting --opened--> ready <--> degraded <--> recovering <--> ready
 *   starting --open failed--> failed --retry (backoff) opened--> ready/degraded
 *   any --close()--> draining --> closed
 *
 * ready: every session logged in; degraded: some logged in, some down;
 * recovering: none logged in, sessions reconnecting (I/O queued within the
 * replacement timeout, failed with EIO after it); failed: could not be
 * opened, retried with OPEN_RETRY_BACKOFF until it opens or is removed.
 * Offered to NBD clients (SERVING_STATES): ready, degraded, recovering.
 */
export type ExportState = (typeof EXPORT_STATES)[number];

/** The states in which an export is offered to NBD clients. */
export const SERVING_STATES: readonly ExportState[] = ['ready', 'degraded', 'recovering'];

/** Re-opening a failed export: 1 s doubling to 60 s, +/- 20 %. */
export const OPEN_RETRY_BACKOFF: ReconnectBackoff = { initialMs: 1000, maxMs: 60_000, jitter: 0.2 };

export { sessionPaths, sessionCount, pathOfSession, type SessionPath } from './paths';


/** How often the ALUA states are read again while no path takes I/O. */
const ALUA_POLL_MS = 1000;
/**
 * How often they are read anyway. A change of states reaches us as a unit
 * attention on the next command, so an idle LUN would show the old ones
 * until it does I/O (multipathd likewise re-reads each path's priority at
 * its path checks).
 */
export const ALUA_REFRESH_MS = 30_000;

/** What made us read the capacity again. */
export type ResizeCause = 'command' | 'unit-attention' | 'reconnect';

/** A rescan's result (sizes in bytes, as strings for JSON). */
export interface ResizeOutcome {
  export: string;
  was: string;
  now: string;
  /** The export grew. */
  changed: boolean;
  /** Why a new size was not applied (the LUN shrank). */
  refused?: string;
}

/** How often a LUN refused alone (another device behind the same LUN number) looks again: 1 s doubling to 30 s. */
const LUN_RECHECK_BACKOFF: ReconnectBackoff = { initialMs: 1000, maxMs: 30_000, jitter: 0.2 };

/**
 * One NBD export: a LUN on one target, reached through a pool of iSCSI
 * sessions spread over the target's portals.
 */
export class BridgedExport extends EventEmitter implements LunUser {
  state: ExportState = 'starting';
  /** Why the export is failed (or the last open attempt failed). */
  lastError?: Error;
  /** Open attempts that failed in a row (reset by a successful open). */
  failedAttempts = 0;
  /** When the next open attempt is due (the retry clock's ms), while failed and retrying. */
  nextRetryAt?: number;
  private retryTimer?: TimerHandle;
  /** A retry's open attempt is running (still `failed`, no timer set). */
  private retryRunning = false;
  private opening?: Promise<void>;
  private stopped = false;
  readonly url: IscsiUrl;
  readonly portals: Portal[];
  /** The target's sessions this LUN uses (shared with the other LUNs of the pool). */
  private target?: TargetSessions;
  private readonly targets: TargetRegistry;
  /** Listeners this export put on the shared sessions, taken off when it closes. */
  private readonly sessionListeners: Array<() => void> = [];
  /** Set while this LUN (alone of its pool) is another device: its I/O fails with it. */
  private lunRefusal: Error | undefined;
  private recheckTimer?: TimerHandle;
  private recheckAttempts = 0;
  pool?: SessionPool;
  lun?: LogicalUnit;
  export?: InstrumentedExport;
  private readonly log: Logger;
  private readonly auth: SessionAuth | undefined;

  private readonly clock: EngineClock;
  private readonly retryClock: EngineClock;

  constructor(readonly spec: ExportConfig, private readonly opts: ManagerOptions) {
    super();
    this.url = parseLunUrl(spec.url);
    if (!this.url.target) throw new ConfigError('EBADURL', `export "${spec.name}": the URL ${this.url.redacted()} names no target (want iscsi://host/<iqn>/<lun>)`);
    this.log = (opts.log ?? rootLogger()).child({ export: spec.name });
    this.auth = opts.authFor(this.url, spec);
    this.targets = opts.targets ?? new TargetRegistry(this.log);
    this.clock = opts.clock ?? systemClock;
    this.retryClock = opts.clock ?? keepAliveClock;
    this.portals = [{ host: this.url.host, port: this.url.port }];
    for (const p of spec.portals ?? []) {
      const u = parseIscsiUrl(`iscsi://${p}`);
      if (!this.portals.some((q) => q.host === u.host && q.port === u.port)) this.portals.push({ host: u.host, port: u.port });
    }
  }

  get name(): string {
    return this.spec.name;
  }

  /** The target's sessions, while the export is open or opening. */
  get sessions(): IscsiSession[] {
    return this.target?.sessions ?? [];
  }

  /** The pool this LUN uses (status: the sessions are shown under it). */
  get poolId(): string | undefined {
    return this.target?.id;
  }

  get lunOpen(): boolean {
    return this.lun?.isOpen === true;
  }

  private setState(s: ExportState, reason?: string): void {
    if (s === this.state) return;
    // Once draining, only `closed` follows.
    if ((this.state === 'draining' && s !== 'closed') || this.state === 'closed') return;
    const from = this.state;
    this.state = s;
    const fields = { from, to: s, ...(reason ? { reason } : {}) };
    if (s === 'degraded' || s === 'recovering' || s === 'failed') this.log.warn(fields, 'export state');
    else this.log.info(fields, 'export state');
    this.emit('state', s, from);
  }

  /** ready/degraded/recovering/failed from the sessions, once the export is open. */
  private updateHealth(): void {
    if (this.stopped || !this.export) return;
    if (!['starting', 'ready', 'degraded', 'recovering', 'failed'].includes(this.state)) return;
    if (this.lunRefusal) {
      this.lastError = this.lunRefusal;
      this.setState('recovering', this.lunRefusal.message);
      return;
    }
    const up = this.sessions.filter((s) => s.state === 'logged-in').length;
    if (up === this.sessions.length) {
      this.lastError = undefined;
      this.setState('ready');
    } else if (up > 0) {
      this.lastError = undefined;
      this.setState('degraded', `${this.sessions.length - up} of ${this.sessions.length} iSCSI sessions down`);
    } else {
      // Past the replacement timeout (sessions `failed`) I/O fails with EIO,
      // but the sessions keep reconnecting: still `recovering`, and still
      // offered, so a client sees EIO (not "unknown export") and the export
      // comes back by itself. A refused session (another LUN behind the
      // address) is the same: it keeps checking.
      const timedOut = this.sessions.some((s) => s.state === 'failed');
      if (timedOut) {
        const refused = this.sessions.find((s) => s.refused)?.refused;
        this.lastError = refused ?? new IscsiNbdError('ECONNLOST',
          `no iSCSI session came back within the replacement timeout (${this.opts.timeouts.replacement} s): I/O fails until one does; still reconnecting`);
      }
      this.setState('recovering', this.lastError?.message ?? 'no iSCSI session logged in; I/O is queued for the replacement timeout');
    }
  }

  /** This export's interfaces: its own, else the daemon's. */
  get ifaces(): string[] | undefined {
    const l = this.spec.ifaces ?? this.opts.ifaces;
    return l && l.length > 0 ? l : undefined;
  }

  /** Health and metrics of this export follow a session of its pool. */
  private watchSession(s: IscsiSession, index: number): void {
    const health = (st: string): void => {
      // A session that logged in while this LUN joined the pool: learn its port here (ALUA).
      if (st === 'logged-in' && this.lunOpen && !this.portIds.has(s)) {
        void this.checkIdentity(s, index).catch((err) => this.log.warn({ err, session: index }, 'cannot identify the LUN on a new session'));
      }
      this.updateHealth();
    };
    s.on('state', health);
    this.sessionListeners.push(() => s.off('state', health));
    const m = this.opts.metrics;
    if (m) {
      const portal = s.stats.portal;
      const labels = { export: this.name, session: String(index), portal };
      const upd = () => m.sessionState.set({ ...labels, target: this.url.target! }, s.state === 'logged-in' ? 1 : 0);
      const rec = () => m.sessionReconnects.inc(labels);
      s.on('state', upd);
      s.on('reconnected', rec);
      this.sessionListeners.push(() => {
        s.off('state', upd);
        s.off('reconnected', rec);
      });
      upd();
    }
  }

  checkLogin(sess: IscsiSession, index: number, identify?: SharedIdentify): Promise<void> {
    return this.checkIdentity(sess, index, identify);
  }

  /**
   * This LUN alone is another device (the other LUNs of its sessions are
   * not): its I/O fails with `err` and it looks again on every login and
   * with backoff, until the expected device is back.
   */
  refuseLun(err: Error | undefined): void {
    const was = this.lunRefusal;
    this.lunRefusal = err;
    this.pool?.refuse(err);
    if (err && !was) {
      this.log.error({ err }, 'a different device answers at this LUN: refusing it (its I/O fails; the other LUNs of the target go on); still checking');
      this.emit('refused', err);
    } else if (!err && was) {
      this.log.warn('the expected device is back at this LUN; serving again');
      this.recheckAttempts = 0;
    }
    if (err) this.scheduleRecheck();
    this.updateHealth();
  }

  private scheduleRecheck(): void {
    if (this.recheckTimer || this.stopped) return;
    const delay = backoffDelay(this.recheckAttempts++, LUN_RECHECK_BACKOFF);
    this.recheckTimer = this.clock.setTimeout(() => {
      this.recheckTimer = undefined;
      if (this.stopped || !this.lunRefusal) return;
      const i = this.sessions.findIndex((x) => x.state === 'logged-in');
      if (i < 0) return this.scheduleRecheck(); // a login checks it anyway
      this.checkIdentity(this.sessions[i], i).then(
        () => this.refuseLun(undefined),
        (err: Error) => (err as { code?: string }).code === 'ELUN_CHANGED' ? this.refuseLun(err) : this.scheduleRecheck(),
      );
    }, delay);
  }

  /**
   * After every login of a session once the LUN is known: identify the LUN
   * on that connection (before anything queued is sent there) and refuse
   * a different device (another serial/designator or block size) behind
   * the same address or on another portal.
   */
  private async checkIdentity(sess: IscsiSession, index: number, identify?: SharedIdentify): Promise<void> {
    const lun = this.lun;
    if (!lun?.isOpen) return; // not open yet: lun.open() finds its identity
    const log = this.log.child({ session: index, check: 'identity' });
    const run = (): Promise<LunInfo> => identifyOn({ execute: (r) => sess.executeDirect(r), maxTransferBytes: sess.maxTransferBytes }, lun.lun, {
      log, commandTimeoutMs: this.opts.timeouts.command * 1000, maxRetries: 4,
    });
    const got = await (identify ? identify(lun.lun, run) : run());
    checkSameLun(lun.info, got, `export "${this.name}": LUN ${lun.lun} of ${this.url.target}`, log);
    this.portIds.set(sess, targetPortIds(got.designators));
    await this.refreshAlua(sess);
    // A READ CAPACITY on a new login that sees another size: the LUN was resized meanwhile.
    if (got.sizeBytes !== lun.info.sizeBytes) {
      lun.setCapacity(got);
      setImmediate(() => this.applyCapacity('reconnect'));
    }
  }

  /** The target port (relative port, port group) each session reaches, from its VPD 0x83. */
  private readonly portIds = new WeakMap<IscsiSession, { relativePort?: number; group?: number }>();
  private aluaRefreshing?: Promise<void>;
  private aluaPoll?: TimerHandle;
  private aluaRefresh?: TimerHandle;
  private aluaAgain = false;

  /**
   * The logged-in session to read the states through: one on a path that takes I/O, so a
   * standby port sees no command while another path works (as the I/O itself does not).
   */
  private readPath(pool: SessionPool): IscsiSession | undefined {
    const rank = (s: IscsiSession): number => {
      const st = pool.aluaOf(s)?.state;
      return st === undefined || st === 'active/optimized' ? 0 : st === 'active/non-optimized' ? 1 : 2;
    };
    let best: IscsiSession | undefined;
    for (const s of this.sessions) {
      if (s.state === 'logged-in' && (!best || rank(s) < rank(best))) best = s;
    }
    return best;
  }

  /** Each session's path takes its port group's state. */
  private applyAlua(pool: SessionPool, groups: readonly TargetPortGroup[]): void {
    for (const s of this.sessions) {
      const ids = this.portIds.get(s);
      const g = ids?.group === undefined ? undefined : groups.find((x) => x.id === ids.group);
      if (g) pool.setAlua(s, { state: g.state, group: g.id, relativePort: ids?.relativePort, preferred: g.preferred });
    }
  }

  get lunNumber(): number | undefined {
    return this.lun?.isOpen ? this.lun.lun : undefined;
  }

  /** Another view of this LUN (an export and its mapping) read the states: take them too. */
  learnAlua(groups: readonly TargetPortGroup[]): void {
    if (this.pool && !this.stopped && !this.lunRefusal) this.applyAlua(this.pool, groups);
  }

  /** The periodic ALUA read, every ALUA_REFRESH_MS while the export is up. */
  private scheduleAluaRefresh(): void {
    this.aluaRefresh = this.clock.setTimeout(() => {
      if (this.stopped) return;
      void this.refreshAlua();
      this.scheduleAluaRefresh();
    }, ALUA_REFRESH_MS);
  }

  /**
   * Read the asymmetric access states (REPORT TARGET PORT GROUPS) through
   * `via` (or any logged-in session) and give each session's path its
   * group's state, so the pool prefers optimized paths and skips standby
   * ones. Nothing to do for a target without ALUA (TPGS 0).
   */
  refreshAlua(via?: IscsiSession): Promise<void> {
    if (this.aluaRefreshing) {
      this.aluaAgain = true;
      return this.aluaRefreshing;
    }
    const run = (async () => {
      const lun = this.lun;
      const pool = this.pool;
      if (!lun?.isOpen || !pool || lun.info.inquiry.tpgs === 0) return;
      const sess = via ?? this.readPath(pool);
      if (!sess) return;
      const probe = new LogicalUnit({ execute: (r) => sess.executeDirect(r), maxTransferBytes: sess.maxTransferBytes }, lun.lun, {
        log: this.log.child({ check: 'alua' }), commandTimeoutMs: this.opts.timeouts.command * 1000, maxRetries: 3,
      });
      const groups = await probe.reportTargetPortGroups();
      this.log.debug({ via: this.sessions.indexOf(sess), groups: groups.map((g) => `${g.id}:${g.state}:${g.ports.join(',')}`), paths: this.sessions.map((s) => this.portIds.get(s)?.group ?? null) }, 'ALUA states read');
      this.applyAlua(pool, groups);
      this.target?.shareAlua(this, lun.lun, groups);
      // No path takes I/O (a failover in transition): nothing sent means no unit attention
      // comes to say it is over, so look again, as scsi_dh_alua polls a transitioning group.
      const usable = this.sessions.some((s) => ['active/optimized', 'active/non-optimized', 'logical block dependent'].includes(pool.aluaOf(s)?.state ?? 'active/optimized'));
      if (!usable && !this.stopped && !this.aluaPoll) {
        this.aluaPoll = this.clock.setTimeout(() => {
          this.aluaPoll = undefined;
          void this.refreshAlua();
        }, ALUA_POLL_MS);
      }
    })();
    this.aluaRefreshing = run;
    void run.then(
      () => undefined,
      (err) => this.log.warn({ err }, 'cannot read the ALUA states; paths keep the last ones known'),
    ).finally(() => {
      this.aluaRefreshing = undefined;
      if (this.aluaAgain) {
        this.aluaAgain = false;
        void this.refreshAlua().catch(() => undefined);
      }
    });
    return run.catch(() => undefined);
  }

  private rescanning?: Promise<ResizeOutcome>;
  private rescanAgain = false;

  /**
   * Read the LUN's identity and capacity again (`iscsi-nbd resize`, a
   * CAPACITY DATA HAS CHANGED unit attention) and apply a new size: a larger
   * LUN grows the export (new NBD clients see it; `resized` tells a mapped
   * device), a smaller one is refused loudly and the old size kept.
   */
  rescan(why: ResizeCause = 'command'): Promise<ResizeOutcome> {
    if (this.rescanning) {
      this.rescanAgain = true; // a change during this rescan gets a rescan of its own
      return this.rescanning;
    }
    const run = (async () => {
      const lun = this.lun;
      if (!lun?.isOpen || !this.export) throw new IscsiNbdError('EIO', `export "${this.name}" is not open (${this.state})`);
      await lun.revalidate(); // throws ELUN_CHANGED for another device
      return this.applyCapacity(why);
    })();
    this.rescanning = run;
    void run.then(
      () => undefined,
      (err) => this.log.error({ err, why }, 'cannot read the LUN\'s capacity again'),
    ).finally(() => {
      this.rescanning = undefined;
      if (this.rescanAgain) {
        this.rescanAgain = false;
        void this.rescan(why).catch(() => undefined);
      }
    });
    return run;
  }

  /** The unit's capacity (as last read) against what the export serves. */
  private applyCapacity(why: ResizeCause): ResizeOutcome {
    const exp = this.export;
    const lun = this.lun;
    if (!exp || !lun?.isOpen) return { export: this.name, was: '0', now: '0', changed: false };
    const was = exp.size;
    const now = lun.info.sizeBytes;
    const out: ResizeOutcome = { export: this.name, was: was.toString(), now: now.toString(), changed: false };
    if (now === was) return out;
    if (now < was) {
      out.refused = `the LUN shrank from ${was} to ${now} bytes; keeping ${was} (a filesystem on it must never be cut: grow the LUN back, or unmap and map again)`;
      this.log.error({ was: was.toString(), now: now.toString(), why }, `refusing to shrink: ${out.refused}`);
      this.opts.metrics?.recordResize(this.name, 'refused');
      this.emit('resize-refused', out);
      return out;
    }
    exp.grow(now);
    out.changed = true;
    this.log.info({ was: was.toString(), now: now.toString(), why }, 'LUN grew: the export serves the new size');
    this.opts.metrics?.recordResize(this.name, 'grown');
    this.emit('resized', out);
    return out;
  }

  /** Log in, identify the LUN and build the export. Throws with a message a person can act on. */
  open(): Promise<void> {
    const p = this.openOnce().finally(() => {
      if (this.opening === p) this.opening = undefined;
    });
    this.opening = p;
    return p;
  }

  /**
   * open(), and if that fails: stay `failed` and try again with backoff
   * (OPEN_RETRY_BACKOFF) until it works or the export is closed. Resolves
   * after the first attempt, with its error (or undefined).
   */
  async openWithRetry(backoff: ReconnectBackoff = OPEN_RETRY_BACKOFF): Promise<Error | undefined> {
    try {
      await this.open();
      return undefined;
    } catch (err) {
      this.scheduleRetry(backoff);
      return err as Error;
    }
  }

  private scheduleRetry(backoff: ReconnectBackoff): void {
    if (this.stopped) return;
    const delay = backoffDelay(this.failedAttempts - 1, backoff);
    this.nextRetryAt = this.retryClock.now() + delay;
    this.log.warn({ err: this.lastError, attempt: this.failedAttempts, retryInMs: delay }, 'export could not be opened; retrying');
    this.retryTimer = this.retryClock.setTimeout(() => {
      this.retryTimer = undefined;
      this.nextRetryAt = undefined;
      if (this.stopped) return;
      this.retryRunning = true;
      this.open().then(
        () => this.log.info({ attempts: this.failedAttempts + 1 }, 'export opened after retrying'),
        () => {
          this.retryRunning = false;
          this.scheduleRetry(backoff);
        },
      ).finally(() => {
        this.retryRunning = false;
        if (this.state !== 'failed') this.failedAttempts = 0;
      });
    }, delay);
  }

  private async openOnce(): Promise<void> {
    // A retry starts from nothing: the failed attempt gave its pool back.
    this.pool = undefined;
    this.lun = undefined;
    this.export = undefined;
    this.lunRefusal = undefined;
    try {
      await this.openSteps();
    } catch (err) {
      await this.releaseTarget();
      this.failedAttempts++;
      this.lastError = err as Error;
      this.setState('failed', (err as Error).message);
      throw err;
    }
    if (this.stopped) {
      await this.releaseTarget();
      throw new IscsiNbdError('ESHUTDOWN', `export "${this.name}" was closed while it was opening`);
    }
    this.lastError = undefined;
    this.updateHealth();
  }

  private async openSteps(): Promise<void> {
    const lunNo = this.url.lun ?? 0;
    // The target's pool: made and logged in by the first LUN of it, joined by the others.
    const target = this.targets.acquire({
      target: this.url.target!,
      portals: this.portals,
      ...(this.spec.discoverPortals ? { discoverPortals: true } : {}),
      ...(this.ifaces ? { ifaces: this.ifaces } : {}),
      initiatorName: this.opts.initiatorName,
      ...(this.auth ? { auth: this.auth } : {}),
      digest: this.spec.digest ?? this.opts.digest,
      timeouts: this.opts.timeouts,
      ...(this.spec.ownSessions ? { own: this.name } : {}),
    }, this.opts.log);
    this.target = target;
    try {
      await target.start();
    } catch (err) {
      const p = target.portals[0];
      const via = this.ifaces ? ` through ${this.ifaces[0]}` : '';
      throw withContext(err, `export "${this.name}": cannot log in to ${this.url.target} at ${formatHostPort(p.host, p.port)}${via}`);
    }
    if (!target.sessions.some((s) => s.state === 'logged-in')) {
      throw new IscsiNbdError('ECONNLOST', `export "${this.name}": no session of ${target.id} is logged in now; retrying`);
    }
    const pool = new SessionPool([...target.sessions], { log: this.log, waitForMemberMs: this.opts.timeouts.replacement * 1000, gate: target.gate.owner() });
    this.pool = pool;
    target.sessions.forEach((s, i) => this.watchSession(s, i));
    const joined = (s: IscsiSession, i: number): void => {
      pool.add(s);
      this.watchSession(s, i);
    };
    target.on('session', joined);
    this.sessionListeners.push(() => target.off('session', joined));
    this.lun = new LogicalUnit(countSense(pool, this.opts.metrics, this.name), lunNo, {
      log: this.log,
      commandTimeoutMs: this.opts.timeouts.command * 1000,
      // UNIT ATTENTIONs: the LogicalUnit logs each one (with asc/ascq) itself.
      onUnitAttention: (asc, ascq) => {
        if (asc === 0x2a && ascq === 0x09) setImmediate(() => void this.rescan('unit-attention').catch(() => undefined)); // CAPACITY DATA HAS CHANGED
        if (asc === 0x2a && ascq === 0x06) setImmediate(() => void this.refreshAlua()); // ASYMMETRIC ACCESS STATE CHANGED
      },
    });
    try {
      await this.lun.open();
    } catch (err) {
      throw withContext(err, `export "${this.name}": LUN ${lunNo} of ${this.url.target}`);
    }
    // A standby or unavailable answer sends the command to another path; the states are read again.
    pool.on('alua-stale', () => void this.refreshAlua());
    // Every login from now on checks this LUN too.
    target.attach(this);
    // The sessions up already: the target port each reaches for this LUN (ALUA).
    for (let i = 0; i < target.sessions.length; i++) {
      const s = target.sessions[i];
      if (s.state !== 'logged-in') continue;
      if (i === 0 && target.sessions.length === 1) this.portIds.set(s, targetPortIds(this.lun.info.designators));
      else await this.checkIdentity(s, i);
    }
    await this.refreshAlua();
    if (this.lun.info.inquiry.tpgs !== 0 && !this.aluaRefresh) this.scheduleAluaRefresh();
    // The rest of the pool, spread over the paths (portals × interfaces); a
    // path that is down now keeps retrying in the background.
    await target.ensure(this.spec.sessions ?? this.opts.sessions);
    const inner = new LunExport(this.lun, { name: this.name, description: this.spec.description, readOnly: this.spec.readOnly ?? this.opts.readOnly, log: this.log });
    this.export = new InstrumentedExport(inner, this.opts.metrics, this.log);
    const info = this.lun.info;
    this.log.info(
      {
        target: this.url.target, lun: lunNo, size: info.sizeBytes.toString(), blockSize: info.blockSize,
        vendor: info.vendor, product: info.product, pool: target.id, sessions: target.sessions.length, portals: target.portals.length,
        ...(this.ifaces ? { ifaces: this.ifaces } : {}), flags: inner.flags,
      },
      'export ready',
    );
  }

  /** Offered to NBD clients: open, with a session logged in or recovering. */
  get isServing(): boolean {
    return SERVING_STATES.includes(this.state) && this.export !== undefined;
  }

  /** Ready for /readyz: every session, or at least one path, logged in. */
  get isReady(): boolean {
    return (this.state === 'ready' || this.state === 'degraded') && this.sessions.some((s) => s.state === 'logged-in');
  }

  /** Stop using the target's sessions; the last LUN of the pool logs them out. */
  private async releaseTarget(): Promise<void> {
    const t = this.target;
    if (!t) return;
    this.target = undefined;
    t.detach(this);
    for (const off of this.sessionListeners.splice(0)) off();
    this.pool?.detach();
    await this.targets.release(t);
  }

  /** Flush, log out of every session. Called once no NBD client uses the export. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.stopped = true;
    if (this.aluaPoll) this.clock.clearTimeout(this.aluaPoll);
    if (this.aluaRefresh) this.clock.clearTimeout(this.aluaRefresh);
    this.aluaRefresh = undefined;
    if (this.recheckTimer) this.clock.clearTimeout(this.recheckTimer);
    if (this.retryTimer) this.retryClock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.nextRetryAt = undefined;
    this.setState('draining');
    if (this.opening) {
      // An attempt in progress: a pool only it uses is dropped, so it ends now.
      if (this.target && this.target.refs === 1) this.target.abort();
      await this.opening.catch(() => undefined);
    }
    if (this.lun && this.sessions.some((s) => s.state === 'logged-in')) {
      try {
        await this.lun.flush();
      } catch (err) {
        this.log.warn({ err }, 'final flush failed');
      }
    }
    await this.releaseTarget();
    this.setState('closed');
  }

  status(): ExportStatus {
    const info = this.lun?.isOpen ? this.lun.info : undefined;
    return {
      name: this.name,
      state: this.state,
      ...(this.target ? { pool: this.target.id } : {}),
      ...(this.lastError ? { error: this.lastError.message } : {}),
      ...(this.state === 'failed' && this.failedAttempts > 0 ? { failedAttempts: this.failedAttempts } : {}),
      // While a retry's attempt runs there is no timer, but the retrying goes on: "now".
      ...(this.retryRunning ? { nextRetryInMs: 0, retryingNow: true }
        : this.nextRetryAt !== undefined ? { nextRetryInMs: Math.max(0, this.nextRetryAt - this.retryClock.now()) } : {}),
      url: this.url.redacted(),
      target: this.url.target!,
      lun: this.url.lun ?? 0,
      size: info ? info.sizeBytes.toString() : null,
      blockSize: info?.blockSize ?? null,
      vendor: info?.vendor ?? null,
      product: info?.product ?? null,
      flags: this.export?.flags ?? null,
      clients: this.export?.clients ?? 0,
      inFlight: this.export?.inFlight ?? 0,
      queued: this.pool?.queued ?? 0,
      movedCommands: this.pool?.moved ?? 0,
      counters: this.export?.counters ?? null,
      sessions: this.sessions.map((s, i) => {
        const a = this.pool?.aluaOf(s);
        return {
          index: i, state: s.state, inFlight: s.inFlight, ...s.stats,
          ...(a ? { alua: { state: a.state, ...(a.group !== undefined ? { group: a.group } : {}), ...(a.relativePort !== undefined ? { relativePort: a.relativePort } : {}) } } : {}),
          ...(s.refused ? { refused: s.refused.message } : this.lunRefusal ? { refused: this.lunRefusal.message } : {}),
        };
      }),
    };
  }
}


/** All exports, by name: the NBD server's registry. */
export class ExportManager {
  readonly exports = new Map<string, BridgedExport>();
  private readonly log: Logger;
  private readonly opts: ManagerOptions;
  readonly targets: TargetRegistry;

  constructor(opts: ManagerOptions) {
    this.log = opts.log ?? rootLogger();
    this.targets = opts.targets ?? new TargetRegistry(this.log);
    this.opts = { ...opts, targets: this.targets };
  }

  get(name: string): Export | undefined {
    const e = this.exports.get(name);
    return e?.isServing ? e.export : undefined;
  }

  list(): Export[] {
    return [...this.exports.values()].filter((e) => e.isServing).map((e) => e.export!);
  }

  get defaultName(): string | undefined {
    return this.exports.keys().next().value;
  }

  /** Every export is ready or degraded (true when there is none). */
  ready(): boolean {
    return [...this.exports.values()].every((e) => e.isReady);
  }

  /** A new export under its name (a name in use is refused), registered before it opens. */
  private register(spec: ExportConfig): BridgedExport {
    if (this.exports.has(spec.name)) throw new ConfigError('ECONFIG', `export "${spec.name}" exists already`);
    const e = new BridgedExport(spec, this.opts);
    this.exports.set(spec.name, e);
    return e;
  }

  /**
   * Add an export that keeps trying: if it cannot be opened now it stays
   * (state `failed`, not offered to clients) and is retried with backoff
   * until it opens or is removed. Resolves after the first attempt with
   * that attempt's error, if any.
   */
  async start(spec: ExportConfig): Promise<{ export: BridgedExport; error?: Error }> {
    const e = this.register(spec);
    const error = await e.openWithRetry();
    return { export: e, ...(error ? { error } : {}) };
  }

  async add(spec: ExportConfig): Promise<BridgedExport> {
    const e = this.register(spec);
    try {
      await e.open();
    } catch (err) {
      this.exports.delete(spec.name);
      throw err;
    }
    return e;
  }

  async remove(name: string): Promise<void> {
    const e = this.exports.get(name);
    if (!e) return;
    this.exports.delete(name);
    await e.close();
  }

  async closeAll(): Promise<void> {
    const all = [...this.exports.values()];
    this.exports.clear();
    await Promise.all(all.map((e) => e.close()));
  }

  status(): ExportStatus[] {
    return [...this.exports.values()].map((e) => e.status());
  }
}

