// Paths bound to interfaces, against real peers in network namespaces the
// test makes and always removes: tgtd in namespace T on one portal address,
// reachable over two veth links from namespace I (a1 10.77.0.11, a2
// 10.77.0.12, one subnet: rp_filter 2, arp_ignore 1), `iscsi-nbd serve` in I
// with `ifaces: [a1, a2]` and short NOP timeouts, and fio (crc32c verify, nbd
// engine over a unix socket, which reaches across namespaces) in the root
// namespace. One link goes down, then the other silently drops everything
// (tc netem loss 100%; a blackhole route in T where netem is missing); fio
// must see no error, its worst completion latency stays within the NOP
// timeout, and the path comes back. No interface or route of the host is
// touched: every link is made inside the namespaces.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { run, runCli, sleep, startCli, until, type Proc } from '../helpers/process';
import { skipUnless } from '../helpers/tools';

const IQN = 'iqn.2026-11.test.iscsi-nbd:ifaces';
const NOP_INTERVAL_S = 1;
const NOP_TIMEOUT_S = 2;
/** A failover must complete within the NOP timeout (plus the interval and some scheduling). */
const FAILOVER_BOUND_MS = (NOP_INTERVAL_S + NOP_TIMEOUT_S) * 1000 + 3000;

const skip = process.getuid?.() !== 0 ? 'needs root (network namespaces)' : skipUnless('ip', 'tc', 'ss', 'tgtd', 'tgtadm', 'fio');

function sh(args: string[], allowFail = false): string {
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8', timeout: 15000 });
  if (r.status !== 0 && !allowFail) throw new Error(`${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout + (allowFail ? r.stderr : '');
}

interface Net {
  ini: string;
  tgt: string;
  remove(): void;
}

/** Two namespaces, two veth pairs between them, made inside the namespaces only. */
function makeNet(): Net {
  const id = `${process.pid.toString(36)}${Math.floor(Math.random() * 1e4).toString(36)}`;
  const ini = `inbd-i-${id}`;
  const tgt = `inbd-t-${id}`;
  const net: Net = {
    ini, tgt,
    remove() {
      sh(['ip', 'netns', 'delete', ini], true); // deleting a namespace deletes its veths
      sh(['ip', 'netns', 'delete', tgt], true);
    },
  };
  process.once('exit', () => net.remove());
  try {
    sh(['ip', 'netns', 'add', ini]);
    sh(['ip', 'netns', 'add', tgt]);
    const inI = (...a: string[]) => sh(['ip', '-n', ini, ...a]);
    const inT = (...a: string[]) => sh(['ip', '-n', tgt, ...a]);
    const sysctl = (ns: string, key: string, v: string) => sh(['ip', 'netns', 'exec', ns, 'sh', '-c', `echo ${v} > /proc/sys/net/ipv4/conf/${key}`]);
    for (const k of ['all/rp_filter', 'default/rp_filter']) sysctl(ini, k, '2');
    inI('link', 'set', 'lo', 'up');
    inT('link', 'set', 'lo', 'up');
    // The portal address on T's loopback; a /32 route per link, so each initiator address is answered on its own link.
    inT('addr', 'add', '10.77.0.1/32', 'dev', 'lo');
    for (const [n, addr] of [['1', '10.77.0.11'], ['2', '10.77.0.12']]) {
      inI('link', 'add', `a${n}`, 'type', 'veth', 'peer', 'name', `b${n}`, 'netns', tgt);
      inI('addr', 'add', `${addr}/24`, 'dev', `a${n}`);
      for (const k of ['rp_filter=2', 'arp_ignore=1', 'arp_announce=2']) {
        const [key, v] = k.split('=');
        sysctl(ini, `a${n}/${key}`, v);
      }
      inI('link', 'set', `a${n}`, 'up');
      inT('link', 'set', `b${n}`, 'up');
      inT('route', 'add', `${addr}/32`, 'dev', `b${n}`);
    }
    return net;
  } catch (err) {
    net.remove();
    throw err;
  }
}

interface FioOut {
  errors: number;
  maxClatMs: number;
  raw: string;
}

/** fio over the daemon's NBD unix socket: random writes with crc32c verified as it goes, for `seconds`. */
async function fioRun(sock: string, seconds: number, t: { after: (f: () => unknown) => void }): Promise<FioOut> {
  const res = await run('fio', [
    '--name=ifaces', '--ioengine=nbd', `--uri=nbd+unix:///lun?socket=${sock}`, '--rw=randwrite', '--bs=64k', '--size=32M',
    '--iodepth=8', '--time_based', `--runtime=${seconds}`, '--verify=crc32c', '--verify_backlog=128', '--verify_fatal=1',
    '--verify_state_save=0', '--output-format=json', '--randseed=7',
  ], { timeoutMs: (seconds + 60) * 1000, t });
  let errors = -1;
  let maxClatMs = -1;
  try {
    const j = JSON.parse(res.stdout.slice(res.stdout.indexOf('{')));
    const job = j.jobs[0];
    errors = (job.total_err ?? 0) + (job.error ? 1 : 0);
    maxClatMs = Math.max(job.write?.clat_ns?.max ?? 0, job.read?.clat_ns?.max ?? 0) / 1e6;
  } catch {
    errors = -1;
  }
  return { errors, maxClatMs, raw: `${res.stdout.slice(-2000)}\n${res.stderr.slice(-2000)}` };
}

