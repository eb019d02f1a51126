import fs from 'node:fs';
import type { Argv, CommandModule } from 'yargs';
import { ConfigError } from '../errors';
import type { SecretOptions } from '../credentials';
import { defaultControlPath } from '../daemon/paths';
import { parseIscsiUrl } from '../iscsi/url';
import type { DigestPref } from '../config';
import { checkTuning, CHUNK_KIB_RANGE, copy, CopyInterrupted, CopyProgress, CopySummary, PARALLEL_RANGE } from '../copy/copy';
import { isStream, isUrl } from '../copy/sides';
import { servedByDaemon } from '../copy/served';
import { LogArgs, setupLogging, withCommonOptions } from './common';
import { stderrIsJson, tell } from '../log';
import { humanBytes } from '../util/size';

// `iscsi-nbd copy SRC DST`: the command line around the copy engine
// (src/copy): options, progress on stderr, Ctrl-C and the summary line.

export function options<T>(y: Argv<T>) {
  return y
    .positional('src', { type: 'string', demandOption: true, describe: 'image file or block device, iscsi://host/<iqn>/<lun>, - for stdin, or a pipe/FIFO (read to its end)' })
    .positional('dst', { type: 'string', demandOption: true, describe: 'image file or block device, iscsi://host/<iqn>/<lun>, - for stdout, or a pipe/FIFO//dev/null (written front to back)' })
    .option('verify', { type: 'boolean', default: false, describe: 'read both sides back and compare after copying' })
    .option('progress', { choices: ['auto', 'bar', 'plain', 'none'] as const, default: 'auto', describe: 'bar on a terminal, plain lines otherwise' })
    .option('chunk', { type: 'number', default: 1024, describe: `KiB per request, ${CHUNK_KIB_RANGE[0]}..${CHUNK_KIB_RANGE[1]}` })
    .option('parallel', { type: 'number', default: 8, describe: `requests in flight, ${PARALLEL_RANGE[0]}..${PARALLEL_RANGE[1]}` })
    .option('allow-short', {
      type: 'boolean',
      default: false,
      describe: 'a stream source (-, a pipe, a FIFO) may end before the destination LUN does; without it that fails (exit 1), as a pipe cannot tell a complete image from a producer that died',
    })
    .option('sparse', { type: 'boolean', default: true, describe: 'turn zero runs into holes / WRITE SAME (--no-sparse writes every byte)' })
    .option('format', {
      choices: ['auto', 'raw'] as const,
      default: 'auto',
      describe: 'auto refuses a source holding a qcow2, VMDK, VHD, VHDX, VDI, QED or LUKS image; raw copies its bytes as they are',
    })
    .option('force', { type: 'boolean', default: false, describe: 'copy even when an iscsi-nbd daemon on this host serves the LUN' })
    .option('control', { type: 'string', describe: 'control socket of the local daemon asked whether the LUN is in use (default: the one `serve` uses)' });
}

export interface CopyArgs extends SecretOptions, LogArgs {
  src: string;
  dst: string;
  verify?: boolean;
  progress?: 'auto' | 'bar' | 'plain' | 'none';
  chunk?: number;
  parallel?: number;
  sparse?: boolean;
  'allow-short'?: boolean;
  format?: 'auto' | 'raw';
  force?: boolean;
  control?: string;
  'initiator-name'?: string;
  digest?: DigestPref;
}

interface Progress {
  update(done: number): void;
  stop(): void;
}

