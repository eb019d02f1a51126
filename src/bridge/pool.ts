import { EventEmitter } from 'node:events';
import type { ScsiRequest, ScsiResponse, ScsiTransport } from '../scsi/transport';
import { TransportError } from '../errors';
import { rootLogger, Logger } from '../log';

/** What the pool needs of one session (IscsiSession provides it). */
export interface PoolMember extends ScsiTransport {
  readonly state: string;
  readonly inFlight: number;
  on(event: 'state', listener: (state: string) => void): unknown;
  off(event: 'state', listener: (state: string) => void): unknown;
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
  private readonly onState = () => this.wakeMemberWaiters();

  constructor(readonly members: PoolMember[], opts: PoolOptions = {}) {
    super();
    this.maxOutstanding = opts.maxOutstanding ?? 256;
    this.waitForMemberMs = opts.waitForMemberMs ?? 120_000;
    this.log = opts.log ?? rootLogger();
    for (const m of members) m.on('state', this.onState);
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
    return this.members.filter((m) => m.state === 'logged-in');
  }

  async execute(req: ScsiRequest): Promise<ScsiResponse> {
    if (this.outstanding >= this.maxOutstanding) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    } else {
      this.outstanding++;
    }
    try {
      const member = await this.pick();
      return await member.execute(req);
    } finally {
      const next = this.slotWaiters.shift();
      if (next) next(); // hand our slot straight to the next waiter
      else this.outstanding--;
    }
  }

  private pickNow(): PoolMember | undefined {
    let best: PoolMember | undefined;
    for (const m of this.members) {
      if (m.state !== 'logged-in') continue;
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
    const recovering = this.members.filter((m) => m.state === 'recovering' || m.state === 'connecting');
    if (recovering.length > 0) {
      return recovering.reduce((a, b) => (b.inFlight < a.inFlight ? b : a));
    }
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
    member.on('state', this.onState);
    this.wakeMemberWaiters();
  }

  detach(): void {
    for (const m of this.members) m.off('state', this.onState);
  }
}
