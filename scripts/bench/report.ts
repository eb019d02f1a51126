// Summaries, goals and the two renderings of the results: a text table for the terminal
// and a Markdown table for the README.

import { RATIO_GOAL, rowLabel, type RowDef } from './rows';
import { max, median, sum } from './stats';
import type { BenchReport, CeilingSummary, CpuPerIo, DriveSummary, GoalResult, IdleSummary, LunsReport, RelayRun, RelaySummary, RowResult, RunRecord, SideSummary } from './types';
import type { SideName } from './servers';

const GiB = 1024 ** 3;

export function summarizeSide(side: SideName, available: boolean, runs: RunRecord[], restarts: number, reason?: string, argv?: string[]): SideSummary {
  const ok = runs.filter((r) => r.ok);
  const cpu = ok.filter((r) => r.serverCpuSec !== null && r.bytes);
  const gib = sum(cpu.map((r) => r.bytes! / GiB));
  return {
    side,
    available,
    reason,
    argv,
    runs,
    okRuns: ok.length,
    mibps: median(ok.map((r) => r.mibps)),
    iops: median(ok.map((r) => r.iops)),
    p50Us: median(ok.map((r) => r.p50Us)),
    p99Us: median(ok.map((r) => r.p99Us)),
    peakRssMiB: max(ok.map((r) => r.serverPeakRssMiB)),
    cpuSecPerGiB: gib > 0 ? sum(cpu.map((r) => r.serverCpuSec!)) / gib : null,
    ...cpuPerIoSplit(ok.map((r) => ({ ios: r.iops !== null && r.runtimeMs !== null ? (r.iops * r.runtimeMs) / 1000 : null, userSec: r.serverUserSec, sysSec: r.serverSysSec }))),
    restarts,
  };
}

/** User and system CPU µs per I/O, totals over the runs that have all three figures. */
export function cpuPerIoSplit(runs: { ios: number | null; userSec: number | null; sysSec: number | null }[]): { userUsPerIo: number | null; sysUsPerIo: number | null } {
  const ok = runs.filter((r) => r.ios !== null && r.ios > 0 && r.userSec !== null && r.sysSec !== null);
  const ios = sum(ok.map((r) => r.ios!));
  if (ios <= 0) return { userUsPerIo: null, sysUsPerIo: null };
  return { userUsPerIo: (sum(ok.map((r) => r.userSec!)) * 1e6) / ios, sysUsPerIo: (sum(ok.map((r) => r.sysSec!)) * 1e6) / ios };
}

/** The relay's runs summed up (bench --relay). */
export function summarizeRelay(runs: RelayRun[], argv: string[], reason?: string): RelaySummary {
  const ok = runs.filter((r) => r.ok);
  return {
    available: reason === undefined,
    ...(reason !== undefined ? { reason } : {}),
    argv,
    runs,
    okRuns: ok.length,
    iops: median(ok.map((r) => r.iops)),
    p99Us: median(ok.map((r) => r.p99Us)),
    ...cpuPerIoSplit(ok),
  };
}

/** Per-pair ratios a/b of a metric, over pairs where both sides succeeded. */
export function pairRatios(ours: RunRecord[], qemu: RunRecord[], key: 'mibps' | 'p99Us'): number[] {
  const out: number[] = [];
  for (const a of ours) {
    const b = qemu.find((q) => q.pair === a.pair);
    if (!a.ok || !b?.ok) continue;
    const x = a[key];
    const y = b[key];
    if (x !== null && y !== null && y > 0) out.push(x / y);
  }
  return out;
}

function fmtRatio(v: number | null): string {
  return v === null ? '-' : v.toFixed(2);
}

