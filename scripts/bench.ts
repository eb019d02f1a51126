// npm run bench: iscsi-nbd against qemu-nbd (qemu's block/iscsi.c over libiscsi) on the
// same tgtd target, with libiscsi's iscsi-perf as the ceiling. README "Performance" says
// what is measured and how to read the table.
//
// Per row: both servers are already serving the row's LUN; optionally one unmeasured
// warm-up run per side; then --pairs A/B pairs of fio runs (A = iscsi-nbd, B = qemu-nbd),
// each sampling the server's CPU time and peak RSS from /proc; then iscsi-perf.
// Ratios are medians of per-pair ratios, because these machines are noisy.
// Rows run over loopback TCP, then the "(unix)" rows over AF_UNIX sockets in the bench's
// private temp dir (servers of the other transport are stopped at the switch).
// Then, with its own servers, the many-LUN section (bench/luns.ts): N LUNs of one target
// served at once, idle, and 8 LUNs driven at once against one.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startTgtdWithLuns, type Tgtd, type TgtdSpec } from '../test/helpers/tgtd';
import { runCeiling, iscsiPerfArgv, type CeilingJob } from './bench/ceiling';
import { killAll } from './bench/exec';
import { DRIVEN_LUNS, LUN_COUNTS, lunsNeeded, lunsTarget, MAX_LUNS, QD_PER_LUN, runLuns, type LunsOptions } from './bench/luns';
import { FIO_BIN, fioArgs, runFio, type FioJob } from './bench/fio';
import { resetPeakRss, sampleProc } from './bench/procstat';
import { evaluateGoals, formatLunsMarkdown, formatLunsTable, formatMarkdown, formatTable, pairRatios, summarizeRelay, summarizeSide } from './bench/report';
import { RelayProcess } from './bench/relay';
import { hasCeiling, ROWS, rowLabel, selectRows, TRANSPORTS, type LunKind, type RowDef, type Transport } from './bench/rows';
import { bridgeAvailability, EXPORT_NAME, NbdServer, nbdUri, serverArgv, serverEnv, type ServerSpec, type SideName } from './bench/servers';
import { median } from './bench/stats';
import type { BenchConfig, BenchReport, CeilingSummary, MachineInfo, RelayRun, RowResult, RunRecord } from './bench/types';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const REPO_ROOT = path.resolve(__dirname, '..', '..');
const TARGET_IQN = 'iqn.2026-11.test.iscsi-nbd:bench';
const PERF_INITIATOR = 'iqn.2026-11.test.iscsi-nbd:bench-perf';
const LUN_TMPFS = 1;
const LUN_NULL = 2;
const BLOCK_SIZE = 512;

const USAGE = `usage: node dist/scripts/bench.js [options]   (npm run bench -- [options])

  --rows LIST      comma-separated row ids or substrings (default: all; --list shows them)
  --transport T    only rows over T: tcp (loopback) or unix (AF_UNIX, the "-unix" rows)
  --pairs N        A/B pairs per row (default 3)
  --runtime S      seconds per fio run (default 10)
  --ramp S         unmeasured warm-up run per side before each row, seconds (default 2)
  --smoke          1 pair, 2 s per run, no warm-up, 1 s ceiling, 256 MiB LUN, 1 and 2 LUNs (CI)
  --json PATH      write the JSON results here (default ./bench-results.json)
  --markdown PATH  also write the README table (Markdown) here
  --sessions N     pass --sessions N to iscsi-nbd serve
  --size MiB       size of the tmpfs LUN (default 1024)
  --no-ceiling     skip iscsi-perf
  --relay          also run fio through a bare Node.js byte relay in front of qemu-nbd, once per
                   pair: what a Node.js process costs per I/O before any protocol work
  --only SIDE      measure only iscsi-nbd or only qemu-nbd (the other is "not available")
  --strict         exit 3 when a row misses a (non-stretch) goal
  --luns           run the many-LUN section (alone: only it; with --rows/--transport: those rows too)
  --no-luns        skip the many-LUN section (it runs by default when no rows are picked)
  --lun-counts L   LUN counts served at once, idle (default 1,8,64; --smoke: 1,2)
  --lun-drive N    LUNs driven at once, each at --lun-qd, against one LUN at their sum (default 8; --smoke: 2)
  --lun-qd N       queue depth of each driven LUN (default 8)
  --list           print the rows and exit
  -h, --help
Environment: FIO_BIN, QEMU_NBD_BIN, ISCSI_PERF_BIN, NBDINFO_BIN, TGTD_BIN, TGTADM_BIN.`;

