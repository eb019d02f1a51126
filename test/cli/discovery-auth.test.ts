// Authentication on discovery sessions: whether or not the target wants it,
// `discover` works (CHAP,None offered, one retry the other way), discovery
// credentials can differ from the session's, and Normal sessions never fall
// back to no authentication. Against the embedded target behind a LIO-like
// front (test/cli/lio-front.ts), and against tgtd with and without an
// account bound to its discovery sessions (`tgtadm --mode account --op bind`
// without --tid: tgtd's discovery sessions use the global tid).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TargetServer } from '../../src/target/server';
import { MemoryBackend } from '../../src/target/backend';
import { discover, discoveryAuthPlan } from '../../src/iscsi/discovery';
import { TARGET_QUIRKS } from '../../src/iscsi/quirks';
import { LoginError } from '../../src/errors';
import { startLioFront } from './lio-front';
import { startTgtdWithLuns } from '../helpers/tgtd';
import { runCli, describeRun, tmpdir } from '../helpers/bridge';
import { skipUnless } from '../helpers/tools';
import { freePort } from '../helpers/ports';

const INITIATOR = 'iqn.2026-11.test.iscsi-nbd:cli-discovery';
const T1 = 'iqn.2026-11.test.iscsi-nbd:lio-open';
const T2 = 'iqn.2026-11.test.iscsi-nbd:lio-chap';
const CHAP = { user: 'alice', secret: 'alice-secret-12' };
const DISC = { user: 'disco', secret: 'disco-secret-12' };
const MiB = 1 << 20;

async function embedded(t: { after: (f: () => Promise<void>) => void }, discoveryChap?: { user: string; secret: string }) {
  const s = new TargetServer({
    targets: [
      { name: T1, luns: [{ lun: 0, backend: new MemoryBackend({ size: 8 * MiB, identitySeed: 'a' }) }] },
      { name: T2, luns: [{ lun: 0, backend: new MemoryBackend({ size: 4 * MiB, blockSize: 4096, identitySeed: 'b' }) }], chap: CHAP },
    ],
    discoveryChap,
  });
  await s.listen({ host: '127.0.0.1', port: 0 });
  t.after(() => s.close());
  const [host, port] = s.portal.split(':');
  return { server: s, addr: { host, port: Number(port) } };
}

function cleanEnv(dir: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ISCSI_NBD_') && k !== 'NODE_TEST_CONTEXT') env[k] = v;
  return { ...env, ISCSI_NBD_STATE_DIR: dir, ...extra };
}

test('discoveryAuthPlan: CHAP first with credentials, none without, the other way round for a portal that refused CHAP', () => {
  TARGET_QUIRKS.reset();
  assert.deepEqual(discoveryAuthPlan('h:3260', false), ['none']);
  assert.deepEqual(discoveryAuthPlan('h:3260', true), ['chap', 'none']);
});

test('discover(): LIO-like portal refuses CHAP on discovery -> one retry without; remembered; the other way round when it wants CHAP again', { timeout: 30_000 }, async (t) => {
  TARGET_QUIRKS.reset();
  const { addr } = await embedded(t);
  const front = await startLioFront(addr, ['Discovery']);
  t.after(() => front.close());
  const portal = { host: '127.0.0.1', port: front.port };

  const found = await discover({ portal, initiatorName: INITIATOR, auth: { user: CHAP.user, secret: CHAP.secret } });
  assert.deepEqual(found.map((x) => x.name).sort(), [T1, T2].sort());
  const disc = front.logins.filter((l) => l.sessionType === 'Discovery');
  // CHAP,None offered (LIO takes CHAP and fails; the MD5-only retry fails too), then a login without CHAP.
  assert.ok(disc.length >= 2, JSON.stringify(disc));
  assert.equal(disc[0].authMethod, 'CHAP,None');
  assert.equal(disc[0].outcome, 'refused-chap');
  assert.equal(disc.at(-1)!.outcome, 'passed');
  assert.equal(disc.at(-1)!.authMethod, undefined, 'the retry offers no CHAP');
  assert.ok(disc.slice(0, -1).every((l) => l.authMethod === 'CHAP,None'));

  // The portal is remembered: the next discovery goes without CHAP at once.
  assert.deepEqual(discoveryAuthPlan(front.portal, true), ['none', 'chap']);
  const before = front.logins.length;
  await discover({ portal, initiatorName: INITIATOR, auth: { user: CHAP.user, secret: CHAP.secret } });
  assert.equal(front.logins.length, before + 1);
  assert.equal(front.logins.at(-1)!.authMethod, undefined);

  // The target now wants CHAP on discovery: refused without, retried once with CHAP.
  const strict = await embedded(t, DISC);
  front.backend = strict.addr;
  front.refuseChapOn.clear();
  const again = await discover({ portal, initiatorName: INITIATOR, auth: { user: DISC.user, secret: DISC.secret } });
  assert.equal(again.length, 2);
  assert.deepEqual(front.logins.slice(-2).map((l) => l.authMethod), [undefined, 'CHAP,None']);
  assert.deepEqual(discoveryAuthPlan(front.portal, true), ['chap', 'none'], 'CHAP works here again: CHAP first from now on');

  // Refused both ways: the CHAP attempt's reason, the initiator name, and that both were tried.
  await assert.rejects(
    discover({ portal, initiatorName: INITIATOR, auth: { user: DISC.user, secret: 'wrong-secret-123' } }),
    (e: LoginError) => {
      assert.equal(e.code, 'EAUTH');
      assert.match(e.message, /authentication failed/);
      assert.match(e.message, /refused both with and without CHAP/);
      // A wrong secret is told as such, with the ACL as the other possible cause.
      assert.match(e.message, new RegExp(`logged in as ${INITIATOR} with CHAP user ${DISC.user}; check the secret \\(some targets refuse a name missing from their ACL`));
      assert.equal(e.message.split('logged in as').length, 2, 'the advice once');
      return true;
    },
  );
  // Without credentials: one login, and a hint about discovery credentials.
  await assert.rejects(discover({ portal, initiatorName: INITIATOR }), (e: LoginError) => {
    assert.equal(e.code, 'EAUTH');
    assert.match(e.message, /--discovery-chap/);
    assert.match(e.message, new RegExp(`logged in as ${INITIATOR}`));
    return true;
  });
});

