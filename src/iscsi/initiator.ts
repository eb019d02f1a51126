// IscsiSession: the iSCSI initiator the rest of the product uses (a
// ScsiTransport). One connection per session (MaxConnections=1), ERL 0.
// The per-connection protocol engine is SessionEngine (session-engine.ts); a
// connection and its engine form a ConnectionLink (link.ts).
//
// Recovery: when the connection is lost (socket closed, NOP timeout,
// protocol error, target asking us to log out or warning of a drop), the
// session logs in again with the same ISID and TSIH 0 (session
// reinstatement) after an exponential backoff with jitter, and reissues every
// unfinished command with a new ITT/CmdSN, rebuilding Data-Out from the
// caller's buffers. Callers do not see outages shorter than replacementMs;
// after that, pending and new commands fail with ECONNLOST while reconnection
// goes on in the background. Before anything is reissued on a new connection,
// verifyLogin (the owner's LUN identity check) runs; a different device is
// refused. takeParked()/adopt() let a pool move parked commands to another
// path (multipath failover).
//
// Every timer and every "now" of a session comes from one EngineClock
// (options.clock), shared with its engines: tests drive reconnects, backoff
// and the replacement timeout with a manual clock.

import { EventEmitter } from 'node:events';
import { SESSION_TIMEOUTS_SEC, type SessionTimeoutsSec } from './defaults';
import { backoffDelay, type ReconnectBackoff } from '../util/backoff';
import { ConfigError, LoginError, ProtocolError, TransportError } from '../errors';
import { rootLogger, type Logger } from '../log';
import type { ScsiRequest, ScsiResponse, ScsiTransport } from '../scsi/transport';
import type { ChapCredentials } from './chap';
import { keepAliveClock, systemClock, type EngineClock, type TimerHandle } from './clock';
import { AsyncEvent, LogoutReason, TmfResponse } from './constants';
import { openConnection } from './open';
import { DigestError } from './crc32c';
import { DIGEST_PROPOSAL, isDigestMode, type DigestMode } from './digest';
import { ConnectionLink } from './link';
import type { LoginResult } from './login';
import type { ProposalOptions } from './negotiation';
import { randomIsid } from './pdu';
import { AsyncEventInfo, CommandTimeoutInfo, createPendingTask, PendingTask, SessionEngine } from './session-engine';
import { isPathDown, isShutDown, parksCommands, type SessionState } from './session-state';
import { formatHostPort, type Portal } from './url';

export type { SessionState };

export type { DigestMode };

export interface SessionTimeouts {
  /** TCP connect (default 10000). */
  connectMs: number;
  /** Whole login exchange (default 15000). */
  loginMs: number;
  /** Per-command default before escalation (ABORT TASK, LUN RESET, reconnect); 0 = none (default 30000). */
  commandMs: number;
  /** NOP-Out ping after this much silence; 0 = never (default 5000). */
  nopIntervalMs: number;
  /** Unanswered ping -> connection dead (default 10000). */
  nopTimeoutMs: number;
  /** How long an outage is hidden from callers (default 120000). */
  replacementMs: number;
  /** Each task management request (default 10000). */
  tmfMs: number;
  /** Logout request, and waiting for in-flight commands before it (default 10000). */
  logoutMs: number;
}


export interface IscsiSessionOptions {
  portal: Portal;
  /** The network interface (or source address) every connection of this session leaves through. */
  iface?: string;
  targetName: string;
  initiatorName: string;
  initiatorAlias?: string;
  /** 48-bit ISID; random (type "random", T=10b) by default, stable for this object. */
  isid?: number;
  auth?: ChapCredentials;
  /** Header and data digests (default 'none'). */
  digest?: DigestMode;
  /** Overrides of our operational proposal. */
  params?: Partial<ProposalOptions>;
  timeouts?: Partial<SessionTimeouts>;
  /** Reconnect after connection loss (default true). */
  reconnect?: boolean;
  backoff?: Partial<ReconnectBackoff>;
  log?: Logger;
  /**
   * Timer source of the session and its engines (tests). Default: wall-clock
   * timers; the session's own (reconnect, replacement, LUN check) keep the
   * process alive as they always did, the engines' do not.
   */
  clock?: EngineClock;
  /**
   * Run after every login, before any queued command is sent on the new
   * connection: check that the device behind the address is still the one we
   * had (LUN identity). Use session.executeDirect() for its commands. A
   * rejection with code ELUN_CHANGED makes the session refuse the target
   * (state 'failed', commands fail with that error, retries continue); any
   * other rejection counts as a failed login attempt.
   */
  verifyLogin?: (session: IscsiSession, info: { reconnect: boolean }) => Promise<void>;
}

