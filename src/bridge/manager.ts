import { EventEmitter } from 'node:events';
import type { Export } from './export';
import { LunExport } from './lun-export';
import { InstrumentedExport } from './instrumented';
import { SessionPool } from './pool';
import { LogicalUnit } from '../scsi/lun';
import { IscsiSession } from '../iscsi/initiator';
import { discover } from '../iscsi/discovery';
import { parseIscsiUrl, parseLunUrl, IscsiUrl, formatHostPort } from '../iscsi/url';
import { ConfigError, IscsiNbdError, ScsiError } from '../errors';
import { rootLogger, Logger } from '../log';
import type { Metrics } from '../metrics';
import { countSense } from '../metrics';
import type { DigestPref, ExportConfig, TimeoutsConfig } from '../config';
import { DEFAULT_TIMEOUTS } from '../config';
import type { SessionAuth } from '../credentials';
import type { ExportStatus } from './status';

export interface ManagerOptions {
  initiatorName: string;
  sessions: number;
  digest: DigestPref;
  readOnly: boolean;
  timeouts: TimeoutsConfig;
  /** CHAP credentials for an export (from its URL, config, file or env). */
  authFor: (url: IscsiUrl, spec: ExportConfig) => SessionAuth | undefined;
  metrics?: Metrics;
  log?: Logger;
}

export type ExportState = 'opening' | 'ready' | 'draining' | 'closed' | 'failed';

interface Portal {
  host: string;
  port: number;
}

/**
 * One NBD export: a LUN on one target, reached through a pool of iSCSI
 * sessions spread over the target's portals.
 */
export class BridgedExport extends EventEmitter {
  state: ExportState = 'opening';
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

  private setState(s: ExportState): void {
    if (s === this.state) return;
    this.log.debug({ from: this.state, to: s }, 'export state');
    this.state = s;
    this.emit('state', s);
  }

  private newSession(portal: Portal, index: number): IscsiSession {
    const t = this.opts.timeouts;
    const s = new IscsiSession({
      portal,
      targetName: this.url.target!,
      initiatorName: this.opts.initiatorName,
      auth: this.auth,
      digest: this.spec.digest ?? this.opts.digest,
      timeouts: {
        connectMs: t.connect * 1000,
        loginMs: t.login * 1000,
        commandMs: t.command * 1000,
        nopIntervalMs: t.nopInterval * 1000,
        nopTimeoutMs: t.nopTimeout * 1000,
        replacementMs: t.replacement * 1000,
      },
      reconnect: true,
      log: this.log.child({ session: index, portal: formatHostPort(portal.host, portal.port) }),
      verifyLogin: (sess) => this.checkIdentity(sess, index),
    });
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
    const want = lun.info;
    const probe = new LogicalUnit({ execute: (r) => sess.executeDirect(r), maxTransferBytes: sess.maxTransferBytes }, lun.lun, {
      log: this.log.child({ session: index, check: 'identity' }),
      identityCheck: true,
      commandTimeoutMs: this.opts.timeouts.command * 1000,
      maxRetries: 4,
    });
    const got = await probe.open();
    if (got.identity !== want.identity || got.blockSize !== want.blockSize) {
      const msg = `export "${this.name}": LUN ${lun.lun} of ${this.url.target} is another device now: ` +
        `was ${want.identity || '(no id)'} (${want.blockSize} B blocks), now ${got.identity || '(no id)'} (${got.blockSize} B blocks)`;
      this.log.error({ session: index, was: want.identity, now: got.identity }, 'LUN identity changed behind the same address: refusing it');
      throw new ScsiError('ELUN_CHANGED', msg, 0);
    }
    if (got.blocks !== want.blocks) this.log.warn({ was: String(want.blocks), now: String(got.blocks) }, 'LUN size changed');
  }

