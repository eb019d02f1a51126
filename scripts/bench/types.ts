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
  /** The same apart: user and system CPU seconds. */
  serverUserSec: number | null;
  serverSysSec: number | null;
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
  /** Server user and system CPU µs per I/O, totals over the successful runs. */
  userUsPerIo: number | null;
  sysUsPerIo: number | null;
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
  /** Decimals when the value is shown (default 2). */
  digits?: number;
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
  /** With --relay: fio through a bare Node.js relay in front of this row's qemu-nbd. */
  relay: RelaySummary | null;
}

/** One fio run through the relay (bench --relay, scripts/bench/relay.ts). */
export interface RelayRun {
  pair: number;
  ok: boolean;
  error?: string;
  iops: number | null;
  p50Us: number | null;
  p99Us: number | null;
  /** I/Os fio completed (bytes / block size). */
  ios: number | null;
  /** The relay's user and system CPU seconds during the run. */
  userSec: number | null;
  sysSec: number | null;
}

export interface RelaySummary {
  available: boolean;
  reason?: string;
  argv: string[];
  runs: RelayRun[];
  okRuns: number;
  /** Medians over the successful runs. */
  iops: number | null;
  p99Us: number | null;
  /** The relay's CPU µs per I/O, totals over the successful runs. */
  userUsPerIo: number | null;
  sysUsPerIo: number | null;
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
  /** --relay: each row also drives qemu-nbd through a bare Node.js relay (the Node.js floor). */
  relay: boolean;
  /** --only: the one side measured, or null for both. */
  only: SideName | null;
  /** --transport: only rows over this transport, or null for all. */
  transport: Transport | null;
  rows: string[];
}

/** The many-LUN section: one start of a server (or of N qemu-nbd processes) serving N idle LUNs. */
export interface IdleSample {
  side: SideName;
  luns: number;
  /** 1-based round (every LUN count once per side per round). */
  pair: number;
  ok: boolean;
  error?: string;
  /** Processes serving them: 1 for iscsi-nbd, N for qemu-nbd. */
  processes: number;
  /** From the (first) spawn until every LUN is ready, ms. */
  readyMs: number | null;
  /** TCP connections established to tgtd's portal, all processes together. */
  connections: number | null;
  /** VmRSS after the idle wait, all processes together, MiB. */
  rssMiB: number | null;
  /** VmHWM over the start and the idle wait, all processes together, MiB. */
  peakRssMiB: number | null;
  /** iscsi-nbd: the sessions its status document lists for the target. */
  statusSessions?: number;
}

/** Medians over the rounds of one side and LUN count. */
export interface IdleSummary {
  side: SideName;
  luns: number;
  okRuns: number;
  readyMs: number | null;
  connections: number | null;
  /** Fewest and most connections seen in a round. */
  connectionsRange: [number, number] | null;
  rssMiB: number | null;
  /** (rssMiB - rssMiB with the fewest LUNs) / (luns - fewest): what one more idle LUN costs. */
  rssPerExtraLunMiB: number | null;
}

/** One fio run of the drive part: `shape` one = one LUN at the whole depth, many = every driven LUN at its share. */
export interface DriveRun {
  side: SideName;
  pair: number;
  shape: 'one' | 'many';
  ok: boolean;
  error?: string;
  /** Per LUN (fio job). */
  luns: Array<{ name: string; iops: number; p50Us: number | null; p99Us: number | null }>;
  /** Sum over the LUNs. */
  iops: number | null;
  /** Highest per-LUN IOPS / lowest; 1 for one LUN. */
  spread: number | null;
  /** utime+stime of the serving processes during the run. */
  serverCpuSec: number | null;
  /** fio's own CPU (its jobs' usr+sys), s. */
  clientCpuSec: number | null;
  /** utime+stime of tgtd during the run. */
  targetCpuSec: number | null;
  /** fio's runtime (the longest job), s. */
  seconds: number | null;
  fioArgv: string[];
}

/** CPU time per I/O, µs, of each process on the machine: all share its CPUs. */
export interface CpuPerIo {
  server: number | null;
  client: number | null;
  target: number | null;
}

export interface DriveSummary {
  side: SideName;
  shape: 'one' | 'many';
  okRuns: number;
  /** Medians over the runs. */
  iops: number | null;
  spread: number | null;
  /** Median over the runs of each LUN's p99, by LUN name. */
  p99UsByLun: Record<string, number | null>;
  p99MinUs: number | null;
  p99MaxUs: number | null;
  /** Medians over the runs. */
  cpuUsPerIo: CpuPerIo;
}

export interface LunsReport {
  /** The target: one tgtd target whose LUNs are tgtd null LUNs. */
  target: string;
  lunCounts: number[];
  /** LUNs driven at once, and the queue depth of each (the lone LUN gets their sum). */
  driven: number;
  qdPerLun: number;
  /** iSCSI sessions per target iscsi-nbd was started with. */
  sessions: number;
  idleMs: number;
  idle: IdleSample[];
  idleSummary: IdleSummary[];
  drive: DriveRun[];
  driveSummary: DriveSummary[];
  /** Per side: median over rounds of (many IOPS / one IOPS). */
  manyOverOne: Partial<Record<SideName, number | null>>;
  goals: GoalResult[];
  misses: string[];
  commands: Record<string, string>;
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
  /** The many-LUN section; absent when it did not run. */
  luns?: LunsReport;
  misses: string[];
  errors: string[];
}
