// The thin libc adapter under the NBD netlink layer: socketpair, close, a
// NETLINK_GENERIC socket, and what keeps kernel sockets across a restart
// (sendmsg with SCM_RIGHTS to systemd, memfd, shutdown), called through koffi. Node has no netlink and no
// socketpair, hence FFI. koffi is required on first use only, so importing
// this module never fails on a machine without it.
//
// Threads: koffi's `.async` runs a call on a worker thread, and errno is not
// carried back from there. So the waiting (poll) runs on a worker, and the
// calls whose errno we report (socket, bind, recv with MSG_DONTWAIT, send by
// default) run on the main thread, where they never block.
import fs from 'node:fs';
import { endianness, constants as osConstants } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { NetlinkError, errnoName } from './errors';
import { type ErrorCode } from '../../errors';
import { parseMessages } from './codec';
import {
  NETLINK_GENERIC, SOL_NETLINK, NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_ADD_MEMBERSHIP, NLMSG_ERROR, NLMSG_DONE,
} from './constants';

type Koffi = typeof import('koffi');
type KoffiFunction = ReturnType<ReturnType<Koffi['load']>['func']>;

// Linux values shared by x86, arm, arm64, riscv, powerpc and loongarch (alpha,
// mips, parisc and sparc differ: we refuse those below).
const AF_UNIX = 1;
const AF_NETLINK = 16;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_RAW = 3;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;
const SHUT_RDWR = 2;
const MFD_CLOEXEC = 1;
const F_DUPFD_CLOEXEC = 1030;
const SOCK_CLOEXEC = 0o2000000;
const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;
const POLLIN = 0x1;
const POLLNVAL = 0x20;
const SUPPORTED_ARCHES = new Set(['x64', 'arm64', 'arm', 'ia32', 'riscv64', 'ppc64', 'loong64']);

const { EINTR, EAGAIN, EPERM, EACCES } = osConstants.errno;

/** Largest datagram we accept; an nbd STATUS for ~3000 devices fits. */
export const RECV_BUFFER_BYTES = 64 * 1024;
/** Longest single wait on a worker thread, so close() never waits longer than this. */
const POLL_SLICE_MS = 250;
/** Upper bound on reads for one request, whatever the kernel sends. */
const MAX_READS = 1024;
export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;

interface Libc {
  errno(): number;
  socket(domain: number, type: number, protocol: number): number;
  socketpair(domain: number, type: number, protocol: number, sv: Int32Array): number;
  bind(fd: number, addr: Buffer, len: number): number;
  setsockopt(fd: number, level: number, name: number, value: Buffer, len: number): number;
  send(fd: number, buf: Buffer, len: number, flags: number): number;
  sendOnWorker(fd: number, buf: Buffer, len: number, flags: number): Promise<number>;
  recv(fd: number, buf: Buffer, len: number, flags: number): number;
  pollOnWorker(fds: Buffer, nfds: number, timeoutMs: number): Promise<number>;
  close(fd: number): number;
  sendmsg(fd: number, msg: Record<string, unknown>, flags: number): number;
  memfdCreate(name: string, flags: number): number;
  shutdown(fd: number, how: number): number;
  dup(fd: number): number;
}

let libc: Libc | undefined;

function unsupported(message: string, cause?: unknown): NetlinkError {
  return new NetlinkError('ENOTSUP', message, { errno: 'ENOTSUP', cause });
}

function onWorker(fn: KoffiFunction, ...args: unknown[]): Promise<number> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, res: unknown) => (err ? reject(err) : resolve(Number(res))));
  });
}

