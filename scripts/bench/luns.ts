// The many-LUN section of the bench (--luns): LUNs of one tgtd target served at once.
//
// Idle: for each LUN count N (1, 8, 64), one `iscsi-nbd serve` with N exports against
// N qemu-nbd processes (qemu-nbd serves one LUN per process), started one side and one N
// at a time: the time from the spawn until every LUN is ready, the TCP connections to
// tgtd's portal that the processes hold, and their RSS after an idle wait.
// Drive: the first `driven` LUNs (8), each at QD8 at once (one fio job per export, 4K
// random read), against the first LUN alone at their summed depth (QD64), on the same
// servers: aggregate IOPS, each LUN's p99, and the spread (max/min IOPS) between LUNs.
//
// The LUNs are tgtd null LUNs (--bstype null): they store nothing and answer at once,
// so what is measured is the cost of each served LUN, not of the storage; 64 rdwr LUNs
// would also start 64 pools of I/O threads in tgtd.
//
// iscsi-nbd is ready when its control socket (the document `iscsi-nbd status --json`
// prints) lists every export ready or degraded, the daemon's own readiness, as /readyz
// (with --metrics) has it. qemu-nbd has none: a process is ready when its export answers
// an NBD handshake (nbdinfo --size, as the other rows wait for it).

import path from 'node:path';
import { readControl } from '../../src/daemon/control';
import type { DaemonStatus } from '../../src/daemon/status';
import type { Tgtd } from '../../test/helpers/tgtd';
import { sleep } from './exec';
import { runFioJobs, type FioJob, type FioTarget } from './fio';
import { sampleProc, tcpConnectionsTo } from './procstat';
import { fmtCpu, missLine } from './report';
import { NbdServer, serverArgv, serverEnv, type ReadyCheck, type ServerSpec, type SideName } from './servers';
import { max, median, sum } from './stats';
import type { CpuPerIo, DriveRun, DriveSummary, GoalResult, IdleSample, IdleSummary, LunsReport } from './types';

const MiB = 1024 * 1024;
export const LUNS_TID = 2;
export const LUNS_IQN = 'iqn.2026-11.test.iscsi-nbd:bench-luns';
export const LUN_COUNTS = [1, 8, 64];
export const DRIVEN_LUNS = 8;
export const QD_PER_LUN = 8;
/** `serve`'s sessions per target when --sessions is not given. */
export const SERVE_DEFAULT_SESSIONS = 2;
/** What one more idle LUN may add to iscsi-nbd's RSS. */
export const RSS_PER_LUN_LIMIT_MIB = 1;
/** Our reading of "no LUN starves another": the busiest LUN gets at most 1.5x the IOPS of the idlest. */
export const SPREAD_LIMIT = 1.5;
/** The most LUNs the section asks for (tgtd numbers LUNs up to 255; LUN 0 is its controller). */
export const MAX_LUNS = 255;
const READY_POLL_MS = 25;
const LABEL = 'luns (many LUNs of one target)';

export interface LunsOptions {
  counts: number[];
  driven: number;
  qdPerLun: number;
  pairs: number;
  runtimeSec: number;
  rampSec: number;
  /** Wait after ready before RSS is read, ms. */
  idleMs: number;
  /** serve --sessions, or null for its default. */
  sessions: number | null;
}

export interface LunsContext {
  tgtd: Tgtd;
  repoRoot: string;
  /** The bench's private temp dir (control sockets). */
  runDir: string;
  sides: SideName[];
  /** Why a side does not run (--only, not built). */
  unavailable: Map<SideName, string>;
  errors: string[];
  log: (line: string) => void;
}

/** The LUNs the section's target needs. */
export function lunsNeeded(o: Pick<LunsOptions, 'counts' | 'driven'>): number {
  return Math.max(...o.counts, o.driven);
}

/** The section's tgtd target, for startTgtdWithLuns: `n` null LUNs, numbered from 1. */
export function lunsTarget(n: number): { tid: number; iqn: string; luns: Array<{ lun: number; bstype: 'null'; path: string }> } {
  return { tid: LUNS_TID, iqn: LUNS_IQN, luns: Array.from({ length: n }, (_, i) => ({ lun: i + 1, bstype: 'null', path: '/dev/null' })) };
}

export const lunName = (lun: number): string => `lun${lun}`;