export interface SessionStats {
  reconnects: number;
  digestErrors: number;
  cmdSn: number;
  expStatSn: number;
  maxCmdSn: number;
  /** Commands the target accepts now (MaxCmdSN - CmdSN + 1). */
  window: number;
  portal: string;
  /** The interface (or source address) the session is bound to, when it is. */
  iface?: string;
}

/** A session's timeouts (ms) from the configured seconds (config `timeouts.*`). */
export function sessionTimeouts(t: SessionTimeoutsSec): Partial<SessionTimeouts> {
  return {
    connectMs: t.connect * 1000,
    loginMs: t.login * 1000,
    commandMs: t.command * 1000,
    nopIntervalMs: t.nopInterval * 1000,
    nopTimeoutMs: t.nopTimeout * 1000,
    replacementMs: t.replacement * 1000,
  };
}

/** Defaults: those the daemon's configuration has, plus TMF and logout. */
export const DEFAULT_TIMEOUTS: SessionTimeouts = {
  ...(sessionTimeouts(SESSION_TIMEOUTS_SEC) as Required<Omit<SessionTimeouts, 'tmfMs' | 'logoutMs'>>),
  tmfMs: 10000,
  logoutMs: 10000,
};

const DEFAULT_BACKOFF: ReconnectBackoff = { initialMs: 100, maxMs: 30000, jitter: 0.2 };


/**
 * Events:
 *  - 'state' (to: SessionState, from: SessionState)
 *  - 'async' (info: AsyncEventInfo): the target's Async Messages
 *  - 'lost' (reason: Error): the connection went down (recovery starts if enabled)
 *  - 'reconnected' (info: {attempts, outageMs}): logged in again and commands reissued
 *  - 'refused' (err: Error): verifyLogin found a different device; nothing is sent to it
 */
export class IscsiSession extends EventEmitter implements ScsiTransport {
  readonly isid: number;
  private st: SessionState = 'idle';
  private readonly opts: IscsiSessionOptions;
  private readonly timeouts: SessionTimeouts;
  private readonly backoff: ReconnectBackoff;
  private readonly log: Logger;
  private readonly reconnectEnabled: boolean;
  /** The session's own timers (see IscsiSessionOptions.clock). */
  private readonly clock: EngineClock;
  private portal: Portal;
  /**
   * The current connection and its engine. Replacing or dropping it detaches
   * its listeners: events of an older connection never reach the session.
   */
  private link: ConnectionLink | undefined;
  /** The login under way (establish()); cancelled by close(). */
  private attempt: { cancelled: boolean; abort: AbortController } | undefined;
  private params: LoginResult | undefined;
  /** Tasks waiting for a connection (during connect or recovery). */
  private backlog: PendingTask[] = [];
  private reconnectCount = 0;
  private digestErrorCount = 0;
  private lostAt = 0;
  private retryTimer: TimerHandle | undefined;
  private replacementTimer: TimerHandle | undefined;
  private nextDelayMs: number | undefined;
  private attempts = 0;
  private loggingOut: Promise<void> | undefined;
  private readonly escalating = new Set<number>();
  /** Commands of verifyLogin: never parked or reissued. */
  private readonly direct = new Set<PendingTask>();
  /** Set while verifyLogin found another device: commands fail with it. */
  private refusal: Error | undefined;

  constructor(opts: IscsiSessionOptions) {
    super();
    if (!opts.targetName) throw new ConfigError('ECONFIG', 'IscsiSession needs a target name');
    if (!opts.initiatorName) throw new ConfigError('ECONFIG', 'IscsiSession needs an initiator name');
    this.opts = opts;
    this.portal = { ...opts.portal };
    this.isid = opts.isid ?? randomIsid();
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
    this.backoff = { ...DEFAULT_BACKOFF, ...opts.backoff };
    this.reconnectEnabled = opts.reconnect ?? true;
    this.log = (opts.log ?? rootLogger()).child({ component: 'iscsi-initiator', target: opts.targetName });
    this.clock = opts.clock ?? keepAliveClock;
    // Fail early on a bad proposal (ConfigError), not at the first login.
    if (opts.digest !== undefined && !isDigestMode(opts.digest)) {
      throw new ConfigError('ECONFIG', `digest must be none, crc32c, prefer-crc32c or prefer-none, got ${String(opts.digest)}`);
    }
  }