function loadLibc(): Libc {
  if (libc) return libc;
  if (process.platform !== 'linux') throw unsupported('NBD netlink control needs Linux');
  // Netlink is host byte order and codec.ts writes little-endian.
  if (endianness() !== 'LE') throw unsupported('NBD netlink control supports little-endian hosts only');
  if (!SUPPORTED_ARCHES.has(process.arch)) throw unsupported(`NBD netlink control does not know ${process.arch}`);
  let koffi: Koffi;
  try {
    koffi = require('koffi') as Koffi;
  } catch (err) {
    throw unsupported('the koffi package is missing (npm ci installs it); it is needed to talk netlink', err);
  }
  let lib: ReturnType<Koffi['load']>;
  try {
    lib = koffi.load('libc.so.6');
  } catch {
    lib = koffi.load(null); // musl and others: libc is already in the process
  }
  const socket = lib.func('int socket(int, int, int)');
  const socketpair = lib.func('int socketpair(int, int, int, int *sv)');
  const bind = lib.func('int bind(int, const void *addr, uint32_t addrlen)');
  const setsockopt = lib.func('int setsockopt(int, int, int, const void *val, uint32_t len)');
  const send = lib.func('intptr_t send(int, const void *buf, size_t len, int flags)');
  const recv = lib.func('intptr_t recv(int, void *buf, size_t len, int flags)');
  const poll = lib.func('int poll(void *fds, unsigned long nfds, int timeout)');
  const close = lib.func('int close(int)');
  const iovec = koffi.struct('iscsi_nbd_iovec', { iov_base: 'void *', iov_len: 'size_t' });
  koffi.struct('iscsi_nbd_msghdr', {
    msg_name: 'void *', msg_namelen: 'uint32_t', msg_iov: koffi.pointer(iovec), msg_iovlen: 'size_t',
    msg_control: 'void *', msg_controllen: 'size_t', msg_flags: 'int',
  });
  const sendmsg = lib.func('intptr_t sendmsg(int, const iscsi_nbd_msghdr *msg, int flags)');
  const memfdCreate = lib.func('int memfd_create(const char *name, unsigned int flags)');
  const shutdown = lib.func('int shutdown(int, int)');
  const fcntl = lib.func('int fcntl(int, int, int)');
  libc = {
    errno: () => koffi.errno(),
    socket: (d, t, p) => Number(socket(d, t, p)),
    socketpair: (d, t, p, sv) => Number(socketpair(d, t, p, sv)),
    bind: (fd, a, l) => Number(bind(fd, a, l)),
    setsockopt: (fd, lv, n, v, l) => Number(setsockopt(fd, lv, n, v, l)),
    send: (fd, b, l, f) => Number(send(fd, b, l, f)),
    sendOnWorker: (fd, b, l, f) => onWorker(send, fd, b, l, f),
    recv: (fd, b, l, f) => Number(recv(fd, b, l, f)),
    pollOnWorker: (fds, n, t) => onWorker(poll, fds, n, t),
    close: (fd) => Number(close(fd)),
    sendmsg: (fd, m, f) => Number(sendmsg(fd, m, f)),
    memfdCreate: (n, f) => Number(memfdCreate(n, f)),
    shutdown: (fd, h) => Number(shutdown(fd, h)),
    dup: (fd) => Number(fcntl(fd, F_DUPFD_CLOEXEC, 3)),
  };
  return libc;
}

/** An error for a failed libc call; `errno` undefined when it ran on a worker and errno is lost. */
export function syscallError(call: string, errno: number | undefined): NetlinkError {
  if (errno === undefined) {
    return new NetlinkError('EIO', `${call} failed (errno is not available from a worker thread)`, { errno: 'EIO' });
  }
  const name = errnoName(errno);
  const code: ErrorCode = errno === EPERM || errno === EACCES ? 'EPERM' : 'EIO';
  return new NetlinkError(code, `${call} failed: ${name}`, { errno: name });
}

/** socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC): two connected stream socket fds. */
export function socketpairUnixStream(): [number, number] {
  const l = loadLibc();
  const sv = new Int32Array(2);
  if (l.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) !== 0) {
    throw syscallError('socketpair(AF_UNIX, SOCK_STREAM)', l.errno());
  }
  return [sv[0], sv[1]];
}

/** close(2). EINTR counts as closed (Linux always releases the fd). */
export function closeFd(fd: number): void {
  const l = loadLibc();
  if (l.close(fd) !== 0) {
    const e = l.errno();
    if (e !== EINTR) throw syscallError(`close(${fd})`, e);
  }
}

/** sockaddr_un for a path; a leading '@' is Linux's abstract namespace (systemd's NOTIFY_SOCKET may be one). */
function unixAddress(p: string): Buffer {
  const name = Buffer.from(p.startsWith('@') ? `\0${p.slice(1)}` : p, 'utf8');
  if (name.length > 107) throw new NetlinkError('EINVAL', `unix socket path too long: ${p}`, { errno: 'ENAMETOOLONG' });
  const a = Buffer.alloc(2 + name.length + (p.startsWith('@') ? 0 : 1));
  a.writeUInt16LE(AF_UNIX, 0);
  name.copy(a, 2);
  return a;
}

/**
 * One datagram to a unix datagram socket, with `fds` attached (SCM_RIGHTS):
 * the receiver gets its own copies. Node cannot pass fds over a datagram
 * socket, so this is how the daemon talks to systemd's NOTIFY_SOCKET.
 */