/** Judge a row against the issue's goals; fills row.goals and row.misses. */
export function evaluateGoals(def: RowDef, row: RowResult): void {
  const goals: GoalResult[] = [];
  goals.push({ name: 'ratio to qemu-nbd', target: `>= ${RATIO_GOAL.toFixed(2)}`, value: row.ratio, met: row.ratio === null ? null : row.ratio >= RATIO_GOAL, stretch: false });
  if (def.latencyGoal) {
    goals.push({ name: 'p99 vs qemu-nbd', target: '<= 1.00', value: row.p99Ratio, met: row.p99Ratio === null ? null : row.p99Ratio <= 1.0, stretch: false });
  }
  if (def.rssLimitBytes !== undefined) {
    const limit = def.rssLimitBytes / 2 ** 20;
    const v = row.ours.peakRssMiB;
    goals.push({ name: 'iscsi-nbd peak RSS MiB', target: `< ${limit}`, value: v, met: v === null ? null : v < limit, stretch: false, digits: 1 });
  }
  if (def.stretch !== undefined) {
    goals.push({ name: 'ratio to qemu-nbd (stretch)', target: `>= ${def.stretch.toFixed(2)}`, value: row.ratio, met: row.ratio === null ? null : row.ratio >= def.stretch, stretch: true });
  }
  row.goals = goals;
  row.misses = [];
  const baseRatioMissed = goals[0].met !== true;
  for (const g of goals) {
    if (g.met === true) continue;
    // A missed ratio already says the stretch ratio is missed too.
    if (g.stretch && baseRatioMissed) continue;
    const label = `${row.id} (${rowLabel(row)}, ${row.lun} LUN)`;
    let why: string;
    if (g.met === null) {
      why = !row.ours.available ? `iscsi-nbd not available: ${row.ours.reason ?? 'unknown'}`
        : !row.qemu.available ? `qemu-nbd not available: ${row.qemu.reason ?? 'unknown'}`
          : 'no successful A/B pair to judge';
      // One line is enough when a side is missing altogether.
      if (row.misses.some((m) => m.includes(why))) continue;
      row.misses.push(missLine(label, g, why));
    } else {
      row.misses.push(missLine(label, g));
    }
  }
}

/** The MISS line of a goal not met; `why` says what kept an unjudged one (met null) from being measured. */
export function missLine(label: string, g: GoalResult, why = 'no data'): string {
  const tag = `MISS${g.stretch ? ' (stretch)' : ''}`;
  if (g.met === null || g.value === null) return `${tag}: ${label}: ${g.name} not measured: ${why}`;
  return `${tag}: ${label}: ${g.name} ${g.value.toFixed(g.digits ?? 2)}, goal ${g.target}`;
}

function f(v: number | null | undefined, digits = 1): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '-';
  if (Math.abs(v) >= 10000) return Math.round(v).toString();
  return v.toFixed(digits);
}

function pct(v: number | null): string {
  return v === null ? '-' : `${(v * 100).toFixed(0)}%`;
}

function pad(s: string, w: number, right = true): string {
  return right ? s.padStart(w) : s.padEnd(w);
}

function sideCells(s: SideSummary): string[] {
  if (!s.available) return ['n/a', '', '', '', '', ''];
  if (s.okRuns === 0) return ['failed', '', '', '', '', ''];
  return [f(s.mibps), f(s.iops, 0), f(s.p50Us, 0), f(s.p99Us, 0), f(s.peakRssMiB), f(s.cpuSecPerGiB, 2)];
}

function ceilingCells(c: CeilingSummary): string[] {
  if (!c.available) return ['n/a', '', '', '', '', ''];
  return [f(c.mibps), f(c.iops, 0), '', '', '', ''];
}

/** CPU per I/O as "user + system" µs. */
function io(s: { userUsPerIo: number | null; sysUsPerIo: number | null }): string {
  return `${f(s.userUsPerIo)} + ${f(s.sysUsPerIo)}`;
}

