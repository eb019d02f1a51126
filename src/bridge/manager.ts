import { EventEmitter } from 'node:events';
import type { Export } from './export';
import { LunExport } from './lun-export';
import { InstrumentedExport } from './instrumented';
import { SessionPool } from './pool';
import { LogicalUnit, probeSameLun } from '../scsi/lun';
import { targetPortIds } from '../scsi/parse';
import { withContext } from '../util/context';
import { IscsiSession, sessionTimeouts } from '../iscsi/initiator';
import { backoffDelay, type ReconnectBackoff } from '../util/backoff';
import { discover } from '../iscsi/discovery';
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

interface Portal {
  host: string;
  port: number;
}

// ---- Which portal and interface each session uses (paths bound to interfaces).

/** Where one session goes: a portal, and the interface it leaves through (none: the routing table's). */
export interface SessionPath {
  portal: Portal;
  iface?: string;
}

/**
 * The paths of an export, as open-iscsi makes them: one per interface per
 * portal (portals × ifaces, portal by portal), or one per portal without
 * interfaces.
 */
export function sessionPaths(portals: readonly Portal[], ifaces: readonly string[] | undefined): SessionPath[] {
  if (!ifaces || ifaces.length === 0) return portals.map((portal) => ({ portal }));
  return portals.flatMap((portal) => ifaces.map((iface) => ({ portal, iface })));
}

/** Sessions to open: `sessions` is a minimum; every path gets at least one. */
export function sessionCount(paths: readonly SessionPath[], sessions: number): number {
  return Math.max(1, sessions, paths.length);
}

/** The path of session `index`: round robin over the paths. */
export function pathOfSession(paths: readonly SessionPath[], index: number): SessionPath {
  return paths[index % paths.length];
}

// ----

/**
 * One NBD export: a LUN on one target, reached through a pool of iSCSI
 * sessions spread over the target's portals.
 */
/** How often the ALUA states are read again while no path takes I/O. */
const ALUA_POLL_MS = 1000;

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

export class BridgedExport extends EventEmitter {
  state: ExportState = 'starting';
  /** Why the export is failed (or the last open attempt failed). */
  lastError?: Error;
  /** Open attempts that failed in a row (reset by a successful open). */
  failedAttempts = 0;
  /** When the next open attempt is due (ms since the epoch), while failed and retrying. */
  nextRetryAt?: number;
  private retryTimer?: NodeJS.Timeout;
  /** A retry's open attempt is running (still `failed`, no timer set). */
  private retryRunning = false;
  private opening?: Promise<void>;
  private stopped = false;
  readonly url: IscsiUrl;
  readonly portals: Portal[];
  sessions: IscsiSession[] = [];
  pool?: SessionPool;
  lun?: LogicalUnit;
  export?: InstrumentedExport;
  private readonly log: Logger;
  private readonly auth: SessionAuth | undefined;

  constructor(readonly spec: ExportConfig, private readonly opts: ManagerOptions) {
    super();
    this.url = parseLunUrl(spec.url);
    if (!this.url.target) throw new ConfigError('EBADURL', `export "${spec.name}": the URL ${this.url.redacted()} names no target (want iscsi://host/<iqn>/<lun>)`);
    this.log = (opts.log ?? rootLogger()).child({ export: spec.name });
    this.auth = opts.authFor(this.url, spec);
    this.portals = [{ host: this.url.host, port: this.url.port }];
    for (const p of spec.portals ?? []) {
      const u = parseIscsiUrl(`iscsi://${p}`);
      if (!this.portals.some((q) => q.host === u.host && q.port === u.port)) this.portals.push({ host: u.host, port: u.port });
    }
  }

