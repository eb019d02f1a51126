import type { FdKeeper } from '../../src/daemon/fd-store';
import { closeFd, dupFd } from '../../src/nbd/netlink/syscalls';

/**
 * systemd's fd store as a service sees it: what one run puts (its own copies
 * of the fds) the next run gets back, after restart(); a stop empties it.
 */
export class FakeFdStore implements FdKeeper {
  readonly enabled = true;
  private stored = new Map<string, number | Buffer>();
  private received = new Map<string, number | Buffer>();
  put(name: string, fd: number): void {
    this.stored.set(name, dupFd(fd));
  }
  putBytes(name: string, data: Buffer): void {
    this.stored.set(name, Buffer.from(data));
  }
  take(name: string): number | undefined {
    const v = this.received.get(name);
    this.received.delete(name);
    return typeof v === 'number' ? v : undefined;
  }
  takeBytes(name: string): Buffer | undefined {
    const v = this.received.get(name);
    this.received.delete(name);
    return Buffer.isBuffer(v) ? v : undefined;
  }
  has(name: string): boolean {
    return this.received.has(name);
  }
  untaken(): string[] {
    return [...this.received.keys()];
  }
  names(): string[] {
    return [...this.stored.keys()].sort();
  }
  restart(): void {
    this.received = this.stored;
    this.stored = new Map();
  }
  /** `systemctl stop`: systemd closes what it kept. */
  empty(): void {
    for (const v of this.stored.values()) if (typeof v === 'number') closeFd(v);
    this.stored.clear();
  }
}