/** The terminal table: three lines per row (iscsi-nbd, qemu-nbd, ceiling). */
export function formatTable(report: BenchReport): string {
  const head = ['workload', 'lun', 'side', 'MiB/s', 'IOPS', 'p50 us', 'p99 us', 'RSS MiB', 'CPU s/GiB', 'ratio', 'of ceil'];
  const widths = [28, 5, 10, 9, 9, 8, 8, 8, 9, 6, 7];
  const leftCols = new Set([0, 1, 2]);
  const line = (cells: string[]): string => cells.map((c, i) => pad(c, widths[i], !leftCols.has(i))).join('  ').trimEnd();
  const out: string[] = [];
  const c = report.config;
  out.push(`iscsi-nbd (A) vs qemu-nbd (B) over tgtd on ${report.target.portal}; fio nbd engine; ` +
    `${c.pairs} A/B pair(s) x ${c.runtimeSec} s${c.rampSec ? `, ${c.rampSec} s warm-up` : ''}${c.smoke ? ' [SMOKE: numbers are not meaningful]' : ''}`);
  out.push('values are medians over pairs; ratio = median of per-pair A/B MiB/s ratios; "of ceil" = A / iscsi-perf');
  if (report.rows.some((r) => r.transport === 'unix')) {
    out.push('"(unix)" rows: NBD over an AF_UNIX socket (serve --listen unix:PATH vs qemu-nbd -k PATH); the others over loopback TCP');
  }
  out.push(line(head));
  out.push(line(widths.map((w) => '-'.repeat(w))));
  for (const r of report.rows) {
    out.push(line([rowLabel(r), r.lun, 'iscsi-nbd', ...sideCells(r.ours), fmtRatio(r.ratio), pct(r.fractionOfCeiling)]));
    out.push(line(['', '', 'qemu-nbd', ...sideCells(r.qemu), '', pct(r.qemuFractionOfCeiling)]));
    if (r.ceiling.available || r.ceiling.reason !== 'reads only') {
      out.push(line(['', '', 'iscsi-perf', ...ceilingCells(r.ceiling), '', '']));
    }
  }
  const relayed = report.rows.filter((r) => r.relay);
  if (relayed.length > 0) {
    out.push('');
    out.push('the Node.js floor (--relay): fio -> a bare Node.js byte relay -> qemu-nbd; CPU us per I/O as user + system');
    for (const r of relayed) {
      const x = r.relay!;
      out.push(`${rowLabel(r)}, ${r.lun}: ` + (x.okRuns === 0 ? `relay failed${x.reason ? `: ${x.reason}` : ''}` :
        `IOPS ours ${f(r.ours.iops, 0)}, relay+qemu-nbd ${f(x.iops, 0)}, qemu-nbd ${f(r.qemu.iops, 0)}; ` +
        `CPU ours ${io(r.ours)}, qemu-nbd ${io(r.qemu)}, relay ${io(x)}`));
    }
  }
  return out.join('\n');
}

/**
 * The README table: one line per row; AF_UNIX rows say "(unix)" after the workload.
 * The many-LUN section's two tables follow when it ran (alone when no row ran).
 */
export function formatMarkdown(report: BenchReport): string {
  const out: string[] = [];
  if (report.rows.length > 0 || !report.luns) out.push(...formatRowsMarkdown(report));
  if (report.luns) {
    if (out.length > 0) out.push('');
    out.push(formatLunsMarkdown(report.luns));
  }
  const m = report.machine;
  out.push('');
  out.push(`Machine: ${m.cpuModel}, ${m.cpus} CPUs, ${m.memGiB} GiB RAM, Linux ${m.kernel}, ${m.os}, Node ${m.node}; ` +
    `fio ${m.versions.fio ?? '?'}, qemu-nbd ${m.versions['qemu-nbd'] ?? '?'}, tgt ${m.versions.tgt ?? '?'}, libiscsi ${m.versions.libiscsi ?? '?'}. ` +
    `${report.config.pairs} A/B pairs x ${report.config.runtimeSec} s per side, ${report.startedAt.slice(0, 10)}` +
    `${m.gitCommit ? `, commit ${m.gitCommit}${m.gitDirty ? ' (dirty)' : ''}` : ''}.`);
  return out.join('\n');
}

