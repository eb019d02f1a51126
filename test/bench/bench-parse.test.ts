// The benchmark's parsers and bookkeeping, on fixtures copied from real fio 3.33,
// iscsi-perf 0.1 (libiscsi 1.19) and /proc output. No processes, no timing.

import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { iscsiPerfArgv, parseIscsiPerf } from '../../scripts/bench/ceiling';
import { fioArgs, fioJobsArgs, parseFioJobs, parseFioJson } from '../../scripts/bench/fio';
import { cpuPerIo, evaluateLunsGoals, lunsNeeded, lunsSpecs, lunsTarget, manyOverOne, summarizeDrive, summarizeIdle } from '../../scripts/bench/luns';
import { parseProcNetTcp, parseStatTicks, parseStatUserSys, parseStatusKiB, sampleProc, tcpConnectionsTo } from '../../scripts/bench/procstat';
import { evaluateGoals, formatLunsMarkdown, formatLunsTable, formatMarkdown, formatTable, pairRatios, summarizeRelay, summarizeSide } from '../../scripts/bench/report';
import { ROWS, rowLabel, selectRows } from '../../scripts/bench/rows';
import { bridgeAvailability, MAX_SOCKET_PATH, nbdUri, NbdServer, serverArgv, waitForUnixSocket } from '../../scripts/bench/servers';
import net from 'node:net';
import { median } from '../../scripts/bench/stats';
import type { BenchReport, DriveRun, IdleSample, LunsReport, RelayRun, RowResult, RunRecord } from '../../scripts/bench/types';

// One fio job (randwrite 4k QD32 over the nbd engine), trimmed to the fields the parser reads.
const FIO_JSON = `fio: connected to NBD server
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "x", "groupid" : 0, "error" : 0,
      "read" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "runtime" : 0,
        "clat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0, "N" : 0 } },
      "write" : { "io_bytes" : 170983424, "bw_bytes" : 56096923, "iops" : 13695.538058, "runtime" : 3048,
        "clat_ns" : { "min" : 239699, "max" : 49531139, "mean" : 2325715.644883, "N" : 41744,
          "percentile" : { "50.000000" : 1892352, "99.000000" : 7897088 } } },
      "usr_cpu" : 2.5, "sys_cpu" : 6.0
    }
  ]
}`;

test('parseFioJson: write section, percentiles, text before the JSON', () => {
  const r = parseFioJson(FIO_JSON, 'randwrite');
  assert.equal(r.bytes, 170983424);
  assert.equal(r.bwBytes, 56096923);
  assert.equal(r.iops, 13695.538058);
  assert.equal(r.p50Ns, 1892352);
  assert.equal(r.p99Ns, 7897088);
  assert.equal(r.meanNs, 2325715.644883);
  assert.equal(r.runtimeMs, 3048);
  assert.equal(r.fioCpuPct, 8.5);
  // Reading the read side of a write job gives no percentiles rather than garbage.
  const rd = parseFioJson(FIO_JSON, 'randread');
  assert.equal(rd.p50Ns, null);
  assert.equal(rd.bytes, 170983424, 'bytes count both directions');
});

test('parseFioJson: job errors and malformed reports throw', () => {
  assert.throws(() => parseFioJson('fio: nbd_connect_uri: connection refused\n', 'read'), /no JSON/);
  assert.throws(() => parseFioJson('{"jobs": []}', 'read'), /no jobs/);
  assert.throws(() => parseFioJson('{"jobs": [{"error": 5, "read": {}}]}', 'read'), /job error 5/);
  assert.throws(() => parseFioJson('{"jobs": [{"error": 0}, {"error": 0}]}', 'read'), /2 jobs/);
});

test('fioArgs: the nbd engine, group reporting, JSON to a file', () => {
  const a = fioArgs('nbd://127.0.0.1:1234/bench', { rw: 'randread', bs: 4096, iodepth: 32, numjobs: 4, runtimeSec: 10 }, '/tmp/o.json');
  for (const want of ['--ioengine=nbd', '--uri=nbd://127.0.0.1:1234/bench', '--rw=randread', '--bs=4096', '--iodepth=32',
    '--numjobs=4', '--time_based', '--runtime=10', '--group_reporting', '--percentile_list=50:99', '--output-format=json', '--output=/tmp/o.json']) {
    assert.ok(a.includes(want), want);
  }
  assert.ok(!a.some((x) => x.startsWith('--ramp_time')));
  assert.ok(fioArgs('u', { rw: 'read', bs: 1, iodepth: 1, numjobs: 1, runtimeSec: 1, rampSec: 2 }, 'o').includes('--ramp_time=2'));
});

// iscsi-perf rewrites its progress line with '\r' and prints the final average last.
const PERF_OUT = 'iscsi-perf version 0.1 - (c) 2014-2015 by Peter Lieven <pl@\u0138amp.de>\n\n' +
  'connected to iscsi://127.0.0.1:34585/iqn.2026-11.bench:t1/1\ncapacity is 2097152 blocks or 1073741824 byte (1024 MB)\n' +
  'performing RANDOM READ with 32 parallel requests\nFIXED transfer size of 8 blocks (4096 byte)\nwill run for 3 seconds.\n\n' +
  '\r00:00:02 - lba 465712, iops current 33279 (130 MB/s), iops average 33279 (130 MB/s), in_flight 32, busy 0        ' +
  '\r00:00:01 - lba 1324927, iops current 33101 (129 MB/s), iops average 33190 (129 MB/s), in_flight 32, busy 0        ' +
  '\riops average 35451 (138 MB/s)                                                        \n\nfinished.\n';

