import fs from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { IscsiSession } from '../iscsi/initiator';
import { parseIscsiUrl } from '../iscsi/url';
import { LogicalUnit } from '../scsi/lun';
import { ConfigError, IscsiNbdError, RequestError } from '../errors';
import { rootLogger } from '../log';
import { authFor, SecretOptions } from '../credentials';
import { initiatorName } from '../daemon/paths';
import { LogArgs, setupLogging, withCommonOptions } from './common';
import type { DigestPref } from '../config';

// `iscsi-nbd copy SRC DST`: an image file to a LUN, a LUN to an image file (or
// LUN to LUN), straight over iSCSI. Sparse-aware both ways: zero runs in the
// source become WRITE SAME/UNMAP on a LUN or holes in a file, and a LUN's
// deallocated extents (GET LBA STATUS, when reads of them return zeros) are
// never read at all.

export function options<T>(y: Argv<T>) {
  return y
    .positional('src', { type: 'string', demandOption: true, describe: 'image file or iscsi://host/<iqn>/<lun>' })
    .positional('dst', { type: 'string', demandOption: true, describe: 'image file or iscsi://host/<iqn>/<lun>' })
    .option('verify', { type: 'boolean', default: false, describe: 'read both sides back and compare after copying' })
    .option('progress', { choices: ['auto', 'bar', 'plain', 'none'] as const, default: 'auto', describe: 'bar on a terminal, plain lines otherwise' })
    .option('chunk', { type: 'number', default: 1024, describe: 'KiB per request' })
    .option('parallel', { type: 'number', default: 8, describe: 'requests in flight' })
    .option('sparse', { type: 'boolean', default: true, describe: 'turn zero runs into holes / WRITE SAME (--no-sparse writes every byte)' });
}

export interface CopyArgs extends SecretOptions, LogArgs {
  src: string;
  dst: string;
  verify?: boolean;
  progress?: 'auto' | 'bar' | 'plain' | 'none';
  chunk?: number;
  parallel?: number;
  sparse?: boolean;
  'initiator-name'?: string;
  digest?: DigestPref;
}

/** A byte range and whether it is known to read back as zeros without reading it. */
interface Extent {
  offset: number;
  length: number;
  zero: boolean;
}

interface Side {
  readonly label: string;
  readonly size: number;
  /** Alignment the side needs for I/O (a LUN's block size; 1 for files). */
  readonly blockSize: number;
  /** Extents covering [offset, offset+length). */
  extents(offset: number, length: number): Promise<Extent[]>;
  read(offset: number, length: number, into: Buffer): Promise<void>;
  write(offset: number, data: Buffer): Promise<void>;
  /** Make the range read back as zeros (a hole, UNMAP or WRITE SAME). */
  zero(offset: number, length: number): Promise<void>;
  /** Stats of what zero() did, for the summary. */
  finish(): Promise<void>;
  close(): Promise<void>;
}

const isUrl = (s: string): boolean => /^iscsi:\/\//i.test(s);

class FileSide implements Side {
  readonly blockSize = 1;
  private constructor(readonly label: string, private readonly fh: fs.promises.FileHandle, public size: number, private readonly sparseOut: boolean) {}