/** The server specs that serve LUNs 1..n: one iscsi-nbd with n exports, or n qemu-nbd. */
export function lunsSpecs(side: SideName, n: number, url: (lun: number) => string, base: { repoRoot: string; runDir: string; sessions: number | null }): ServerSpec[] {
  const exp = (lun: number) => ({ name: lunName(lun), iscsiUrl: url(lun) });
  const luns = Array.from({ length: n }, (_, i) => i + 1);
  if (side === 'qemu-nbd') return luns.map((lun) => ({ side, iscsiUrl: url(lun), repoRoot: base.repoRoot, exports: [exp(lun)] }));
  return [{
    side, iscsiUrl: url(1), repoRoot: base.repoRoot, exports: luns.map(exp), controlPath: path.join(base.runDir, 'control-luns.sock'),
    ...(base.sessions !== null ? { sessions: base.sessions } : {}),
  }];
}

/** The daemon's readiness: its status document lists `n` exports, each ready or degraded. */
function everyExportReady(controlPath: string, n: number): ReadyCheck {
  return async (srv, deadline) => {
    let last = 'no status yet';
    while (Date.now() < deadline) {
      const died = srv.died();
      if (died) throw died;
      try {
        const st = (await readControl(controlPath, 2000)) as DaemonStatus;
        const waiting = st.exports.filter((e) => e.state !== 'ready' && e.state !== 'degraded');
        if (st.exports.length === n && waiting.length === 0) return;
        last = `${waiting.length} of ${st.exports.length} exports not ready (${waiting.slice(0, 3).map((e) => `${e.name}: ${e.state}${e.error ? ` ${e.error}` : ''}`).join('; ')})`;
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(READY_POLL_MS);
    }
    throw new Error(`iscsi-nbd: not every export was ready in time: ${last}`);
  };
}

/** The processes of one side that serve LUNs 1..n, all ready. */
class Fleet {
  private constructor(readonly side: SideName, readonly servers: NbdServer[], readonly targets: FioTarget[]) {}

  static async start(side: SideName, specs: ServerSpec[]): Promise<Fleet> {
    const started = await Promise.allSettled(specs.map((spec) => NbdServer.start(spec,
      spec.side === 'iscsi-nbd' ? everyExportReady(spec.controlPath!, spec.exports!.length) : undefined)));
    const servers = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.all(servers.map((s) => s.stop()));
      throw failed.reason;
    }
    const targets = servers.flatMap((s) => s.spec.exports!.map((e) => ({ name: e.name, uri: s.uriOf(e.name) })));
    return new Fleet(side, servers, targets);
  }

  get pids(): number[] {
    return this.servers.map((s) => s.pid);
  }

  /** From the first spawn until the last one was ready, ms. */
  get readyMs(): number {
    return Math.max(...this.servers.map((s) => s.readyAt!)) - Math.min(...this.servers.map((s) => s.spawnedAt));
  }

  /** Why it stopped serving, or null. */
  exited(): string | null {
    const gone = this.servers.find((s) => s.exited);
    return gone ? `${gone.side} ${gone.exited}: ${gone.log.trim().split('\n').slice(-3).join(' | ')}` : null;
  }

  /** utime+stime of every process, s (null when one cannot be read). */
  cpuSec(): number | null {
    const samples = this.pids.map(sampleProc);
    return samples.every((x) => x !== null) ? sum(samples.map((x) => x!.cpuSec)) : null;
  }

  stop(): Promise<void[]> {
    return Promise.all(this.servers.map((s) => s.stop()));
  }
}

/** Sum of a per-process reading, or null when any process gave none. */
function total(pids: number[], read: (pid: number) => number | null): number | null {
  const v = pids.map(read);
  return v.every((x) => x !== null) ? sum(v as number[]) : null;
}

async function idleSample(side: SideName, n: number, pair: number, o: LunsOptions, ctx: LunsContext): Promise<IdleSample> {
  const specs = lunsSpecs(side, n, (lun) => ctx.tgtd.url(LUNS_TID, lun), { repoRoot: ctx.repoRoot, runDir: ctx.runDir, sessions: o.sessions });
  const base: IdleSample = { side, luns: n, pair, ok: false, processes: specs.length, readyMs: null, connections: null, rssMiB: null, peakRssMiB: null };
  let fleet: Fleet;
  try {
    fleet = await Fleet.start(side, specs);
  } catch (err) {
    return { ...base, error: (err as Error).message };
  }
  try {
    const readyMs = fleet.readyMs;
    await sleep(o.idleMs);
    const gone = fleet.exited();
    if (gone) return { ...base, readyMs, error: gone };
    const s: IdleSample = {
      ...base, ok: true, readyMs,
      connections: total(fleet.pids, (pid) => tcpConnectionsTo(pid, ctx.tgtd.port)),
      rssMiB: total(fleet.pids, (pid) => sampleProc(pid)?.rssBytes ?? null),
      peakRssMiB: total(fleet.pids, (pid) => sampleProc(pid)?.peakRssBytes ?? null),
    };
    if (s.rssMiB !== null) s.rssMiB /= MiB;
    if (s.peakRssMiB !== null) s.peakRssMiB /= MiB;
    if (side === 'iscsi-nbd') {
      const st = (await readControl(specs[0].controlPath!, 5000).catch(() => null)) as DaemonStatus | null;
      const t = st?.targets?.find((x) => x.target === LUNS_IQN);
      if (t) s.statusSessions = t.sessions.length;
    }
    return s;
  } finally {
    await fleet.stop();
  }
}

