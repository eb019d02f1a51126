// `iscsi-nbd discover` against a real tgtd with two targets (one behind
// CHAP) and three disk LUNs, and `iscsi-nbd serve` refusing to start on
// exports it cannot open.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTgtdWithLuns } from '../helpers/tgtd';
import { runCli, describeRun, TEST_INITIATOR, tmpdir } from '../helpers/bridge';
import { freePort } from '../helpers/ports';
import { skipUnless } from '../helpers/tools';
import path from 'node:path';

const MiB = 1024 * 1024;
const CHAP = { user: 'nbduser', secret: 'secret-12chars' };

interface Lun { lun: number; deviceType: number; deviceTypeName: string; vendor: string; product: string; size?: string; blockSize?: number; error?: string }
interface Target { name: string; portals: Array<{ host: string; port: number; tpgt: number }>; luns: Lun[]; error?: { code: string; message: string } }

const T1 = 'iqn.2026-11.test.iscsi-nbd:open';
const T2 = 'iqn.2026-11.test.iscsi-nbd:chap';

test('discover: two targets, three LUNs, CHAP, wrong secret, human output, unreachable portal, bad URL', { skip: skipUnless('tgtd', 'tgtadm'), timeout: 120_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({
    targets: [
      { iqn: T1, luns: [{ size: 8 * MiB }, { size: 16 * MiB, blockSize: 4096 }] },
      { iqn: T2, luns: [{ size: 12 * MiB }], chap: CHAP },
    ],
  });
  t.after(() => tgt.stop());
  const common = ['--initiator-name', TEST_INITIATOR];
  const env = { ISCSI_NBD_STATE_DIR: tmpdir(t), ISCSI_NBD_LOG_LEVEL: '' };

  // Right secret, JSON.
  const r = await runCli(['discover', tgt.url(undefined, undefined, CHAP), '--json', ...common], { timeoutMs: 30000, env });
  assert.equal(r.code, 0, describeRun(r, 'discover --json'));
  const j = JSON.parse(r.stdout) as { portal: string; initiatorName: string; targets: Target[] };
  assert.equal(j.portal, tgt.portal);
  assert.equal(j.initiatorName, TEST_INITIATOR);
  assert.deepEqual(j.targets.map((x) => x.name).sort(), [T2, T1].sort());
  const t1 = j.targets.find((x) => x.name === T1)!;
  const t2 = j.targets.find((x) => x.name === T2)!;
  for (const x of [t1, t2]) {
    assert.equal(x.error, undefined, `${x.name}: ${JSON.stringify(x.error)}`);
    assert.deepEqual(x.portals.map((p) => [p.host, p.port]), [['127.0.0.1', tgt.port]]);
    // tgtd's LUN 0 controller is listed as what it is: not a disk, and no size.
    const l0 = x.luns.find((l) => l.lun === 0)!;
    assert.ok(l0, `${x.name} lists LUN 0`);
    assert.notEqual(l0.deviceType, 0);
    assert.match(l0.deviceTypeName, /controller/i);
    assert.equal(l0.size, undefined);
  }
  const disk = (x: Target, n: number) => {
    const l = x.luns.find((y) => y.lun === n)!;
    assert.ok(l, `${x.name} LUN ${n}`);
    assert.equal(l.deviceType, 0);
    assert.equal(l.deviceTypeName, 'disk');
    return [l.size, l.blockSize];
  };
  assert.deepEqual(disk(t1, 1), [String(8 * MiB), 512]);
  assert.deepEqual(disk(t1, 2), [String(16 * MiB), 4096]);
  assert.deepEqual(disk(t2, 1), [String(12 * MiB), 512]);
  assert.equal(t1.luns.length, 3);
  assert.equal(t2.luns.length, 2);
  assert.doesNotMatch(r.stdout, new RegExp(CHAP.secret), 'the secret is not echoed');

  // Wrong secret: the open target is still listed, the CHAP one is not reached.
  const wrong = { user: CHAP.user, secret: 'not-the-secret' };
  const w = await runCli(['discover', tgt.url(undefined, undefined, wrong), '--json', ...common], { timeoutMs: 30000, env });
  assert.notEqual(w.code, 0, describeRun(w, 'discover with a wrong secret'));
  assert.equal(w.code, 4, 'exit code 4 = authentication');
  assert.match(w.stderr, /authentication failed/i);
  assert.match(w.stderr, new RegExp(T2));
  assert.doesNotMatch(w.stderr + w.stdout, /not-the-secret/);
  const wj = JSON.parse(w.stdout) as { targets: Target[] };
  const wt1 = wj.targets.find((x) => x.name === T1)!;
  const wt2 = wj.targets.find((x) => x.name === T2)!;
  assert.equal(wt1.error, undefined);
  assert.equal(wt1.luns.filter((l) => l.deviceType === 0).length, 2);
  assert.equal(wt2.error?.code, 'EAUTH');
  assert.match(wt2.error!.message, /authentication failed/i);
  assert.deepEqual(wt2.luns, []);

  // No credentials at all: same outcome for the CHAP target.
  const n = await runCli(['discover', tgt.url(), ...common], { timeoutMs: 30000, env });
  assert.equal(n.code, 4, describeRun(n, 'discover without CHAP'));

  // Human output: one line per target, portal and LUN, sizes in words, no log noise.
  const h = await runCli(['discover', tgt.url(undefined, undefined, CHAP), ...common], { timeoutMs: 30000, env });
  assert.equal(h.code, 0, describeRun(h, 'discover (human)'));
  const lines = h.stdout.trimEnd().split('\n');
  assert.ok(lines.includes(`Target: ${T1}`), h.stdout);
  assert.ok(lines.includes(`Target: ${T2}`), h.stdout);
  assert.ok(lines.some((l) => l.trim() === `Portal: ${tgt.portal},1`), h.stdout);
  assert.ok(lines.some((l) => /^\s+Lun 0: storage array controller/.test(l)), h.stdout);
  assert.ok(lines.some((l) => /^\s+Lun 1: disk .*8 MiB \(8388608 bytes\), block 512$/.test(l)), h.stdout);
  assert.ok(lines.some((l) => /^\s+Lun 2: disk .*16 MiB \(16777216 bytes\), block 4096$/.test(l)), h.stdout);
  assert.ok(lines.some((l) => /^\s+Lun 1: disk .*12 MiB \(12582912 bytes\), block 512$/.test(l)), h.stdout);
  assert.equal(lines[0], `Initiator: ${TEST_INITIATOR}`, 'the initiator name target ACLs must list comes first');
  // Each disk's URL to paste, through the portal given, with the user and never the secret.
  for (const [iqn, lun] of [[T1, 1], [T1, 2], [T2, 1]] as const) {
    assert.ok(lines.includes(`    iscsi://${encodeURIComponent(CHAP.user)}@${tgt.portal}/${iqn}/${lun}`), h.stdout);
  }
  assert.equal(lines.length, 13, h.stdout); // the initiator + 2 targets x (name, portal) + 5 LUN lines + 3 disk URLs
  assert.doesNotMatch(h.stdout, /[{}]/, 'no JSON or log lines in the human output');
  assert.equal(h.stderr.trim(), '', 'nothing on stderr when all is well');

  // A target named in the URL limits the answer to it.
  const one = await runCli(['discover', `iscsi://${tgt.portal}/${T1}`, '--json', ...common], { timeoutMs: 30000, env });
  assert.equal(one.code, 0, describeRun(one, 'discover one target'));
  assert.deepEqual(JSON.parse(one.stdout).targets.map((x: Target) => x.name), [T1]);
  const none = await runCli(['discover', `iscsi://${tgt.portal}/iqn.2026-11.test.iscsi-nbd:nope`, ...common], { timeoutMs: 30000, env });
  assert.equal(none.code, 5, describeRun(none, 'discover an unknown target'));
  assert.match(none.stderr, /not offered/);
  assert.match(none.stderr, new RegExp(`logged in as ${TEST_INITIATOR}; add this name to the target's ACL \\(or pass --initiator-name\\)`));

  // Nothing listening: a clear message and exit code 3.
  const dead = await freePort();
  const u = await runCli(['discover', `iscsi://127.0.0.1:${dead}`, ...common], { timeoutMs: 30000, env });
  assert.equal(u.code, 3, describeRun(u, 'discover an unreachable portal'));
  assert.match(u.stderr, new RegExp(`cannot connect to iSCSI portal 127\\.0\\.0\\.1:${dead}`));
  assert.equal(u.stdout, '');

  // Not an iSCSI URL: exit code 6.
  const bad = await runCli(['discover', 'http://127.0.0.1/', ...common], { timeoutMs: 30000, env });
  assert.equal(bad.code, 6, describeRun(bad, 'discover a bad URL'));
  assert.match(bad.stderr, /iscsi:\/\//);
});

test('serve refuses to start on an export it cannot open, naming the export', { skip: skipUnless('tgtd', 'tgtadm'), timeout: 120_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({
    targets: [
      { iqn: T1, luns: [{ size: 8 * MiB }] },
      { iqn: T2, luns: [{ size: 8 * MiB }], chap: CHAP },
    ],
  });
  t.after(() => tgt.stop());
  const dir = tmpdir(t);
  const dead = await freePort();
  const serve = async (exp: string, extra: string[] = []) => {
    const port = await freePort();
    return runCli(['serve', '--listen', `127.0.0.1:${port}`, '--control', path.join(dir, 'c.sock'), '--initiator-name', TEST_INITIATOR,
      '--log-level', 'error', '--log-format', 'json', '--strict', '--export', exp, ...extra], { timeoutMs: 60000, env: { ISCSI_NBD_STATE_DIR: dir } });
  };
  const cases: Array<[string, string, number | null, RegExp]> = [
    ['wrong target', `vol1=iscsi://${tgt.portal}/iqn.2026-11.test.iscsi-nbd:nope/1`, 5, /target not found/i],
    ['wrong LUN', `vol1=iscsi://${tgt.portal}/${T1}/7`, 5, /no logical unit at LUN 7/],
    ['LUN 0 controller', `vol1=iscsi://${tgt.portal}/${T1}/0`, null, /not a disk/i],
    ['unreachable portal', `vol1=iscsi://127.0.0.1:${dead}/${T1}/1`, 3, /cannot connect/i],
    ['wrong CHAP secret', `vol1=iscsi://${CHAP.user}%wrongwrongwrong@${tgt.portal}/${T2}/1`, 4, /authentication failed/i],
  ];
  for (const [what, exp, code, why] of cases) {
    const r = await serve(exp);
    assert.equal(r.timedOut, false, `${what}: timed out`);
    assert.notEqual(r.code, 0, describeRun(r, what));
    if (code !== null) assert.equal(r.code, code, describeRun(r, what));
    assert.match(r.stderr, /export "vol1"/, `${what}: names the export: ${r.stderr}`);
    assert.match(r.stderr, why, `${what}: says why: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /wrongwrongwrong/, `${what}: no secret in the message`);
  }
  // One good and one bad export: still refuses, and names the bad one.
  const mixed = await serve(`good=iscsi://${tgt.portal}/${T1}/1`, ['--export', `broken=iscsi://${tgt.portal}/${T1}/9`]);
  assert.notEqual(mixed.code, 0, describeRun(mixed, 'mixed'));
  assert.match(mixed.stderr, /export "broken"/);
  // A URL that is not iscsi://: exit code 6.
  const bad = await serve('vol1=http://x/y');
  assert.equal(bad.code, 6, describeRun(bad, 'bad URL'));
});