  /** Log in, identify the LUN and build the export. Throws with a message a person can act on. */
  async open(): Promise<void> {
    const lunNo = this.url.lun ?? 0;
    if (this.spec.discoverPortals) await this.addDiscoveredPortals();
    const count = Math.max(1, this.spec.sessions ?? this.opts.sessions);
    const first = this.newSession(this.portals[0], 0);
    this.sessions.push(first);
    try {
      await first.connect();
    } catch (err) {
      this.setState('failed');
      await this.closeSessions();
      throw wrap(err, `export "${this.name}": cannot log in to ${this.url.target} at ${formatHostPort(this.portals[0].host, this.portals[0].port)}`);
    }
    this.pool = new SessionPool([...this.sessions], { log: this.log, waitForMemberMs: this.opts.timeouts.replacement * 1000 });
    this.lun = new LogicalUnit(countSense(this.pool, this.opts.metrics, this.name), lunNo, {
      log: this.log,
      commandTimeoutMs: this.opts.timeouts.command * 1000,
      // UNIT ATTENTIONs: the LogicalUnit logs each one (with asc/ascq) itself.
    });
    try {
      await this.lun.open();
    } catch (err) {
      this.setState('failed');
      await this.closeSessions();
      throw wrap(err, `export "${this.name}": LUN ${lunNo} of ${this.url.target}`);
    }
    // The rest of the pool, spread over the portals; a portal that is down
    // now keeps retrying in the background.
    const more: Promise<void>[] = [];
    for (let i = 1; i < count || i < this.portals.length; i++) {
      const s = this.newSession(this.portals[i % this.portals.length], i);
      this.sessions.push(s);
      this.pool.add(s);
      more.push(
        s.connect().catch((err) => {
          this.log.warn({ err: (err as Error).message, session: i }, 'extra session could not log in yet; it keeps retrying');
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
        flags: inner.flags,
      },
      'export ready',
    );
    this.setState('ready');
  }

  private async addDiscoveredPortals(): Promise<void> {
    try {
      const targets = await discover({
        portal: this.portals[0],
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
      this.log.warn({ err: (err as Error).message }, 'portal discovery failed; using the configured portals');
    }
  }

  /** True when at least one session is logged in. */
  get isReady(): boolean {
    return this.state === 'ready' && this.sessions.some((s) => s.state === 'logged-in');
  }

  private async closeSessions(): Promise<void> {
    await Promise.all(
      this.sessions.map(async (s) => {
        try {
          if (s.state === 'logged-in') await s.logout();
        } catch (err) {
          this.log.debug({ err: (err as Error).message }, 'logout failed');
        } finally {
          s.close();
        }
      }),
    );
  }

  /** Flush, log out of every session. Called once no NBD client uses the export. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.setState('draining');
    if (this.lun && this.sessions.some((s) => s.state === 'logged-in')) {
      try {
        await this.lun.flush();
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'final flush failed');
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
      sessions: this.sessions.map((s, i) => ({
        index: i, state: s.state, inFlight: s.inFlight, ...s.stats,
        ...(s.refused ? { refused: s.refused.message } : {}),
      })),
    };
  }
}

/** The same error code, with the export and target named in front. */
function wrap(err: unknown, context: string): Error {
  if (err instanceof IscsiNbdError) return new IscsiNbdError(err.code, `${context}: ${err.message}`, { cause: err });
  return new IscsiNbdError('EIO', `${context}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
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
    return e && e.state === 'ready' ? e.export : undefined;
  }

  list(): Export[] {
    return [...this.exports.values()].filter((e) => e.state === 'ready' && e.export).map((e) => e.export!);
  }

  get defaultName(): string | undefined {
    return this.exports.keys().next().value;
  }

  /** Every export has at least one logged-in session. */
  ready(): boolean {
    return this.exports.size > 0 && [...this.exports.values()].every((e) => e.isReady);
  }

  async add(spec: ExportConfig): Promise<BridgedExport> {
    if (this.exports.has(spec.name)) throw new ConfigError('ECONFIG', `export "${spec.name}" exists already`);
    const e = new BridgedExport(spec, this.opts);
    this.exports.set(spec.name, e);
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

export { DEFAULT_TIMEOUTS };
