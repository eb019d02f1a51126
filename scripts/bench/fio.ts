// fio with its nbd engine (libnbd) as the NBD client for both sides.
//
// Quirks of fio 3.33's nbd engine that shape this file:
// - setup() opens one connection per job only to learn the export size and closes it;
//   init() then opens the job's real connection. numjobs=N therefore means N NBD
//   connections at once (each job is its own process), plus N short probe connections.
// - It prints "fio: connected to NBD server" on stdout, which corrupts
//   --output-format=json on stdout; --output=FILE keeps the JSON clean.
// - With --group_reporting the jobs are merged into one entry: bw/iops summed,
//   latency percentiles computed over all jobs' samples. The many-LUN section instead runs
//   one job per export (fioJobsArgs: a --name and --uri each, no group reporting) and reads
//   every job's entry by its name.

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

/** What every run shares: the workload, the timing, the percentiles and the JSON report in outFile. */
function workloadArgs(job: FioJob, outFile: string): string[] {
  const args = [
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    `--numjobs=${job.numjobs}`,
    '--time_based',
    `--runtime=${job.runtimeSec}`,
    '--norandommap',
    '--percentile_list=50:99',
    '--output-format=json',
    `--output=${outFile}`,
    '--eta=never',
  ];
  if (job.rampSec && job.rampSec > 0) args.push(`--ramp_time=${job.rampSec}`);
  return args;
}

/** The fio argument list for one run; outFile receives the JSON report. */
export function fioArgs(uri: string, job: FioJob, outFile: string): string[] {
  return ['--name=bench', '--ioengine=nbd', `--uri=${uri}`, ...workloadArgs(job, outFile), '--group_reporting'];
}

/** One fio job of a run that drives several exports at once. */
export interface FioTarget {
  /** The job's name (fio --name), reported back by parseFioJobs. */
  name: string;
  uri: string;
}

/**
 * One fio run with a job per target, all at once (each job its own process and
 * NBD connection, `job` applying to every one), reported job by job.
 */
export function fioJobsArgs(targets: FioTarget[], job: FioJob, outFile: string): string[] {
  // Options before the first --name are global; each --name starts a job.
  return ['--ioengine=nbd', ...workloadArgs(job, outFile), ...targets.flatMap((t) => [`--name=${t.name}`, `--uri=${t.uri}`])];
}

function num(v: unknown): number {
  const n = typeof v === 'number' ? v : Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** The jobs of fio's JSON report (tolerating text before the first '{'). */
function fioJsonJobs(text: string): Array<Record<string, unknown>> {
  const start = text.indexOf('{');
  if (start < 0) throw new Error('fio produced no JSON');
  const doc = JSON.parse(text.slice(start)) as { jobs?: Array<Record<string, unknown>> };
  const jobs = doc.jobs ?? [];
  if (jobs.length === 0) throw new Error('fio JSON has no jobs');
  return jobs;
}

/** One job of fio's JSON report. Throws on a job error. */
function parseFioJob(j: Record<string, unknown>, rw: FioRw): FioResult {
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

/** Parse fio's JSON report of one (group-reported) job. Throws on a job error. */
export function parseFioJson(text: string, rw: FioRw): FioResult {
  const jobs = fioJsonJobs(text);
  if (jobs.length !== 1) throw new Error(`fio JSON has ${jobs.length} jobs; expected one (group_reporting)`);
  return parseFioJob(jobs[0], rw);
}

/** Parse fio's JSON report of a run of fioJobsArgs: each job by its name. Throws on a job error. */
export function parseFioJobs(text: string, rw: FioRw): Array<FioResult & { name: string }> {
  return fioJsonJobs(text).map((j) => ({ name: String(j.jobname), ...parseFioJob(j, rw) }));
}

export interface FioRun {
  ok: boolean;
  result?: FioResult;
  error?: string;
  argv: string[];
  wallMs: number;
}

/** Run fio with the arguments args(outFile) and parse its report; never rejects. */
async function runFioWith<T extends { bytes: number }>(args: (outFile: string) => string[], job: FioJob, parse: (text: string) => T[]):
Promise<{ ok: boolean; results?: T[]; error?: string; argv: string[]; wallMs: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-fio-'));
  const out = path.join(dir, 'fio.json');
  const argv = [FIO_BIN, ...args(out)];
  try {
    // Generous bound: connection setup, ramp, runtime, teardown.
    const timeoutMs = (job.runtimeSec + (job.rampSec ?? 0)) * 1000 + 60000;
    const r = await runProcess(FIO_BIN, argv.slice(1), { timeoutMs });
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
      const results = parse(text);
      if (results.some((x) => x.bytes <= 0)) return { ok: false, error: 'fio moved no data', argv, wallMs: r.ms };
      return { ok: true, results, argv, wallMs: r.ms };
    } catch (err) {
      return { ok: false, error: `fio output: ${(err as Error).message}`, argv, wallMs: r.ms };
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Run fio against an NBD URI; never rejects. */
export async function runFio(uri: string, job: FioJob): Promise<FioRun> {
  const { results, ...run } = await runFioWith((out) => fioArgs(uri, job, out), job, (text) => [parseFioJson(text, job.rw)]);
  return { ...run, ...(results ? { result: results[0] } : {}) };
}

export interface FioJobsRun extends Omit<FioRun, 'result'> {
  /** Per target, in the order given. */
  results?: Array<FioResult & { name: string }>;
}

/** Run one fio job per target at once (fioJobsArgs); never rejects. */
export function runFioJobs(targets: FioTarget[], job: FioJob): Promise<FioJobsRun> {
  return runFioWith((out) => fioJobsArgs(targets, job, out), job, (text) => {
    const byName = new Map(parseFioJobs(text, job.rw).map((r) => [r.name, r]));
    return targets.map((t) => {
      const r = byName.get(t.name);
      if (!r) throw new Error(`fio JSON has no job ${t.name}`);
      return r;
    });
  });
}
