import { EventEmitter } from 'node:events';
import { SAM_STAT_CHECK_CONDITION, type ScsiRequest, type ScsiResponse, type ScsiTransport } from '../scsi/transport';
import type { AluaState } from '../scsi/parse';
import { TransportError } from '../errors';
import { rootLogger, Logger } from '../log';
import type { PendingTask } from '../iscsi/session-engine';
import { isLoggedIn, isPathDown, isReconnecting, mayHoldParked, type SessionState } from '../iscsi/session-state';
import { FairGate, type GateOwner } from './fair-gate';

/** What the pool needs of one session (IscsiSession provides it). */
export interface PoolMember extends ScsiTransport {
  readonly state: SessionState;
  readonly inFlight: number;
  on(event: 'state', listener: (state: SessionState) => void): unknown;
  off(event: 'state', listener: (state: SessionState) => void): unknown;
  /** Hand over the commands parked while it has no connection (multipath failover). */
  takeParked?(): PendingTask[];
  /** Run commands taken from another member. */
  adopt?(tasks: readonly PendingTask[]): void;
}

export interface PoolOptions {
  /** Commands in flight across the whole pool; further ones wait (backpressure). Ignored with `gate`. */
  maxOutstanding?: number;
  /** This pool's share of slots shared with the other LUNs of the same sessions (default: slots of its own). */
  gate?: GateOwner;
  /** How long a command may wait for any member to be logged in (ms). */
  waitForMemberMs?: number;
  log?: Logger;
}

/** A path's asymmetric access state, as the array reports it for the port group of its target port. */
export interface PathAlua {
  state: AluaState;
  group?: number;
  relativePort?: number;
  preferred?: boolean;
}

const NEVER = 9;

/**
 * Order of preference by ALUA state (lower is better), as scsi_dh_alua with
 * dm-multipath's `prio alua` does: active/optimized, then active/non-optimized
 * (only while no optimized path is up); never standby, unavailable, offline
 * or transitioning. A path without ALUA (the target has no TPGS) ranks first.
 */
function aluaRank(a: PathAlua | undefined): number {
  switch (a?.state) {
    case undefined:
    case 'active/optimized': return 0;
    case 'active/non-optimized':
    case 'logical block dependent': return 1;
    default: return NEVER;
  }
}

/**
 * Spreads SCSI commands over several sessions (possibly to several portals):
 * each command goes to the logged-in member with the least work, among the
 * paths the array prefers (ALUA). It never
 * queues without bound: at most maxOutstanding commands are in flight, and
 * callers beyond that wait in FIFO order, which is the backpressure that
 * reaches NBD clients as slower replies.
 */
export class SessionPool extends EventEmitter implements ScsiTransport {
  private readonly waitForMemberMs: number;
  private readonly gate: GateOwner;
  /** Set while the LUN behind these sessions is another device: every command fails with it. */
  private refusal: Error | undefined;
  private readonly memberWaiters = new Set<() => void>();
  private readonly log: Logger;
  private readonly memberListeners = new Map<PoolMember, (state: SessionState) => void>();
  /** Commands moved from a failed path to a live one. */
  moved = 0;
  /** Each member's ALUA state, when the target reports them (see setAlua). */
  private readonly alua = new Map<PoolMember, PathAlua>();
  private readonly rank = new Map<PoolMember, number>();

  constructor(readonly members: PoolMember[], opts: PoolOptions = {}) {
    super();
    this.gate = opts.gate ?? new FairGate(opts.maxOutstanding ?? 256).owner();
    this.waitForMemberMs = opts.waitForMemberMs ?? 120_000;
    this.log = opts.log ?? rootLogger();
    for (const m of members) this.listen(m);
  }

  private listen(m: PoolMember): void {
    const l = (state: SessionState): void => this.onMemberState(m, state);
    this.memberListeners.set(m, l);
    m.on('state', l);
  }

  // Failover: commands parked on a member without a connection move to a
  // logged-in member at once, instead of waiting for that path to come
  // back (or for its replacement timeout). A member that logs in takes over
  // what others hold parked.
  private onMemberState(m: PoolMember, state: SessionState): void {
    if (isLoggedIn(state)) {
      for (const other of this.members) {
        if (other !== m && mayHoldParked(other.state)) this.moveParked(other);
      }
    } else if (isPathDown(state)) {
      this.moveParked(m);
    }
    this.wakeMemberWaiters();
  }

  private moveParked(from: PoolMember): void {
    if (!from.takeParked || this.pickNow() === undefined) return;
    const tasks = from.takeParked();
    if (tasks.length === 0) return;
    // One at a time to the least loaded live member, so they spread.
    let n = 0;
    for (const t of tasks) {
      const to = this.pickNow();
      if (!to?.adopt) {
        from.adopt?.([t]);
        continue;
      }
      to.adopt([t]);
      n++;
    }
    this.moved += n;
    if (n > 0) this.log.warn({ count: n, state: from.state }, 'moved commands of a failed path to a live one');
  }

  get maxTransferBytes(): number {
    let min = Infinity;
    for (const m of this.members) min = Math.min(min, m.maxTransferBytes);
    return Number.isFinite(min) ? min : 256 * 1024;
  }

  get inFlight(): number {
    return this.gate.held;
  }

  get queued(): number {
    return this.gate.queued;
  }

  /** Refuse every command with `err` (the LUN changed behind these sessions), or serve again (undefined). */
  refuse(err: Error | undefined): void {
    this.refusal = err;
    this.wakeMemberWaiters();
  }

  get refused(): Error | undefined {
    return this.refusal;
  }