export function sendUnixDatagram(p: string, payload: Buffer, fds: readonly number[] = []): void {
  const l = loadLibc();
  const addr = unixAddress(p);
  const fd = l.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw syscallError('socket(AF_UNIX, SOCK_DGRAM)', l.errno());
  try {
    // struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; } then the ints, padded to 8.
    const control = fds.length ? Buffer.alloc(16 + Math.ceil((fds.length * 4) / 8) * 8) : null;
    if (control) {
      control.writeBigUInt64LE(BigInt(16 + fds.length * 4), 0);
      control.writeInt32LE(SOL_SOCKET, 8);
      control.writeInt32LE(SCM_RIGHTS, 12);
      fds.forEach((f, i) => control.writeInt32LE(f, 16 + i * 4));
    }
    const msg = {
      msg_name: addr, msg_namelen: addr.length, msg_iov: [{ iov_base: payload, iov_len: payload.length }], msg_iovlen: 1,
      msg_control: control, msg_controllen: control?.length ?? 0, msg_flags: 0,
    };
    const n = l.sendmsg(fd, msg, MSG_NOSIGNAL);
    if (n < 0) throw syscallError(`sendmsg(${p})`, l.errno());
  } finally {
    l.close(fd);
  }
}

/** An anonymous in-memory file (memfd_create, close-on-exec) holding `data`. */
export function memfdWith(name: string, data: Buffer): number {
  const l = loadLibc();
  const fd = l.memfdCreate(name, MFD_CLOEXEC);
  if (fd < 0) throw syscallError('memfd_create', l.errno());
  try {
    for (let off = 0; off < data.length; ) off += fs.writeSync(fd, data, off, data.length - off, off);
  } catch (err) {
    l.close(fd);
    throw err;
  }
  return fd;
}

/** Another fd for the same open file (close-on-exec). */
export function dupFd(fd: number): number {
  const l = loadLibc();
  const n = l.dup(fd);
  if (n < 0) throw syscallError(`fcntl(${fd}, F_DUPFD_CLOEXEC)`, l.errno());
  return n;
}

/** shutdown(fd, SHUT_RDWR): the peer sees the end now, whoever else holds a copy of the fd. */
export function shutdownFd(fd: number): void {
  const l = loadLibc();
  if (l.shutdown(fd, SHUT_RDWR) !== 0) throw syscallError(`shutdown(${fd})`, l.errno());
}

function intOption(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v, 0);
  return b;
}

export interface NetlinkRequestOptions {
  /** Give up waiting for the answer after this long. */
  timeoutMs?: number;
  /**
   * Call send() on a worker thread. The kernel runs a generic netlink command
   * inside send(), so a command that can block (DISCONNECT writes to the NBD
   * socket we serve) must not run on the thread that serves it. The cost: a
   * failing send() reports no errno. CONNECT keeps the default, because the
   * kernel records the sending thread as /sys/block/nbdN/pid.
   */
  sendOnWorker?: boolean;
}

/** A NETLINK_GENERIC socket, bound to a kernel-assigned port id. */
export class NetlinkSocket {
  private closed = false;
  private released = false;
  private polling = 0;
  private chain: Promise<unknown> = Promise.resolve();
  private readonly rbuf = Buffer.alloc(RECV_BUFFER_BYTES);

  private constructor(readonly fd: number) {}