interface SessionView { iface?: string; state: string; portal?: string; reconnects?: number }

function sessions(control: string): SessionView[] {
  const r = runCli(['status', '--json', '--control', control], 15000);
  if (r.code !== 0) return [];
  return (JSON.parse(r.out) as { exports: Array<{ sessions: SessionView[] }> }).exports[0]?.sessions ?? [];
}

const bothUp = (control: string): boolean => {
  const s = sessions(control);
  return s.length === 2 && s.every((x) => x.state === 'logged-in');
};

test('two interfaces, one portal: two paths; a link down and a silent link each fail over within the NOP timeout and come back', { skip, timeout: 300_000 }, async (t) => {
  const net = makeNet();
  t.after(() => net.remove());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ifaces-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  let tgtd: Tgtd | undefined;
  let daemon: Proc | undefined;
  t.after(async () => {
    await daemon?.stop();
    await tgtd?.stop();
  });

  tgtd = await startTgtdWithLuns({ netns: net.tgt, host: '10.77.0.1', targets: [{ iqn: IQN, luns: [{ size: 64 * 1024 * 1024 }] }] });
  const control = path.join(dir, 'control.sock');
  const nbdSock = path.join(dir, 'nbd.sock');
  fs.writeFileSync(path.join(dir, 'config.yaml'), [
    'sessions: 1',
    `timeouts: {nopInterval: ${NOP_INTERVAL_S}, nopTimeout: ${NOP_TIMEOUT_S}, replacement: 30, connect: 2, login: 5, command: 15}`,
    'exports:',
    '  - name: lun',
    `    url: iscsi://10.77.0.1:${tgtd.port}/${IQN}/1`,
    '    ifaces: [a1, a2]',
  ].join('\n') + '\n');
  daemon = startCli(['serve', '--config', path.join(dir, 'config.yaml'), '--listen', `unix:${nbdSock}`, '--control', control,
    '--state-dir', path.join(dir, 'state'), '--log-format', 'json', '--initiator-name', 'iqn.2026-11.test.iscsi-nbd:ifaces-ini'], {}, { netns: net.ini });
  await daemon.waitFor(/"msg":"serving NBD"/, 30000);
  await until(() => bothUp(control), 20000, 'both sessions logged in');

  // Each session leaves through its own interface: status says so, and the target sees both source addresses.
  const st = sessions(control);
  assert.deepEqual(st.map((s) => s.iface).sort(), ['a1', 'a2']);
  const peers = sh(['ip', 'netns', 'exec', net.tgt, 'ss', '-Htn', 'state', 'established', `sport = :${tgtd.port}`]);
  assert.match(peers, /10\.77\.0\.11:/, peers);
  assert.match(peers, /10\.77\.0\.12:/, peers);
  const text = runCli(['status', '--control', control], 15000).out;
  assert.match(text, /Interface: a1/);
  assert.match(text, /Interface: a2/);

  // 1. A link goes down (a1), and comes back.
  const fio1 = fioRun(nbdSock, 16, t);
  await sleep(4000);
  sh(['ip', '-n', net.ini, 'link', 'set', 'a1', 'down']);
  await sleep(6000);
  sh(['ip', '-n', net.ini, 'link', 'set', 'a1', 'up']);
  const r1 = await fio1;
  console.log(`# iface: link down (ip link set a1 down): fio max completion latency ${r1.maxClatMs.toFixed(1)} ms, errors ${r1.errors}`);
  assert.equal(r1.errors, 0, r1.raw);
  assert.ok(r1.maxClatMs < FAILOVER_BOUND_MS, `I/O waited ${r1.maxClatMs} ms (bound ${FAILOVER_BOUND_MS} ms)`);
  await until(() => bothUp(control), 30000, 'the a1 path back');
  assert.ok((sessions(control).find((s) => s.iface === 'a1')?.reconnects ?? 0) >= 1, 'the a1 session failed and logged in again');

  // 2. A silent failure on the other link (a2): everything dropped, nothing closed.
  const netem = sh(['ip', 'netns', 'exec', net.ini, 'tc', 'qdisc', 'add', 'dev', 'a2', 'root', 'netem', 'loss', '100%'], true);
  const haveNetem = !/unknown|error|RTNETLINK/i.test(netem);
  if (!haveNetem) sh(['ip', 'netns', 'exec', net.ini, 'tc', 'qdisc', 'del', 'dev', 'a2', 'root'], true);
  const silence = haveNetem ? 'tc netem loss 100%' : 'a blackhole route in the target namespace (this kernel has no sch_netem)';
  const fio2 = fioRun(nbdSock, 16, t);
  if (haveNetem) {
    // netem was added before fio started: drop it for the start, add it again mid-run.
    sh(['ip', 'netns', 'exec', net.ini, 'tc', 'qdisc', 'del', 'dev', 'a2', 'root']);
  }
  await sleep(4000);
  if (haveNetem) sh(['ip', 'netns', 'exec', net.ini, 'tc', 'qdisc', 'add', 'dev', 'a2', 'root', 'netem', 'loss', '100%']);
  else sh(['ip', '-n', net.tgt, 'route', 'replace', 'blackhole', '10.77.0.12/32']);
  await sleep(6000);
  if (haveNetem) sh(['ip', 'netns', 'exec', net.ini, 'tc', 'qdisc', 'del', 'dev', 'a2', 'root']);
  else sh(['ip', '-n', net.tgt, 'route', 'replace', '10.77.0.12/32', 'dev', 'b2']);
  const r2 = await fio2;
  console.log(`# iface: silent failure (${silence} on a2's path): fio max completion latency ${r2.maxClatMs.toFixed(1)} ms, errors ${r2.errors}`);
  assert.equal(r2.errors, 0, r2.raw);
  assert.ok(r2.maxClatMs < FAILOVER_BOUND_MS, `I/O waited ${r2.maxClatMs} ms (bound ${FAILOVER_BOUND_MS} ms)`);
  await until(() => bothUp(control), 30000, 'the a2 path back');
  const end = sessions(control);
  assert.deepEqual(end.map((s) => s.iface).sort(), ['a1', 'a2']);
  assert.ok((end.find((s) => s.iface === 'a2')?.reconnects ?? 0) >= 1, 'the a2 session failed and logged in again');
});