  // ------------------------------------------------------------ accessors

  get state(): SessionState {
    return this.st;
  }

  /** Parameters of the current (or last) login; undefined before the first. */
  get negotiated(): LoginResult | undefined {
    return this.params;
  }

  /** Largest transfer per command: MaxBurstLength (many targets refuse more). */
  get maxTransferBytes(): number {
    return this.params?.maxBurstLength ?? 262144;
  }

  /** Why the session refuses its target (a different LUN identity), if it does. */
  get refused(): Error | undefined {
    return this.refusal;
  }

  /** Commands sent or waiting (including those parked during an outage). */
  private get engine(): SessionEngine | undefined {
    return this.link?.engine;
  }

  get inFlight(): number {
    const sent = this.engine?.inFlight ?? 0;
    if (this.backlog.length === 0) return sent; // the common case: asked on every command
    let parked = 0;
    for (const t of this.backlog) if (!t.settled) parked++;
    return sent + parked;
  }

  get stats(): SessionStats {
    const seq = this.engine?.sequence;
    return {
      reconnects: this.reconnectCount,
      digestErrors: this.digestErrorCount,
      cmdSn: seq?.cmdSN ?? 0,
      expStatSn: seq?.expStatSN ?? 0,
      maxCmdSn: seq?.maxCmdSN ?? 0,
      window: seq?.window ?? 0,
      portal: formatHostPort(this.portal.host, this.portal.port),
      ...(this.opts.iface !== undefined ? { iface: this.opts.iface } : {}),
    };
  }

  private setState(to: SessionState): void {
    if (to === this.st) return;
    const from = this.st;
    this.st = to;
    this.log.debug({ from, to }, 'iscsi session state');
    this.emit('state', to, from);
  }

  // ------------------------------------------------------------ connect

  /** Log in. Rejects with LoginError (EAUTH, ENOTARGET, ...) or TransportError (ECONNECT, ETIMEOUT). */
  async connect(): Promise<void> {
    if (this.st !== 'idle' && this.st !== 'failed') {
      throw new TransportError('ECONNECT', `connect() called in state ${this.st}`);
    }
    this.setState('connecting');
    try {
      await this.establish();
    } catch (e) {
      if ((this.st as SessionState) === 'connecting') {
        this.setState('failed');
        this.rejectBacklog(new TransportError('ECONNLOST', `iSCSI login to ${this.opts.targetName} failed: ${(e as Error).message}`));
      }
      throw e;
    }
  }

  private loginOptions(): Parameters<typeof openConnection>[0]['login'] {
    const digest = DIGEST_PROPOSAL[this.opts.digest ?? 'none'];
    const proposal: ProposalOptions = {
      headerDigest: digest,
      dataDigest: digest,
      ...this.opts.params,
      // ERL 0 and one connection are what this initiator implements.
      errorRecoveryLevel: 0,
      maxConnections: 1,
    };
    if (this.opts.initiatorAlias) proposal.initiatorAlias = this.opts.initiatorAlias;
    return {
      initiatorName: this.opts.initiatorName,
      targetName: this.opts.targetName,
      sessionType: 'Normal',
      isid: this.isid,
      tsih: 0,
      cid: 0,
      itt: 0,
      cmdSN: 1,
      auth: this.opts.auth,
      proposal,
    };
  }