  static open(): NetlinkSocket {
    const l = loadLibc();
    const fd = l.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd < 0) throw syscallError('socket(AF_NETLINK, NETLINK_GENERIC)', l.errno());
    // Best effort: extended acks give the kernel's reason in words; capped acks
    // keep error replies short. Kernels before 4.12 refuse both, which is fine.
    l.setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, intOption(1), 4);
    l.setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, intOption(1), 4);
    // struct sockaddr_nl: family u16, pad u16, pid u32 (0: kernel assigns), groups u32.
    const addr = Buffer.alloc(12);
    addr.writeUInt16LE(AF_NETLINK, 0);
    if (l.bind(fd, addr, addr.length) !== 0) {
      const e = l.errno();
      l.close(fd);
      throw syscallError('bind(AF_NETLINK)', e);
    }
    return new NetlinkSocket(fd);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Join a multicast group (a group id from CTRL_CMD_GETFAMILY). */
  addMembership(groupId: number): void {
    this.checkOpen();
    const l = loadLibc();
    if (l.setsockopt(this.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, intOption(groupId), 4) !== 0) {
      throw syscallError(`joining netlink multicast group ${groupId}`, l.errno());
    }
  }

  /**
   * Sends one request and resolves with every message the kernel answered for
   * `seq`, each a whole netlink message, the last one the NLMSG_ERROR (ACK or
   * error) or NLMSG_DONE. Requests on one socket run one at a time.
   */
  request(msg: Buffer, seq: number, opts: NetlinkRequestOptions = {}): Promise<Buffer[]> {
    const run = this.chain.then(() => this.runRequest(msg, seq, opts));
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * Waits up to `timeoutMs` for datagrams and returns the messages of the first
   * one ([] on timeout). For a multicast listener; ENOBUFS means the kernel
   * dropped notifications because we read too slowly.
   */
  async receive(timeoutMs: number): Promise<Buffer[]> {
    const chunk = await this.recvOnce(Date.now() + timeoutMs);
    return chunk === null ? [] : parseMessages(chunk).map((m) => Buffer.from(m.raw));
  }

  /** Closes the socket; an in-flight wait ends within a quarter second and rejects. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.polling === 0) this.release();
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    loadLibc().close(this.fd);
  }

  private checkOpen(): void {
    if (this.closed) throw new NetlinkError('ESHUTDOWN', 'netlink socket is closed', { errno: 'EBADF' });
  }

  private async runRequest(msg: Buffer, seq: number, opts: NetlinkRequestOptions): Promise<Buffer[]> {
    this.checkOpen();
    const l = loadLibc();
    const timeoutMs = opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const sent = opts.sendOnWorker
      ? await l.sendOnWorker(this.fd, msg, msg.length, 0)
      : l.send(this.fd, msg, msg.length, 0);
    if (sent < 0) throw syscallError('send(netlink)', opts.sendOnWorker ? undefined : l.errno());
    if (sent !== msg.length) {
      throw new NetlinkError('EIO', `send(netlink) sent ${sent} of ${msg.length} bytes`, { errno: 'EIO' });
    }
    const out: Buffer[] = [];
    for (let reads = 0; reads < MAX_READS; reads++) {
      const chunk = await this.recvOnce(deadline);
      if (chunk === null) {
        throw new NetlinkError('ETIMEOUT', `no netlink answer within ${timeoutMs} ms`, { errno: 'ETIMEDOUT' });
      }
      for (const m of parseMessages(chunk)) {
        if (m.seq !== seq) continue; // a late answer to an earlier request
        out.push(Buffer.from(m.raw));
        if (m.type === NLMSG_ERROR || m.type === NLMSG_DONE) return out;
      }
    }
    throw new NetlinkError('EIO', `no netlink acknowledgement in ${MAX_READS} reads`, { errno: 'EIO' });
  }

  /** One datagram (a copy), or null when the deadline passes first. */
  private async recvOnce(deadline: number): Promise<Buffer | null> {
    const l = loadLibc();
    for (;;) {
      this.checkOpen();
      const n = l.recv(this.fd, this.rbuf, this.rbuf.length, MSG_DONTWAIT | MSG_TRUNC);
      if (n >= 0) {
        // MSG_TRUNC makes recv return the datagram's real length.
        if (n > this.rbuf.length) {
          throw new NetlinkError('EIO', `netlink datagram of ${n} bytes exceeds ${this.rbuf.length}`, { errno: 'EMSGSIZE' });
        }
        return Buffer.from(this.rbuf.subarray(0, n));
      }
      const e = l.errno();
      if (e === EINTR) continue;
      if (e !== EAGAIN) throw syscallError('recv(netlink)', e);
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await this.waitReadable(Math.min(left, POLL_SLICE_MS));
    }
  }

  private async waitReadable(ms: number): Promise<void> {
    // struct pollfd: fd i32, events i16, revents i16.
    const pfd = Buffer.alloc(8);
    pfd.writeInt32LE(this.fd, 0);
    pfd.writeInt16LE(POLLIN, 4);
    this.polling++;
    let r: number;
    try {
      r = await loadLibc().pollOnWorker(pfd, 1, Math.max(0, Math.ceil(ms)));
    } finally {
      this.polling--;
      if (this.closed && this.polling === 0) this.release();
    }
    if (r > 0 && (pfd.readInt16LE(6) & POLLNVAL) !== 0) {
      throw new NetlinkError('EIO', 'poll(netlink): the fd is not open', { errno: 'EBADF' });
    }
    if (r < 0) await sleep(10); // EINTR on the worker; errno is not available there
  }
}
