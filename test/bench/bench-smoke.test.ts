// Smoke run of the benchmark (npm run bench -- --smoke), in two parts that together make
// `--smoke`: every row (TCP and AF_UNIX, --no-luns), one A/B pair of 2 s runs; then the
// many-LUN section alone (--luns: 1 and 2 LUNs idle, 2 LUNs x QD8 against 1 x QD16), so the
// bench cannot rot. They check that the JSON report is complete and has numbers for both
// sides; they assert nothing about speed.
// Skipped only outside CI, when the build it runs (bin/, dist/) is not there.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROWS, hasCeiling, rowLabel } from '../../scripts/bench/rows';
import { bridgeAvailability } from '../../scripts/bench/servers';
import type { BenchReport, SideSummary } from '../../scripts/bench/types';
import { LUNS_IQN } from '../../scripts/bench/luns';

// dist/test/bench/ -> repository root
const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const BENCH = path.join(REPO_ROOT, 'dist', 'scripts', 'bench.js');
// 23 rows (11 TCP, 12 unix) on a shared 2-CPU machine.
const TIMEOUT_MS = 10 * 60 * 1000;

const avail = bridgeAvailability(REPO_ROOT);
const skip = !process.env.CI && !avail.ok ? `iscsi-nbd is not built: ${avail.reason}` : false;

function runBench(args: string[], timeoutMs: number): Promise<{ code: number | null; signal: string | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BENCH, ...args], { cwd: REPO_ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const add = (b: Buffer): void => {
      out += b.toString();
      if (out.length > 256 * 1024) out = out.slice(-256 * 1024);
    };
    child.stdout.on('data', add);
    child.stderr.on('data', add);
    const timer = setTimeout(() => {
      // SIGTERM lets the bench stop tgtd and the servers; SIGKILL the group if it lingers.
      try { process.kill(-child.pid!, 'SIGTERM'); } catch { /* gone */ }
      setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } }, 10000).unref();
    }, timeoutMs);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out });
    });
  });
}

function assertSide(s: SideSummary, where: string): void {
  assert.equal(s.available, true, `${where}: not available: ${s.reason ?? ''}`);
  assert.ok(s.okRuns >= 1, `${where}: no successful run: ${s.runs.map((r) => r.error).join('; ')}`);
  for (const k of ['mibps', 'iops', 'p50Us', 'p99Us', 'peakRssMiB', 'cpuSecPerGiB'] as const) {
    const v = s[k];
    assert.equal(typeof v, 'number', `${where}: ${k} is ${String(v)}`);
    assert.ok(Number.isFinite(v) && (v as number) >= 0, `${where}: ${k} = ${String(v)}`);
  }
  assert.ok(s.mibps! > 0 && s.iops! > 0, `${where}: moved no data`);
  assert.ok(s.peakRssMiB! > 0, `${where}: no peak RSS`);
}

