// A TCP connection that leaves through one network interface, as open-iscsi's
// iface.net_ifacename does: socket(2), setsockopt(SO_BINDTODEVICE) before
// connect(2), a non-blocking connect, then the connected fd wrapped in a
// net.Socket. Node's net.connect has localAddress but no device option,
// hence koffi (as src/nbd/netlink/syscalls.ts, src/daemon/peer-cred.ts).
// koffi is required on first use only: the default (unbound) path of the
// initiator never loads it.
//
// Threads: koffi's `.async` runs poll(2) on a worker, and errno is not carried
// back from there; so the wait for writability runs on a worker, and the
// connect result is read with getsockopt(SO_ERROR) on the main thread.

import dns from 'node:dns';
import net from 'node:net';
import { constants as osConstants, endianness, networkInterfaces } from 'node:os';
import { ConfigError, IscsiNbdError, type ErrorCode } from '../errors';

type Koffi = typeof import('koffi');

// Linux values on x86, arm, arm64, riscv, powerpc and loongarch.
const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_ERROR = 4;
const SO_BINDTODEVICE = 25;
const POLLOUT = 0x4;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;
/** IFNAMSIZ - 1: the longest interface name Linux has. */
export const MAX_IFACE_NAME = 15;
/** Longest single poll on the worker, so a timeout or an abort is noticed within it. */
const POLL_SLICE_MS = 100;

const E = osConstants.errno;

