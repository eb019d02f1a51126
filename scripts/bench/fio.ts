// fio with its nbd engine (libnbd) as the NBD client for both sides.
//
// Quirks of fio 3.33's nbd engine that shape this file:
// - setup() opens one connection per job only to learn the export size and closes it;
//   init() then opens the job's real connection. numjobs=N therefore means N NBD
//   connections at once (each job is its own process), plus N short probe connections.
// - It prints "fio: connected to NBD server" on stdout, which corrupts
//   --output-format=json on stdout; --output=FILE keeps the JSON clean.
// - With --group_reporting the jobs are merged into one entry: bw/iops summed,
//   latency percentiles computed over all jobs' samples.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describeFailure, runProcess } from './exec';

export const FIO_BIN = process.env.FIO_BIN ?? 'fio';

export type FioRw = 'read' | 'write' | 'randread' | 'randwrite';

export interface FioJob {
  rw: FioRw;
  /** Block size in bytes. */
  bs: number;
  /** Queue depth per connection. */
  iodepth: number;
  /** Jobs = NBD connections. */
  numjobs: number;
  runtimeSec: number;
  /** fio --ramp_time (0 = none). */
  rampSec?: number;
}

export interface FioResult {
  /** Bytes transferred in the measured window (read + write). */
  bytes: number;
  /** Bytes per second. */
  bwBytes: number;
  iops: number;
  /** Completion latency percentiles, nanoseconds (null if fio gave none). */
  p50Ns: number | null;
  p99Ns: number | null;
  meanNs: number | null;
  /** Measured window, ms. */
  runtimeMs: number;
  /** fio's own CPU use (user+sys, % of one CPU), for context. */
  fioCpuPct: number;
}

/** The fio argument list for one run; outFile receives the JSON report. */
export function fioArgs(uri: string, job: FioJob, outFile: string): string[] {
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    `--numjobs=${job.numjobs}`,
    '--time_based',
    `--runtime=${job.runtimeSec}`,
    '--norandommap',
    '--group_reporting',
    '--percentile_list=50:99',
    '--output-format=json',
    `--output=${outFile}`,
    '--eta=never',
  ];
  if (job.rampSec && job.rampSec > 0) args.push(`--ramp_time=${job.rampSec}`);
  return args;
}

function num(v: unknown): number {
  const n = typeof v === 'number' ? v : Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** Parse fio's JSON report (tolerating text before the first '{'). Throws on a job error. */
export function parseFioJson(text: string, rw: FioRw): FioResult {
  const start = text.indexOf('{');
  if (start < 0) throw new Error('fio produced no JSON');
  const doc = JSON.parse(text.slice(start)) as { jobs?: Array<Record<string, unknown>> };
  const jobs = doc.jobs ?? [];
  if (jobs.length === 0) throw new Error('fio JSON has no jobs');
  if (jobs.length !== 1) throw new Error(`fio JSON has ${jobs.length} jobs; expected one (group_reporting)`);
  const j = jobs[0];
  if (num(j.error) !== 0) throw new Error(`fio job error ${String(j.error)}`);
  const dir = rw === 'read' || rw === 'randread' ? 'read' : 'write';
  const d = j[dir] as Record<string, unknown> | undefined;
  if (!d) throw new Error(`fio JSON has no ${dir} section`);
  const other = j[dir === 'read' ? 'write' : 'read'] as Record<string, unknown> | undefined;
  const clat = (d.clat_ns ?? {}) as { mean?: number; percentile?: Record<string, number> };
  const pct = clat.percentile ?? {};
  const pick = (p: string): number | null => {
    const k = Object.keys(pct).find((key) => Math.abs(Number(key) - Number(p)) < 1e-6);
    return k !== undefined && num(pct[k]) > 0 ? num(pct[k]) : null;
  };
  return {
    bytes: num(d.io_bytes) + num(other?.io_bytes),
    bwBytes: num(d.bw_bytes),
    iops: num(d.iops),
    p50Ns: pick('50'),
    p99Ns: pick('99'),
    meanNs: clat.mean !== undefined ? num(clat.mean) : null,
    runtimeMs: num(d.runtime),
    fioCpuPct: num(j.usr_cpu) + num(j.sys_cpu),
  };
}

export interface FioRun {
  ok: boolean;
  result?: FioResult;
  error?: string;
  argv: string[];
  wallMs: number;
}

/** Run fio against an NBD URI; never rejects. */
export async function runFio(uri: string, job: FioJob): Promise<FioRun> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-fio-'));
  const out = path.join(dir, 'fio.json');
  const args = fioArgs(uri, job, out);
  const argv = [FIO_BIN, ...args];
  try {
    // Generous bound: connection setup, ramp, runtime, teardown.
    const timeoutMs = (job.runtimeSec + (job.rampSec ?? 0)) * 1000 + 60000;
    const r = await runProcess(FIO_BIN, args, { timeoutMs });
    let text = '';
    try {
      text = fs.readFileSync(out, 'utf8');
    } catch {
      /* handled below */
    }
    if (r.code !== 0 || !text) {
      return { ok: false, error: describeFailure('fio', r), argv, wallMs: r.ms };
    }
    try {
      const result = parseFioJson(text, job.rw);
      if (result.bytes <= 0) return { ok: false, error: 'fio moved no data', argv, wallMs: r.ms };
      return { ok: true, result, argv, wallMs: r.ms };
    } catch (err) {
      return { ok: false, error: `fio output: ${(err as Error).message}`, argv, wallMs: r.ms };
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