function fmtIdle(s: IdleSample): string {
  if (!s.ok) return `${s.side} ${s.luns} LUN(s) round ${s.pair}: FAILED: ${s.error}`;
  return `${s.side} ${s.luns} LUN(s) round ${s.pair}: ready in ${s.readyMs!.toFixed(0)} ms, ${s.connections ?? '?'} iSCSI connection(s), ` +
    `RSS ${s.rssMiB?.toFixed(1) ?? '?'} MiB (${s.processes} process(es))${s.statusSessions !== undefined ? `, status lists ${s.statusSessions} session(s)` : ''}`;
}

async function driveRun(fleet: Fleet, shape: 'one' | 'many', pair: number, o: LunsOptions, targetPid: number | undefined): Promise<DriveRun> {
  const targets = shape === 'one' ? fleet.targets.slice(0, 1) : fleet.targets;
  const job: FioJob = { rw: 'randread', bs: 4096, iodepth: shape === 'one' ? o.driven * o.qdPerLun : o.qdPerLun, numjobs: 1, runtimeSec: o.runtimeSec };
  const base: DriveRun = {
    side: fleet.side, pair, shape, ok: false, luns: [], iops: null, spread: null, serverCpuSec: null, clientCpuSec: null, targetCpuSec: null, seconds: null, fioArgv: [],
  };
  const targetCpu = (): number | null => (targetPid === undefined ? null : sampleProc(targetPid)?.cpuSec ?? null);
  const before = fleet.cpuSec();
  const tBefore = targetCpu();
  const run = await runFioJobs(targets, job);
  const after = fleet.cpuSec();
  const tAfter = targetCpu();
  base.fioArgv = run.argv;
  if (!run.ok || !run.results) {
    const gone = fleet.exited();
    return { ...base, error: `${run.error ?? 'fio failed'}${gone ? `; ${gone}` : ''}` };
  }
  const luns = run.results.map((r) => ({ name: r.name, iops: r.iops, p50Us: r.p50Ns === null ? null : r.p50Ns / 1000, p99Us: r.p99Ns === null ? null : r.p99Ns / 1000 }));
  const iops = luns.map((l) => l.iops);
  return {
    ...base, ok: true, luns, iops: sum(iops),
    spread: Math.min(...iops) > 0 ? Math.max(...iops) / Math.min(...iops) : null,
    serverCpuSec: before !== null && after !== null ? after - before : null,
    clientCpuSec: sum(run.results.map((r) => (r.fioCpuPct / 100) * (r.runtimeMs / 1000))),
    targetCpuSec: tBefore !== null && tAfter !== null ? tAfter - tBefore : null,
    seconds: Math.max(...run.results.map((r) => r.runtimeMs)) / 1000,
  };
}

/** A run's CPU of each process per I/O, µs. */
export function cpuPerIo(r: DriveRun): CpuPerIo {
  const ios = r.iops !== null && r.seconds ? r.iops * r.seconds : 0;
  const per = (sec: number | null): number | null => (sec === null || ios <= 0 ? null : (sec * 1e6) / ios);
  return { server: per(r.serverCpuSec), client: per(r.clientCpuSec), target: per(r.targetCpuSec) };
}

function fmtDrive(r: DriveRun, o: LunsOptions): string {
  const what = r.shape === 'one' ? `1 LUN x QD${o.driven * o.qdPerLun}` : `${r.luns.length || o.driven} LUNs x QD${o.qdPerLun}`;
  if (!r.ok) return `${r.side} ${what} pair ${r.pair}: FAILED: ${r.error}`;
  const p99 = r.luns.map((l) => l.p99Us).filter((x): x is number => x !== null);
  return `${r.side} ${what} pair ${r.pair}: ${r.iops!.toFixed(0)} IOPS, p99 ${p99.length ? `${Math.min(...p99).toFixed(0)}-${Math.max(...p99).toFixed(0)}` : '?'} us` +
    `${r.shape === 'many' ? `, spread ${r.spread?.toFixed(2) ?? '?'} (${r.luns.map((l) => l.iops.toFixed(0)).join(' ')})` : ''}, CPU us/IO ${fmtCpu(cpuPerIo(r))}`;
}