test('parseIscsiPerf: the last average wins; none gives null', () => {
  assert.equal(parseIscsiPerf(PERF_OUT), 35451);
  assert.equal(parseIscsiPerf('Login Failed. iscsi_service failed\n'), null);
});

test('iscsiPerfArgv: blocks per request from the LUN block size, -r for random', () => {
  const job = { iscsiUrl: 'iscsi://h/iqn.x/1', blockSize: 512, bs: 1 << 20, iodepth: 8, random: false, sessions: 1, seconds: 10, initiatorPrefix: 'iqn.i' };
  assert.deepEqual(iscsiPerfArgv(job, 0).slice(1), ['-i', 'iqn.i-0', '-m', '8', '-b', '2048', '-t', '10', 'iscsi://h/iqn.x/1']);
  assert.deepEqual(iscsiPerfArgv({ ...job, bs: 4096, iodepth: 32, random: true, seconds: 1.4 }, 3).slice(1),
    ['-i', 'iqn.i-3', '-m', '32', '-b', '8', '-t', '1', '-r', 'iscsi://h/iqn.x/1']);
});

test('/proc parsing: utime+stime after the last parenthesis, VmHWM in kB', () => {
  const stat = '4242 (node (worker) x) S 1 4242 4242 0 -1 4194304 1000 0 0 0 250 75 0 0 20 0 11 0 12345 1000000 5000 ...';
  assert.equal(parseStatTicks(stat), 325);
  assert.equal(parseStatTicks('garbage'), null);
  assert.deepEqual(parseStatUserSys(stat), { user: 250, sys: 75 });
  assert.equal(parseStatUserSys('garbage'), null);
  const status = 'Name:\tnode\nVmPeak:\t 1000 kB\nVmHWM:\t  143808 kB\nVmRSS:\t  120000 kB\n';
  assert.equal(parseStatusKiB(status, 'VmHWM'), 143808 * 1024);
  assert.equal(parseStatusKiB(status, 'VmSwap'), null);
  const self = sampleProc(process.pid);
  assert.ok(self && self.peakRssBytes >= self.rssBytes && self.cpuSec >= 0);
  assert.ok(Math.abs(self.userSec + self.sysSec - self.cpuSec) < 1e-9);
  assert.equal(sampleProc(0x7ffffffe), null);
});

test('median and per-pair ratios skip failed runs', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([null, undefined, NaN]), null);
  const run = (side: 'iscsi-nbd' | 'qemu-nbd', pair: number, mibps: number | null, ok = true): RunRecord => ({
    side, pair, ok, mibps, iops: mibps, p50Us: 10, p99Us: mibps === null ? null : 100 / mibps, meanUs: 10, bytes: 1 << 30, runtimeMs: 1000,
    serverCpuSec: 1, serverUserSec: 0.25, serverSysSec: 0.75, serverPeakRssMiB: 50 + pair, peakRssScope: 'run', cpuSecPerGiB: 1, targetCpuSec: 0, fioCpuPct: 1, fioArgv: [],
  });
  const ours = [run('iscsi-nbd', 1, 110), run('iscsi-nbd', 2, null, false), run('iscsi-nbd', 3, 90)];
  const qemu = [run('qemu-nbd', 1, 100), run('qemu-nbd', 2, 100), run('qemu-nbd', 3, 100)];
  assert.deepEqual(pairRatios(ours, qemu, 'mibps').map((x) => x.toFixed(2)), ['1.10', '0.90']);
  const s = summarizeSide('iscsi-nbd', true, ours, 0);
  assert.equal(s.okRuns, 2);
  assert.equal(s.mibps, 100);
  assert.equal(s.peakRssMiB, 53);
  assert.equal(s.cpuSecPerGiB, 1);
  // Two good runs of 110 and 90 IOPS for 1 s: 200 I/Os, 0.5 s user and 1.5 s system in all.
  assert.equal(s.userUsPerIo, 2500);
  assert.equal(s.sysUsPerIo, 7500);
});