function formatRowsMarkdown(report: BenchReport): string[] {
  const out: string[] = [];
  out.push('| Workload | LUN | MiB/s | IOPS | p50 / p99 µs | qemu-nbd MiB/s | qemu-nbd p50 / p99 µs | Ratio | Of ceiling | Peak RSS MiB (ours / qemu) | CPU s/GiB (ours / qemu) |');
  out.push('|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|');
  for (const r of report.rows) {
    const o = r.ours;
    const q = r.qemu;
    const ok = (s: SideSummary): boolean => s.available && s.okRuns > 0;
    const miss = r.misses.some((m) => !m.startsWith('MISS (stretch)'));
    out.push(`| ${rowLabel(r)} | ${r.lun} | ${ok(o) ? f(o.mibps) : 'n/a'} | ${ok(o) ? f(o.iops, 0) : 'n/a'} | ` +
      `${ok(o) ? `${f(o.p50Us, 0)} / ${f(o.p99Us, 0)}` : 'n/a'} | ${ok(q) ? f(q.mibps) : 'n/a'} | ` +
      `${ok(q) ? `${f(q.p50Us, 0)} / ${f(q.p99Us, 0)}` : 'n/a'} | ${fmtRatio(r.ratio)}${miss ? ' ✗' : ''} | ` +
      `${r.ceiling.available ? pct(r.fractionOfCeiling) : 'n/a'} | ${f(o.peakRssMiB, 0)} / ${f(q.peakRssMiB, 0)} | ` +
      `${f(o.cpuSecPerGiB, 2)} / ${f(q.cpuSecPerGiB, 2)} |`);
  }
  const relayed = report.rows.filter((r) => r.relay && r.relay.okRuns > 0);
  if (relayed.length > 0) {
    out.push('');
    out.push('| Workload (`--relay`) | LUN | IOPS: ours / relay in front of qemu-nbd / qemu-nbd | p99 µs (same) | CPU µs per I/O, user + system: ours / qemu-nbd / the relay |');
    out.push('|---|---|--:|--:|--:|');
    for (const r of relayed) {
      const x = r.relay!;
      out.push(`| ${rowLabel(r)} | ${r.lun} | ${f(r.ours.iops, 0)} / ${f(x.iops, 0)} / ${f(r.qemu.iops, 0)} | ` +
        `${f(r.ours.p99Us, 0)} / ${f(x.p99Us, 0)} / ${f(r.qemu.p99Us, 0)} | ${io(r.ours)} / ${io(r.qemu)} / ${io(x)} |`);
    }
  }
  if (report.rows.some((r) => r.transport === 'unix')) {
    out.push('');
    out.push('Rows marked (unix) use NBD over an AF_UNIX socket (`serve --listen unix:PATH` against `qemu-nbd -k PATH`, ' +
      'fio on `nbd+unix:///bench?socket=PATH`), the transport of `iscsi-nbd map`; the others use loopback TCP.');
  }
  return out;
}

/** "ours / qemu" of a value of each side, '-' where a side has none. */
function both(ours: string | undefined, qemu: string | undefined): string {
  return `${ours ?? '-'} / ${qemu ?? '-'}`;
}

function lunsParts(l: LunsReport) {
  const idle = (side: SideName, luns: number): IdleSummary | undefined => l.idleSummary.find((s) => s.side === side && s.luns === luns && s.okRuns > 0);
  const drive = (side: SideName, shape: 'one' | 'many'): DriveSummary | undefined => l.driveSummary.find((s) => s.side === side && s.shape === shape && s.okRuns > 0);
  const shapeLabel = (shape: 'one' | 'many'): string => (shape === 'one' ? `1 LUN x QD${l.driven * l.qdPerLun}` : `${l.driven} LUNs x QD${l.qdPerLun}`);
  const p99Range = (d: DriveSummary | undefined): string | undefined =>
    d && d.p99MinUs !== null ? (d.p99MinUs === d.p99MaxUs ? f(d.p99MinUs, 0) : `${f(d.p99MinUs, 0)}-${f(d.p99MaxUs, 0)}`) : undefined;
  return { idle, drive, shapeLabel, p99Range };
}

/** server/fio/tgtd, µs per I/O. */
export function fmtCpu(c: CpuPerIo): string {
  return [c.server, c.client, c.target].map((x) => (x === null ? '?' : x.toFixed(1))).join('/');
}