  /** One connection + login + engine; adopts the backlog. */
  private async establish(): Promise<void> {
    const attempt = { cancelled: false, abort: new AbortController() };
    this.attempt = attempt;
    const r = await openConnection({
      portal: this.portal,
      login: this.loginOptions(),
      connectTimeoutMs: this.timeouts.connectMs,
      loginTimeoutMs: this.timeouts.loginMs,
      log: this.log,
      clock: this.clock,
      signal: attempt.abort.signal,
      ...(this.opts.iface !== undefined ? { iface: this.opts.iface } : {}),
    });
    const { conn, login } = r;
    if (attempt.cancelled || this.attempt !== attempt || isShutDown(this.st)) {
      conn.close();
      throw new TransportError('ESHUTDOWN', 'session closed during login');
    }
    if (conn.state === 'closed') {
      throw conn.reason ?? new TransportError('ECONNLOST', 'connection lost right after login');
    }
    if (this.opts.digest === 'crc32c' && (!login.headerDigest || !login.dataDigest)) {
      conn.close();
      throw new LoginError('ELOGIN', 'the target refused CRC32C header/data digests (digest: crc32c); use prefer-crc32c to allow none');
    }
    if (r.permanentRedirect) {
      this.log.info({ to: formatHostPort(r.permanentRedirect.host, r.permanentRedirect.port) }, 'target moved permanently; using the new portal from now on');
      this.portal = r.permanentRedirect;
    }
    this.params = login;
    const link = new ConnectionLink(conn, login, {
      cid: login.cid,
      clock: this.opts.clock ?? systemClock,
      log: this.log,
      commandTimeoutMs: this.timeouts.commandMs,
      nopIntervalMs: this.timeouts.nopIntervalMs,
      nopTimeoutMs: this.timeouts.nopTimeoutMs,
    });
    this.link?.detach();
    this.link = link;
    link
      .listen('engine', 'timeout', (info: CommandTimeoutInfo) => void this.escalate(link, info))
      .listen('engine', 'async', (info: AsyncEventInfo) => this.onAsync(link, info))
      .listen('conn', 'closed', (reason: Error) => this.onConnectionLost(link, reason));
    const open = link.start();
    this.log.info({ portal: formatHostPort(r.portal.host, r.portal.port), tsih: login.tsih, maxBurstLength: login.maxBurstLength, headerDigest: login.headerDigest, dataDigest: login.dataDigest }, 'iSCSI session logged in');
    if (!open) {
      // Lost while attaching: onConnectionLost already ran for this link.
      throw link.reason ?? new TransportError('ECONNLOST', 'connection lost right after login');
    }
    if (this.opts.verifyLogin) await this.verify(link);
    if (this.refusal) {
      this.log.warn('the expected LUN is back behind this address; serving again');
      this.refusal = undefined;
    }
    this.setState('logged-in');
    const backlog = this.backlog;
    this.backlog = [];
    link.engine.adopt(backlog);
  }

  /**
   * verifyLogin on a fresh connection. On failure the connection is dropped
   * without recovery for it (the caller's retry loop goes on) and the error
   * is thrown; ELUN_CHANGED turns the session into a refusing one.
   */
  private async verify(link: ConnectionLink): Promise<void> {
    const limitMs = Math.max(this.timeouts.loginMs, this.timeouts.commandMs);
    let timer: TimerHandle | undefined;
    try {
      await Promise.race([
        this.opts.verifyLogin!(this, { reconnect: this.reconnectCount > 0 || this.st !== 'connecting' }),
        new Promise<never>((_, rej) => {
          timer = this.clock.setTimeout(() => rej(new TransportError('ETIMEOUT', `LUN check after login did not finish within ${limitMs} ms`)), limitMs);
        }),
      ]);
    } catch (e) {
      const err = e as Error;
      if (this.link === link) {
        // Drop this connection without recovery for it: detached, its loss reports nothing.
        this.link = undefined;
        link.detach();
        for (const p of link.engine.drainTasks()) {
          if (this.direct.has(p)) p.reject(err);
          else this.backlog.push(p);
        }
        link.dispose(err);
      }
      if ((err as { code?: string }).code === 'ELUN_CHANGED') this.refuse(err);
      throw err;
    } finally {
      if (timer !== undefined) this.clock.clearTimeout(timer);
    }
    if (!link.live) {
      throw link.reason ?? new TransportError('ECONNLOST', 'connection lost during the LUN check');
    }
  }

  private refuse(err: Error): void {
    const first = !this.refusal;
    this.refusal = err;
    if (first) {
      this.log.error({ err, portal: formatHostPort(this.portal.host, this.portal.port) },
        'a different device answers at this address: refusing it (no command is sent to it); still retrying');
      this.emit('refused', err);
    }
    this.clearReplacementTimer();
    if (this.st === 'connecting' || isShutDown(this.st)) return;
    // Listeners (a pool) may take the parked commands to another path now.
    this.setState('failed');
    this.rejectBacklog(err);
  }

