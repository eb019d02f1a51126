// The daemon's handle on the kernel NBD driver through generic netlink: make
// /dev/nbdN (CONNECT), hand it fresh sockets after a restart (RECONFIGURE),
// tear it down (DISCONNECT), list devices (STATUS), and hear about dead
// connections (LINK_DEAD multicast). This is what rbd-nbd does for Ceph.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, type ErrorCode } from '../../errors';
import { NetlinkError, NetlinkMessageError, errnoName } from './errors';
import {
  NetlinkSocket, socketpairUnixStream, closeFd as closeRawFd, DEFAULT_REQUEST_TIMEOUT_MS,
  type NetlinkRequestOptions,
} from './syscalls';
import {
  parseMessages, collectReply, buildGetFamily, parseGetFamilyReply, buildNbdConnect, buildNbdReconfigure,
  buildNbdDisconnect, buildNbdStatus, parseNbdConnectReply, parseNbdStatusReply, parseNbdLinkDead,
  type NlAck, type NlReply, type NlMessage, type GenlFamily,
} from './codec';
import {
  GENL_ID_CTRL, NBD_GENL_FAMILY_NAME, NBD_GENL_MCAST_GROUP_NAME, NBD_CMD_CONNECT, NBD_CMD_DISCONNECT,
  NBD_CMD_RECONFIGURE, NBD_CMD_STATUS, NBD_CMD_NAMES,
} from './constants';

export interface NbdConnectConfig {
  /** Which /dev/nbdN; without it the kernel takes a free device or makes a new one. */
  index?: number;
  sizeBytes: bigint;
  blockSize: number;
  /** NBD_FLAG_* transmission flags, as our handshake would advertise them. */
  serverFlags: number;
  /** Request timeout; on expiry the kernel marks the socket dead and re-queues the request. */
  timeoutSec: number;
  /** How long I/O waits for a RECONFIGURE once every socket is dead (0: fail at once). */
  deadConnTimeoutSec: number;
  /** NBD_CFLAG_* bits; default 0. */
  clientFlags?: number;
  /** Shown in /sys/block/nbdN/backend; a RECONFIGURE must repeat it. */
  backendId: string;
  /** The kernel's ends of our socket pairs. */
  fds: number[];
}

export interface NbdReconfigureConfig {
  index: number;
  /** Replacements for dead sockets; none for a resize alone. */
  fds: number[];
  /** A new size, with the same block size (an online resize). */
  sizeBytes?: bigint;
  blockSize?: number;
  backendId: string;
  timeoutSec?: number;
  deadConnTimeoutSec?: number;
}

export interface NbdDeviceStatus {
  index: number;
  /** The device has a kernel configuration: it is connected, or somebody holds it open. */
  connected: boolean;
}

export interface NbdKernelOptions {
  /** Per-command answer timeout. */
  timeoutMs?: number;
}

export interface MulticastWatch {
  close(): void;
  /** Settles once the listener has stopped and its socket is closed. */
  readonly done: Promise<void>;
}

const MODPROBE_HINT =
  'the kernel has no nbd module loaded: run `modprobe nbd` (as root); ' +
  '`modinfo nbd` shows whether this kernel has the module at all';

function commandName(cmd: number): string {
  return NBD_CMD_NAMES[cmd] ?? `command ${cmd}`;
}

function ackParts(ack: NlAck): string[] {
  const parts: string[] = [];
  if (ack.extAck) parts.push(ack.extAck);
  if (ack.missingAttrType !== undefined) parts.push(`missing attribute ${ack.missingAttrType}`);
  if (ack.badAttrOffset !== undefined) parts.push(`at request offset ${ack.badAttrOffset}`);
  return parts;
}

function ackDetail(ack: NlAck): string {
  const parts = ackParts(ack);
  return parts.length ? ` (${parts.join('; ')})` : '';
}

