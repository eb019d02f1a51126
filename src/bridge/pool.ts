import { EventEmitter } from 'node:events';
import type { ScsiRequest, ScsiResponse, ScsiTransport } from '../scsi/transport';
import { TransportError } from '../errors';
import { rootLogger, Logger } from '../log';
import type { PendingTask } from '../iscsi/session-engine';
import { isLoggedIn, isPathDown, isReconnecting, mayHoldParked, type SessionState } from '../iscsi/session-state';

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
  /** Commands in flight across the whole pool; further ones wait (backpressure). */
  maxOutstanding?: number;
  /** How long a command may wait for any member to be logged in (ms). */
  waitForMemberMs?: number;
  log?: Logger;
}

/**
 * Spreads SCSI commands over several sessions (possibly to several portals):
 * each command goes to the logged-in member with the least work. It never
 * queues without bound: at most maxOutstanding commands are in flight, and
 * callers beyond that wait in FIFO order, which is the backpressure that
 * reaches NBD clients as slower replies.
 */
export class SessionPool extends EventEmitter implements ScsiTransport {
  private readonly maxOutstanding: number;
  private readonly waitForMemberMs: number;
  private outstanding = 0;
  private readonly slotWaiters: Array<() => void> = [];
  private readonly memberWaiters = new Set<() => void>();
  private readonly log: Logger;
  private readonly memberListeners = new Map<PoolMember, (state: SessionState) => void>();
  /** Commands moved from a failed path to a live one. */
  moved = 0;

  constructor(readonly members: PoolMember[], opts: PoolOptions = {}) {
    super();
    this.maxOutstanding = opts.maxOutstanding ?? 256;
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
    return this.outstanding;
  }

  get queued(): number {
    return this.slotWaiters.length;
  }

  /** Members able to take commands now. */
  ready(): PoolMember[] {
    return this.members.filter((m) => isLoggedIn(m.state));
  }

  execute(req: ScsiRequest): Promise<ScsiResponse> {
    // Common case: a free slot and a logged-in member; no async frame of our own.
    if (this.outstanding < this.maxOutstanding) {
      const member = this.pickNow();
      if (member) {
        this.outstanding++;
        let p: Promise<ScsiResponse>;
        try {
          p = member.execute(req);
        } catch (e) {
          this.releaseSlot();
          return Promise.reject(e);
        }
        return p.then(this.releaseOk, this.releaseErr);
      }
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
    const next = this.slotWaiters.shift();
    if (next) next(); // hand our slot straight to the next waiter
    else this.outstanding--;
  }

  private async executeWaiting(req: ScsiRequest): Promise<ScsiResponse> {
    if (this.outstanding >= this.maxOutstanding) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    } else {
      this.outstanding++;
    }
    try {
      const member = this.pickNow() ?? (await this.pick()); // no promise when a member is ready
      return await member.execute(req);
    } finally {
      this.releaseSlot();
    }
  }

  private pickNow(): PoolMember | undefined {
    let best: PoolMember | undefined;
    for (const m of this.members) {
      if (!isLoggedIn(m.state)) continue;
      if (!best || m.inFlight < best.inFlight) best = m;
    }
    return best;
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