interface Options extends BenchConfig {
  /** The many-LUN section, or null when it does not run. */
  luns: LunsOptions | null;
  jsonPath: string;
  markdownPath: string | null;
  strict: boolean;
  ceilingSec: number;
}

function positiveInt(name: string, v: string | undefined, dflt: number, min = 1): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} needs an integer >= ${min}, got ${v}`);
  return n;
}

function parseOptions(argv: string[]): Options | null {
  const { values } = parseArgs({
    args: argv,
    options: {
      rows: { type: 'string' },
      transport: { type: 'string' },
      pairs: { type: 'string' },
      runtime: { type: 'string' },
      ramp: { type: 'string' },
      smoke: { type: 'boolean', default: false },
      json: { type: 'string' },
      markdown: { type: 'string' },
      sessions: { type: 'string' },
      size: { type: 'string' },
      'no-ceiling': { type: 'boolean', default: false },
      relay: { type: 'boolean', default: false },
      only: { type: 'string' },
      strict: { type: 'boolean', default: false },
      luns: { type: 'boolean', default: false },
      'no-luns': { type: 'boolean', default: false },
      'lun-counts': { type: 'string' },
      'lun-drive': { type: 'string' },
      'lun-qd': { type: 'string' },
      list: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return null;
  }
  if (values.list) {
    for (const r of ROWS) process.stdout.write(`${r.id.padEnd(28)} ${r.transport.padEnd(5)} ${r.title} (${r.lun} LUN)\n`);
    process.stdout.write(`${'--luns'.padEnd(28)} tcp   many LUNs of one target: ${LUN_COUNTS.join(', ')} idle, ${DRIVEN_LUNS} x QD${QD_PER_LUN} against 1 x QD${DRIVEN_LUNS * QD_PER_LUN} (null LUNs)\n`);
    return null;
  }
  const smoke = values.smoke === true;
  if (values.only !== undefined && values.only !== 'iscsi-nbd' && values.only !== 'qemu-nbd') {
    throw new Error(`--only takes iscsi-nbd or qemu-nbd, got ${values.only}`);
  }
  if (values.transport !== undefined && !(TRANSPORTS as readonly string[]).includes(values.transport)) {
    throw new Error(`--transport takes ${TRANSPORTS.join(' or ')}, got ${values.transport}`);
  }
  const transport = (values.transport as Transport | undefined) ?? null;
  if (values.luns && values['no-luns']) throw new Error('--luns and --no-luns contradict each other');
  const rowsPicked = values.rows !== undefined || values.transport !== undefined;
  // --luns alone runs only the section; the section runs by default when no rows are picked.
  const rows = values.luns && !rowsPicked ? [] : selectRows(values.rows, transport).map((r) => r.id);
  const withLuns = values.luns === true || (!rowsPicked && !values['no-luns']);
  const runtimeSec = positiveInt('runtime', values.runtime, smoke ? 2 : 10);
  const pairs = positiveInt('pairs', values.pairs, smoke ? 1 : 3);
  const rampSec = positiveInt('ramp', values.ramp, smoke ? 0 : 2, 0);
  const sessions = values.sessions !== undefined ? positiveInt('sessions', values.sessions, 1) : null;
  const counts = values['lun-counts'] === undefined ? (smoke ? [1, 2] : LUN_COUNTS)
    : [...new Set(values['lun-counts'].split(',').map((x) => positiveInt('lun-counts', x.trim(), 1)))].sort((a, b) => a - b);
  const driven = positiveInt('lun-drive', values['lun-drive'], smoke ? 2 : DRIVEN_LUNS);
  if (Math.max(...counts, driven) > MAX_LUNS) throw new Error(`--lun-counts and --lun-drive go up to ${MAX_LUNS} LUNs`);
  return {
    luns: withLuns ? { counts, driven, qdPerLun: positiveInt('lun-qd', values['lun-qd'], QD_PER_LUN), pairs, runtimeSec, rampSec, idleMs: smoke ? 1000 : 3000, sessions } : null,
    pairs,
    runtimeSec,
    rampSec,
    smoke,
    sessions,
    tmpfsLunMiB: positiveInt('size', values.size, smoke ? 256 : 1024, 16),
    ceiling: !values['no-ceiling'],
    relay: values.relay === true,
    rows,
    jsonPath: path.resolve(values.json ?? 'bench-results.json'),
    markdownPath: values.markdown ? path.resolve(values.markdown) : null,
    strict: values.strict === true,
    ceilingSec: smoke ? 1 : runtimeSec,
    only: (values.only as SideName | undefined) ?? null,
    transport,
  };
}

function tryExec(cmd: string, args: string[]): string | null {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 10000, stdio: ['ignore', 'pipe', 'pipe'], cwd: REPO_ROOT }).trim();
  } catch {
    return null;
  }
}

function debVersion(pkg: string): string | null {
  const v = tryExec('dpkg-query', ['-W', '-f=${Version}', pkg]);
  return v || null;
}

function machineInfo(): MachineInfo {
  const cpus = os.cpus();
  let osName = `${os.type()} ${os.release()}`;
  try {
    const m = /^PRETTY_NAME="?([^"\n]*)"?/m.exec(fs.readFileSync('/etc/os-release', 'utf8'));
    if (m) osName = m[1];
  } catch {
    /* keep the default */
  }
  const fioV = tryExec(FIO_BIN, ['--version']);
  const qemuV = tryExec(process.env.QEMU_NBD_BIN ?? 'qemu-nbd', ['--version']);
  const commit = tryExec('git', ['rev-parse', '--short', 'HEAD']);
  const dirty = commit ? tryExec('git', ['status', '--porcelain', '--untracked-files=no']) : null;
  return {
    hostname: os.hostname(),
    cpuModel: cpus[0]?.model?.trim() ?? 'unknown',
    cpus: cpus.length,
    memGiB: Math.round((os.totalmem() / GiB) * 10) / 10,
    kernel: os.release(),
    os: osName,
    node: process.version,
    versions: {
      fio: fioV ? fioV.replace(/^fio-/, '') : null,
      'qemu-nbd': qemuV ? (/qemu-nbd\s+(\S+)/.exec(qemuV)?.[1] ?? qemuV.split('\n')[0]) : null,
      tgt: debVersion('tgt'),
      libiscsi: debVersion('libiscsi-bin'),
      libnbd: debVersion('libnbd-bin'),
    },
    gitCommit: commit,
    gitDirty: dirty === null ? null : dirty.length > 0,
  };
}

type SpecFor = (side: SideName, lun: LunKind, transport: Transport) => ServerSpec;

function poolKey(side: SideName, lun: LunKind, transport: Transport): string {
  return `${side}/${lun}/${transport}`;
}

/** Servers kept while rows use their transport, one per (side, LUN, transport); restarted if one exits. */
class ServerPool {
  private readonly servers = new Map<string, NbdServer>();
  readonly restarts = new Map<string, number>();
  readonly unavailable = new Map<SideName, string>();
  private closed = false;

  constructor(readonly specFor: SpecFor) {}

  /** Stop the servers of every other transport (rows are grouped by transport). */
  async keepOnly(transport: Transport): Promise<void> {
    const drop = [...this.servers].filter(([, s]) => s.transport !== transport);
    for (const [key] of drop) this.servers.delete(key);
    await Promise.all(drop.map(([, s]) => s.stop()));
  }

  /** A running server, or an error message. */
  async get(side: SideName, lun: LunKind, transport: Transport): Promise<NbdServer | string> {
    if (this.closed) return 'the bench is stopping';
    const down = this.unavailable.get(side);
    if (down) return down;
    const key = poolKey(side, lun, transport);
    const cur = this.servers.get(key);
    if (cur && !cur.exited) return cur;
    if (cur) {
      this.restarts.set(key, (this.restarts.get(key) ?? 0) + 1);
      process.stderr.write(`bench: ${side} (${transport}) on the ${lun} LUN ${cur.exited}; starting it again. Last output:\n${cur.log.trim().split('\n').slice(-10).join('\n')}\n`);
    }
    try {
      const srv = await NbdServer.start(this.specFor(side, lun, transport));
      if (this.closed) {
        await srv.stop();
        return 'the bench is stopping';
      }
      this.servers.set(key, srv);
      return srv;
    } catch (err) {
      this.servers.delete(key);
      return `${side} failed to start: ${(err as Error).message}`;
    }
  }

  async stopAll(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.servers.values()].map((s) => s.stop()));
    this.servers.clear();
  }
}

function toUs(ns: number | null): number | null {
  return ns === null ? null : ns / 1000;
}

async function measure(pool: ServerPool, side: SideName, def: RowDef, job: FioJob, pair: number, tgtdPid: number | undefined): Promise<RunRecord> {
  const base: RunRecord = {
    side, pair, ok: false, mibps: null, iops: null, p50Us: null, p99Us: null, meanUs: null, bytes: null, runtimeMs: null,
    serverCpuSec: null, serverUserSec: null, serverSysSec: null, serverPeakRssMiB: null, peakRssScope: 'run', cpuSecPerGiB: null, targetCpuSec: null, fioCpuPct: null, fioArgv: [],
  };
  const srv = await pool.get(side, def.lun, def.transport);
  if (typeof srv === 'string') return { ...base, error: srv };
  base.fioArgv = [FIO_BIN, ...fioArgs(srv.uri, job, 'OUT.json')];
  const scoped = resetPeakRss(srv.pid);
  const before = sampleProc(srv.pid);
  const tBefore = tgtdPid !== undefined ? sampleProc(tgtdPid) : null;
  const run = await runFio(srv.uri, job);
  const after = sampleProc(srv.pid);
  const tAfter = tgtdPid !== undefined ? sampleProc(tgtdPid) : null;
  base.fioArgv = run.argv;
  if (!run.ok || !run.result) {
    const died = srv.exited ? `; ${side} ${srv.exited}: ${srv.log.trim().split('\n').slice(-3).join(' | ')}` : '';
    return { ...base, error: `${run.error ?? 'fio failed'}${died}` };
  }
  const r = run.result;
  const cpu = before && after ? after.cpuSec - before.cpuSec : null;
  return {
    ...base,
    ok: true,
    mibps: r.bwBytes / MiB,
    iops: r.iops,
    p50Us: toUs(r.p50Ns),
    p99Us: toUs(r.p99Ns),
    meanUs: toUs(r.meanNs),
    bytes: r.bytes,
    runtimeMs: r.runtimeMs,
    serverCpuSec: cpu,
    serverUserSec: before && after ? after.userSec - before.userSec : null,
    serverSysSec: before && after ? after.sysSec - before.sysSec : null,
    serverPeakRssMiB: after ? after.peakRssBytes / MiB : null,
    peakRssScope: scoped ? 'run' : 'process',
    cpuSecPerGiB: cpu !== null && r.bytes > 0 ? cpu / (r.bytes / GiB) : null,
    targetCpuSec: tBefore && tAfter ? tAfter.cpuSec - tBefore.cpuSec : null,
    fioCpuPct: r.fioCpuPct,
  };
}

function fmtRun(r: RunRecord): string {
  if (!r.ok) return `${r.side} pair ${r.pair}: FAILED: ${r.error}`;
  const lat = r.p99Us !== null ? `, p50 ${r.p50Us?.toFixed(0)} us, p99 ${r.p99Us.toFixed(0)} us` : '';
  return `${r.side} pair ${r.pair}: ${r.mibps!.toFixed(1)} MiB/s, ${r.iops!.toFixed(0)} IOPS${lat}, ` +
    `CPU ${r.serverCpuSec?.toFixed(2) ?? '?'} s, peak RSS ${r.serverPeakRssMiB?.toFixed(1) ?? '?'} MiB`;
}

/** iscsi-perf results by job, so a "(unix)" row reuses the run of its TCP twin: the ceiling does not involve NBD. */
type CeilingCache = Map<string, { rowId: string; summary: CeilingSummary }>;

function ceilingKey(j: CeilingJob): string {
  return JSON.stringify([j.iscsiUrl, j.bs, j.iodepth, j.random, j.sessions, j.seconds]);
}

async function runRow(def: RowDef, opts: Options, pool: ServerPool, tgtd: Tgtd, sides: SideName[], errors: string[], ceilings: CeilingCache): Promise<RowResult> {
  const lunNo = def.lun === 'tmpfs' ? LUN_TMPFS : LUN_NULL;
  const iscsiUrl = tgtd.url(1, lunNo);
  const job: FioJob = { rw: def.rw, bs: def.bs, iodepth: def.iodepth, numjobs: def.conns, runtimeSec: opts.runtimeSec };
  const log = (s: string): void => { process.stderr.write(`  ${s}\n`); };
  process.stderr.write(`bench: ${def.id} (${rowLabel(def)}, ${def.lun} LUN)\n`);
  await pool.keepOnly(def.transport);

  if (opts.rampSec > 0) {
    for (const side of sides) {
      const srv = await pool.get(side, def.lun, def.transport);
      if (typeof srv === 'string') continue;
      const w = await runFio(srv.uri, { ...job, runtimeSec: opts.rampSec });
      if (!w.ok) log(`${side} warm-up failed: ${w.error}`);
    }
  }

  const relay = opts.relay ? await startRowRelay(pool, def, log) : null;
  const relayRuns: RelayRun[] = [];
  const runs: Record<SideName, RunRecord[]> = { 'iscsi-nbd': [], 'qemu-nbd': [] };
  try {
    if (relay && typeof relay !== 'string' && opts.rampSec > 0) await runFio(relay.uri, { ...job, runtimeSec: opts.rampSec });
    for (let pair = 1; pair <= opts.pairs; pair++) {
      for (const side of sides) {
        const rec = await measure(pool, side, def, job, pair, tgtd.pid);
        runs[side].push(rec);
        log(fmtRun(rec));
        if (!rec.ok) errors.push(`${def.id}: ${side} pair ${pair}: ${rec.error}`);
      }
      if (relay && typeof relay !== 'string') {
        const rec = await measureRelay(relay, job, pair);
        relayRuns.push(rec);
        log(rec.ok ? `relay pair ${pair}: ${rec.iops!.toFixed(0)} IOPS, p99 ${rec.p99Us?.toFixed(0)} us, relay CPU ` +
          `${((rec.userSec! * 1e6) / rec.ios!).toFixed(1)} + ${((rec.sysSec! * 1e6) / rec.ios!).toFixed(1)} us/IO (user + sys)` : `relay pair ${pair}: FAILED: ${rec.error}`);
        if (!rec.ok) errors.push(`${def.id}: relay pair ${pair}: ${rec.error}`);
      }
    }
  } finally {
    if (relay && typeof relay !== 'string') await relay.stop();
  }

  let ceiling: CeilingSummary = { available: false, reason: 'reads only', mibps: null, iops: null, argv: [] };
  if (!opts.ceiling) {
    ceiling = { available: false, reason: 'skipped (--no-ceiling)', mibps: null, iops: null, argv: [] };
  } else if (hasCeiling(def)) {
    const cj: CeilingJob = { iscsiUrl, blockSize: BLOCK_SIZE, bs: def.bs, iodepth: def.iodepth, random: def.rw === 'randread',
      sessions: def.conns, seconds: opts.ceilingSec, initiatorPrefix: PERF_INITIATOR };
    const earlier = ceilings.get(ceilingKey(cj));
    if (earlier) {
      ceiling = { ...earlier.summary, reusedFrom: earlier.rowId };
      if (ceiling.available) log(`iscsi-perf (from ${earlier.rowId}): ${ceiling.mibps!.toFixed(1)} MiB/s, ${ceiling.iops} IOPS`);
    } else {
      const c = await runCeiling(cj);
      if (c.ok) {
        ceiling = { available: true, mibps: c.bwBytes! / MiB, iops: c.iops!, argv: c.argv };
        log(`iscsi-perf: ${ceiling.mibps!.toFixed(1)} MiB/s, ${c.iops} IOPS`);
        ceilings.set(ceilingKey(cj), { rowId: def.id, summary: ceiling });
      } else {
        ceiling = { available: false, reason: c.error, mibps: null, iops: null, argv: c.argv };
        log(`iscsi-perf FAILED: ${c.error}`);
        errors.push(`${def.id}: iscsi-perf: ${c.error}`);
      }
    }
  }

  const sideSummary = (side: SideName) => {
    const reason = pool.unavailable.get(side);
    const spec = pool.specFor(side, def.lun, def.transport);
    return summarizeSide(side, reason === undefined, runs[side], pool.restarts.get(poolKey(side, def.lun, def.transport)) ?? 0, reason, serverArgv(spec, 'PORT'));
  };
  const ours = sideSummary('iscsi-nbd');
  const qemu = sideSummary('qemu-nbd');
  const ratioPairs = pairRatios(ours.runs, qemu.runs, 'mibps');
  const p99RatioPairs = pairRatios(ours.runs, qemu.runs, 'p99Us');
  const row: RowResult = {
    id: def.id, title: def.title, lun: def.lun, transport: def.transport, rw: def.rw, bs: def.bs, iodepth: def.iodepth, conns: def.conns,
    ours, qemu,
    ratio: median(ratioPairs), ratioPairs,
    p99Ratio: median(p99RatioPairs), p99RatioPairs,
    ceiling,
    fractionOfCeiling: ceiling.mibps && ours.mibps !== null ? ours.mibps / ceiling.mibps : null,
    qemuFractionOfCeiling: ceiling.mibps && qemu.mibps !== null ? qemu.mibps / ceiling.mibps : null,
    goals: [], misses: [],
    relay: relay === null ? null : typeof relay === 'string' ? summarizeRelay([], [], relay) : summarizeRelay(relayRuns, relay.argv),
  };
  evaluateGoals(def, row);
  for (const m of row.misses) log(m);
  return row;
}

/** The relay in front of this row's qemu-nbd (same transport), or why there is none. */
async function startRowRelay(pool: ServerPool, def: RowDef, log: (s: string) => void): Promise<RelayProcess | string> {
  const qemu = await pool.get('qemu-nbd', def.lun, def.transport);
  if (typeof qemu === 'string') return `no qemu-nbd to relay to: ${qemu}`;
  const sock = qemu.socketPath;
  try {
    return await RelayProcess.start(sock ?? `127.0.0.1:${qemu.port}`, sock === null ? null : `${sock}.relay`, EXPORT_NAME);
  } catch (err) {
    log(`relay FAILED: ${(err as Error).message}`);
    return (err as Error).message;
  }
}

async function measureRelay(relay: RelayProcess, job: FioJob, pair: number): Promise<RelayRun> {
  const base: RelayRun = { pair, ok: false, iops: null, p50Us: null, p99Us: null, ios: null, userSec: null, sysSec: null };
  const before = sampleProc(relay.pid);
  const run = await runFio(relay.uri, job);
  const after = sampleProc(relay.pid);
  if (!run.ok || !run.result) return { ...base, error: run.error ?? 'fio failed' };
  if (!before || !after) return { ...base, error: 'the relay process is gone' };
  const r = run.result;
  return {
    ...base, ok: true, iops: r.iops, p50Us: toUs(r.p50Ns), p99Us: toUs(r.p99Ns), ios: r.bytes / job.bs,
    userSec: after.userSec - before.userSec, sysSec: after.sysSec - before.sysSec,
  };
}

function writeJson(file: string, report: BenchReport): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, `${JSON.stringify(report, null, 2)}\n`);
  fs.renameSync(tmp, file);
}

async function main(): Promise<number> {
  let opts: Options | null;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${USAGE}\n`);
    return 2;
  }
  if (!opts) return 0;
  const o = opts;
  const defs = ROWS.filter((r) => o.rows.includes(r.id));
  const errors: string[] = [];

  // tmpfs backing file: filled with data so reads touch real pages, not the zero page of a hole.
  const backing = path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), `iscsi-nbd-bench-${process.pid}.img`);
  // Private scratch dir (iscsi-nbd control sockets, the unix rows' NBD sockets); removed at the end.
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'iscsi-nbd-bench-'));
  let tgtd: Tgtd | undefined;
  let pool: ServerPool | undefined;
  let cleaned = false;
  const cleanup = async (): Promise<void> => {
    if (cleaned) return;
    cleaned = true;
    await pool?.stopAll().catch(() => undefined);
    await tgtd?.stop().catch(() => undefined);
    fs.rmSync(backing, { force: true });
    fs.rmSync(runDir, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`bench: ${sig}, cleaning up\n`);
    killAll();
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  const report: BenchReport = {
    schema: 'iscsi-nbd-bench/1',
    startedAt: new Date().toISOString(),
    finishedAt: null,
    complete: false,
    machine: machineInfo(),
    config: { pairs: o.pairs, runtimeSec: o.runtimeSec, rampSec: o.rampSec, smoke: o.smoke, sessions: o.sessions, tmpfsLunMiB: o.tmpfsLunMiB, ceiling: o.ceiling, relay: o.relay, only: o.only, transport: o.transport, rows: o.rows },
    commands: {},
    target: { portal: '', tmpfsUrl: '', nullUrl: '', tmpfsBacking: backing, blockSize: BLOCK_SIZE },
    rows: [],
    misses: [],
    errors,
  };

  try {
    // The rows' target (tid 1: the tmpfs LUN and a null LUN) when rows run; the many-LUN section's (lunsTarget) when it runs.
    const targets: TgtdSpec['targets'] = [];
    if (defs.length > 0) {
      const fd = fs.openSync(backing, 'w');
      try {
        const chunk = Buffer.alloc(8 * MiB, 0xa5);
        for (let off = 0; off < o.tmpfsLunMiB * MiB; off += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, o.tmpfsLunMiB * MiB - off), off);
      } finally {
        fs.closeSync(fd);
      }
      targets.push({ tid: 1, iqn: TARGET_IQN, luns: [{ lun: LUN_TMPFS, path: backing }, { lun: LUN_NULL, bstype: 'null', path: '/dev/null' }] });
    }
    if (o.luns) targets.push(lunsTarget(lunsNeeded(o.luns)));
    tgtd = await startTgtdWithLuns({ targets });
    const t = tgtd;
    report.target = defs.length > 0
      ? { portal: t.portal, tmpfsUrl: t.url(1, LUN_TMPFS), nullUrl: t.url(1, LUN_NULL), tmpfsBacking: backing, blockSize: BLOCK_SIZE }
      : { portal: t.portal, tmpfsUrl: '', nullUrl: '', tmpfsBacking: '', blockSize: BLOCK_SIZE };
    const specFor: SpecFor = (side, lun, transport) => ({
      side, iscsiUrl: t.url(1, lun === 'tmpfs' ? LUN_TMPFS : LUN_NULL), repoRoot: REPO_ROOT, sessions: o.sessions ?? undefined,
      controlPath: path.join(runDir, `control-${lun}-${transport}.sock`),
      transport,
      socketPath: transport === 'unix' ? path.join(runDir, `nbd-${side}-${lun}.sock`) : undefined,
    });
    pool = new ServerPool(specFor);
    const avail = bridgeAvailability(REPO_ROOT);
    if (o.only === 'iscsi-nbd') pool.unavailable.set('qemu-nbd', 'skipped (--only iscsi-nbd)');
    if (o.only === 'qemu-nbd') {
      pool.unavailable.set('iscsi-nbd', 'skipped (--only qemu-nbd)');
    } else if (!avail.ok) {
      pool.unavailable.set('iscsi-nbd', avail.reason!);
      process.stderr.write(`bench: iscsi-nbd not available: ${avail.reason}; measuring qemu-nbd only\n`);
    }
    const sides = (['iscsi-nbd', 'qemu-nbd'] as SideName[]).filter((side) => !pool!.unavailable.has(side));
    if (defs.length > 0) {
      const exampleJob: FioJob = { rw: 'randread', bs: 4096, iodepth: 32, numjobs: 1, runtimeSec: o.runtimeSec };
      const oursCmd = (transport: Transport): string => [...Object.entries(serverEnv(specFor('iscsi-nbd', 'tmpfs', transport))).map(([k, v]) => `${k}=${v}`),
        ...serverArgv(specFor('iscsi-nbd', 'tmpfs', transport), 'PORT')].join(' ');
      report.commands = {
        'iscsi-nbd': oursCmd('tcp'),
        'qemu-nbd': serverArgv(specFor('qemu-nbd', 'tmpfs', 'tcp'), 'PORT').join(' '),
        fio: [FIO_BIN, ...fioArgs(nbdUri(specFor('iscsi-nbd', 'tmpfs', 'tcp'), 'PORT'), exampleJob, 'OUT.json')].join(' '),
        'iscsi-nbd (unix)': oursCmd('unix'),
        'qemu-nbd (unix)': serverArgv(specFor('qemu-nbd', 'tmpfs', 'unix'), 'PORT').join(' '),
        'fio (unix)': [FIO_BIN, ...fioArgs(nbdUri(specFor('qemu-nbd', 'tmpfs', 'unix'), 'PORT'), exampleJob, 'OUT.json')].join(' '),
        'iscsi-perf': iscsiPerfArgv({ iscsiUrl: t.url(1, LUN_TMPFS), blockSize: BLOCK_SIZE, bs: 4096, iodepth: 32, random: true, sessions: 1, seconds: o.ceilingSec, initiatorPrefix: PERF_INITIATOR }, 0).join(' '),
      };
    }

    const ceilings: CeilingCache = new Map();
    for (const def of defs) {
      const row = await runRow(def, o, pool, t, sides, errors, ceilings);
      report.rows.push(row);
      report.misses.push(...row.misses);
      writeJson(o.jsonPath, report); // partial results survive a crash
    }
    if (o.luns) {
      // The rows' servers are done: the section measures its own processes on a machine without them.
      await pool.stopAll();
      report.luns = await runLuns(o.luns, { tgtd: t, repoRoot: REPO_ROOT, runDir, sides, unavailable: pool.unavailable, errors, log: (l) => process.stderr.write(`  ${l}\n`) });
      report.misses.push(...report.luns.misses);
    }
    report.complete = true;
  } catch (err) {
    errors.push(`fatal: ${(err as Error).stack ?? String(err)}`);
    process.stderr.write(`bench: ${(err as Error).message}\n`);
  } finally {
    await cleanup();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }

  report.finishedAt = new Date().toISOString();
  writeJson(o.jsonPath, report);
  if (report.rows.length > 0 || !report.luns) process.stdout.write(`\n${formatTable(report)}\n\n`);
  if (report.luns) process.stdout.write(`\n${formatLunsTable(report.luns)}\n\n`);
  const m = report.machine;
  process.stdout.write(`machine: ${m.cpuModel}, ${m.cpus} CPUs, ${m.memGiB} GiB, Linux ${m.kernel}, ${m.os}, Node ${m.node}\n`);
  if (report.misses.length === 0 && (report.rows.length > 0 || report.luns)) process.stdout.write('all goals met\n');
  for (const line of report.misses) process.stdout.write(`${line}\n`);
  for (const e of errors) process.stdout.write(`ERROR: ${e}\n`);
  if (o.markdownPath) {
    fs.writeFileSync(o.markdownPath, `${formatMarkdown(report)}\n`);
    process.stdout.write(`markdown: ${o.markdownPath}\n`);
  }
  process.stdout.write(`json: ${o.jsonPath}\n`);
  if (!report.complete || errors.length > 0) return 1;
  if (o.strict && report.misses.some((l) => !l.startsWith('MISS (stretch)'))) return 3;
  return 0;
}

main().then(
  (code) => { process.exit(code); },
  (err) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
    killAll();
    process.exitCode = 1;
  },
);