/** Turns the kernel's refusal of an nbd command into a message a person can act on. */
export function commandError(cmd: number, ack: NlAck, index?: number): NetlinkError {
  const errno = errnoName(ack.errno);
  const command = commandName(cmd);
  const details = { errno, command, ...(ack.extAck !== undefined ? { extAck: ack.extAck } : {}) };
  const dev = index === undefined ? 'the device' : devicePath(index);
  const make = (code: ErrorCode, message: string): NetlinkError => new NetlinkError(code, message, details);
  const detail = ackDetail(ack);
  if (errno === 'EPERM' || errno === 'EACCES') {
    return make('EPERM', `netlink ${command}: needs root (CAP_SYS_ADMIN) to configure NBD devices${detail}`);
  }
  if (cmd === NBD_CMD_CONNECT && errno === 'EBUSY' && index !== undefined) {
    return make('ECONFIG', `${dev} is in use already; pick another --device or leave it out${detail}`);
  }
  if (cmd === NBD_CMD_RECONFIGURE && errno === 'EINVAL') {
    if (ack.extAck && /backend/i.test(ack.extAck)) {
      return make('EINVAL',
        `cannot reattach ${dev}: its backend identifier differs from ours (kernel: "${ack.extAck}")`);
    }
    // Linux 6.x logs the reason with dev_err() instead of an extended ack.
    return make('EINVAL',
      `cannot reattach ${dev}: the kernel refused (${['EINVAL', ...ackParts(ack)].join('; ')}). ` +
      'It does so when the backend identifier differs from the one the device was connected with ' +
      '("must specify backend" / "backend image doesn\'t match" in dmesg), or when the device does not exist, ' +
      'was not connected through netlink, or is not running');
  }
  if (cmd === NBD_CMD_DISCONNECT && errno === 'EINVAL') {
    return make('EINVAL', `cannot disconnect ${dev}: no such device, or it is going away${detail}`);
  }
  if (cmd === NBD_CMD_CONNECT && errno === 'EINVAL') {
    return make('EINVAL',
      `netlink ${command} failed: EINVAL${detail}. dmesg has the reason; usual ones: a block size that is not a ` +
      'power of two between 512 and the page size, several sockets without NBD_FLAG_CAN_MULTI_CONN, ' +
      'a device that is going away');
  }
  const code: ErrorCode = errno === 'EINVAL' ? 'EINVAL' : errno === 'ETIMEDOUT' ? 'ETIMEOUT' : 'EIO';
  return make(code, `netlink ${command} failed: ${errno}${detail}`);
}

async function runRequest(
  sock: NetlinkSocket, msg: Buffer, seq: number, opts: NetlinkRequestOptions, what: string,
): Promise<NlReply> {
  let raws: Buffer[];
  try {
    raws = await sock.request(msg, seq, opts);
  } catch (err) {
    if (err instanceof NetlinkError && err.errno === 'ETIMEDOUT') {
      throw new NetlinkError('ETIMEOUT', `netlink ${what}: ${err.message}`, { errno: 'ETIMEDOUT', command: what });
    }
    throw err;
  }
  return collectReply(raws.flatMap((r) => parseMessages(r)), seq);
}

let seqCounter = (Math.random() * 0x7fffffff) >>> 0;
function nextSeq(): number {
  seqCounter = (seqCounter + 1) >>> 0;
  return seqCounter;
}

/** CTRL_CMD_GETFAMILY: the id and multicast groups of a generic netlink family. */
export async function resolveGenlFamily(
  sock: NetlinkSocket, name: string, timeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
): Promise<GenlFamily> {
  const seq = nextSeq();
  const reply = await runRequest(sock, buildGetFamily(name, seq), seq, { timeoutMs }, 'CTRL_CMD_GETFAMILY');
  if (reply.ack.errno !== 0) {
    const errno = errnoName(reply.ack.errno);
    if (errno === 'ENOENT' && name === NBD_GENL_FAMILY_NAME) {
      throw new NetlinkError('ENOTSUP', MODPROBE_HINT, { errno, command: 'CTRL_CMD_GETFAMILY' });
    }
    const code: ErrorCode = errno === 'ENOENT' ? 'ENOTSUP' : 'EIO';
    throw new NetlinkError(code,
      `generic netlink family "${name}": ${errno === 'ENOENT' ? 'not found' : errno}${ackDetail(reply.ack)}`,
      { errno, command: 'CTRL_CMD_GETFAMILY' });
  }
  const m = reply.replies.find((r) => r.type === GENL_ID_CTRL);
  if (!m) throw new NetlinkMessageError(`GETFAMILY "${name}" was acknowledged without a reply`);
  return parseGetFamilyReply(m);
}

/**
 * Listens on a separate socket to one multicast group of `family` and passes
 * each message on. Errors (ENOBUFS: notifications lost) go to onError and the
 * listener carries on.
 */