test('relay: summary over its good runs, and its lines in both tables', () => {
  const run = (pair: number, ok: boolean, iops: number, userSec: number, sysSec: number): RelayRun =>
    ({ pair, ok, iops, p50Us: 100, p99Us: 1e6 / iops, ios: iops * 5, userSec, sysSec, ...(ok ? {} : { error: 'fio failed' }) });
  const x = summarizeRelay([run(1, true, 4000, 0.8, 1.0), run(2, false, 1, 9, 9), run(3, true, 3000, 0.6, 0.75)], ['node', 'relay.js']);
  assert.equal(x.available, true);
  assert.equal(x.okRuns, 2);
  assert.equal(x.iops, 3500);
  // 35000 I/Os; 1.4 s user and 1.75 s system over the good runs.
  assert.equal(x.userUsPerIo, 40);
  assert.equal(x.sysUsPerIo, 50);
  const none = summarizeRelay([], [], 'no qemu-nbd to relay to: qemu-nbd failed to start');
  assert.equal(none.available, false);
  assert.equal(none.okRuns, 0);
  assert.equal(none.userUsPerIo, null);

  const row = rowFor('randread-4k-qd1-unix', 0.8, 1.3, 10);
  const withRelay: RowResult = { ...row, relay: x };
  const report = reportOf([rowFor('randread-4k-qd32', 1.2, null, 10), withRelay]);
  const md = formatMarkdown(report).split('\n');
  const relayLines = md.filter((l) => l.startsWith('| rand read 4K QD1 (unix) | tmpfs | ') && l.includes(' / 3500 / '));
  assert.equal(relayLines.length, 1, md.join('\n'));
  assert.match(relayLines[0], /40\.0 \+ 50\.0 \|$/);
  const text = formatTable(report).split('\n');
  assert.ok(text.some((l) => l.startsWith('rand read 4K QD1 (unix), tmpfs: IOPS ours') && l.includes('relay+qemu-nbd 3500') && l.endsWith('relay 40.0 + 50.0')), text.join('\n'));
  // Without --relay, no trace of it.
  const plain = reportOf([row]);
  assert.ok(!formatMarkdown(plain).includes('relay'));
  assert.ok(!formatTable(plain).includes('relay'));
});

function rowFor(id: string, ratio: number | null, p99Ratio: number | null, rss: number | null, oursAvailable = true): RowResult {
  const def = ROWS.find((r) => r.id === id)!;
  const side = (name: 'iscsi-nbd' | 'qemu-nbd', available: boolean) => ({
    ...summarizeSide(name, available, [], 0, available ? undefined : 'serve missing'),
    peakRssMiB: rss,
  });
  return {
    id, title: def.title, lun: def.lun, transport: def.transport, rw: def.rw, bs: def.bs, iodepth: def.iodepth, conns: def.conns,
    ours: side('iscsi-nbd', oursAvailable), qemu: side('qemu-nbd', true),
    ratio, ratioPairs: [], p99Ratio, p99RatioPairs: [],
    ceiling: { available: false, reason: 'reads only', mibps: null, iops: null, argv: [] },
    fractionOfCeiling: null, qemuFractionOfCeiling: null, goals: [], misses: [], relay: null,
  };
}

function reportOf(rows: RowResult[]): BenchReport {
  return {
    schema: 'iscsi-nbd-bench/1', startedAt: '2026-11-24T12:00:00.000Z', finishedAt: null, complete: true,
    machine: { hostname: 'h', cpuModel: 'cpu', cpus: 2, memGiB: 4, kernel: 'k', os: 'os', node: 'v20', versions: {}, gitCommit: null, gitDirty: null },
    config: { pairs: 3, runtimeSec: 10, rampSec: 2, smoke: false, sessions: null, tmpfsLunMiB: 1024, ceiling: true, relay: false, only: null, transport: null, rows: rows.map((r) => r.id) },
    commands: {}, target: { portal: '127.0.0.1:1', tmpfsUrl: '', nullUrl: '', tmpfsBacking: '', blockSize: 512 },
    rows, misses: [], errors: [],
  };
}

test('goals: ratio, stretch, QD1 p99 and the QD128 RSS limit are printed plainly when missed', () => {
  const def = (id: string) => ROWS.find((r) => r.id === id)!;
  const seq = rowFor('seqread-1m-qd8', 1.02, null, 80);
  evaluateGoals(def('seqread-1m-qd8'), seq);
  assert.deepEqual(seq.misses, []);

  const rr = rowFor('randread-4k-qd32', 1.1, null, 80);
  evaluateGoals(def('randread-4k-qd32'), rr);
  assert.equal(rr.misses.length, 1);
  assert.match(rr.misses[0], /^MISS \(stretch\): randread-4k-qd32 .* 1\.10, goal >= 1\.25$/);

  const qd1 = rowFor('randread-4k-qd1', 1.3, 1.2, 80);
  evaluateGoals(def('randread-4k-qd1'), qd1);
  assert.deepEqual(qd1.misses.map((m) => m.split(':')[0]), ['MISS']);
  assert.match(qd1.misses[0], /p99 vs qemu-nbd 1\.20, goal <= 1\.00/);

  const big = rowFor('seqwrite-1m-qd128', 0.9, null, 230.5);
  evaluateGoals(def('seqwrite-1m-qd128'), big);
  assert.equal(big.misses.length, 2);
  assert.ok(big.misses.some((m) => /ratio to qemu-nbd 0\.90, goal >= 1\.00/.test(m)));
  assert.ok(big.misses.some((m) => /peak RSS MiB 230\.5, goal < 200/.test(m)));

  const none = rowFor('randread-4k-qd1-null', null, null, null, false);
  evaluateGoals(def('randread-4k-qd1-null'), none);
  assert.ok(none.misses.length >= 1);
  assert.ok(none.misses.every((m) => /not measured: iscsi-nbd not available: serve missing/.test(m)));
  assert.ok(none.goals.every((g) => g.met === null));
});

