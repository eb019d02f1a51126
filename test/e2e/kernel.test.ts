// Real-kernel end-to-end test: a Debian kernel under qemu (TCG) attaches an NBD
// export with nbd-client, builds an ext4 on it, trims, fscks, automounts with
// conns=4 and parallel writers; then the host checks the LUN straight from tgtd.
// See scripts/vm/run.ts for the runner and scripts/vm/guest-steps.sh for the steps.
//
// The NBD server is started by startNbdServer() below: our bridge
// (`iscsi-nbd serve`) by default; ISCSI_NBD_E2E_SERVER=qemu-nbd runs the same
// scenario against qemu-nbd (iscsi:// via qemu-block-extra) as a reference.
// ISCSI_NBD_E2E_BLOCK_SIZES (default 4096,512) picks the LUN block sizes. The second test proves the scenario can fail: a test-only proxy that
// acknowledges some WRITEs without forwarding them must turn it red.
//
// Skipped only when qemu-system-x86_64 is absent and CI is not set; in CI a
// missing tool is a failure.

import { lockShared, RESTART_VM_LOCK, VM_LOCK_WAIT_MS } from '../helpers/exclusive';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { freePort, waitForPort } from '../helpers/ports';
import { runKernelScenario, iscsiHostCheck, formatSteps, GUEST_STEPS, type KernelScenarioResult } from '../../scripts/vm/run';
import { LossyProxy } from './lossy-proxy';

const REQUIRED_TOOLS = ['qemu-system-x86_64', 'qemu-nbd', 'qemu-img', 'tgtd', 'tgtadm', 'debugfs', 'e2fsck', 'apt-get', 'dpkg', 'ldd'];

function have(tool: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const inCI = process.env.CI === 'true';
const skip = !have('qemu-system-x86_64') && !inCI ? 'qemu-system-x86_64 not installed (CI installs it)' : false;
const EXPORT = 'lun1';
const VM_TIMEOUT_MS = 300000;

function requireTools(): void {
  const missing = REQUIRED_TOOLS.filter((t) => !have(t));
  assert.deepEqual(missing, [], `tools missing for the kernel e2e test: ${missing.join(', ')}`);
}

interface NbdServer {
  port: number;
  stop(): Promise<void>;
}

const SERVER = process.env.ISCSI_NBD_E2E_SERVER ?? 'iscsi-nbd';
const REPO = path.resolve(__dirname, '../../..');

/** The NBD server under test, serving the LUN at iscsiUrl as exportName on 127.0.0.1. */
async function startNbdServer(iscsiUrl: string, exportName: string): Promise<NbdServer> {
  const port = await freePort();
  const [cmd, args] =
    SERVER === 'iscsi-nbd'
      ? [process.execPath, [path.join(REPO, 'bin/iscsi-nbd.js'), 'serve', '--listen', `127.0.0.1:${port}`, '--export', `${exportName}=${iscsiUrl}`,
        '--initiator-name', 'iqn.2026-11.test.iscsi-nbd:e2e-bridge', '--log-level', 'warn',
        '--control', path.join(os.tmpdir(), `iscsi-nbd-e2e-${port}.sock`)]]
      : ['qemu-nbd', ['-f', 'raw', '--cache=none', '-t', '-e', '8', '-x', exportName, '-b', '127.0.0.1', '-p', String(port), iscsiUrl]];
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => { stderr += b.toString(); });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const stop = async (): Promise<void> => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  };
  try {
    await waitForPort(port, '127.0.0.1', 15000);
  } catch (err) {
    await stop();
    throw new Error(`${SERVER} did not start: ${(err as Error).message}: ${stderr}`);
  }
  return { port, stop };
}

async function startLun(blockSize: 512 | 4096): Promise<Tgtd> {
  return startTgtdWithLuns({
    targets: [{ iqn: 'iqn.2026-11.test.iscsi-nbd:e2e', luns: [{ size: 256 << 20, blockSize, thin: true }] }],
  });
}