export function watchMulticast(
  family: GenlFamily, groupName: string, onMessage: (m: NlMessage) => void, onError?: (err: Error) => void,
): MulticastWatch {
  const group = family.mcastGroups.find((g) => g.name === groupName);
  if (!group) {
    throw new NetlinkError('ENOTSUP', `generic netlink family "${family.name}" has no multicast group "${groupName}"`,
      { errno: 'ENOENT' });
  }
  const sock = NetlinkSocket.open();
  try {
    sock.addMembership(group.id);
  } catch (err) {
    sock.close();
    throw err;
  }
  const loop = async (): Promise<void> => {
    while (!sock.isClosed) {
      try {
        for (const raw of await sock.receive(1000)) {
          for (const m of parseMessages(raw)) onMessage(m);
        }
      } catch (err) {
        if (sock.isClosed) break;
        onError?.(err instanceof Error ? err : new Error(String(err)));
        await new Promise((r) => setTimeout(r, 1000)); // no tight loop on a persistent error
      }
    }
  };
  const done = loop().finally(() => sock.close());
  return { close: () => sock.close(), done };
}

export class NbdKernel {
  private readonly watches = new Set<MulticastWatch>();
  private closed = false;

  private constructor(
    private readonly sock: NetlinkSocket,
    /** The resolved "nbd" generic netlink family. */
    readonly family: GenlFamily,
    private readonly timeoutMs: number,
  ) {}

  /** Opens a netlink socket and resolves family "nbd" (the kernel may load the module on demand). */
  static async open(opts: NbdKernelOptions = {}): Promise<NbdKernel> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const sock = NetlinkSocket.open();
    try {
      const family = await resolveGenlFamily(sock, NBD_GENL_FAMILY_NAME, timeoutMs);
      return new NbdKernel(sock, family, timeoutMs);
    } catch (err) {
      sock.close();
      throw err;
    }
  }

  /**
   * NBD_CMD_CONNECT. The kernel starts in transmission phase on `fds` (no
   * handshake) and answers with the device index. Sent from the main thread:
   * the kernel records the sender as /sys/block/nbdN/pid.
   */
  async connect(c: NbdConnectConfig): Promise<number> {
    const seq = nextSeq();
    const msg = buildNbdConnect(this.family.id, seq, { ...c, clientFlags: c.clientFlags ?? 0 });
    const reply = await this.run(NBD_CMD_CONNECT, msg, seq, {}, c.index);
    const m = reply.replies.find((r) => r.type === this.family.id);
    if (m) return parseNbdConnectReply(m, this.family.id);
    // The kernel drops its reply when it cannot allocate it; the device is connected all the same.
    if (c.index !== undefined) return c.index;
    throw new NetlinkError('EIO',
      'NBD_CMD_CONNECT succeeded but the kernel did not say which device it used; see `status()`',
      { errno: 'EIO', command: 'NBD_CMD_CONNECT' });
  }

  /**
   * NBD_CMD_RECONFIGURE: give a netlink-made device new sockets. The kernel
   * puts each fd in place of a *dead* socket; when none is dead it drops the
   * fd and still answers success (the peer end then reads EOF).
   */
  async reconfigure(c: NbdReconfigureConfig): Promise<void> {
    const seq = nextSeq();
    const msg = buildNbdReconfigure(this.family.id, seq, {
      index: c.index,
      fds: c.fds,
      backendId: c.backendId,
      ...(c.sizeBytes !== undefined ? { sizeBytes: c.sizeBytes, blockSize: c.blockSize } : {}),
      ...(c.timeoutSec !== undefined ? { timeoutSec: c.timeoutSec } : {}),
      ...(c.deadConnTimeoutSec !== undefined ? { deadConnTimeoutSec: c.deadConnTimeoutSec } : {}),
    });
    await this.run(NBD_CMD_RECONFIGURE, msg, seq, {}, c.index);
  }

  /**
   * NBD_CMD_DISCONNECT. The kernel writes NBD_CMD_DISC to our sockets inside
   * this call, so it is sent from a worker thread: the main thread must stay
   * free to read them.
   */
  async disconnect(index: number): Promise<void> {
    const seq = nextSeq();
    await this.run(NBD_CMD_DISCONNECT, buildNbdDisconnect(this.family.id, seq, index), seq,
      { sendOnWorker: true }, index);
  }

  /** NBD_CMD_STATUS of one device (an empty list if it does not exist) or of all. */
  async status(index?: number): Promise<NbdDeviceStatus[]> {
    const seq = nextSeq();
    const reply = await this.run(NBD_CMD_STATUS, buildNbdStatus(this.family.id, seq, index), seq, {}, index);
    const m = reply.replies.find((r) => r.type === this.family.id);
    if (!m) throw new NetlinkMessageError('NBD_CMD_STATUS was acknowledged without a reply');
    return parseNbdStatusReply(m, this.family.id);
  }

  /** Calls `onDead(index)` for every NBD_CMD_LINK_DEAD the kernel multicasts, until closed. */
  watchLinkDead(onDead: (index: number) => void, onError?: (err: Error) => void): MulticastWatch {
    if (this.closed) throw new NetlinkError('ESHUTDOWN', 'NbdKernel is closed', { errno: 'EBADF' });
    const w = watchMulticast(this.family, NBD_GENL_MCAST_GROUP_NAME, (m) => {
      try {
        const index = parseNbdLinkDead(m, this.family.id);
        if (index !== undefined) onDead(index);
      } catch (err) {
        onError?.(err instanceof Error ? err : new Error(String(err)));
      }
    }, onError);
    this.watches.add(w);
    void w.done.finally(() => this.watches.delete(w));
    return w;
  }

  close(): void {
    this.closed = true;
    for (const w of this.watches) w.close();
    this.sock.close();
  }

  private async run(
    cmd: number, msg: Buffer, seq: number, opts: NetlinkRequestOptions, index: number | undefined,
  ): Promise<NlReply> {
    if (this.closed) throw new NetlinkError('ESHUTDOWN', 'NbdKernel is closed', { errno: 'EBADF' });
    const reply = await runRequest(this.sock, msg, seq, { timeoutMs: this.timeoutMs, ...opts }, commandName(cmd));
    if (reply.ack.errno !== 0) throw commandError(cmd, reply.ack, index);
    return reply;
  }
}

