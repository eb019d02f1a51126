import { RESERVED_TAG } from './constants';

/**
 * Initiator Task Tags, handed out in order (RFC 7143 11.2.1.8: unique among
 * the tasks in flight, 0xffffffff reserved). `first` is where it starts:
 * tests start near the top to see the wrap-around.
 */
export class IttAllocator {
  private nextItt: number;

  constructor(first = 1) {
    this.nextItt = first >>> 0;
  }

  /** The next tag that is not reserved and not `inUse`. */
  next(inUse: (itt: number) => boolean): number {
    for (let i = 0; i < 0x10000; i++) {
      const itt = this.nextItt;
      this.nextItt = (this.nextItt + 1) >>> 0;
      if (itt === RESERVED_TAG || inUse(itt)) continue;
      return itt;
    }
    throw new Error('no free ITT');
  }
}
