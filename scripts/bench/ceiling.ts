// The ceiling: libiscsi's iscsi-perf reading straight from the target, no NBD in between.
//   iscsi-perf [-i initiator] [-m max_in_flight] [-b blocks_per_request] [-t seconds] [-r] URL
// It only reads (READ(16)), over one session, keeping -m requests in flight; -r picks each
// LBA at random (any block, not aligned to the transfer size), without -r it reads
// sequentially and wraps. -t takes whole seconds. It rewrites one progress line with
// '\r' and ends with "iops average N (M MB/s)", M being MiB/s truncated to an integer,
// so MiB/s is recomputed here from IOPS and the transfer size. It has no --help
// (prints usage on any unknown option) and exits 10 on errors.
// Rows with several NBD connections are matched by that many iscsi-perf processes at
// once (each its own session and initiator name); their IOPS are summed.

import { describeFailure, runProcess } from './exec';

export const ISCSI_PERF_BIN = process.env.ISCSI_PERF_BIN ?? 'iscsi-perf';

export interface CeilingJob {
  iscsiUrl: string;
  /** LUN block size in bytes. */
  blockSize: number;
  /** Transfer size in bytes (a multiple of blockSize). */
  bs: number;
  /** Requests in flight per session. */
  iodepth: number;
  random: boolean;
  /** Parallel sessions (processes). */
  sessions: number;
  seconds: number;
  initiatorPrefix: string;
}

export interface CeilingResult {
  ok: boolean;
  iops?: number;
  bwBytes?: number;
  error?: string;
  argv: string[][];
}

/** iscsi-perf argv (program first) for session number i. */
export function iscsiPerfArgv(job: CeilingJob, i: number): string[] {
  const blocks = Math.max(1, Math.round(job.bs / job.blockSize));
  const argv = [ISCSI_PERF_BIN, '-i', `${job.initiatorPrefix}-${i}`, '-m', String(job.iodepth), '-b', String(blocks),
    '-t', String(Math.max(1, Math.round(job.seconds)))];
  if (job.random) argv.push('-r');
  argv.push(job.iscsiUrl);
  return argv;
}

/** The final average IOPS from iscsi-perf's output, or null. */
export function parseIscsiPerf(text: string): number | null {
  const all = [...text.matchAll(/iops average (\d+) \(\d+ MB\/s\)/g)];
  if (all.length === 0) return null;
  return Number(all[all.length - 1][1]);
}

export async function runCeiling(job: CeilingJob): Promise<CeilingResult> {
  const argvs = Array.from({ length: job.sessions }, (_, i) => iscsiPerfArgv(job, i));
  const runs = await Promise.all(argvs.map((a) => runProcess(a[0], a.slice(1), { timeoutMs: job.seconds * 1000 + 30000 })));
  let iops = 0;
  for (const r of runs) {
    const v = r.code === 0 ? parseIscsiPerf(r.stdout) : null;
    if (v === null) return { ok: false, error: describeFailure('iscsi-perf', r), argv: argvs };
    iops += v;
  }
  return { ok: true, iops, bwBytes: iops * job.bs, argv: argvs };
}