// ---- devices, sysfs and fds ---------------------------------------------------

export function devicePath(index: number): string {
  if (!Number.isInteger(index) || index < 0) throw new ConfigError('ECONFIG', `bad NBD device index ${index}`);
  return `/dev/nbd${index}`;
}

/** "/dev/nbd3", "nbd3" or "3" -> 3. */
export function parseDevice(pathOrName: string): number {
  const m = /^(?:\/dev\/nbd|nbd)?(0|[1-9][0-9]{0,9})$/.exec(pathOrName.trim());
  const n = m ? Number(m[1]) : NaN;
  if (!m || n > 0x7fffffff) {
    throw new ConfigError('ECONFIG', `"${pathOrName}" is not an NBD device: expected /dev/nbdN, nbdN or N`);
  }
  return n;
}

function readSysfs(index: number, file: string, sysRoot: string): string | undefined {
  try {
    return readFileSync(join(sysRoot, 'block', `nbd${index}`, file), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // Absent file, or a device that went away while we read.
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ENODEV' || code === 'ENXIO') return undefined;
    throw err;
  }
}

/**
 * /sys/block/nbdN/backend: the BACKEND_IDENTIFIER given at CONNECT ('' when
 * none was). The file exists only while a netlink-made device is connected.
 * Only the newline the kernel appends is removed, so the value compares
 * exactly with what RECONFIGURE must send.
 */
export function readSysfsBackend(index: number, sysRoot = '/sys'): string | undefined {
  const s = readSysfs(index, 'backend', sysRoot);
  return s === undefined ? undefined : s.replace(/\n$/, '');
}

/**
 * /sys/block/nbdN/pid: the thread that started the device (for CONNECT, the
 * thread that sent it). RECONFIGURE does not change it, so after a reattach it
 * still names the previous daemon.
 */
export function readSysfsPid(index: number, sysRoot = '/sys'): number | undefined {
  const s = readSysfs(index, 'pid', sysRoot)?.trim();
  return s !== undefined && /^[0-9]+$/.test(s) ? Number(s) : undefined;
}

/**
 * A connected AF_UNIX stream pair: `ours` for `new net.Socket({ fd })`,
 * `kernel` for CONNECT/RECONFIGURE. The kernel takes its own reference to the
 * socket, so close `kernel` as soon as the command returns, success or not.
 */
export function createSocketPair(): { ours: number; kernel: number } {
  const [ours, kernel] = socketpairUnixStream();
  return { ours, kernel };
}

export function closeFd(fd: number): void {
  closeRawFd(fd);
}
