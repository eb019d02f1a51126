// Shapes of the benchmark's JSON output (bench-results.json). Units are in the names:
// MiB/s, microseconds, MiB, seconds. null means "not measured".

import type { RowDef, Transport } from './rows';
import type { SideName } from './servers';

export interface RunRecord {
  side: SideName;
  /** 1-based pair number. */
  pair: number;
  ok: boolean;
  error?: string;
  mibps: number | null;
  iops: number | null;
  p50Us: number | null;
  p99Us: number | null;
  meanUs: number | null;
  /** Bytes fio moved in the run. */
  bytes: number | null;
  runtimeMs: number | null;
  /** utime+stime of the server process during the run. */
  serverCpuSec: number | null;
  /** Peak RSS of the server during the run ("run") or since it started ("process"). */
  serverPeakRssMiB: number | null;
  peakRssScope: 'run' | 'process';
  /** Server CPU seconds per GiB moved. */
  cpuSecPerGiB: number | null;
  /** tgtd's CPU seconds during the run (context: is the target the bottleneck?). */
  targetCpuSec: number | null;
  /** fio's own CPU use, % of one CPU. */
  fioCpuPct: number | null;
  fioArgv: string[];
}

export interface SideSummary {
  side: SideName;
  available: boolean;
  /** Why the side did not run. */
  reason?: string;
  argv?: string[];
  runs: RunRecord[];
  okRuns: number;
  /** Medians over the side's successful runs. */
  mibps: number | null;
  iops: number | null;
  p50Us: number | null;
  p99Us: number | null;
  /** Highest per-run peak RSS. */
  peakRssMiB: number | null;
  /** Total server CPU seconds / total GiB moved, over the successful runs. */
  cpuSecPerGiB: number | null;
  /** Times the server had to be started again because it had exited. */
  restarts: number;
}

export interface CeilingSummary {
  available: boolean;
  reason?: string;
  mibps: number | null;
  iops: number | null;
  argv: string[][];
  /** Id of the earlier row whose iscsi-perf run this reuses (same LUN and job; the NBD transport does not matter to it). */
  reusedFrom?: string;
}

export interface GoalResult {
  name: string;
  /** Human form of the target, e.g. ">= 1.00". */
  target: string;
  value: number | null;
  /** null: could not be judged (missing data); counted as a miss. */
  met: boolean | null;
  stretch: boolean;
}

/** A row as defined in rows.ts, plus what the run measured. transport: 'tcp' (loopback) or 'unix' (AF_UNIX). */
export interface RowResult extends Pick<RowDef, 'id' | 'title' | 'lun' | 'transport' | 'rw' | 'bs' | 'iodepth' | 'conns'> {
  ours: SideSummary;
  qemu: SideSummary;
  /** Median over A/B pairs of ours MiB/s / qemu-nbd MiB/s. */
  ratio: number | null;
  ratioPairs: number[];
  /** Median over pairs of ours p99 / qemu-nbd p99 (lower is better). */
  p99Ratio: number | null;
  p99RatioPairs: number[];
  ceiling: CeilingSummary;
  /** ours median MiB/s / ceiling MiB/s. */
  fractionOfCeiling: number | null;
  qemuFractionOfCeiling: number | null;
  goals: GoalResult[];
  misses: string[];
}

export interface MachineInfo {
  hostname: string;
  cpuModel: string;
  cpus: number;
  memGiB: number;
  kernel: string;
  os: string;
  node: string;
  versions: Record<string, string | null>;
  gitCommit: string | null;
  gitDirty: boolean | null;
}

export interface BenchConfig {
  pairs: number;
  runtimeSec: number;
  rampSec: number;
  smoke: boolean;
  sessions: number | null;
  tmpfsLunMiB: number;
  ceiling: boolean;
  /** --only: the one side measured, or null for both. */
  only: SideName | null;
  /** --transport: only rows over this transport, or null for all. */
  transport: Transport | null;
  rows: string[];
}

export interface BenchReport {
  schema: 'iscsi-nbd-bench/1';
  startedAt: string;
  finishedAt: string | null;
  complete: boolean;
  machine: MachineInfo;
  config: BenchConfig;
  /** Command templates; PORT/URL are filled per run. */
  commands: Record<string, string>;
  target: { portal: string; tmpfsUrl: string; nullUrl: string; tmpfsBacking: string; blockSize: number };
  rows: RowResult[];
  misses: string[];
  errors: string[];
}