  /**
   * Run a command on the current connection even before the session
   * counts as logged in (for verifyLogin): it is neither parked nor
   * reissued, and fails if the connection goes.
   */
  executeDirect(req: ScsiRequest): Promise<ScsiResponse> {
    const engine = this.engine;
    if (!engine || engine.state !== 'full-feature') {
      return Promise.reject(new TransportError('ECONNLOST', 'no iSCSI connection to run the command on'));
    }
    const { task, promise } = createPendingTask(req, this.clock.now());
    this.direct.add(task);
    engine.adopt([task]);
    return promise.finally(() => this.direct.delete(task));
  }

  /**
   * Take the commands parked while this session has no usable connection
   * (for another path to run them). They are no longer this session's.
   */
  takeParked(): PendingTask[] {
    const out = this.backlog.filter((t) => !t.settled);
    this.backlog = [];
    return out;
  }

  /** Run commands taken from another session (takeParked): sent now, or parked like ours. */
  adopt(tasks: readonly PendingTask[]): void {
    const live = tasks.filter((t) => !t.settled);
    if (live.length === 0) return;
    if (this.st === 'logged-in' && this.engine && this.engine.state === 'full-feature') {
      this.engine.adopt(live);
    } else if (parksCommands(this.st)) {
      this.backlog.push(...live);
    } else {
      const err = this.refusal ?? new TransportError('ECONNLOST', `iSCSI session to ${this.opts.targetName} is not connected (${this.st})`);
      for (const t of live) t.reject(err);
    }
  }

  /**
   * After a failed connect(): keep trying to log in in the background (as
   * after a lost connection); commands fail fast until it succeeds.
   */
  retryInBackground(): void {
    if (this.st !== 'failed' || !this.reconnectEnabled) return;
    this.lostAt = this.clock.now();
    this.scheduleReconnect();
  }

  // ------------------------------------------------------------ I/O

  execute(req: ScsiRequest): Promise<ScsiResponse> {
    const link = this.link;
    return this.executeOnce(req).catch((e: unknown) => {
      // The target broke the protocol for this task (bad offset, DataSN gap,
      // missing data...): it cannot be trusted on this connection. Drop it
      // (everything in flight is reissued after the new login) and run the
      // command once more.
      if (!(e instanceof ProtocolError) || isShutDown(this.st)) throw e;
      this.log.warn({ err: e }, 'protocol error in a command: dropping the connection and retrying it');
      if (link?.live) link.conn.close(e);
      return this.executeOnce(req);
    });
  }

  private executeOnce(req: ScsiRequest): Promise<ScsiResponse> {
    const st = this.st;
    if (st === 'logged-in' && this.engine && this.engine.state === 'full-feature') return this.engine.submit(req);
    if (parksCommands(st)) {
      // Not connected yet, or the connection is being logged out or dropped:
      // park it for the next connection.
      const { task, promise } = createPendingTask(req, this.clock.now());
      this.backlog.push(task);
      return promise;
    }
    if (isShutDown(st)) {
      return Promise.reject(new TransportError('ESHUTDOWN', 'iSCSI session is closed'));
    }
    if (this.refusal) return Promise.reject(this.refusal);
    return Promise.reject(new TransportError('ECONNLOST', `iSCSI session to ${this.opts.targetName} is not connected (${st})`));
  }

  // ------------------------------------------------------------ timeouts

  // ABORT TASK, then LUN RESET, then drop the connection (commands are reissued).
  private async escalate(link: ConnectionLink, info: CommandTimeoutInfo): Promise<void> {
    if (this.escalating.has(info.itt)) return;
    const engine = link.engine;
    const drop = (why: string): void => {
      if (link.live) link.conn.close(new TransportError('ETIMEOUT', why));
    };
    if (!info.sent) {
      drop(`command waited ${info.ageMs} ms for the CmdSN window; reconnecting`);
      return;
    }
    this.escalating.add(info.itt);
    try {
      try {
        // The aborted command fails with ETIMEOUT, which the SCSI layer retries.
        const r = await engine.abortTask(info.itt, this.timeouts.tmfMs,
          new TransportError('ETIMEOUT', `SCSI command 0x${info.cdbOpcode.toString(16)} timed out after ${info.ageMs} ms and was aborted`));
        if (r === TmfResponse.FUNCTION_COMPLETE || r === TmfResponse.TASK_DOES_NOT_EXIST) return;
        this.log.warn({ itt: info.itt, response: r }, 'ABORT TASK failed; resetting the LUN');
      } catch (e) {
        this.log.warn({ itt: info.itt, err: e }, 'ABORT TASK failed; resetting the LUN');
      }
      if (!link.live || engine.state !== 'full-feature') return;
      try {
        const r = await engine.lunReset(info.lun, this.timeouts.tmfMs, true);
        if (r === TmfResponse.FUNCTION_COMPLETE) return;
        this.log.warn({ lun: info.lun, response: r }, 'LUN RESET failed; dropping the connection');
      } catch (e) {
        this.log.warn({ lun: info.lun, err: e }, 'LUN RESET failed; dropping the connection');
      }
      drop('task management could not end a timed-out command; reconnecting');
    } finally {
      this.escalating.delete(info.itt);
    }
  }