  /** Members able to take commands now. */
  ready(): PoolMember[] {
    return this.members.filter((m) => isLoggedIn(m.state));
  }

  execute(req: ScsiRequest): Promise<ScsiResponse> {
    if (this.refusal) return Promise.reject(this.refusal);
    // Common case: a free slot and a logged-in member; no async frame of our own.
    const member = this.pickNow();
    if (member && this.gate.tryTake()) {
      let p: Promise<ScsiResponse>;
      try {
        p = member.execute(req);
      } catch (e) {
        this.releaseSlot();
        return Promise.reject(e);
      }
      // Only a target with ALUA needs to know which path a reply came from.
      if (this.alua.size === 0) return p.then(this.releaseOk, this.releaseErr);
      return p.then((r) => {
        if (r.status === SAM_STAT_CHECK_CONDITION) this.checkAluaSense(member, r);
        return this.releaseOk(r);
      }, this.releaseErr);
    }
    return this.executeWaiting(req);
  }

  private readonly releaseOk = (r: ScsiResponse): ScsiResponse => {
    this.releaseSlot();
    return r;
  };

  private readonly releaseErr = (e: unknown): never => {
    this.releaseSlot();
    throw e;
  };

  private releaseSlot(): void {
    this.gate.release();
  }

  private async executeWaiting(req: ScsiRequest): Promise<ScsiResponse> {
    await this.gate.wait();
    try {
      if (this.refusal) throw this.refusal;
      const member = this.pickNow() ?? (await this.pick()); // no promise when a member is ready
      const r = await member.execute(req);
      if (r.status === SAM_STAT_CHECK_CONDITION) this.checkAluaSense(member, r);
      return r;
    } finally {
      this.releaseSlot();
    }
  }

  private pickNow(): PoolMember | undefined {
    let best: PoolMember | undefined;
    let bestRank = NEVER;
    for (const m of this.members) {
      if (!isLoggedIn(m.state)) continue;
      const r = this.rank.get(m) ?? 0;
      if (r >= NEVER) continue;
      if (!best || r < bestRank || (r === bestRank && m.inFlight < best.inFlight)) {
        best = m;
        bestRank = r;
      }
    }
    return best;
  }

  /** What the array says of a member's path (REPORT TARGET PORT GROUPS); undefined: no ALUA. */
  setAlua(m: PoolMember, a: PathAlua | undefined): void {
    const was = this.alua.get(m)?.state;
    if (a) {
      this.alua.set(m, a);
      this.rank.set(m, aluaRank(a));
    } else {
      this.alua.delete(m);
      this.rank.delete(m);
    }
    if (was !== a?.state) {
      this.log.info({ session: this.members.indexOf(m), group: a?.group, from: was ?? null, to: a?.state ?? null }, 'path ALUA state');
      this.wakeMemberWaiters();
    }
  }

  aluaOf(m: PoolMember): PathAlua | undefined {
    return this.alua.get(m);
  }

  /**
   * A command came back NOT READY because its port is in standby (04/0B) or
   * unavailable (04/0C): stop using that path now (the retry goes elsewhere)
   * and ask for the states to be read again (`alua-stale`).
   */
  private checkAluaSense(m: PoolMember, r: ScsiResponse): void {
    const s = r.sense;
    if (!s || s.length < 4) return;
    const fixed = (s[0] & 0x7f) === 0x70 || (s[0] & 0x7f) === 0x71;
    if (fixed && s.length < 14) return;
    const key = fixed ? s[2] & 0x0f : s[1] & 0x0f;
    const asc = fixed ? s[12] : s[2];
    const ascq = fixed ? s[13] : s[3];
    if (key !== 0x02 || asc !== 0x04 || (ascq !== 0x0b && ascq !== 0x0c)) return;
    const prev = this.alua.get(m);
    this.setAlua(m, { ...prev, state: ascq === 0x0b ? 'standby' : 'unavailable' });
    this.emit('alua-stale');
  }

  private async pick(): Promise<PoolMember> {
    const now = this.pickNow();
    if (now) return now;
    // Nobody is logged in: a member that is recovering keeps commands and
    // reissues them once back, so hand the command to the least-loaded one
    // that is still trying; otherwise wait for one to come back.
    const recovering = this.members.filter((m) => isReconnecting(m.state));
    if (recovering.length > 0) {
      return recovering.reduce((a, b) => (b.inFlight < a.inFlight ? b : a));
    }
    // Past their replacement timeout (or refusing a changed LUN): fail fast
    // with the member's own error, while it keeps reconnecting.
    const failed = this.members.find((m) => m.state === 'failed');
    if (failed) return failed;
    return new Promise<PoolMember>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.memberWaiters.delete(check);
        reject(new TransportError('ECONNLOST', `no iSCSI session is logged in after ${this.waitForMemberMs} ms`));
      }, this.waitForMemberMs);
      const check = () => {
        if (this.refusal) {
          clearTimeout(timer);
          this.memberWaiters.delete(check);
          reject(this.refusal);
          return;
        }
        const m = this.pickNow();
        if (!m) return;
        clearTimeout(timer);
        this.memberWaiters.delete(check);
        resolve(m);
      };
      this.memberWaiters.add(check);
    });
  }

  private wakeMemberWaiters(): void {
    for (const w of [...this.memberWaiters]) w();
    this.emit('change');
  }

  /** A new member (another session or path) joins the pool. */
  add(member: PoolMember): void {
    this.members.push(member);
    this.listen(member);
    this.wakeMemberWaiters();
  }

  detach(): void {
    for (const [m, l] of this.memberListeners) m.off('state', l);
    this.memberListeners.clear();
  }
}