/** An interface that cannot be used for a path: it does not exist, or binding to it is not permitted. */
export class InterfaceError extends IscsiNbdError {
  constructor(code: ErrorCode, message: string, readonly iface: string, readonly errno?: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

interface Libc {
  errno(): number;
  socket(domain: number, type: number, protocol: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, len: number): number;
  getsockopt(fd: number, level: number, name: number, value: Buffer, len: Buffer): number;
  connect(fd: number, addr: Buffer, len: number): number;
  pollOnWorker(fds: Buffer, nfds: number, timeoutMs: number): Promise<number>;
  close(fd: number): number;
}

let loaded: Libc | Error | undefined;

function load(): Libc {
  if (loaded instanceof Error) throw loaded;
  if (loaded) return loaded;
  try {
    if (process.platform !== 'linux') throw new Error('binding a connection to an interface needs Linux');
    if (endianness() !== 'LE') throw new Error('binding a connection to an interface supports little-endian hosts only');
    const koffi = require('koffi') as Koffi;
    let lib: ReturnType<Koffi['load']>;
    try {
      lib = koffi.load('libc.so.6');
    } catch {
      lib = koffi.load(null); // musl and others: libc is already in the process
    }
    const socket = lib.func('int socket(int, int, int)');
    const setsockopt = lib.func('int setsockopt(int, int, int, const void *val, uint32_t len)');
    const getsockopt = lib.func('int getsockopt(int fd, int level, int name, _Inout_ uint8_t *val, _Inout_ uint32_t *len)');
    const connect = lib.func('int connect(int, const void *addr, uint32_t len)');
    const poll = lib.func('int poll(void *fds, unsigned long nfds, int timeout)');
    const close = lib.func('int close(int)');
    loaded = {
      errno: () => koffi.errno(),
      socket: (d, t, p) => Number(socket(d, t, p)),
      setsockopt: (fd, lv, n, v, l) => Number(setsockopt(fd, lv, n, v, l)),
      getsockopt: (fd, lv, n, v, l) => Number(getsockopt(fd, lv, n, v, l)),
      connect: (fd, a, l) => Number(connect(fd, a, l)),
      pollOnWorker: (fds, n, t) => new Promise((resolve, reject) => {
        poll.async(fds, n, t, (err: unknown, res: unknown) => (err ? reject(err) : resolve(Number(res))));
      }),
      close: (fd) => Number(close(fd)),
    };
    return loaded;
  } catch (err) {
    loaded = new IscsiNbdError('ENOTSUP', `cannot bind connections to an interface here: ${(err as Error).message}`, { cause: err });
    throw loaded;
  }
}

export function errnoName(errno: number): string {
  for (const [name, n] of Object.entries(E)) if (n === errno) return name;
  return `errno ${errno}`;
}

/** The error for a failed SO_BINDTODEVICE (exported for the tests: EPERM cannot be provoked as root). */
export function bindError(iface: string, errno: number): InterfaceError {
  const name = errnoName(errno);
  if (errno === E.ENODEV) {
    return new InterfaceError('ENODEV', `network interface "${iface}" does not exist (ip link shows the interfaces of this host)`, iface, name);
  }
  if (errno === E.EPERM || errno === E.EACCES) {
    return new InterfaceError('EPERM', `binding a connection to network interface "${iface}" is not permitted: SO_BINDTODEVICE needs CAP_NET_RAW (root)`, iface, name);
  }
  return new InterfaceError('ECONNECT', `cannot bind a connection to network interface "${iface}": ${name}`, iface, name);
}

/** Is `iface` a name an interface can have (not an address)? */
export function isInterfaceName(iface: string): boolean {
  return iface.length > 0 && Buffer.byteLength(iface) <= MAX_IFACE_NAME && !/[\s/:]/.test(iface) && iface !== '.' && iface !== '..' && net.isIP(iface) === 0;
}

/** Why `iface` is neither an interface name nor an IP address, or undefined when it is one of them. */
export function ifaceProblem(iface: unknown): string | undefined {
  if (typeof iface !== 'string' || iface === '') return 'want an interface name (eth1) or an IP address of this host';
  if (net.isIP(iface) !== 0 || isInterfaceName(iface)) return undefined;
  if (Buffer.byteLength(iface) > MAX_IFACE_NAME) return `"${iface}" is longer than an interface name can be (${MAX_IFACE_NAME} bytes)`;
  return `"${iface}" is neither an interface name (eth1) nor an IP address`;
}

/**
 * An iface given as an address: the address to bind to (net.connect's
 * localAddress), after checking that an interface of this host has it.
 */
export function sourceAddressOf(iface: string): string | undefined {
  if (net.isIP(iface) === 0) return undefined;
  const want = iface.toLowerCase();
  const ours = Object.values(networkInterfaces()).flatMap((l) => l ?? []).some((a) => a.address.toLowerCase() === want);
  if (!ours) throw new InterfaceError('ENODEV', `no network interface of this host has the address ${iface} (an iface given as an address binds to that source address)`, iface, 'EADDRNOTAVAIL');
  return iface;
}

function sockaddr(address: string, port: number): { family: number; addr: Buffer } {
  if (net.isIPv4(address)) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    address.split('.').forEach((o, i) => b.writeUInt8(Number(o), 4 + i));
    return { family: AF_INET, addr: b };
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  const [head, tail = ''] = address.split('%')[0].split('::');
  const parse = (s: string): number[] => (s ? s.split(':').flatMap((g) => (g.includes('.') ? v4Groups(g) : [parseInt(g, 16)])) : []);
  const h = parse(head);
  const t = address.includes('::') ? parse(tail) : [];
  const groups = [...h, ...Array(8 - h.length - t.length).fill(0), ...t];
  groups.forEach((g, i) => b.writeUInt16BE(g, 8 + i * 2));
  return { family: AF_INET6, addr: b };
}

function v4Groups(s: string): number[] {
  const o = s.split('.').map(Number);
  return [(o[0] << 8) | o[1], (o[2] << 8) | o[3]];
}

export interface BoundConnectOptions {
  host: string;
  port: number;
  /** The interface the connection must leave through (SO_BINDTODEVICE). */
  device: string;
  timeoutMs: number;
  signal?: AbortSignal;
  /** Passed to the net.Socket made over the connected fd. */
  onread?: net.OnReadOpts;
}

/** Why a bound connect failed: `code` ECONNECT (or ETIMEOUT, ESHUTDOWN), `errno` the kernel's answer. */
export class BoundConnectError extends IscsiNbdError {
  constructor(code: ErrorCode, message: string, readonly errno?: string) {
    super(code, message);
  }
}

/**
 * Connect to host:port through `device` only. Rejects with InterfaceError
 * (ENODEV, EPERM) when the interface cannot be bound, BoundConnectError
 * (ECONNECT with the errno: ECONNREFUSED, ENETUNREACH, ...; ETIMEOUT;
 * ESHUTDOWN when aborted) when the connect fails.
 */
export async function connectBound(o: BoundConnectOptions): Promise<net.Socket> {
  if (!isInterfaceName(o.device)) throw new ConfigError('ECONFIG', ifaceProblem(o.device) ?? `bad interface name "${o.device}"`);
  const deadline = Date.now() + o.timeoutMs;
  const address = net.isIP(o.host) !== 0 ? o.host : (await dns.promises.lookup(o.host)).address;
  const l = load();
  const { family, addr } = sockaddr(address, o.port);
  const fd = l.socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new BoundConnectError('ECONNECT', `socket() failed: ${errnoName(l.errno())}`, errnoName(l.errno()));
  let owned = true; // ours to close until a net.Socket holds it
  try {
    const name = Buffer.from(`${o.device}\0`);
    if (l.setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, name, name.length) !== 0) throw bindError(o.device, l.errno());
    if (l.connect(fd, addr, addr.length) !== 0) {
      const errno = l.errno();
      if (errno !== E.EINPROGRESS && errno !== E.EINTR) throw new BoundConnectError('ECONNECT', errnoName(errno), errnoName(errno));
      const pfd = Buffer.alloc(8); // struct pollfd { int fd; short events; short revents; }
      for (;;) {
        if (o.signal?.aborted) throw new BoundConnectError('ESHUTDOWN', 'connect cancelled');
        const left = deadline - Date.now();
        if (left <= 0) throw new BoundConnectError('ETIMEOUT', `no answer within ${o.timeoutMs} ms`, 'ETIMEDOUT');
        pfd.writeInt32LE(fd, 0);
        pfd.writeInt16LE(POLLOUT, 4);
        pfd.writeInt16LE(0, 6);
        const r = await l.pollOnWorker(pfd, 1, Math.min(POLL_SLICE_MS, Math.ceil(left)));
        if (r > 0 && (pfd.readInt16LE(6) & (POLLOUT | POLLERR | POLLHUP | POLLNVAL)) !== 0) break;
      }
      if (o.signal?.aborted) throw new BoundConnectError('ESHUTDOWN', 'connect cancelled');
      const val = Buffer.alloc(4);
      const len = Buffer.alloc(4);
      len.writeUInt32LE(4);
      if (l.getsockopt(fd, SOL_SOCKET, SO_ERROR, val, len) !== 0) throw new BoundConnectError('ECONNECT', `getsockopt(SO_ERROR) failed: ${errnoName(l.errno())}`);
      const soError = val.readInt32LE(0);
      if (soError !== 0) throw new BoundConnectError('ECONNECT', errnoName(soError), errnoName(soError));
    }
    const sock = new net.Socket({ fd, readable: true, writable: true, ...(o.onread ? { onread: o.onread } : {}) } as net.SocketConstructorOpts);
    owned = false;
    return sock;
  } finally {
    if (owned) l.close(fd);
  }
}