  get name(): string {
    return this.spec.name;
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

  private newSession(path: SessionPath, index: number): IscsiSession {
    const { portal, iface } = path;
    const t = this.opts.timeouts;
    const s = new IscsiSession({
      portal,
      ...(iface !== undefined ? { iface } : {}),
      targetName: this.url.target!,
      initiatorName: this.opts.initiatorName,
      auth: this.auth,
      digest: this.spec.digest ?? this.opts.digest,
      timeouts: sessionTimeouts(t),
      reconnect: true,
      log: this.log.child({ session: index, portal: formatHostPort(portal.host, portal.port), ...(iface !== undefined ? { iface } : {}) }),
      verifyLogin: (sess) => this.checkIdentity(sess, index),
    });
    s.on('state', () => this.updateHealth());
    const m = this.opts.metrics;
    if (m) {
      const labels = { export: this.name, session: String(index), portal: formatHostPort(portal.host, portal.port) };
      const upd = () => m.sessionState.set({ ...labels, target: this.url.target! }, s.state === 'logged-in' ? 1 : 0);
      s.on('state', upd);
      s.on('reconnected', () => m.sessionReconnects.inc(labels));
      upd();
    }
    return s;
  }

  /**
   * After every login of a session once the LUN is known: identify the LUN
   * on that connection (before anything queued is sent there) and refuse
   * a different device (another serial/designator or block size) behind
   * the same address or on another portal.
   */
  private async checkIdentity(sess: IscsiSession, index: number): Promise<void> {
    const lun = this.lun;
    if (!lun?.isOpen) return; // the first login: this is where the identity comes from
    const got = await probeSameLun({ execute: (r) => sess.executeDirect(r), maxTransferBytes: sess.maxTransferBytes }, lun.lun, lun.info, {
      what: `export "${this.name}": LUN ${lun.lun} of ${this.url.target}`,
      log: this.log.child({ session: index, check: 'identity' }),
      commandTimeoutMs: this.opts.timeouts.command * 1000,
      maxRetries: 4,
    });
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
  private aluaPoll?: NodeJS.Timeout;
  private aluaAgain = false;

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
      const sess = via ?? this.sessions.find((s) => s.state === 'logged-in');
      if (!sess) return;
      const probe = new LogicalUnit({ execute: (r) => sess.executeDirect(r), maxTransferBytes: sess.maxTransferBytes }, lun.lun, {
        log: this.log.child({ check: 'alua' }), commandTimeoutMs: this.opts.timeouts.command * 1000, maxRetries: 3,
      });
      const groups = await probe.reportTargetPortGroups();
      this.log.debug({ via: this.sessions.indexOf(sess), groups: groups.map((g) => `${g.id}:${g.state}:${g.ports.join(',')}`), paths: this.sessions.map((s) => this.portIds.get(s)?.group ?? null) }, 'ALUA states read');
      for (const s of this.sessions) {
        const ids = this.portIds.get(s);
        const g = ids?.group === undefined ? undefined : groups.find((x) => x.id === ids.group);
        if (g) pool.setAlua(s, { state: g.state, group: g.id, relativePort: ids?.relativePort, preferred: g.preferred });
      }
      // No path takes I/O (a failover in transition): nothing sent means no unit attention
      // comes to say it is over, so look again, as scsi_dh_alua polls a transitioning group.
      const usable = this.sessions.some((s) => ['active/optimized', 'active/non-optimized', 'logical block dependent'].includes(pool.aluaOf(s)?.state ?? 'active/optimized'));
      if (!usable && !this.stopped && !this.aluaPoll) {
        this.aluaPoll = setTimeout(() => {
          this.aluaPoll = undefined;
          void this.refreshAlua();
        }, ALUA_POLL_MS);
        this.aluaPoll.unref?.();
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
    this.nextRetryAt = Date.now() + delay;
    this.log.warn({ err: this.lastError, attempt: this.failedAttempts, retryInMs: delay }, 'export could not be opened; retrying');
    this.retryTimer = setTimeout(() => {
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
    // A retry starts from nothing: the sessions of the failed attempt are closed.
    this.sessions = [];
    this.pool = undefined;
    this.lun = undefined;
    this.export = undefined;
    try {
      await this.openSteps();
    } catch (err) {
      this.failedAttempts++;
      this.lastError = err as Error;
      this.setState('failed', (err as Error).message);
      throw err;
    }
    if (this.stopped) {
      await this.closeSessions();
      throw new IscsiNbdError('ESHUTDOWN', `export "${this.name}" was closed while it was opening`);
    }
    this.lastError = undefined;
    this.updateHealth();
  }

  private async openSteps(): Promise<void> {
    const lunNo = this.url.lun ?? 0;
    if (this.spec.discoverPortals) await this.addDiscoveredPortals();
    const paths = sessionPaths(this.portals, this.ifaces);
    const count = sessionCount(paths, this.spec.sessions ?? this.opts.sessions);
    const first = this.newSession(paths[0], 0);
    this.sessions.push(first);
    try {
      await first.connect();
    } catch (err) {
      await this.closeSessions();
      const via = paths[0].iface !== undefined ? ` through ${paths[0].iface}` : '';
      throw withContext(err, `export "${this.name}": cannot log in to ${this.url.target} at ${formatHostPort(this.portals[0].host, this.portals[0].port)}${via}`);
    }
    this.pool = new SessionPool([...this.sessions], { log: this.log, waitForMemberMs: this.opts.timeouts.replacement * 1000 });
    this.lun = new LogicalUnit(countSense(this.pool, this.opts.metrics, this.name), lunNo, {
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
      await this.closeSessions();
      throw withContext(err, `export "${this.name}": LUN ${lunNo} of ${this.url.target}`);
    }
    // A standby or unavailable answer sends the command to another path; the states are read again.
    this.pool.on('alua-stale', () => void this.refreshAlua());
    this.portIds.set(first, targetPortIds(this.lun.info.designators));
    await this.refreshAlua(first);
    // The rest of the pool, spread over the paths (portals × interfaces); a
    // path that is down now keeps retrying in the background.
    const more: Promise<void>[] = [];
    for (let i = 1; i < count; i++) {
      const s = this.newSession(pathOfSession(paths, i), i);
      this.sessions.push(s);
      this.pool.add(s);
      more.push(
        s.connect().catch((err) => {
          this.log.warn({ err, session: i }, 'extra session could not log in yet; it keeps retrying');
          s.retryInBackground();
        }),
      );
    }
    await Promise.all(more);
    const inner = new LunExport(this.lun, { name: this.name, description: this.spec.description, readOnly: this.spec.readOnly ?? this.opts.readOnly, log: this.log });
    this.export = new InstrumentedExport(inner, this.opts.metrics, this.log);
    const info = this.lun.info;
    this.log.info(
      {
        target: this.url.target, lun: lunNo, size: info.sizeBytes.toString(), blockSize: info.blockSize,
        vendor: info.vendor, product: info.product, sessions: this.sessions.length, portals: this.portals.length,
        ...(this.ifaces ? { ifaces: this.ifaces } : {}), flags: inner.flags,
      },
      'export ready',
    );
  }

  private async addDiscoveredPortals(): Promise<void> {
    try {
      const targets = await discover({
        portal: this.portals[0],
        ...(this.ifaces ? { iface: this.ifaces[0] } : {}),
        initiatorName: this.opts.initiatorName,
        auth: this.auth,
        digest: this.spec.digest ?? this.opts.digest,
        log: this.log,
      });
      const t = targets.find((x) => x.name === this.url.target);
      for (const p of t?.portals ?? []) {
        if (!this.portals.some((q) => q.host === p.host && q.port === p.port)) this.portals.push({ host: p.host, port: p.port });
      }
    } catch (err) {
      this.log.warn({ err }, 'portal discovery failed; using the configured portals');
    }
  }

  /** Offered to NBD clients: open, with a session logged in or recovering. */
  get isServing(): boolean {
    return SERVING_STATES.includes(this.state) && this.export !== undefined;
  }

  /** Ready for /readyz: every session, or at least one path, logged in. */
  get isReady(): boolean {
    return (this.state === 'ready' || this.state === 'degraded') && this.sessions.some((s) => s.state === 'logged-in');
  }

  private async closeSessions(): Promise<void> {
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
  }

  /** Flush, log out of every session. Called once no NBD client uses the export. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.stopped = true;
    if (this.aluaPoll) clearTimeout(this.aluaPoll);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.nextRetryAt = undefined;
    this.setState('draining');
    if (this.opening) {
      // An attempt in progress: its sessions are dropped, so it ends now.
      for (const s of this.sessions) s.close();
      await this.opening.catch(() => undefined);
    }
    if (this.lun && this.sessions.some((s) => s.state === 'logged-in')) {
      try {
        await this.lun.flush();
      } catch (err) {
        this.log.warn({ err }, 'final flush failed');
      }
    }
    this.pool?.detach();
    await this.closeSessions();
    this.setState('closed');
  }

  status(): ExportStatus {
    const info = this.lun?.isOpen ? this.lun.info : undefined;
    return {
      name: this.name,
      state: this.state,
      ...(this.lastError ? { error: this.lastError.message } : {}),
      ...(this.state === 'failed' && this.failedAttempts > 0 ? { failedAttempts: this.failedAttempts } : {}),
      // While a retry's attempt runs there is no timer, but the retrying goes on: "now".
      ...(this.retryRunning ? { nextRetryInMs: 0, retryingNow: true }
        : this.nextRetryAt !== undefined ? { nextRetryInMs: Math.max(0, this.nextRetryAt - Date.now()) } : {}),
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
          ...(s.refused ? { refused: s.refused.message } : {}),
        };
      }),
    };
  }
}


/** All exports, by name: the NBD server's registry. */
export class ExportManager {
  readonly exports = new Map<string, BridgedExport>();
  private readonly log: Logger;

  constructor(private readonly opts: ManagerOptions) {
    this.log = opts.log ?? rootLogger();
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