  /**
   * LOGICAL UNIT RESET of one LUN on this session's connection. That LUN's
   * commands in flight are sent again afterwards (as after an escalation);
   * other LUNs' commands are not touched. Resolves with the TMF response.
   */
  lunReset(lun: number): Promise<number> {
    const engine = this.engine;
    if (this.st !== 'logged-in' || !engine || engine.state !== 'full-feature') {
      return Promise.reject(new TransportError('ECONNLOST', `iSCSI session to ${this.opts.targetName} is not logged in (${this.st})`));
    }
    return engine.lunReset(lun, this.timeouts.tmfMs, true);
  }

  // ------------------------------------------------------------ async events

  private onAsync(link: ConnectionLink, info: AsyncEventInfo): void {
    this.emit('async', info);
    switch (info.event) {
      case AsyncEvent.LOGOUT_REQUEST:
      case AsyncEvent.NEGOTIATION_REQUEST:
        // Log out within Parameter3 seconds; a new login renegotiates.
        void this.logoutAndReconnect(link, Math.max(1, info.parameter3) * 1000, info.name);
        break;
      case AsyncEvent.CONNECTION_DROP:
      case AsyncEvent.SESSION_DROP:
        // The target drops us; wait Time2Wait (Parameter2) before logging in again.
        this.nextDelayMs = info.parameter2 * 1000;
        link.conn.close(new TransportError('ECONNLOST', `target announced ${info.name}`));
        break;
      default:
        break;
    }
  }

  private async logoutAndReconnect(link: ConnectionLink, limitMs: number, why: string): Promise<void> {
    const engine = link.engine;
    engine.pause();
    const waitMs = Math.max(0, limitMs - 500);
    await this.waitIdle(engine, waitMs, false);
    if (!link.live || engine.state !== 'full-feature') return;
    await engine.logout(LogoutReason.CLOSE_SESSION, Math.min(this.timeouts.logoutMs, limitMs)).catch(() => undefined);
    if (!link.live) return;
    this.nextDelayMs = 0;
    link.conn.close(new TransportError('ECONNLOST', `logged out at the target's request (${why})`));
  }

  /**
   * Wait (at most limitMs) until no command is on the wire: with
   * `includeQueued`, also until none waits for the CmdSN window.
   */
  private waitIdle(engine: SessionEngine, limitMs: number, includeQueued = true): Promise<void> {
    const done = (): boolean => engine.state !== 'full-feature' ||
      (includeQueued ? engine.inFlight === 0 : engine.inFlight === engine.queued);
    if (done()) return Promise.resolve();
    return new Promise((resolve) => {
      const finish = (): void => {
        this.clock.clearTimeout(timer);
        engine.off('taskDone', check);
        engine.off('idle', check);
        engine.off('state', check);
        resolve();
      };
      const check = (): void => {
        if (done()) finish();
      };
      const timer = this.clock.setTimeout(finish, limitMs);
      engine.on('taskDone', check);
      engine.on('idle', check);
      engine.on('state', check);
    });
  }

  // ------------------------------------------------------------ recovery

  private onConnectionLost(link: ConnectionLink, reason: Error): void {
    // Only the current link's listeners are attached: this is our connection.
    if (reason instanceof DigestError) this.digestErrorCount++;
    const engine = link.engine;
    link.detach();
    if (this.link === link) this.link = undefined;
    engine.fail(reason);
    const drained: PendingTask[] = [];
    for (const p of engine.drainTasks()) {
      if (this.direct.has(p)) p.reject(new TransportError('ECONNLOST', `iSCSI connection lost: ${reason.message}`));
      else drained.push(p);
    }
    this.backlog = [...drained, ...this.backlog];
    engine.shutdown();
    if (isShutDown(this.st) || this.st === 'connecting') {
      // connect() reports its own failure; close()/logout() reject the rest.
      return;
    }
    this.log.warn({ err: reason, pending: this.backlog.length }, 'iSCSI connection lost');
    this.emit('lost', reason);
    if (!this.reconnectEnabled) {
      this.setState('failed');
      this.rejectBacklog(new TransportError('ECONNLOST', `iSCSI connection lost: ${reason.message}`));
      return;
    }
    if (this.st !== 'failed') {
      this.lostAt = this.clock.now();
      this.setState('recovering');
      this.armReplacementTimer();
    }
    this.attempts = 0;
    this.scheduleReconnect();
  }