test('bench --smoke produces a complete JSON report for both sides', { skip, timeout: TIMEOUT_MS + 30000 }, async (t) => {
  assert.ok(fs.existsSync(BENCH), `${BENCH} is missing (build first)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-smoke-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const json = path.join(dir, 'bench.json');
  const md = path.join(dir, 'bench.md');

  const r = await runBench(['--smoke', '--no-luns', '--json', json, '--markdown', md], TIMEOUT_MS);
  assert.equal(r.code, 0, `bench exited ${r.code ?? r.signal}:\n${r.out.slice(-8000)}`);

  const report = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchReport;
  assert.equal(report.schema, 'iscsi-nbd-bench/1');
  assert.equal(report.complete, true);
  assert.deepEqual(report.errors, []);
  assert.equal(report.config.smoke, true);
  assert.deepEqual(report.rows.map((row) => row.id), ROWS.map((row) => row.id), 'every row, in order');
  assert.equal(report.luns, undefined, '--no-luns: no many-LUN section');
  for (const row of report.rows) {
    const def = ROWS.find((d) => d.id === row.id)!;
    assert.equal(row.transport, def.transport, `${row.id}: transport in the JSON`);
    // Both sides were driven over the row's transport.
    for (const run of [...row.ours.runs, ...row.qemu.runs]) {
      const uri = run.fioArgv.find((a) => a.startsWith('--uri='));
      if (def.transport === 'unix') assert.match(uri ?? '', /^--uri=nbd\+unix:\/\/\/bench\?socket=\/\S+\.sock$/, `${row.id} ${run.side}`);
      else assert.match(uri ?? '', /^--uri=nbd:\/\/127\.0\.0\.1:\d+\/bench$/, `${row.id} ${run.side}`);
    }
    if (def.transport === 'unix') {
      assert.ok(row.qemu.argv?.includes('-k'), `${row.id}: qemu-nbd -k`);
      assert.ok(row.ours.argv?.some((a) => a.startsWith('unix:')), `${row.id}: serve --listen unix:`);
    }
    assertSide(row.ours, `${row.id} iscsi-nbd`);
    assertSide(row.qemu, `${row.id} qemu-nbd`);
    assert.equal(row.ratioPairs.length, 1, `${row.id}: one A/B pair`);
    assert.equal(typeof row.ratio, 'number', `${row.id}: ratio`);
    assert.ok(row.ratio! > 0);
    if (hasCeiling(ROWS.find((d) => d.id === row.id)!)) {
      assert.equal(row.ceiling.available, true, `${row.id}: iscsi-perf: ${row.ceiling.reason ?? ''}`);
      assert.ok(row.ceiling.mibps! > 0 && row.fractionOfCeiling! > 0, `${row.id}: ceiling numbers`);
    }
    assert.ok(row.goals.length >= 1, `${row.id}: goals judged`);
    // Every goal that is not met is printed as a MISS line (a missed ratio covers its stretch goal).
    for (const g of row.goals) {
      if (g.met === true) continue;
      assert.ok(row.misses.some((m) => m.includes(g.stretch ? 'ratio to qemu-nbd' : g.name) || m.includes('not measured')), `${row.id}: ${g.name} miss printed`);
      assert.ok(r.out.includes(row.misses[0]), `${row.id}: miss printed on stdout`);
    }
  }
  assert.ok(report.rows.some((row) => row.goals.some((g) => g.name.includes('RSS'))), 'the QD128 RSS row is judged');

  // The text table and the Markdown table were written.
  assert.match(r.out, /workload\s+lun\s+side\s+MiB\/s/);
  for (const row of report.rows) assert.ok(r.out.includes(rowLabel(row)), `table lists ${rowLabel(row)}`);
  const mdText = fs.readFileSync(md, 'utf8');
  assert.equal(mdText.split('\n').filter((l) => l.startsWith('| ') && !l.startsWith('| Workload')).length, ROWS.length);
  assert.equal(mdText.split('\n').filter((l) => / \(unix\) \| (tmpfs|null) \|/.test(l)).length, ROWS.filter((d) => d.transport === 'unix').length);
  // The socket files and the rest of the bench's temp dir are gone.
  for (const row of report.rows.filter((x) => x.transport === 'unix')) {
    const sock = /socket=(\S+)$/.exec(row.qemu.runs[0].fioArgv.find((a) => a.startsWith('--uri='))!)![1];
    assert.equal(fs.existsSync(path.dirname(sock)), false, `${path.dirname(sock)} removed`);
  }
});

test('bench --smoke --luns: the many-LUN section alone, 1 and 2 LUNs, complete for both sides', { skip, timeout: 5 * 60 * 1000 }, async (t) => {
  assert.ok(fs.existsSync(BENCH), `${BENCH} is missing (build first)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-smoke-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const json = path.join(dir, 'bench.json');
  const md = path.join(dir, 'bench.md');

  const r = await runBench(['--smoke', '--luns', '--json', json, '--markdown', md], 4 * 60 * 1000);
  assert.equal(r.code, 0, `bench exited ${r.code ?? r.signal}:\n${r.out.slice(-8000)}`);
  const report = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchReport;
  assert.equal(report.complete, true);
  assert.deepEqual(report.errors, []);
  assert.deepEqual(report.rows, [], '--luns alone runs no row');
  const l = report.luns!;
  assert.ok(l, 'the JSON has the many-LUN section');
  assert.equal(l.target, LUNS_IQN);
  assert.deepEqual(l.lunCounts, [1, 2]);
  assert.equal(l.driven, 2);
  assert.equal(l.qdPerLun, 8);
  assert.equal(l.sessions, 2, "serve's default sessions per target");

  // Idle: one start per side and LUN count, each with readings.
  for (const side of ['iscsi-nbd', 'qemu-nbd'] as const) {
    for (const n of [1, 2]) {
      const s = l.idle.filter((x) => x.side === side && x.luns === n);
      assert.equal(s.length, 1, `${side} ${n}`);
      assert.equal(s[0].ok, true, `${side} ${n}: ${s[0].error ?? ''}`);
      assert.equal(s[0].processes, side === 'qemu-nbd' ? n : 1);
      assert.ok(s[0].readyMs! > 0 && s[0].rssMiB! > 0 && s[0].peakRssMiB! >= s[0].rssMiB! * 0.5, `${side} ${n}: ${JSON.stringify(s[0])}`);
      // Connections the kernel shows for the processes: the sessions per target for ours, one per qemu-nbd.
      assert.equal(s[0].connections, side === 'qemu-nbd' ? n : 2, `${side} ${n} connections`);
      if (side === 'iscsi-nbd') assert.equal(s[0].statusSessions, 2, 'status --json lists the same sessions');
    }
    const two = l.idleSummary.find((x) => x.side === side && x.luns === 2)!;
    assert.equal(typeof two.rssPerExtraLunMiB, 'number', `${side}: RSS per extra LUN`);
  }
  // Drive: per side and pair, one LUN alone and both at once, with per-LUN numbers.
  for (const side of ['iscsi-nbd', 'qemu-nbd'] as const) {
    for (const shape of ['one', 'many'] as const) {
      const runs = l.drive.filter((x) => x.side === side && x.shape === shape);
      assert.equal(runs.length, 1, `${side} ${shape}`);
      const d = runs[0];
      assert.equal(d.ok, true, `${side} ${shape}: ${d.error ?? ''}`);
      assert.equal(d.luns.length, shape === 'one' ? 1 : 2);
      assert.ok(d.luns.every((x) => x.iops > 0 && x.p99Us! > 0), `${side} ${shape}: ${JSON.stringify(d.luns)}`);
      assert.ok(d.fioArgv.includes(`--iodepth=${shape === 'one' ? 16 : 8}`), d.fioArgv.join(' '));
      assert.equal(d.fioArgv.filter((a) => a.startsWith('--uri=')).length, d.luns.length, 'one fio job per LUN');
      assert.ok(d.spread! >= 1);
    }
    assert.equal(typeof l.manyOverOne[side], 'number', `${side}: many / one`);
  }
  // Goals judged; a miss is printed.
  assert.equal(l.goals.length, 4);
  assert.ok(l.goals.every((g) => g.met !== null), JSON.stringify(l.goals));
  for (const m of l.misses) assert.ok(r.out.includes(m), `miss printed: ${m}`);
  // Both tables, in the terminal and in Markdown.
  assert.match(r.out, /LUNs\s+side\s+procs\s+conns\s+ready ms\s+RSS MiB/);
  assert.match(r.out, /2 LUNs x QD8 at once against 1 LUN x QD16/);
  const mdText = fs.readFileSync(md, 'utf8');
  assert.match(mdText, /^\| 2 \| 2 \/ 2 \| /m, 'idle row for 2 LUNs: 2 connections each side');
  assert.match(mdText, /^\| 2 LUNs x QD8 \| \d+ \/ \d+ \| /m);
  assert.ok(!/\| Workload \| LUN \| MiB\/s/.test(mdText), 'no rows table without rows');
  assert.match(mdText, /^Machine: /m);
});

test('bench --smoke --relay: the Node.js floor beside one QD1 row, its CPU split, its process gone after', { skip, timeout: 3 * 60 * 1000 }, async (t) => {
  assert.ok(fs.existsSync(BENCH), `${BENCH} is missing (build first)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-smoke-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const json = path.join(dir, 'bench.json');
  const md = path.join(dir, 'bench.md');

  const r = await runBench(['--smoke', '--no-luns', '--no-ceiling', '--rows', 'randread-4k-qd1-unix', '--relay', '--json', json, '--markdown', md], 2 * 60 * 1000);
  assert.equal(r.code, 0, `bench exited ${r.code ?? r.signal}:\n${r.out.slice(-8000)}`);
  const report = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchReport;
  assert.equal(report.complete, true);
  assert.deepEqual(report.errors, []);
  assert.equal(report.config.relay, true);
  assert.deepEqual(report.rows.map((x) => x.id), ['randread-4k-qd1-unix']);
  const row = report.rows[0];
  const x = row.relay!;
  assert.ok(x, 'the row has the relay');
  assert.equal(x.available, true, x.reason);
  assert.equal(x.okRuns, 1, JSON.stringify(x.runs));
  assert.ok(x.iops! > 0 && x.p99Us! > 0);
  for (const s of [x, row.ours, row.qemu]) {
    assert.ok(typeof s.userUsPerIo === 'number' && typeof s.sysUsPerIo === 'number', JSON.stringify(s));
    assert.ok(s.userUsPerIo! + s.sysUsPerIo! > 0, 'some CPU per I/O');
  }
  assert.ok(x.argv.some((a) => a.endsWith('relay.js')), x.argv.join(' '));
  assert.match(r.out, /relay pair 1: \d+ IOPS, p99 \d+ us, relay CPU [\d.]+ \+ [\d.]+ us\/IO/);
  assert.match(fs.readFileSync(md, 'utf8'), /^\| rand read 4K QD1 \(unix\) \| tmpfs \| \d+ \/ \d+ \/ \d+ \| /m);
  // The relay was stopped with the row: no process left running relay.js.
  const left = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
    try { return fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(path.join('scripts', 'bench', 'relay.js')); } catch { return false; }
  });
  assert.deepEqual(left, []);
});