export function summarizeIdle(samples: IdleSample[], side: SideName, counts: number[]): IdleSummary[] {
  const fewest = Math.min(...counts);
  const rows = counts.map((luns): IdleSummary => {
    const ok = samples.filter((s) => s.side === side && s.luns === luns && s.ok);
    const conns = ok.map((s) => s.connections).filter((c): c is number => c !== null);
    return {
      side, luns, okRuns: ok.length,
      readyMs: median(ok.map((s) => s.readyMs)),
      connections: median(conns),
      connectionsRange: conns.length ? [Math.min(...conns), Math.max(...conns)] : null,
      rssMiB: median(ok.map((s) => s.rssMiB)),
      rssPerExtraLunMiB: null,
    };
  });
  const base = rows.find((r) => r.luns === fewest)?.rssMiB ?? null;
  for (const r of rows) {
    if (r.luns > fewest && base !== null && r.rssMiB !== null) r.rssPerExtraLunMiB = (r.rssMiB - base) / (r.luns - fewest);
  }
  return rows;
}

export function summarizeDrive(runs: DriveRun[], side: SideName, shape: 'one' | 'many'): DriveSummary {
  const ok = runs.filter((r) => r.side === side && r.shape === shape && r.ok);
  const names = [...new Set(ok.flatMap((r) => r.luns.map((l) => l.name)))];
  const p99UsByLun = Object.fromEntries(names.map((n) => [n, median(ok.map((r) => r.luns.find((l) => l.name === n)?.p99Us))]));
  const p99 = Object.values(p99UsByLun).filter((x): x is number => x !== null);
  return {
    side, shape, okRuns: ok.length,
    iops: median(ok.map((r) => r.iops)),
    spread: median(ok.map((r) => r.spread)),
    p99UsByLun,
    p99MinUs: p99.length ? Math.min(...p99) : null,
    p99MaxUs: max(p99),
    cpuUsPerIo: {
      server: median(ok.map((r) => cpuPerIo(r).server)),
      client: median(ok.map((r) => cpuPerIo(r).client)),
      target: median(ok.map((r) => cpuPerIo(r).target)),
    },
  };
}

/** Per pair: many IOPS / one IOPS of a side; their median. */
export function manyOverOne(runs: DriveRun[], side: SideName): number | null {
  const pairs = [...new Set(runs.map((r) => r.pair))];
  return median(pairs.map((p) => {
    const one = runs.find((r) => r.side === side && r.pair === p && r.shape === 'one' && r.ok);
    const many = runs.find((r) => r.side === side && r.pair === p && r.shape === 'many' && r.ok);
    return one?.iops && many?.iops ? many.iops / one.iops : null;
  }));
}

/** The issue's goals for iscsi-nbd; fills report.goals and report.misses. */
export function evaluateLunsGoals(r: LunsReport, oursMissing?: string): void {
  const most = Math.max(...r.lunCounts);
  const idle = r.idleSummary.find((s) => s.side === 'iscsi-nbd' && s.luns === most);
  const conns = r.idle.filter((s) => s.side === 'iscsi-nbd' && s.luns === most && s.ok && s.connections !== null).map((s) => s.connections!);
  // Every round counts: the value shown is one that is off, if any.
  const connValue = conns.length ? (conns.find((c) => c !== r.sessions) ?? r.sessions) : null;
  const many = r.driveSummary.find((s) => s.side === 'iscsi-nbd' && s.shape === 'many');
  const ratio = r.manyOverOne['iscsi-nbd'] ?? null;
  const perLun = idle?.rssPerExtraLunMiB ?? null;
  const judge = (v: number | null, ok: (x: number) => boolean): boolean | null => (v === null ? null : ok(v));
  const goals: GoalResult[] = [
    { name: `iscsi-nbd iSCSI connections with ${most} LUNs`, target: `= ${r.sessions}`, value: connValue, met: judge(connValue, (v) => v === r.sessions), stretch: false, digits: 0 },
    { name: 'iscsi-nbd RSS MiB per extra idle LUN', target: `<= ${RSS_PER_LUN_LIMIT_MIB}`, value: perLun, met: judge(perLun, (v) => v <= RSS_PER_LUN_LIMIT_MIB), stretch: false },
    { name: `iscsi-nbd IOPS of ${r.driven} LUNs x QD${r.qdPerLun} / 1 LUN x QD${r.driven * r.qdPerLun}`, target: '>= 1.00', value: ratio, met: judge(ratio, (v) => v >= 1), stretch: false },
    { name: `iscsi-nbd spread between ${r.driven} LUNs (max/min IOPS)`, target: `<= ${SPREAD_LIMIT.toFixed(2)}`, value: many?.spread ?? null, met: judge(many?.spread ?? null, (v) => v <= SPREAD_LIMIT), stretch: false },
  ];
  r.goals = goals;
  // One line is enough when iscsi-nbd did not run at all.
  if (oursMissing !== undefined) {
    r.misses = [`MISS: ${LABEL}: not measured: ${oursMissing}`];
    return;
  }
  const single = r.lunCounts.length < 2;
  r.misses = goals.filter((g) => g.met !== true).map((g) => missLine(LABEL, g, g === goals[1] && single ? 'needs two LUN counts' : 'no successful run to judge'));
}