function makeProgress(mode: CopyArgs['progress'], total: number | undefined, what: string): Progress {
  // A bar only where it cannot land in the middle of JSON log lines.
  const tty = process.stderr.isTTY === true && !stderrIsJson();
  const m = mode === 'auto' || mode === undefined ? (tty ? 'bar' : 'plain') : mode;
  if (m === 'none') return { update: () => undefined, stop: () => undefined };
  const started = Date.now();
  if (m === 'bar' && total !== undefined) {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const cliProgress = require('cli-progress') as typeof import('cli-progress');
    const bar = new cliProgress.SingleBar(
      {
        format: `${what} [{bar}] {percentage}% | {doneH} of {totalH} | {speed} | ETA {eta_formatted}`,
        stream: process.stderr,
        hideCursor: true,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(Math.max(total, 1), 0, { doneH: humanBytes(0), totalH: humanBytes(total), speed: '-' });
    return {
      update: (done) => {
        const s = (Date.now() - started) / 1000;
        bar.update(done, { doneH: humanBytes(done), speed: s > 0 ? `${humanBytes(done / s)}/s` : '-' });
      },
      stop: () => bar.stop(),
    };
  }
  // Plain lines: at every tenth (or every 5 s); a stream of unknown size only every 5 s.
  let lastAt = 0;
  let lastPct = -1;
  const line = (done: number) => {
    const s = (Date.now() - started) / 1000;
    const rate = s > 0 ? done / s : 0;
    if (total === undefined) {
      const text = `${what}: ${humanBytes(done)}, ${humanBytes(rate)}/s`;
      tell('info', text, { phase: what, done, rate: Math.round(rate) }, text);
      return;
    }
    const eta = rate > 0 ? Math.round((total - done) / rate) : 0;
    const pct = total > 0 ? Math.floor((done * 100) / total) : 100;
    const text = `${what}: ${pct}% ${humanBytes(done)} of ${humanBytes(total)}, ${humanBytes(rate)}/s, ETA ${eta} s`;
    tell('info', text, { phase: what, done, total, pct, rate: Math.round(rate), etaSeconds: eta }, text);
  };
  return {
    update: (done) => {
      const pct = total === undefined ? lastPct : total > 0 ? Math.floor((done * 10) / total) : 10;
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

/** One progress display per phase (copy, then verify), each started by its first report. */
function progressReporter(mode: CopyArgs['progress']): { onProgress: (p: CopyProgress) => void; stop: () => void } {
  let phase: CopyProgress['phase'] | undefined;
  let current: Progress | undefined;
  return {
    onProgress: (p) => {
      if (p.phase !== phase) {
        current?.stop();
        phase = p.phase;
        current = makeProgress(mode, p.total, p.phase);
        if (p.done === 0) return;
      }
      current?.update(p.done);
    },
    stop: () => {
      current?.stop();
      current = undefined;
    },
  };
}

export function summaryLine(s: CopySummary): string {
  const rate = s.seconds > 0 ? s.bytes / s.seconds : 0;
  return (
    `copied ${s.bytes} bytes (${humanBytes(s.bytes)})${s.stream ? ` from ${s.source}` : ''} in ${s.seconds.toFixed(1)} s, ${humanBytes(rate)}/s: ` +
    `${humanBytes(s.dataBytes)} data, ${humanBytes(s.zeroBytes)} zeros${s.skippedReadBytes ? ` (${humanBytes(s.skippedReadBytes)} never read)` : ''}` +
    `${s.paddedBytes ? `; the last block was padded with ${s.paddedBytes} zero bytes` : ''}` +
    `${s.unwrittenBytes ? `; the LUN's last ${s.unwrittenBytes} bytes were left as they were (--allow-short)` : ''}` +
    `${s.verified ? '; verified' : ''}\n`
  );
}

/** Whether a path is this process's stdout (/dev/stdout, /proc/self/fd/1, or the file stdout was redirected to). */
function isStdout(p: string): boolean {
  if (isUrl(p)) return false;
  try {
    const a = fs.statSync(p);
    const b = fs.fstatSync(1);
    return a.dev === b.dev && a.ino === b.ino;
  } catch {
    return false;
  }
}

/** Refuse (or, with --force, warn about) a LUN that a running daemon on this host serves. */
async function checkNotServed(argv: CopyArgs): Promise<void> {
  const control = argv.control ?? defaultControlPath();
  const sides: Array<[string, 'source' | 'destination']> = [[argv.src, 'source'], [argv.dst, 'destination']];
  for (const [url, role] of sides) {
    if (!isUrl(url)) continue;
    const hit = await servedByDaemon(control, url);
    if (!hit) continue;
    const label = parseIscsiUrl(url).redacted();
    const what = `${label} is served by the iscsi-nbd daemon running on this host${hit.pid !== undefined ? ` (pid ${hit.pid})` : ''}: ${hit.uses.join(', ')}`;
    if (argv.force) {
      tell('warn', `${what}; copying anyway (--force)`, {}, `iscsi-nbd: warning: ${what}; copying anyway (--force)`);
      continue;
    }
    tell('warn', what, {}, `iscsi-nbd: warning: ${what}`);
    throw new ConfigError(
      'ECONFIG',
      role === 'destination'
        ? `refusing to write to ${label} while it is in use (its users would see the disk change under them): ` +
            `remove the export or stop the daemon first (control socket ${control}), or pass --force`
        : `refusing to read ${label} while it is in use (a copy of a disk being written is not consistent): ` +
            `remove the export or stop the daemon first (control socket ${control}), or pass --force`,
    );
  }
}

export async function run(argv: CopyArgs): Promise<void> {
  // Quiet unless asked: the progress and the summary are the output.
  setupLogging(argv, 'warn', true);
  if (!isUrl(argv.src) && !isUrl(argv.dst)) throw new ConfigError('ECONFIG', 'one of SRC and DST must be an iscsi:// URL (use cp for file to file)');
  checkTuning(argv);
  await checkNotServed(argv);
  // With `-` (or /dev/stdout) as DST, stdout carries the data: everything else goes to stderr.
  const out = isStream(argv.dst) || isStdout(argv.dst) ? process.stderr : process.stdout;
  const progress = progressReporter(argv.progress);
  const ac = new AbortController();
  let sigints = 0;
  const onSigint = (): void => {
    if (++sigints > 1) {
      progress.stop();
      tell('warn', 'interrupted again: exiting now; the destination is partial', {}, '\niscsi-nbd: interrupted again: exiting now; the destination is partial');
      process.exit(130);
    }
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  try {
    const s = await copy({
      src: argv.src,
      dst: argv.dst,
      verify: argv.verify,
      chunk: argv.chunk,
      parallel: argv.parallel,
      sparse: argv.sparse,
      allowShort: argv['allow-short'],
      format: argv.format,
      initiatorName: argv['initiator-name'],
      digest: argv.digest,
      secrets: argv,
      onProgress: progress.onProgress,
      signal: ac.signal,
    });
    progress.stop();
    // With `-` as DST the summary shares stderr with the logs.
    if (out === process.stderr) tell('info', summaryLine(s).trimEnd(), { ...s }, summaryLine(s).trimEnd());
    else out.write(summaryLine(s));
  } catch (err) {
    progress.stop();
    if (!(err instanceof CopyInterrupted)) throw err;
    const what = err.phase === 'verify'
      ? `interrupted while verifying, after ${err.done} bytes of ${err.total}; the copy itself completed but is not verified`
      : `interrupted after ${err.done} bytes${err.total !== undefined ? ` of ${err.total}` : ''}; the destination is partial`;
    tell('warn', what, { phase: err.phase, done: err.done, total: err.total });
    process.exitCode = 130;
    // Sessions are closed; should anything still hold the process, do not wait for it.
    setTimeout(() => process.exit(130), 5000).unref();
  } finally {
    process.off('SIGINT', onSigint);
  }
}

/**
 * yargs 17 turns a lone `-` positional into "" (it re-parses positionals as
 * `--src -`, and `-` looks like an option to it): give it back its meaning
 * when the command line really had one.
 */
export function restoreDash(argv: Pick<CopyArgs, 'src' | 'dst'>, raw: readonly string[] = process.argv.slice(2)): void {
  if (!raw.includes('-')) return;
  if (argv.src === '' || (argv.src as unknown) === true) argv.src = '-';
  if (argv.dst === '' || (argv.dst as unknown) === true) argv.dst = '-';
}

export const copyCommand: CommandModule<object, CopyArgs> = {
  command: 'copy <src> <dst>',
  describe: 'copy an image file (or stdin) to a LUN or a LUN to an image file (or stdout) over iSCSI (sparse-aware)',
  builder: (y) => options(withCommonOptions(y)) as unknown as Argv<CopyArgs>,
  handler: (argv) => {
    restoreDash(argv);
    return run(argv);
  },
};