test('tables: every row once in Markdown, three lines per read row in text', () => {
  const rows = ROWS.map((d) => {
    const r = rowFor(d.id, 1, 1, 10);
    evaluateGoals(d, r);
    return r;
  });
  const report = reportOf(rows);
  const md = formatMarkdown(report).split('\n');
  assert.equal(md.filter((l) => /^\| (seq|rand) /.test(l)).length, ROWS.length);
  const text = formatTable(report);
  assert.equal(text.split('\n').filter((l) => /^(seq|rand) .*\biscsi-nbd\b/.test(l)).length, ROWS.length);

  // The transport shows: "(unix)" after the workload in both tables, TCP rows as before.
  const unixIds = ROWS.filter((d) => d.transport === 'unix');
  assert.ok(unixIds.length > 0);
  assert.equal(md.filter((l) => /^\| (seq|rand) [^|]* \(unix\) \| (tmpfs|null) \|/.test(l)).length, unixIds.length);
  assert.equal(md.filter((l) => l.startsWith('| rand read 4K QD32 (unix) | null | ')).length, 1, 'unix null QD32 row in Markdown');
  assert.equal(md.filter((l) => l.startsWith('| rand read 4K QD32 | null | ')).length, 1, 'its TCP twin keeps the plain title');
  assert.ok(md.some((l) => /Rows marked \(unix\) use NBD over an AF_UNIX socket/.test(l)), 'Markdown explains (unix)');
  const textLines = text.split('\n');
  assert.ok(textLines.some((l) => /^rand write 4K QD1 \(unix\)\s+tmpfs\s+iscsi-nbd\b/.test(l)), 'unix row in the text table');
  assert.ok(textLines.some((l) => /^rand write 4K QD32\s+tmpfs\s+iscsi-nbd\b/.test(l)), 'TCP row in the text table');
  assert.equal(textLines.filter((l) => /^\S.*\(unix\)\s+(tmpfs|null)\s+iscsi-nbd/.test(l)).length, unixIds.length);
  assert.ok(textLines.some((l) => l.startsWith('"(unix)" rows: NBD over an AF_UNIX socket')));

  // The JSON carries the transport of every row.
  const json = JSON.parse(JSON.stringify(report)) as BenchReport;
  assert.deepEqual(json.rows.map((r) => r.transport), ROWS.map((d) => d.transport));

  // A TCP-only report looks exactly as before: no legend, no "(unix)".
  const tcpOnly: BenchReport = { ...report, rows: rows.filter((r) => r.transport === 'tcp') };
  assert.ok(!formatTable(tcpOnly).includes('unix'));
  assert.ok(!formatMarkdown(tcpOnly).includes('unix'));

  // A miss names the transport too.
  const miss = rowFor('randread-4k-qd1-unix', 0.8, 1.5, 10);
  evaluateGoals(ROWS.find((d) => d.id === 'randread-4k-qd1-unix')!, miss);
  assert.ok(miss.misses.length >= 2);
  assert.ok(miss.misses.every((m) => m.includes('randread-4k-qd1-unix (rand read 4K QD1 (unix), tmpfs LUN)')), miss.misses.join('\n'));
});

test('rows: filters and server command lines', () => {
  assert.deepEqual(selectRows('randread-4k-qd1', 'tcp').map((r) => r.id), ['randread-4k-qd1', 'randread-4k-qd1-null']);
  assert.deepEqual(selectRows('4k-qd1').map((r) => r.id), ['randread-4k-qd1', 'randread-4k-qd1-null',
    'randread-4k-qd1-unix', 'randread-4k-qd1-null-unix', 'randwrite-4k-qd1-unix', 'randwrite-4k-qd1-null-unix']);
  assert.deepEqual(selectRows('seqread-1m-qd8,seqwrite-1m-qd128', 'tcp').map((r) => r.id), ['seqread-1m-qd8', 'seqwrite-1m-qd128']);
  assert.throws(() => selectRows('nope'), /matches no row/);
  assert.throws(() => selectRows('4x32', 'unix'), /matches no row/);
  assert.equal(new Set(ROWS.map((r) => r.id)).size, ROWS.length);
  const ours = serverArgv({ side: 'iscsi-nbd', iscsiUrl: 'iscsi://h/iqn.x/1', repoRoot: '/r', sessions: 2 }, 5000);
  assert.deepEqual(ours.slice(1), ['/r/bin/iscsi-nbd.js', 'serve', '--listen', '127.0.0.1:5000', '--export', 'bench=iscsi://h/iqn.x/1',
    '--log-level', 'warn', '--sessions', '2']);
  const qemu = serverArgv({ side: 'qemu-nbd', iscsiUrl: 'iscsi://h/iqn.x/1', repoRoot: '/r' }, 5000);
  assert.deepEqual(qemu.slice(1), ['-f', 'raw', '--cache=none', '-e', '32', '-t', '-p', '5000', '-b', '127.0.0.1', '-x', 'bench', 'iscsi://h/iqn.x/1']);
  // The TCP spec written out in full builds the same command and URI.
  assert.deepEqual(serverArgv({ side: 'qemu-nbd', iscsiUrl: 'iscsi://h/iqn.x/1', repoRoot: '/r', transport: 'tcp' }, 5000), qemu);
  assert.equal(nbdUri({ side: 'qemu-nbd', iscsiUrl: 'iscsi://h/iqn.x/1', repoRoot: '/r' }, 5000), 'nbd://127.0.0.1:5000/bench');
});