/** The many-LUN section for the terminal: idle starts, then the drive runs, per side. */
export function formatLunsTable(l: LunsReport): string {
  const { idle, drive, shapeLabel, p99Range } = lunsParts(l);
  const out: string[] = [];
  const line = (cells: string[], widths: number[], left: number): string => cells.map((c, i) => pad(c, widths[i], i >= left)).join('  ').trimEnd();
  out.push(`many LUNs of one target (tgtd null LUNs): one iscsi-nbd serve (${l.sessions} sessions per target) vs one qemu-nbd per LUN; medians`);
  const iw = [5, 10, 5, 6, 9, 8, 13];
  out.push(line(['LUNs', 'side', 'procs', 'conns', 'ready ms', 'RSS MiB', 'MiB/extra LUN'], iw, 2));
  out.push(line(iw.map((w) => '-'.repeat(w)), iw, 2));
  for (const n of l.lunCounts) {
    for (const side of ['iscsi-nbd', 'qemu-nbd'] as SideName[]) {
      if (!l.idleSummary.some((x) => x.side === side)) continue;
      const s = idle(side, n);
      const range = s?.connectionsRange && s.connectionsRange[0] !== s.connectionsRange[1] ? ` (${s.connectionsRange[0]}-${s.connectionsRange[1]})` : '';
      out.push(line([String(n), side, side === 'qemu-nbd' ? String(n) : '1', s ? `${f(s.connections, 0)}${range}` : 'failed',
        s ? f(s.readyMs, 0) : '', s ? f(s.rssMiB) : '', s ? f(s.rssPerExtraLunMiB, 2) : ''], iw, 2));
    }
  }
  out.push('');
  const dw = [10, 16, 9, 14, 7, 9, 20];
  out.push(`${shapeLabel('many')} at once against ${shapeLabel('one')}: 4K random read, one fio job per LUN; "many/one" = aggregate IOPS ratio;`);
  out.push('"CPU us/IO" = CPU time per I/O of the server side / fio / tgtd, which share the machine\'s CPUs');
  out.push(line(['side', 'workload', 'IOPS', 'p99 us per LUN', 'spread', 'many/one', 'CPU us/IO srv/fio/tgt'], dw, 2));
  out.push(line(dw.map((w) => '-'.repeat(w)), dw, 2));
  for (const side of ['iscsi-nbd', 'qemu-nbd'] as SideName[]) {
    if (!l.driveSummary.some((x) => x.side === side)) continue;
    for (const shape of ['one', 'many'] as const) {
      const d = drive(side, shape);
      out.push(line([side, shapeLabel(shape), d ? f(d.iops, 0) : 'failed', p99Range(d) ?? '', shape === 'many' && d ? f(d.spread, 2) : '',
        shape === 'many' ? fmtRatio(l.manyOverOne[side] ?? null) : '', d?.cpuUsPerIo ? fmtCpu(d.cpuUsPerIo) : ''], dw, 2));
    }
  }
  return out.join('\n');
}

/** The many-LUN section in Markdown (docs/performance.md): the idle table and the drive table. */
export function formatLunsMarkdown(l: LunsReport): string {
  const { idle, drive, shapeLabel, p99Range } = lunsParts(l);
  const out: string[] = [];
  out.push('| LUNs | iSCSI connections (ours / qemu) | RSS MiB (ours / qemu) | RSS MiB per extra LUN (ours / qemu) | Ready ms (ours / qemu) |');
  out.push('|--:|--:|--:|--:|--:|');
  for (const n of l.lunCounts) {
    const o = idle('iscsi-nbd', n);
    const q = idle('qemu-nbd', n);
    out.push(`| ${n} | ${both(o && f(o.connections, 0), q && f(q.connections, 0))} | ${both(o && f(o.rssMiB), q && f(q.rssMiB))} | ` +
      `${both(o && f(o.rssPerExtraLunMiB, 2), q && f(q.rssPerExtraLunMiB, 2))} | ${both(o && f(o.readyMs, 0), q && f(q.readyMs, 0))} |`);
  }
  out.push('');
  out.push('| Workload (4K random read) | IOPS (ours / qemu) | p99 µs per LUN, lowest-highest (ours / qemu) | Spread max/min IOPS (ours / qemu) | Of the lone LUN (ours / qemu) | CPU µs per I/O, server / fio / tgtd (ours; qemu) |');
  out.push('|---|--:|--:|--:|--:|--:|');
  for (const shape of ['one', 'many'] as const) {
    const o = drive('iscsi-nbd', shape);
    const q = drive('qemu-nbd', shape);
    const ratio = (side: SideName): string | undefined => (l.manyOverOne[side] === undefined ? undefined : fmtRatio(l.manyOverOne[side] ?? null));
    out.push(`| ${shapeLabel(shape)} | ${both(o && f(o.iops, 0), q && f(q.iops, 0))} | ${both(p99Range(o), p99Range(q))} | ` +
      `${shape === 'many' ? both(o && f(o.spread, 2), q && f(q.spread, 2)) : ''} | ${shape === 'many' ? both(ratio('iscsi-nbd'), ratio('qemu-nbd')) : ''} | ` +
      `${[o, q].map((d) => (d?.cpuUsPerIo ? fmtCpu(d.cpuUsPerIo).replace(/\//g, ' / ') : '-')).join('; ')} |`);
  }
  return out.join('\n');
}
