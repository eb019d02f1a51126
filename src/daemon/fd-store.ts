import fs from 'node:fs';
import type { Logger } from '../log';
import { closeFd, memfdWith, sendUnixDatagram, shutdownFd } from '../nbd/netlink/syscalls';

// systemd's file descriptor store (FILE_DESCRIPTOR_STORE.md in systemd's docs):
// a service hands fds to systemd with FDSTORE=1 and FDNAME=… on NOTIFY_SOCKET,
// and gets them back at its next start as fd 3 onwards, named by
// LISTEN_FDNAMES. The store survives `systemctl restart` and a crash followed
// by Restart=; a stop empties it. That is how a kernel NBD socket outlives the
// daemon: the kernel never sees it close.

const SD_LISTEN_FDS_START = 3;
/** systemd refuses longer names, and names with control characters or ':'. */
const FDNAME = /^[\x21-\x39\x3b-\x7e]{1,255}$/;

/** The fds this process was started with: name → fd. */
export function parseListenFds(env: NodeJS.ProcessEnv, pid: number): Map<string, number[]> {
  const out = new Map<string, number[]>();
  if (env.LISTEN_PID === undefined || Number(env.LISTEN_PID) !== pid) return out;
  const n = Number(env.LISTEN_FDS);
  if (!Number.isInteger(n) || n <= 0 || n > 4096) return out;
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  for (let i = 0; i < n; i++) {
    const name = names[i] || 'unknown';
    out.set(name, [...(out.get(name) ?? []), SD_LISTEN_FDS_START + i]);
  }
  return out;
}

/** What the daemon keeps in systemd's store; a no-op outside systemd. */
export interface FdKeeper {
  /** Whether fds can be stored at all (NOTIFY_SOCKET set). */
  readonly enabled: boolean;
  /** Store a copy of `fd` under `name` (several fds may share a name). */
  put(name: string, fd: number): void;
  /** Store `data` under `name` (a memfd). */
  putBytes(name: string, data: Buffer): void;
  /**
   * The fd stored under `name` at the last stop, now ours alone: it is
   * removed from systemd's store first, so a close by us is a close the
   * kernel sees.
   */
  take(name: string): number | undefined;
  /** The bytes stored under `name` (read from its memfd, which is then closed and removed). */
  takeBytes(name: string): Buffer | undefined;
  has(name: string): boolean;
  /** Names received at start and not taken. */
  untaken(): string[];
}

export class SystemdFdStore implements FdKeeper {
  private readonly received: Map<string, number[]>;

  constructor(
    private readonly log: Logger,
    private readonly notifySocket = process.env.NOTIFY_SOCKET,
    env: NodeJS.ProcessEnv = process.env,
    pid = process.pid,
  ) {
    this.received = parseListenFds(env, pid);
    // Children must not think they were given these.
    delete env.LISTEN_FDS;
    delete env.LISTEN_PID;
    delete env.LISTEN_FDNAMES;
    if (this.received.size) this.log.info({ fds: [...this.received].map(([n, f]) => `${n}=${f.join(',')}`) }, 'file descriptors from the systemd store');
  }

  get enabled(): boolean {
    return !!this.notifySocket;
  }

  private send(state: string, fds: number[] = []): void {
    if (!this.notifySocket) return;
    sendUnixDatagram(this.notifySocket, Buffer.from(state), fds);
  }

  put(name: string, fd: number): void {
    if (!FDNAME.test(name)) throw new Error(`bad fd store name ${JSON.stringify(name)}`);
    // FDPOLL=0 would keep a socket whose peer hung up; we want those dropped.
    this.send(`FDSTORE=1\nFDNAME=${name}`, [fd]);
  }

  putBytes(name: string, data: Buffer): void {
    if (!this.notifySocket) return;
    const fd = memfdWith(name, data);
    try {
      this.put(name, fd);
    } finally {
      closeFd(fd);
    }
  }

  has(name: string): boolean {
    return (this.received.get(name)?.length ?? 0) > 0;
  }

  take(name: string): number | undefined {
    const fds = this.received.get(name);
    if (!fds?.length) return undefined;
    this.received.delete(name);
    this.send(`FDSTOREREMOVE=1\nFDNAME=${name}`);
    for (const extra of fds.slice(1)) closeFd(extra); // one per name is ours; more is a leftover of an old bug
    return fds[0];
  }

  takeBytes(name: string): Buffer | undefined {
    const fd = this.take(name);
    if (fd === undefined) return undefined;
    try {
      const size = fs.fstatSync(fd).size;
      const b = Buffer.alloc(size);
      for (let off = 0; off < size; ) {
        const n = fs.readSync(fd, b, off, size - off, off);
        if (n === 0) break;
        off += n;
      }
      return b;
    } finally {
      closeFd(fd);
    }
  }

  untaken(): string[] {
    return [...this.received.keys()];
  }
}

/** No systemd: nothing is kept, nothing comes back. */
export const NO_FD_STORE: FdKeeper = {
  enabled: false,
  put: () => undefined,
  putBytes: () => undefined,
  take: () => undefined,
  takeBytes: () => undefined,
  has: () => false,
  untaken: () => [],
};

/** Let the peer of a stored socket see its end now (whoever else holds a copy), then drop ours. */
export function closeStoredSocket(fd: number): void {
  try {
    shutdownFd(fd);
  } catch {
    // not a socket, or shut down already: closing is what is left
  }
  closeFd(fd);
}

/** Whatever the store gave back and nothing took (a device gone or refused, an export removed): closed. */
export function closeUntaken(store: FdKeeper, log: Logger): void {
  for (const name of store.untaken()) {
    const fd = store.take(name);
    if (fd === undefined) continue;
    log.info({ name }, 'closing a file descriptor from the systemd store that nothing takes');
    if (isRecordName(name)) closeFd(fd);
    else closeStoredSocket(fd);
  }
}

/** Names of the memfds that go with a stored socket (its unread bytes, or a client's state). */
export const isRecordName = (name: string): boolean => name.endsWith('.unread') || name.endsWith('.state');