  private clearReplacementTimer(): void {
    if (this.replacementTimer !== undefined) this.clock.clearTimeout(this.replacementTimer);
    this.replacementTimer = undefined;
  }

  private armReplacementTimer(): void {
    this.clearReplacementTimer();
    this.replacementTimer = this.clock.setTimeout(() => {
      this.replacementTimer = undefined;
      if (this.st !== 'recovering') return;
      this.log.error({ ms: this.timeouts.replacementMs }, 'iSCSI session not restored in time; failing commands, still reconnecting');
      this.setState('failed');
      this.rejectBacklog(new TransportError('ECONNLOST', `iSCSI session to ${this.opts.targetName} lost for more than ${this.timeouts.replacementMs} ms`));
    }, this.timeouts.replacementMs);
  }

  private scheduleReconnect(): void {
    if (this.retryTimer !== undefined) return;
    const delay = this.nextDelayMs ?? backoffDelay(this.attempts, this.backoff);
    this.nextDelayMs = undefined;
    this.retryTimer = this.clock.setTimeout(() => {
      this.retryTimer = undefined;
      void this.reconnectOnce();
    }, delay);
  }

  private async reconnectOnce(): Promise<void> {
    if (!isPathDown(this.st)) return;
    this.attempts++;
    try {
      await this.establish();
    } catch (e) {
      if (!isPathDown(this.st)) return;
      this.log.info({ attempt: this.attempts, err: e }, 'iSCSI reconnect failed; retrying');
      this.scheduleReconnect();
      return;
    }
    this.clearReplacementTimer();
    this.reconnectCount++;
    const outageMs = this.clock.now() - this.lostAt;
    this.log.info({ attempts: this.attempts, outageMs }, 'iSCSI session reinstated');
    this.emit('reconnected', { attempts: this.attempts, outageMs });
  }

  private rejectBacklog(err: Error): void {
    const b = this.backlog;
    this.backlog = [];
    for (const t of b) t.reject(err);
  }

  // ------------------------------------------------------------ shutdown

  /** Graceful: stop taking commands, wait for those in flight, Logout, close. */
  logout(): Promise<void> {
    if (this.loggingOut) return this.loggingOut;
    this.loggingOut = this.doLogout();
    return this.loggingOut;
  }

  private async doLogout(): Promise<void> {
    if (this.st === 'closed') return;
    const engine = this.st === 'logged-in' ? this.engine : undefined;
    this.setState('closing');
    this.stopTimers();
    this.rejectBacklog(new TransportError('ESHUTDOWN', 'iSCSI session is logging out'));
    if (engine) {
      await this.waitIdle(engine, this.timeouts.logoutMs);
      if (engine.state === 'full-feature') {
        try {
          await engine.logout(LogoutReason.CLOSE_SESSION, this.timeouts.logoutMs);
        } catch (e) {
          this.log.warn({ err: e }, 'logout not acknowledged; closing anyway');
        }
      }
    }
    this.finishClose(new TransportError('ESHUTDOWN', 'iSCSI session closed'));
  }

  /** Hard close: drop the connection, fail everything pending with ESHUTDOWN. */
  close(): void {
    if (this.st === 'closed') return;
    this.setState('closing');
    this.stopTimers();
    this.finishClose(new TransportError('ESHUTDOWN', 'iSCSI session closed'));
  }

  private finishClose(err: Error): void {
    if (this.attempt) {
      this.attempt.cancelled = true;
      this.attempt.abort.abort();
    }
    this.attempt = undefined;
    const link = this.link;
    this.link = undefined;
    if (link) {
      link.detach();
      link.engine.failAll(err);
      link.dispose(err);
    }
    this.rejectBacklog(err);
    this.setState('closed');
  }

  private stopTimers(): void {
    if (this.retryTimer !== undefined) this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.clearReplacementTimer();
  }
}