function report(t: { diagnostic(s: string): void }, r: KernelScenarioResult): void {
  t.diagnostic(`image ${r.image.key} (${r.image.cached ? 'cached' : `built in ${r.image.buildMs} ms`}), VM ran ${r.vmMs} ms, ${r.connections} NBD connections`);
  for (const line of formatSteps(r).split('\n')) t.diagnostic(line);
}

const blockSizes = (process.env.ISCSI_NBD_E2E_BLOCK_SIZES ?? '4096,512').split(',').map((s) => {
  const n = Number(s.trim());
  if (n !== 512 && n !== 4096) throw new Error(`ISCSI_NBD_E2E_BLOCK_SIZES: ${s} is not 512 or 4096`);
  return n as 512 | 4096;
});

for (const bs of blockSizes) {
  test(`kernel e2e (${SERVER}): nbd-client + ext4 + fstrim + nbdtab conns=4 against a ${bs} B LUN`, { skip, timeout: VM_LOCK_WAIT_MS + VM_TIMEOUT_MS + 120000 }, async (t) => {
    requireTools();
    t.after(await lockShared(RESTART_VM_LOCK, VM_LOCK_WAIT_MS));
    const tgtd = await startLun(bs);
    t.after(() => tgtd.stop());
    const url = tgtd.url(1, 1);
    const server = await startNbdServer(url, EXPORT);
    t.after(() => server.stop());

    const r = await runKernelScenario({
      nbdPort: server.port,
      exportName: EXPORT,
      blockSize: bs,
      hostCheck: iscsiHostCheck(url),
      timeoutMs: VM_TIMEOUT_MS,
    });
    report(t, r);
    assert.ok(r.ok, `kernel scenario failed at step ${r.failedStep}:\n${formatSteps(r)}\n--- console tail ---\n${r.log.slice(-4000)}`);
    assert.equal(r.steps.length, GUEST_STEPS.length + 1);
    // attach, re-attach, then nbdtab conns=4 twice.
    assert.ok(r.connections >= 10, `expected >= 10 NBD connections (conns=4 used), got ${r.connections}`);
    assert.ok(r.sums['big.bin'], 'guest reported the checksum of big.bin');
  });
}

test(`kernel e2e (${SERVER}) goes red through a bridge that loses acknowledged WRITEs`, { skip, timeout: VM_LOCK_WAIT_MS + VM_TIMEOUT_MS + 120000 }, async (t) => {
  requireTools();
  t.after(await lockShared(RESTART_VM_LOCK, VM_LOCK_WAIT_MS));
  const tgtd = await startLun(512);
  t.after(() => tgtd.stop());
  const url = tgtd.url(1, 1);
  const server = await startNbdServer(url, EXPORT);
  t.after(() => server.stop());
  const proxy = new LossyProxy({ upstreamPort: server.port, skipFirst: 50, dropEvery: 8 });
  const port = await proxy.start();
  t.after(() => proxy.stop());

  const r = await runKernelScenario({
    nbdPort: port,
    exportName: EXPORT,
    blockSize: 512,
    hostCheck: iscsiHostCheck(url),
    timeoutMs: VM_TIMEOUT_MS,
  });
  report(t, r);
  t.diagnostic(`lossy proxy: ${proxy.stats.writes} writes, ${proxy.stats.dropped} dropped`);
  assert.ok(proxy.stats.dropped > 0, 'the proxy dropped no WRITE; the negative test proves nothing');
  assert.equal(r.ok, false, `the scenario passed although ${proxy.stats.dropped} WRITEs were lost:\n${formatSteps(r)}`);
  assert.ok(r.failedStep, 'a failing run names its step');
  const failed = r.steps.find((s) => s.name === r.failedStep)!;
  assert.ok(failed.detail.length > 0, 'a failing step carries a detail');
  // It must fail on a data check, not because the VM never came up.
  assert.ok(!['modules', 'network', 'attach'].includes(r.failedStep!), `failed too early, at ${r.failedStep}: ${failed.detail}`);
});
