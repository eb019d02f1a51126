// fallocate(2) with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE for the
// file backend: Node has no fallocate, so it is called through koffi (as the
// netlink layer calls socketpair, src/nbd/netlink/syscalls.ts). One UNMAP
// descriptor is one call on koffi's worker thread, not one process: spawning
// util-linux fallocate per descriptor made libiscsi's test suite take 20 min.
//
// errno does not come back from a worker thread (koffi), so a failed call is
// made once more on the main thread to learn why; that only happens on the
// way to giving up on punching for the file.

import { constants } from 'node:os';

type Koffi = typeof import('koffi');

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;

/** Make [offset, offset+length) of the open file `fd` a hole, keeping its size. */
export type PunchHole = (fd: number, offset: number, length: number) => Promise<void>;

interface Fallocate {
  call: (fd: number, mode: number, offset: number, length: number) => number;
  onWorker: (fd: number, mode: number, offset: number, length: number) => Promise<number>;
  errno: () => number;
}

let loaded: Fallocate | Error | undefined;

function load(): Fallocate {
  if (loaded instanceof Error) throw loaded;
  if (loaded) return loaded;
  try {
    if (process.platform !== 'linux') throw new Error('punching holes needs Linux');
    const koffi = require('koffi') as Koffi;
    let lib: ReturnType<Koffi['load']>;
    try {
      lib = koffi.load('libc.so.6');
    } catch {
      lib = koffi.load(null); // musl and others: libc is already in the process
    }
    // fallocate64 takes a 64-bit off_t everywhere glibc runs (on 64-bit hosts it is fallocate);
    // musl has only fallocate, with a 64-bit off_t.
    let fn: ReturnType<typeof lib.func>;
    try {
      fn = lib.func('int fallocate64(int fd, int mode, int64_t offset, int64_t len)');
    } catch {
      fn = lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
    }
    loaded = {
      call: (fd, mode, o, l) => Number(fn(fd, mode, o, l)),
      onWorker: (fd, mode, o, l) =>
        new Promise((resolve, reject) => {
          fn.async(fd, mode, o, l, (err: unknown, res: unknown) => (err ? reject(err) : resolve(Number(res))));
        }),
      errno: () => koffi.errno(),
    };
    return loaded;
  } catch (err) {
    loaded = err instanceof Error ? err : new Error(String(err));
    throw loaded;
  }
}

function errnoName(errno: number): string {
  for (const [name, n] of Object.entries(constants.errno)) if (n === errno) return name;
  return `errno ${errno}`;
}

/** fallocate(fd, PUNCH_HOLE | KEEP_SIZE, offset, length); rejects with the errno's name when it fails. */
export const punchHole: PunchHole = async (fd, offset, length) => {
  const f = load();
  const mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  if ((await f.onWorker(fd, mode, offset, length)) === 0) return;
  // Once more where errno can be read (a file system without punch support says EOPNOTSUPP).
  if (f.call(fd, mode, offset, length) === 0) return;
  throw new Error(`fallocate(PUNCH_HOLE) failed: ${errnoName(f.errno())}`);
};