test('unix rows: the map workloads on both LUNs, TCP rows untouched', () => {
  const tcp = selectRows(undefined, 'tcp');
  const unix = selectRows(undefined, 'unix');
  assert.equal(tcp.length + unix.length, ROWS.length);
  assert.deepEqual(selectRows('unix').map((r) => r.id), unix.map((r) => r.id), '--rows unix picks exactly the unix rows');
  // Every TCP row comes first (servers switch transport once), and none says "unix".
  assert.equal(ROWS.findIndex((r) => r.transport === 'unix'), tcp.length);
  assert.ok(tcp.every((r) => !r.id.includes('unix') && rowLabel(r) === r.title));
  assert.deepEqual(tcp.map((r) => r.id), ['seqread-1m-qd8', 'seqwrite-1m-qd8', 'randread-4k-qd32', 'randread-4k-qd32-null',
    'randwrite-4k-qd32', 'randwrite-4k-qd32-null', 'randread-4k-qd1', 'randread-4k-qd1-null', 'randread-4k-4x32',
    'randread-4k-4x32-null', 'seqwrite-1m-qd128']);
  // 4K random read/write at QD32 and QD1 and 1M sequential read/write, each on tmpfs and null.
  const want = [['read', 1 << 20, 8], ['write', 1 << 20, 8], ['randread', 4096, 32], ['randwrite', 4096, 32], ['randread', 4096, 1], ['randwrite', 4096, 1]] as const;
  for (const [rw, bs, qd] of want) {
    for (const lun of ['tmpfs', 'null'] as const) {
      const r = unix.filter((d) => d.rw === rw && d.bs === bs && d.iodepth === qd && d.lun === lun);
      assert.equal(r.length, 1, `${rw} ${bs} QD${qd} ${lun}`);
      assert.equal(r[0].conns, 1);
      assert.ok(r[0].id.endsWith('-unix'), r[0].id);
      assert.equal(rowLabel(r[0]), `${r[0].title} (unix)`);
      // A unix row with a TCP twin has the TCP row's id and title, so the two compare directly.
      const twin = tcp.find((d) => d.id === r[0].id.replace(/-unix$/, ''));
      if (twin) assert.deepEqual({ ...twin, id: r[0].id, transport: 'unix' }, r[0]);
    }
  }
  assert.equal(unix.length, want.length * 2);
  // QD1 rows carry the latency goal, 4K rows the stretch goal, as over TCP.
  assert.ok(unix.filter((d) => d.iodepth === 1).every((d) => d.latencyGoal === true));
  assert.ok(unix.filter((d) => d.bs === 4096).every((d) => d.stretch === 1.25));
});

test('unix rows: serve --listen unix:PATH, qemu-nbd -k PATH, fio on nbd+unix://', () => {
  const sock = '/tmp/iscsi-nbd-bench-Ab12/nbd-qemu-nbd-null.sock';
  const base = { iscsiUrl: 'iscsi://127.0.0.1:3261/iqn.x:t/2', repoRoot: '/r', transport: 'unix' as const, socketPath: sock };
  const ours = serverArgv({ ...base, side: 'iscsi-nbd', sessions: 2 }, 'PORT');
  assert.deepEqual(ours.slice(1), ['/r/bin/iscsi-nbd.js', 'serve', '--listen', `unix:${sock}`, '--export', 'bench=iscsi://127.0.0.1:3261/iqn.x:t/2',
    '--log-level', 'warn', '--sessions', '2']);
  const qemu = serverArgv({ ...base, side: 'qemu-nbd' }, 'PORT');
  assert.equal(qemu[0], process.env.QEMU_NBD_BIN ?? 'qemu-nbd');
  assert.deepEqual(qemu.slice(1), ['-f', 'raw', '--cache=none', '-e', '32', '-t', '-k', sock, '-x', 'bench', 'iscsi://127.0.0.1:3261/iqn.x:t/2']);
  assert.ok(!qemu.includes('-p') && !qemu.includes('-b') && !qemu.includes('PORT'), 'no TCP options with -k');

  const uri = nbdUri({ ...base, side: 'qemu-nbd' }, 'PORT');
  assert.equal(uri, `nbd+unix:///bench?socket=${sock}`);
  assert.equal(nbdUri({ ...base, side: 'iscsi-nbd' }, 0), uri, 'both sides are reached the same way');
  // Characters that mean something in a URI are escaped ('/' is kept).
  assert.equal(nbdUri({ ...base, side: 'qemu-nbd', socketPath: '/tmp/a b&c/s.sock' }, 0), 'nbd+unix:///bench?socket=/tmp/a%20b%26c/s.sock');
  const fio = fioArgs(uri, { rw: 'randwrite', bs: 4096, iodepth: 1, numjobs: 1, runtimeSec: 2 }, '/tmp/o.json');
  assert.ok(fio.includes('--ioengine=nbd'));
  assert.ok(fio.includes(`--uri=nbd+unix:///bench?socket=${sock}`), fio.join(' '));
  assert.ok(fio.includes('--iodepth=1') && fio.includes('--rw=randwrite'));

  assert.throws(() => serverArgv({ ...base, socketPath: undefined, side: 'qemu-nbd' }, 'PORT'), /needs a socketPath/);
});