/** Run the section against the target made by lunsTarget(lunsNeeded(o)) on ctx.tgtd. */
export async function runLuns(o: LunsOptions, ctx: LunsContext): Promise<LunsReport> {
  const { log, sides } = ctx;
  const url = (lun: number): string => ctx.tgtd.url(LUNS_TID, lun);
  const specBase = { repoRoot: ctx.repoRoot, runDir: ctx.runDir, sessions: o.sessions };
  const report: LunsReport = {
    target: LUNS_IQN, lunCounts: o.counts, driven: o.driven, qdPerLun: o.qdPerLun, sessions: o.sessions ?? SERVE_DEFAULT_SESSIONS, idleMs: o.idleMs,
    idle: [], idleSummary: [], drive: [], driveSummary: [], manyOverOne: {}, goals: [], misses: [],
    commands: Object.fromEntries((['iscsi-nbd', 'qemu-nbd'] as SideName[]).map((side) => [side,
      lunsSpecs(side, 2, url, specBase).map((spec) => [...Object.entries(serverEnv(spec)).map(([k, v]) => `${k}=${v}`), ...serverArgv(spec, 'PORT')].join(' ')).join(' & ')])),
  };

  process.stderr.write(`bench: many LUNs of one target, idle (${o.counts.join(', ')} LUNs, ${o.pairs} round(s))\n`);
  for (let pair = 1; pair <= o.pairs; pair++) {
    for (const n of o.counts) {
      for (const side of sides) {
        const s = await idleSample(side, n, pair, o, ctx);
        report.idle.push(s);
        log(fmtIdle(s));
        if (!s.ok) ctx.errors.push(`luns: ${side} with ${n} LUN(s), round ${pair}: ${s.error}`);
      }
    }
  }

  process.stderr.write(`bench: ${o.driven} LUNs x QD${o.qdPerLun} at once against 1 LUN x QD${o.driven * o.qdPerLun} (4K random read)\n`);
  const fleets: Fleet[] = [];
  try {
    for (const side of sides) {
      try {
        fleets.push(await Fleet.start(side, lunsSpecs(side, o.driven, url, specBase)));
      } catch (err) {
        log(`${side} failed to start: ${(err as Error).message}`);
        ctx.errors.push(`luns: ${side} with ${o.driven} LUNs failed to start: ${(err as Error).message}`);
      }
    }
    if (o.rampSec > 0) {
      for (const f of fleets) {
        const w = await runFioJobs(f.targets, { rw: 'randread', bs: 4096, iodepth: o.qdPerLun, numjobs: 1, runtimeSec: o.rampSec });
        if (!w.ok) log(`${f.side} warm-up failed: ${w.error}`);
      }
    }
    for (let pair = 1; pair <= o.pairs; pair++) {
      for (const f of fleets) {
        for (const shape of ['one', 'many'] as const) {
          const r = await driveRun(f, shape, pair, o, ctx.tgtd.pid);
          report.drive.push(r);
          log(fmtDrive(r, o));
          if (!r.ok) ctx.errors.push(`luns: ${f.side} ${shape} pair ${pair}: ${r.error}`);
        }
      }
    }
  } finally {
    await Promise.all(fleets.map((f) => f.stop()));
  }

  for (const side of sides) {
    report.idleSummary.push(...summarizeIdle(report.idle, side, o.counts));
    report.driveSummary.push(summarizeDrive(report.drive, side, 'one'), summarizeDrive(report.drive, side, 'many'));
    report.manyOverOne[side] = manyOverOne(report.drive, side);
  }
  const oursMissing = ctx.unavailable.get('iscsi-nbd');
  evaluateLunsGoals(report, oursMissing === undefined ? undefined : `iscsi-nbd not available: ${oursMissing}`);
  for (const m of report.misses) log(m);
  return report;
}