  static async openSource(p: string): Promise<FileSide> {
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(p, 'r');
    } catch (err) {
      throw new ConfigError('ECONFIG', `cannot open ${p}: ${(err as Error).message}`);
    }
    const st = await fh.stat();
    const size = st.isBlockDevice() ? await blockDeviceSize(fh) : st.size;
    return new FileSide(p, fh, size, false);
  }

  /** A regular file is created or truncated to `size` (so all of it is a hole to begin with). */
  static async openDest(p: string, size: number): Promise<FileSide> {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(p);
    } catch {
      st = undefined;
    }
    if (st?.isBlockDevice()) {
      const fh = await fs.promises.open(p, 'r+');
      const devSize = await blockDeviceSize(fh);
      if (devSize < size) {
        await fh.close();
        throw new RequestError('ENOSPC', `${p} has ${devSize} bytes, less than the ${size} bytes to copy`);
      }
      return new FileSide(p, fh, devSize, false);
    }
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(p, 'w+');
    } catch (err) {
      throw new ConfigError('ECONFIG', `cannot create ${p}: ${(err as Error).message}`);
    }
    await fh.truncate(size);
    return new FileSide(p, fh, size, true);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, zero: false }];
  }

  async read(offset: number, length: number, into: Buffer): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(into, done, length - done, offset + done);
      if (bytesRead === 0) {
        into.fill(0, done, length); // past the end: the padding of a last partial block
        return;
      }
      done += bytesRead;
    }
  }

  async write(offset: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  private zeroBuf?: Buffer;
  async zero(offset: number, length: number): Promise<void> {
    if (this.sparseOut) return; // freshly truncated: already a hole
    if (!this.zeroBuf) this.zeroBuf = Buffer.alloc(1 << 20);
    for (let pos = 0; pos < length; pos += this.zeroBuf.length) {
      await this.write(offset + pos, this.zeroBuf.subarray(0, Math.min(this.zeroBuf.length, length - pos)));
    }
  }

  async finish(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

async function blockDeviceSize(fh: fs.promises.FileHandle): Promise<number> {
  // No BLKGETSIZE64 from node: find the end by reading.
  let lo = 0;
  let hi = 1;
  const b = Buffer.alloc(1);
  const readable = async (pos: number): Promise<boolean> => (await fh.read(b, 0, 1, pos)).bytesRead === 1;
  while (await readable(hi - 1)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await readable(mid - 1)) lo = mid;
    else hi = mid;
  }
  return lo;
}

class LunSide implements Side {
  readonly label: string;
  private constructor(private readonly session: IscsiSession, private readonly lun: LogicalUnit, label: string) {
    this.label = label;
  }

  static async open(url: string, argv: CopyArgs, iname: string): Promise<LunSide> {
    const u = parseIscsiUrl(url);
    if (!u.target) throw new ConfigError('EBADURL', `${u.redacted()} names no target (want iscsi://host/<iqn>/<lun>)`);
    const label = u.redacted();
    const session = new IscsiSession({
      portal: { host: u.host, port: u.port },
      targetName: u.target,
      initiatorName: iname,
      auth: authFor(u, argv),
      digest: argv.digest ?? 'prefer-none',
      reconnect: true,
      timeouts: { replacementMs: 60_000 },
      log: rootLogger().child({ session: label }),
    });
    try {
      await session.connect();
    } catch (err) {
      session.close();
      throw withContext(err, `${label}: cannot log in`);
    }
    const lun = new LogicalUnit(session, u.lun ?? 0, { log: rootLogger().child({ url: label }) });
    try {
      await lun.open();
    } catch (err) {
      await session.logout().catch(() => undefined);
      session.close();
      throw withContext(err, `${label}`);
    }
    return new LunSide(session, lun, label);
  }

  get size(): number {
    return Number(this.lun.info.sizeBytes);
  }

  get blockSize(): number {
    return this.lun.info.blockSize;
  }

  get info() {
    return this.lun.info;
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const i = this.lun.info;
    // A deallocated extent is only known to read as zeros with LBPRZ.
    if (!i.capabilities.getLbaStatus || !i.provisioning.lbprz) return [{ offset, length, zero: false }];
    const out: Extent[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const before = at;
      const ex = await this.lun.lbaStatus(BigInt(at), BigInt(end - at));
      for (const e of ex) {
        const o = Number(e.offset);
        const l = Math.min(Number(e.length), end - o);
        if (l <= 0) continue;
        out.push({ offset: o, length: l, zero: e.state !== 'mapped' });
        at = o + l;
      }
      if (at <= before) break; // no progress: read the rest
    }
    if (at < end) out.push({ offset: at, length: end - at, zero: false });
    return out;
  }

  async read(offset: number, length: number, into: Buffer): Promise<void> {
    await this.lun.read(BigInt(offset), length, into);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.lun.write(BigInt(offset), data);
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.lun.writeZeroes(BigInt(offset), BigInt(length), { unmap: true });
  }

  async finish(): Promise<void> {
    await this.lun.flush();
  }

  async close(): Promise<void> {
    try {
      if (this.session.state === 'logged-in') await this.session.logout();
    } catch {
      // the session goes away anyway
    } finally {
      this.session.close();
    }
  }
}

function withContext(err: unknown, context: string): Error {
  if (err instanceof IscsiNbdError) return new IscsiNbdError(err.code, `${context}: ${err.message}`, { cause: err });
  return new IscsiNbdError('EIO', `${context}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

/** Zero runs of at least `grain` bytes (grain-aligned) in buf, as [start, end) pairs. */
export function zeroRuns(buf: Buffer, grain: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let start = -1;
  for (let pos = 0; pos < buf.length; pos += grain) {
    const end = Math.min(pos + grain, buf.length);
    const zero = isZero(buf, pos, end);
    if (zero && start < 0) start = pos;
    if (!zero && start >= 0) {
      runs.push([start, pos]);
      start = -1;
    }
  }
  if (start >= 0) runs.push([start, buf.length]);
  return runs;
}

const ZERO_CMP = Buffer.alloc(64 * 1024);
function isZero(buf: Buffer, start: number, end: number): boolean {
  for (let p = start; p < end; p += ZERO_CMP.length) {
    const n = Math.min(ZERO_CMP.length, end - p);
    if (buf.compare(ZERO_CMP, 0, n, p, p + n) !== 0) return false;
  }
  return true;
}

interface Progress {
  update(done: number): void;
  stop(): void;
}

function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function makeProgress(mode: CopyArgs['progress'], total: number, what: string): Progress {
  const tty = process.stderr.isTTY === true;
  const m = mode === 'auto' || mode === undefined ? (tty ? 'bar' : 'plain') : mode;
  if (m === 'none') return { update: () => undefined, stop: () => undefined };
  if (m === 'bar') {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const cliProgress = require('cli-progress') as typeof import('cli-progress');
    const started = Date.now();
    const bar = new cliProgress.SingleBar(
      {
        format: `${what} [{bar}] {percentage}% | {doneH} of {totalH} | {speed} | ETA {eta_formatted}`,
        stream: process.stderr,
        hideCursor: true,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(Math.max(total, 1), 0, { doneH: human(0), totalH: human(total), speed: '-' });
    return {
      update: (done) => {
        const s = (Date.now() - started) / 1000;
        bar.update(done, { doneH: human(done), speed: s > 0 ? `${human(done / s)}/s` : '-' });
      },
      stop: () => bar.stop(),
    };
  }
  const started = Date.now();
  let lastAt = 0;
  let lastPct = -1;
  const line = (done: number) => {
    const s = (Date.now() - started) / 1000;
    const rate = s > 0 ? done / s : 0;
    const eta = rate > 0 ? Math.round((total - done) / rate) : 0;
    const pct = total > 0 ? Math.floor((done * 100) / total) : 100;
    process.stderr.write(`${what}: ${pct}% ${human(done)} of ${human(total)}, ${human(rate)}/s, ETA ${eta} s\n`);
  };
  return {
    update: (done) => {
      const pct = total > 0 ? Math.floor((done * 10) / total) : 10;
      const now = Date.now();
      if (pct !== lastPct || now - lastAt > 5000) {
        lastPct = pct;
        lastAt = now;
        line(done);
      }
    },
    stop: () => undefined,
  };
}

/** Run fn over [0, total) in `chunk`-sized pieces, `parallel` at a time; stops at the first error. */
async function forChunks(total: number, chunk: number, parallel: number, fn: (offset: number, length: number, buf: Buffer) => Promise<void>, bufs: number): Promise<void> {
  let next = 0;
  let failed: unknown;
  const worker = async (): Promise<void> => {
    const buf = Buffer.allocUnsafe(chunk * bufs);
    while (failed === undefined && next < total) {
      const off = next;
      const len = Math.min(chunk, total - off);
      next += len;
      try {
        await fn(off, len, buf);
      } catch (err) {
        if (failed === undefined) failed = err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, parallel) }, worker));
  if (failed !== undefined) throw failed;
}

export interface CopySummary {
  bytes: number;
  dataBytes: number;
  zeroBytes: number;
  skippedReadBytes: number;
  seconds: number;
  verified: boolean;
}

/** The copy itself, for the CLI and for tests. */
export async function copy(argv: CopyArgs): Promise<CopySummary> {
  const log = rootLogger();
  const needName = isUrl(argv.src) || isUrl(argv.dst);
  const iname = needName ? initiatorName(argv['initiator-name']) : '';
  const sides: Side[] = [];
  try {
    const src: Side = isUrl(argv.src) ? await LunSide.open(argv.src, argv, iname) : await FileSide.openSource(argv.src);
    sides.push(src);
    const total = src.size;
    const dst: Side = isUrl(argv.dst) ? await LunSide.open(argv.dst, argv, iname) : await FileSide.openDest(argv.dst, total);
    sides.push(dst);
    if (dst instanceof LunSide) {
      if (dst.info.writeProtect) throw new RequestError('EPERM', `${dst.label} is write-protected`);
      const padded = Math.ceil(total / dst.blockSize) * dst.blockSize;
      if (dst.size < padded) {
        throw new RequestError('ENOSPC', `${dst.label} has ${dst.size} bytes, less than the ${total} bytes of ${src.label}: refusing to truncate the copy`);
      }
      if (dst.size > padded) log.warn({ dst: dst.label, dstSize: dst.size, srcSize: total }, 'the destination LUN is larger than the source; its tail is left as it is');
    }
    // The unit of I/O: a multiple of both block sizes, at least 64 KiB.
    const align = lcm(src.blockSize, dst.blockSize);
    const chunk = roundUp(Math.max(64 * 1024, Math.floor((argv.chunk ?? 1024) * 1024)), align);
    const grain = roundUp(Math.min(64 * 1024, chunk), align);
    // What we move: the source rounded up to the destination's block size.
    const span = roundUp(total, dst.blockSize);
    const parallel = Math.max(1, Math.min(64, Math.floor(argv.parallel ?? 8)));
    const sparse = argv.sparse !== false;
    const s: CopySummary = { bytes: total, dataBytes: 0, zeroBytes: 0, skippedReadBytes: 0, seconds: 0, verified: false };
    log.info({ src: src.label, dst: dst.label, bytes: total, chunk, parallel }, 'copy starting');
    const started = Date.now();
    let done = 0;
    const progress = makeProgress(argv.progress, span, 'copy');
    try {
      await forChunks(span, chunk, parallel, async (off, len, buf) => {
        for (const ex of await src.extents(off, len)) {
          if (ex.zero && sparse) {
            s.skippedReadBytes += ex.length;
            s.zeroBytes += ex.length;
            await dst.zero(ex.offset, ex.length);
            continue;
          }
          const view = buf.subarray(0, ex.length);
          // A source that ends inside the last block: read what exists, pad the rest.
          const readable = Math.max(0, Math.min(ex.length, total - ex.offset));
          if (readable > 0) await src.read(ex.offset, readable, view);
          if (readable < ex.length) view.fill(0, readable);
          let pos = 0;
          for (const [a, b] of sparse ? zeroRuns(view, grain) : []) {
            if (a > pos) await dst.write(ex.offset + pos, view.subarray(pos, a));
            await dst.zero(ex.offset + a, b - a);
            s.zeroBytes += b - a;
            s.dataBytes += a - pos;
            pos = b;
          }
          if (pos < view.length) {
            await dst.write(ex.offset + pos, view.subarray(pos));
            s.dataBytes += view.length - pos;
          }
        }
        done += len;
        progress.update(done);
      }, 1);
      await dst.finish();
    } finally {
      progress.stop();
    }
    s.seconds = (Date.now() - started) / 1000;
    log.info({ ...s }, 'copy done');
    if (argv.verify) {
      let checked = 0;
      const vp = makeProgress(argv.progress, span, 'verify');
      try {
        await forChunks(span, chunk, parallel, async (off, len, buf) => {
          const a = buf.subarray(0, len);
          const b = buf.subarray(len, 2 * len);
          await readOrZero(src, off, len, a, total);
          await readOrZero(dst, off, len, b, dst.size);
          if (!a.equals(b)) {
            let i = 0;
            while (i < len && a[i] === b[i]) i++;
            throw new IscsiNbdError('EIO', `verify failed: ${src.label} and ${dst.label} differ at byte ${off + i}`);
          }
          checked += len;
          vp.update(checked);
        }, 2);
      } finally {
        vp.stop();
      }
      s.verified = true;
    }
    return s;
  } finally {
    for (const side of sides.reverse()) await side.close();
  }
}

/** Read a range, skipping the read where the side knows it is zeros. */
async function readOrZero(side: Side, off: number, len: number, into: Buffer, readableEnd: number): Promise<void> {
  for (const ex of await side.extents(off, len)) {
    const v = into.subarray(ex.offset - off, ex.offset - off + ex.length);
    if (ex.zero) {
      v.fill(0);
      continue;
    }
    const n = Math.max(0, Math.min(ex.length, readableEnd - ex.offset));
    if (n > 0) await side.read(ex.offset, n, v);
    if (n < ex.length) v.fill(0, n);
  }
}

function gcd(a: number, b: number): number {
  while (b) [a, b] = [b, a % b];
  return a;
}
function lcm(a: number, b: number): number {
  return (a / gcd(a, b)) * b;
}
function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

export async function run(argv: CopyArgs): Promise<void> {
  // Quiet unless asked: the progress and the summary are the output.
  setupLogging(argv, 'warn');
  if (!isUrl(argv.src) && !isUrl(argv.dst)) throw new ConfigError('ECONFIG', 'one of SRC and DST must be an iscsi:// URL (use cp for file to file)');
  const s = await copy(argv);
  const rate = s.seconds > 0 ? s.bytes / s.seconds : 0;
  process.stdout.write(
    `copied ${s.bytes} bytes (${human(s.bytes)}) in ${s.seconds.toFixed(1)} s, ${human(rate)}/s: ` +
      `${human(s.dataBytes)} data, ${human(s.zeroBytes)} zeros${s.skippedReadBytes ? ` (${human(s.skippedReadBytes)} never read)` : ''}` +
      `${s.verified ? '; verified' : ''}\n`,
  );
}

export const copyCommand: CommandModule<object, CopyArgs> = {
  command: 'copy <src> <dst>',
  describe: 'copy an image file to a LUN or a LUN to an image file over iSCSI (sparse-aware)',
  builder: (y) => options(withCommonOptions(y)) as unknown as Argv<CopyArgs>,
  handler: (argv) => run(argv),
};
