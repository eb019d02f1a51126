// Who is at the other end of a unix socket: getsockopt(SO_PEERCRED), which
// Node does not offer, through koffi (as src/target/punch.ts calls
// fallocate). koffi is loaded on the first connection only; where it cannot
// be (no koffi, not Linux) the caller falls back on the socket file's mode.

import type net from 'node:net';
import { endianness } from 'node:os';

type Koffi = typeof import('koffi');

const SOL_SOCKET = 1;
/** Linux, every architecture this project runs on (alpha, mips, parisc, sparc differ). */
const SO_PEERCRED = 17;

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

type GetSockOpt = (fd: number, level: number, name: number, val: Buffer, len: Buffer) => number;

let loaded: GetSockOpt | Error | undefined;

function load(): GetSockOpt {
  if (loaded instanceof Error) throw loaded;
  if (loaded) return loaded;
  try {
    if (process.platform !== 'linux') throw new Error('SO_PEERCRED needs Linux');
    const koffi = require('koffi') as Koffi;
    let lib: ReturnType<Koffi['load']>;
    try {
      lib = koffi.load('libc.so.6');
    } catch {
      lib = koffi.load(null); // musl: libc is in the process already
    }
    const fn = lib.func('int getsockopt(int fd, int level, int name, _Inout_ uint8_t *val, _Inout_ uint32_t *len)');
    loaded = (fd, level, name, val, len) => Number(fn(fd, level, name, val, len));
    return loaded;
  } catch (err) {
    loaded = err instanceof Error ? err : new Error(String(err));
    throw loaded;
  }
}

/** The peer of an accepted unix socket, or undefined when it cannot be learned here. */
export function peerCred(sock: net.Socket): PeerCred | undefined {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return undefined;
  let getsockopt: GetSockOpt;
  try {
    getsockopt = load();
  } catch {
    return undefined;
  }
  const val = Buffer.alloc(12); // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
  const len = Buffer.alloc(4);
  if (endianness() === 'LE') len.writeUInt32LE(12);
  else len.writeUInt32BE(12);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, val, len) !== 0) return undefined;
  const le = endianness() === 'LE';
  const u32 = (o: number): number => (le ? val.readUInt32LE(o) : val.readUInt32BE(o));
  return { pid: u32(0), uid: u32(4), gid: u32(8) };
}