test('CLI discover against a LIO-like portal: iscsi://user@host with the secret in the environment lists targets and LUNs', { timeout: 60_000 }, async (t) => {
  const { addr } = await embedded(t);
  const front = await startLioFront(addr, ['Discovery']);
  t.after(() => front.close());
  const dir = tmpdir(t, 'cli-disc-');
  const r = await runCli(['discover', `iscsi://${CHAP.user}@${front.portal}`, '--initiator-name', INITIATOR, '--json'],
    { timeoutMs: 30_000, env: cleanEnv(dir, { ISCSI_NBD_CHAP_SECRET: CHAP.secret }) });
  assert.equal(r.code, 0, describeRun(r, 'discover'));
  const j = JSON.parse(r.stdout) as { initiatorName: string; targets: Array<{ name: string; error?: unknown; luns: Array<{ lun: number; blockSize?: number }> }> };
  assert.equal(j.initiatorName, INITIATOR);
  const t2 = j.targets.find((x) => x.name === T2)!;
  assert.equal(t2.error, undefined, JSON.stringify(t2.error));
  assert.equal(t2.luns[0].blockSize, 4096, 'the CHAP target was logged in to with the session credentials');
  assert.ok(front.logins.some((l) => l.sessionType === 'Discovery' && l.outcome === 'passed' && l.authMethod === undefined));
  // Normal sessions offered CHAP as configured (none of them went without it while credentials were given).
  assert.ok(front.logins.filter((l) => l.sessionType === 'Normal').every((l) => l.authMethod === 'CHAP,None'));
  assert.doesNotMatch(r.stdout + r.stderr, new RegExp(CHAP.secret));

  // Separate discovery credentials: --discovery-chap with its own secret; the URL's user still logs in to T2.
  const strict = await embedded(t, DISC);
  front.backend = strict.addr;
  front.refuseChapOn.clear();
  const d = await runCli(['discover', `${CHAP.user}@${front.portal}`, '--initiator-name', INITIATOR, '--discovery-chap', DISC.user, '--json'],
    { timeoutMs: 30_000, env: cleanEnv(dir, { ISCSI_NBD_CHAP_SECRET: CHAP.secret, ISCSI_NBD_DISCOVERY_CHAP_SECRET: DISC.secret }) });
  assert.equal(d.code, 0, describeRun(d, 'discover --discovery-chap'));
  assert.equal(JSON.parse(d.stdout).targets.find((x: { name: string }) => x.name === T2).luns[0].blockSize, 4096);
  // Without them the discovery session is refused, and the message says what to pass.
  const n = await runCli(['discover', front.portal, '--initiator-name', INITIATOR], { timeoutMs: 30_000, env: cleanEnv(dir) });
  assert.equal(n.code, 4, describeRun(n, 'discover without discovery credentials'));
  assert.match(n.stderr, /--discovery-chap USER/);
  assert.match(n.stderr, /ISCSI_NBD_DISCOVERY_CHAP_SECRET/);
  assert.match(n.stderr, new RegExp(`logged in as ${INITIATOR} without CHAP`));
  assert.doesNotMatch(n.stderr, /add this name to the target's ACL/, 'no secret given: the advice is the credentials, not the ACL');
  // --discovery-chap without a secret: a configuration error before any login.
  const ns = await runCli(['discover', front.portal, '--discovery-chap', DISC.user], { timeoutMs: 30_000, env: cleanEnv(dir) });
  assert.equal(ns.code, 6, describeRun(ns, '--discovery-chap without a secret'));
  assert.match(ns.stderr, /--discovery-chap disco needs a secret/);
});

test('Normal sessions stay strict: a refused CHAP login is an error, never retried without CHAP', { timeout: 60_000 }, async (t) => {
  const { addr } = await embedded(t);
  const front = await startLioFront(addr, ['Normal']);
  t.after(() => front.close());
  const dir = tmpdir(t, 'cli-strict-');
  const port = await freePort();
  const r = await runCli(['serve', '--strict', '--listen', `127.0.0.1:${port}`, '--initiator-name', INITIATOR, '--control', `${dir}/c.sock`, '--log-level', 'error',
    '--export', `v=iscsi://${CHAP.user}%${CHAP.secret}@${front.portal}/${T1}/0`], { timeoutMs: 30_000, env: cleanEnv(dir) });
  assert.equal(r.code, 4, describeRun(r, 'serve with CHAP refused'));
  assert.match(r.stderr, /authentication failed/);
  assert.match(r.stderr, new RegExp(`logged in as ${INITIATOR} with CHAP user ${CHAP.user}; check the secret`));
  const normal = front.logins.filter((l) => l.sessionType === 'Normal');
  assert.ok(normal.length >= 1);
  assert.ok(normal.every((l) => l.authMethod?.startsWith('CHAP')), `a Normal login went without CHAP: ${JSON.stringify(normal)}`);
});

test('tgtd: discovery with and without an account bound to discovery sessions', { skip: skipUnless('tgtd', 'tgtadm'), timeout: 120_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({ targets: [{ iqn: T1, luns: [{ size: 8 * MiB }] }] });
  t.after(() => tgt.stop());
  const dir = tmpdir(t, 'cli-tgtd-disc-');
  const run = (args: string[], extra: Record<string, string> = {}) =>
    runCli(['discover', ...args, '--initiator-name', INITIATOR], { timeoutMs: 30_000, env: cleanEnv(dir, extra) });

  // No discovery account: credentials are offered (CHAP,None), tgtd takes None.
  const a = await run([tgt.portal, '--discovery-chap', DISC.user], { ISCSI_NBD_DISCOVERY_CHAP_SECRET: DISC.secret });
  assert.equal(a.code, 0, describeRun(a, 'tgtd without a discovery account'));
  assert.equal(a.stdout.split('\n')[0], `Initiator: ${INITIATOR}`);
  assert.match(a.stdout, new RegExp(`^Target: ${T1}$`, 'm'));

  // An account bound to discovery (global, no --tid): CHAP is required there.
  await tgt.tgtadm(['--lld', 'iscsi', '--mode', 'account', '--op', 'new', '--user', DISC.user, '--password', DISC.secret]);
  await tgt.tgtadm(['--lld', 'iscsi', '--mode', 'account', '--op', 'bind', '--user', DISC.user]);
  const none = await run([tgt.portal]);
  assert.equal(none.code, 4, describeRun(none, 'tgtd discovery account, no credentials'));
  assert.match(none.stderr, /--discovery-chap/);
  assert.match(none.stderr, new RegExp(`logged in as ${INITIATOR}`));
  const ok = await run([tgt.portal, '--discovery-chap', DISC.user, '--json'], { ISCSI_NBD_DISCOVERY_CHAP_SECRET: DISC.secret });
  assert.equal(ok.code, 0, describeRun(ok, 'tgtd discovery account, --discovery-chap'));
  const j = JSON.parse(ok.stdout);
  // The target itself has no account: its Normal session logs in without credentials.
  assert.deepEqual(j.targets.map((x: { name: string; error?: unknown }) => [x.name, x.error]), [[T1, undefined]]);
  const wrong = await run([tgt.portal, '--discovery-chap', DISC.user], { ISCSI_NBD_DISCOVERY_CHAP_SECRET: 'not-the-secret-1' });
  assert.equal(wrong.code, 4, describeRun(wrong, 'wrong discovery secret'));
  assert.match(wrong.stderr, /refused both with and without CHAP/);
  assert.doesNotMatch(wrong.stderr, /not-the-secret-1/);
});

test('tgtd: an ACL that does not list us: discover and serve name the initiator and what to do', { skip: skipUnless('tgtd', 'tgtadm'), timeout: 120_000 }, async (t) => {
  const tgt = await startTgtdWithLuns({ targets: [{ iqn: T1, luns: [{ size: 8 * MiB }], initiators: ['iqn.2026-11.test.iscsi-nbd:someone-else'] }] });
  t.after(() => tgt.stop());
  const dir = tmpdir(t, 'cli-acl-');
  const hint = new RegExp(`logged in as ${INITIATOR}; add this name to the target's ACL \\(or pass --initiator-name\\)`);
  const d = await runCli(['discover', `iscsi://${tgt.portal}/${T1}`, '--initiator-name', INITIATOR], { timeoutMs: 30_000, env: cleanEnv(dir) });
  assert.equal(d.code, 5, describeRun(d, 'discover, not in the ACL'));
  assert.match(d.stderr, /not offered/);
  assert.match(d.stderr, hint);
  const port = await freePort();
  const s = await runCli(['serve', '--strict', '--listen', String(port), '--initiator-name', INITIATOR, '--control', `${dir}/c.sock`, '--log-level', 'error',
    '--export', `v=${tgt.url(1, 1)}`], { timeoutMs: 30_000, env: cleanEnv(dir) });
  assert.equal(s.code, 5, describeRun(s, 'serve, not in the ACL'));
  assert.match(s.stderr, /target not found/);
  assert.match(s.stderr, hint);
});