test('unix rows: waiting for a socket; socket paths checked before spawning', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-sock-'));
  try {
    const sock = path.join(dir, 's.sock');
    await assert.rejects(waitForUnixSocket(sock, 100), /nothing listening/);
    const srv = net.createServer((c) => c.destroy());
    await new Promise<void>((r) => srv.listen(sock, r));
    await waitForUnixSocket(sock, 1000);
    await new Promise<void>((r) => srv.close(() => r()));
    // A long socket path is refused before anything is spawned.
    const long = path.join(dir, 'x'.repeat(MAX_SOCKET_PATH));
    await assert.rejects(NbdServer.start({ side: 'qemu-nbd', iscsiUrl: 'iscsi://h/iqn.x/1', repoRoot: '/r', transport: 'unix', socketPath: long }), /longer than 107 bytes/);
    await assert.rejects(NbdServer.start({ side: 'qemu-nbd', iscsiUrl: 'iscsi://h/iqn.x/1', repoRoot: '/r', transport: 'unix', socketPath: 'rel.sock' }), /not absolute/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bridgeAvailability: missing serve build is reported, not thrown', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-root-'));
  try {
    assert.match(bridgeAvailability(root).reason ?? '', /iscsi-nbd\.js is missing/);
    fs.mkdirSync(path.join(root, 'bin'));
    fs.writeFileSync(path.join(root, 'bin', 'iscsi-nbd.js'), '');
    const a = bridgeAvailability(root);
    assert.equal(a.ok, false);
    assert.match(a.reason ?? '', /serve command is not built/);
    fs.mkdirSync(path.join(root, 'dist', 'src', 'cli'), { recursive: true });
    fs.writeFileSync(path.join(root, 'dist', 'src', 'cli', 'serve.js'), '');
    assert.deepEqual(bridgeAvailability(root), { ok: true });
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

const qemuNbd = process.env.QEMU_NBD_BIN ?? 'qemu-nbd';
const haveQemuNbd = spawnSync(qemuNbd, ['--version'], { stdio: 'ignore' }).status === 0;

test('unix rows: qemu-nbd -k on a plain file starts over a stale socket file, answers nbd+unix://, and stop() removes the socket',
  { skip: haveQemuNbd ? false : 'qemu-nbd not installed', timeout: 30000 }, async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-sock-'));
    try {
      const img = path.join(dir, 'disk.img');
      fs.writeFileSync(img, Buffer.alloc(1 << 20));
      const sock = path.join(dir, 'nbd-qemu-nbd-tmpfs.sock');
      fs.writeFileSync(sock, 'stale'); // left behind by a killed run
      let srv: NbdServer;
      try {
        // iscsiUrl is only the last argument, so a file path serves a file.
        srv = await NbdServer.start({ side: 'qemu-nbd', iscsiUrl: img, repoRoot: '/r', transport: 'unix', socketPath: sock });
      } catch (err) {
        // --cache=none needs O_DIRECT, which tmpfs lacks.
        if (/Invalid argument|O_DIRECT/i.test((err as Error).message)) return t.skip(`no O_DIRECT in ${os.tmpdir()}`);
        throw err;
      }
      try {
        assert.equal(srv.uri, `nbd+unix:///bench?socket=${sock}`);
        assert.equal(srv.socketPath, sock);
        assert.equal(srv.port, 0);
        assert.ok(srv.argv.includes('-k') && !srv.argv.includes('-p'));
        assert.ok(fs.statSync(sock).isSocket(), 'the stale file was replaced by the listening socket');
        assert.equal(srv.exited, null);
      } finally {
        await srv.stop();
      }
      assert.notEqual(srv.exited, null, 'qemu-nbd is stopped');
      assert.equal(fs.existsSync(sock), false, 'socket file removed');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

// The many-LUN section (--luns): its parsers, command lines, summaries and goals.

// Two jobs of one fio run (fioJobsArgs, no group_reporting), trimmed to the fields read.
const FIO_TWO_JOBS = `fio: connected to NBD server
fio: connected to NBD server
{ "fio version" : "fio-3.33", "jobs" : [
  { "jobname" : "lun1", "error" : 0, "usr_cpu" : 1.0, "sys_cpu" : 2.0,
    "read" : { "io_bytes" : 40960000, "bw_bytes" : 13653333, "iops" : 3333.3, "runtime" : 3000,
      "clat_ns" : { "mean" : 2400000.0, "percentile" : { "50.000000" : 2300000, "99.000000" : 6800000 } } },
    "write" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "runtime" : 0, "clat_ns" : { "mean" : 0.0 } } },
  { "jobname" : "lun2", "error" : 0, "usr_cpu" : 1.0, "sys_cpu" : 2.0,
    "read" : { "io_bytes" : 36864000, "bw_bytes" : 12288000, "iops" : 3000.0, "runtime" : 3000,
      "clat_ns" : { "mean" : 2600000.0, "percentile" : { "50.000000" : 2500000, "99.000000" : 7600000 } } },
    "write" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0, "runtime" : 0, "clat_ns" : { "mean" : 0.0 } } }
] }`;

test('luns: one fio job per export at once, reported job by job', () => {
  const a = fioJobsArgs([{ name: 'lun1', uri: 'nbd://127.0.0.1:1/lun1' }, { name: 'lun2', uri: 'nbd://127.0.0.1:1/lun2' }],
    { rw: 'randread', bs: 4096, iodepth: 8, numjobs: 1, runtimeSec: 3 }, '/tmp/o.json');
  // Global options first, then a --name and --uri per job; no group reporting.
  const firstJob = a.indexOf('--name=lun1');
  assert.ok(firstJob > 0 && a.slice(0, firstJob).includes('--iodepth=8') && a.slice(0, firstJob).includes('--ioengine=nbd'), a.join(' '));
  assert.deepEqual(a.slice(firstJob), ['--name=lun1', '--uri=nbd://127.0.0.1:1/lun1', '--name=lun2', '--uri=nbd://127.0.0.1:1/lun2']);
  assert.ok(!a.includes('--group_reporting'));
  const jobs = parseFioJobs(FIO_TWO_JOBS, 'randread');
  assert.deepEqual(jobs.map((j) => [j.name, j.iops, j.p99Ns]), [['lun1', 3333.3, 6800000], ['lun2', 3000, 7600000]]);
  assert.throws(() => parseFioJson(FIO_TWO_JOBS, 'randread'), /2 jobs/, 'a one-job run still wants one job');
});

test('luns: one serve with every export, one qemu-nbd per LUN', () => {
  const url = (l: number) => `iscsi://127.0.0.1:3260/iqn.x:t/${l}`;
  const [ours] = lunsSpecs('iscsi-nbd', 3, url, { repoRoot: '/r', runDir: '/tmp/b', sessions: null });
  const argv = serverArgv(ours, 5000);
  assert.deepEqual(argv.filter((_, i) => argv[i - 1] === '--export'), ['lun1=' + url(1), 'lun2=' + url(2), 'lun3=' + url(3)]);
  assert.ok(!argv.includes('--sessions'));
  assert.equal(ours.controlPath, '/tmp/b/control-luns.sock');
  assert.equal(nbdUri(ours, 5000, 'lun2'), 'nbd://127.0.0.1:5000/lun2');
  assert.equal(nbdUri(ours, 5000), 'nbd://127.0.0.1:5000/lun1', 'the first export by default');
  const qemu = lunsSpecs('qemu-nbd', 3, url, { repoRoot: '/r', runDir: '/tmp/b', sessions: 4 });
  assert.equal(qemu.length, 3);
  assert.deepEqual(serverArgv(qemu[2], 5002).slice(-3), ['-x', 'lun3', url(3)]);
  assert.throws(() => serverArgv({ side: 'qemu-nbd', iscsiUrl: url(1), repoRoot: '/r', exports: [{ name: 'a', iscsiUrl: url(1) }, { name: 'b', iscsiUrl: url(2) }] }, 1), /one LUN per process/);
  assert.deepEqual(lunsTarget(2).luns, [{ lun: 1, bstype: 'null', path: '/dev/null' }, { lun: 2, bstype: 'null', path: '/dev/null' }]);
  assert.equal(lunsNeeded({ counts: [1, 8, 64], driven: 8 }), 64);
  assert.equal(lunsNeeded({ counts: [1, 2], driven: 4 }), 4);
});

test('luns: TCP connections from /proc/PID/net/tcp and the sockets the process holds', async () => {
  const text = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n' +
    '   0: 0100007F:A087 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 96089 1 0000000021411c8e 100 0 0 10 0\n' +
    '   1: 0100007F:C8F2 0100007F:0CBC 01 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000005dfc47b 20 4 30 10 -1\n';
  assert.deepEqual(parseProcNetTcp(text), [{ remotePort: 0, state: 10, inode: 96089 }, { remotePort: 3260, state: 1, inode: 123456 }]);
  // This process: two connections to a listener of its own, none to a port nobody uses.
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  const socks = await Promise.all([1, 2].map(() => new Promise<net.Socket>((r) => { const s = net.connect(port, '127.0.0.1', () => r(s)); })));
  try {
    assert.equal(tcpConnectionsTo(process.pid, port), 2);
    assert.equal(tcpConnectionsTo(process.pid, 1), 0);
    assert.equal(tcpConnectionsTo(2 ** 22 + 12345, port), null, 'no such process');
  } finally {
    for (const s of socks) s.destroy();
    await new Promise<void>((r) => srv.close(() => r()));
  }
});

test('luns: medians, RSS per extra LUN, many/one, the goals and both tables', () => {
  const idle = (side: 'iscsi-nbd' | 'qemu-nbd', luns: number, pair: number, rssMiB: number, connections: number): IdleSample => ({
    side, luns, pair, ok: true, processes: side === 'qemu-nbd' ? luns : 1, readyMs: 100 * luns, connections, rssMiB, peakRssMiB: rssMiB + 5,
  });
  const samples = [
    idle('iscsi-nbd', 1, 1, 60, 2), idle('iscsi-nbd', 64, 1, 70, 2), idle('iscsi-nbd', 1, 2, 62, 2), idle('iscsi-nbd', 64, 2, 72.6, 2),
    idle('qemu-nbd', 1, 1, 9, 1), idle('qemu-nbd', 64, 1, 576, 64),
  ];
  const ours = summarizeIdle(samples, 'iscsi-nbd', [1, 64]);
  assert.deepEqual(ours.map((s) => [s.luns, s.rssMiB, s.connections, s.connectionsRange]), [[1, 61, 2, [2, 2]], [64, 71.3, 2, [2, 2]]]);
  assert.equal(ours[0].rssPerExtraLunMiB, null);
  assert.equal(ours[1].rssPerExtraLunMiB!.toFixed(3), ((71.3 - 61) / 63).toFixed(3));
  const drive = (side: 'iscsi-nbd' | 'qemu-nbd', pair: number, shape: 'one' | 'many', iops: number[]): DriveRun => ({
    side, pair, shape, ok: true, luns: iops.map((x, i) => ({ name: `lun${i + 1}`, iops: x, p50Us: 100, p99Us: 1000 + i })),
    iops: iops.reduce((a, b) => a + b, 0), spread: Math.max(...iops) / Math.min(...iops), serverCpuSec: 1, clientCpuSec: 0.5,
    targetCpuSec: side === 'iscsi-nbd' ? 2 : null, seconds: 10, fioArgv: [],
  });
  const runs = [drive('iscsi-nbd', 1, 'one', [20000]), drive('iscsi-nbd', 1, 'many', [3000, 3000, 2000]),
    drive('qemu-nbd', 1, 'one', [10000]), drive('qemu-nbd', 1, 'many', [4000, 4000, 4000])];
  assert.equal(manyOverOne(runs, 'iscsi-nbd'), 0.4);
  assert.equal(manyOverOne(runs, 'qemu-nbd'), 1.2);
  const many = summarizeDrive(runs, 'iscsi-nbd', 'many');
  assert.deepEqual([many.iops, many.spread, many.p99MinUs, many.p99MaxUs], [8000, 1.5, 1000, 1002]);
  // 80000 I/Os in 10 s: 1 s of server CPU is 12.5 us per I/O, fio's 0.5 s 6.25, tgtd's 2 s 25.
  assert.deepEqual(many.cpuUsPerIo, { server: 12.5, client: 6.25, target: 25 });
  assert.deepEqual(cpuPerIo(runs[0]), { server: 5, client: 2.5, target: 10 });
  const report: LunsReport = {
    target: 'iqn.x', lunCounts: [1, 64], driven: 3, qdPerLun: 8, sessions: 2, idleMs: 1000, idle: samples,
    idleSummary: [...ours, ...summarizeIdle(samples, 'qemu-nbd', [1, 64])], drive: runs,
    driveSummary: (['iscsi-nbd', 'qemu-nbd'] as const).flatMap((s) => [summarizeDrive(runs, s, 'one'), summarizeDrive(runs, s, 'many')]),
    manyOverOne: { 'iscsi-nbd': 0.4, 'qemu-nbd': 1.2 }, goals: [], misses: [], commands: {},
  };
  evaluateLunsGoals(report);
  assert.deepEqual(report.goals.map((g) => g.met), [true, true, false, true]);
  assert.deepEqual(report.misses, ['MISS: luns (many LUNs of one target): iscsi-nbd IOPS of 3 LUNs x QD8 / 1 LUN x QD24 0.40, goal >= 1.00']);
  // A round with another count of connections is a miss, shown with that count.
  const off = { ...report, idle: [...samples, idle('iscsi-nbd', 64, 3, 71, 3)] };
  evaluateLunsGoals(off);
  assert.match(off.misses[0], /iSCSI connections with 64 LUNs 3, goal = 2$/);
  const gone = { ...report };
  evaluateLunsGoals(gone, 'iscsi-nbd not available: skipped (--only qemu-nbd)');
  assert.deepEqual(gone.misses, ['MISS: luns (many LUNs of one target): not measured: iscsi-nbd not available: skipped (--only qemu-nbd)']);

  const md = formatLunsMarkdown(report).split('\n');
  assert.ok(md.includes('| 64 | 2 / 64 | 71.3 / 576.0 | 0.16 / 9.00 | 6400 / 6400 |'), md.join('\n'));
  assert.ok(md.includes('| 3 LUNs x QD8 | 8000 / 12000 | 1000-1002 / 1000-1002 | 1.50 / 1.00 | 0.40 / 1.20 | 12.5 / 6.3 / 25.0; 8.3 / 4.2 / ? |'), md.join('\n'));
  assert.ok(md.includes('| 1 LUN x QD24 | 20000 / 10000 | 1000 / 1000 |  |  | 5.0 / 2.5 / 10.0; 10.0 / 5.0 / ? |'), md.join('\n'));
  const text = formatLunsTable(report);
  assert.match(text, /^64\s+iscsi-nbd\s+1\s+2\s+6400\s+71\.3\s+0\.16$/m);
  assert.match(text, /^iscsi-nbd\s+3 LUNs x QD8\s+8000\s+1000-1002\s+1\.50\s+0\.40\s+12\.5\/6\.3\/25\.0$/m);
});
