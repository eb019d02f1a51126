// Self-test of test/helpers/tgtd.ts against libiscsi's command line tools.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { startTgtd, startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';

const INITIATOR = 'iqn.2026-11.test.iscsi-nbd:harness-initiator';

function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 20000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie still answers signal 0; look at its state.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z /.test(stat);
  } catch {
    return false;
  }
}

function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' });
    s.once('connect', () => { s.destroy(); resolve(false); });
    s.once('error', () => { s.destroy(); resolve(true); });
  });
}

const haveTools = ['/usr/sbin/tgtd', '/usr/bin/iscsi-ls'].every((p) => fs.existsSync(p));
const skip = !haveTools && process.env.CI !== 'true' ? 'tgt / libiscsi-bin not installed' : false;

test('tgtd harness: two targets, 512 B and 4 KiB LUNs, CHAP', { skip, timeout: 60000 }, async (t) => {
  const chap = { user: 'harness-user', secret: 'harness-secret-1' };
  const tgtd = await startTgtdWithLuns({
    targets: [
      { iqn: 'iqn.2026-11.test.iscsi-nbd:plain', luns: [{ size: 64 << 20, blockSize: 512 }] },
      { iqn: 'iqn.2026-11.test.iscsi-nbd:chap', luns: [{ size: 32 << 20, blockSize: 4096, thin: true }], chap },
    ],
  });
  let stopped = false;
  t.after(async () => { if (!stopped) await tgtd.stop(); });
  const pid = tgtd.pid!;
  assert.ok(alive(pid));
  assert.equal(tgtd.portal, `127.0.0.1:${tgtd.port}`);

  // Without credentials the CHAP target refuses the login that lists its LUNs.
  const ls = await run('iscsi-ls', ['-s', '-i', INITIATOR, tgtd.url()]);
  assert.match(ls.stdout + ls.stderr, /Authentication failure/);
  assert.notEqual(ls.code, 0, 'listing the CHAP target without credentials must fail');

  // With them both targets and their LUNs are listed (the plain one settles on AuthMethod=None).
  const lsChap = await run('iscsi-ls', ['-s', '-i', INITIATOR, tgtd.url(undefined, undefined, chap)]);
  assert.equal(lsChap.code, 0, lsChap.stderr);
  assert.match(lsChap.stdout, /Target:iqn\.2026-11\.test\.iscsi-nbd:plain Portal:127\.0\.0\.1:\d+,1/);
  assert.match(lsChap.stdout, /Target:iqn\.2026-11\.test\.iscsi-nbd:chap Portal:127\.0\.0\.1:\d+,1/);
  // iscsi-ls rounds the size down from the last LBA.
  assert.match(lsChap.stdout, /Lun:1\s+Type:DIRECT_ACCESS \(Size:6[34]M\)/);
  assert.match(lsChap.stdout, /Lun:1\s+Type:DIRECT_ACCESS \(Size:3[12]M\)/);

  const inq = await run('iscsi-inq', ['-i', INITIATOR, tgtd.url(1, 1)]);
  assert.equal(inq.code, 0, inq.stderr);
  assert.match(inq.stdout, /Peripheral Device Type:DIRECT_ACCESS/);
  assert.match(inq.stdout, /Vendor:IET/);

  const rc512 = await run('iscsi-readcapacity16', ['-i', INITIATOR, tgtd.url(1, 1)]);
  assert.equal(rc512.code, 0, rc512.stderr);
  assert.match(rc512.stdout, /LOGICAL BLOCK LENGTH IN BYTES:512\b/);
  assert.match(rc512.stdout, /Total size:67108864\b/);
  assert.match(rc512.stdout, /LBPME:0/);

  const badChap = await run('iscsi-readcapacity16', ['-i', INITIATOR, tgtd.url(2, 1)]);
  assert.notEqual(badChap.code, 0);
  const rc4k = await run('iscsi-readcapacity16', ['-i', INITIATOR, tgtd.url(2, 1, chap)]);
  assert.equal(rc4k.code, 0, rc4k.stderr);
  assert.match(rc4k.stdout, /LOGICAL BLOCK LENGTH IN BYTES:4096\b/);
  assert.match(rc4k.stdout, /Total size:33554432\b/);
  assert.match(rc4k.stdout, /LBPME:1/);

  const backing = tgtd.lunInfo(2, 1).path;
  assert.ok(fs.existsSync(backing));

  // restart() replays the configuration on the same port.
  await tgtd.restart();
  assert.ok(!alive(pid), 'old tgtd must be gone after restart');
  const again = await run('iscsi-readcapacity16', ['-i', INITIATOR, tgtd.url(2, 1, chap)]);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stdout, /LOGICAL BLOCK LENGTH IN BYTES:4096\b/);

  const pid2 = tgtd.pid!;
  const control = tgtd.control;
  await tgtd.stop();
  stopped = true;
  assert.ok(!alive(pid2), 'tgtd must be gone after stop');
  assert.ok(await refused(tgtd.port));
  assert.ok(!fs.existsSync(`/var/run/tgtd/socket.${control}`));
  assert.ok(!fs.existsSync(backing), 'temp backing files are removed');
});

test('tgtd harness: mutual CHAP account, null LUN, deleteTarget, kill', { skip, timeout: 60000 }, async (t) => {
  const tgtd: Tgtd = await startTgtd();
  t.after(() => tgtd.stop());
  await tgtd.addTarget(1, 'iqn.2026-11.test.iscsi-nbd:mutual');
  await tgtd.addLun(1, 1, { bstype: 'null', size: 0 });
  await tgtd.bindAll(1);
  await tgtd.addAccount('in-user', 'in-secret-1234');
  await tgtd.addAccount('out-user', 'out-secret-1234');
  await tgtd.bindAccount(1, 'in-user');
  await tgtd.setOutgoingAccount(1, 'out-user');
  const show = await tgtd.tgtadm(['--lld', 'iscsi', '--mode', 'target', '--op', 'show']);
  assert.match(show, /in-user/);
  assert.match(show, /out-user \(outgoing\)/);
  assert.match(show, /Backing store type: null/);

  // Errors carry tgtadm's stderr.
  await assert.rejects(tgtd.addTarget(1, 'iqn.2026-11.test.iscsi-nbd:dup'), /tgtadm .* failed .*exist/i);

  await tgtd.deleteTarget(1);
  const ls = await run('iscsi-ls', ['-i', INITIATOR, tgtd.url()]);
  assert.doesNotMatch(ls.stdout, /mutual/);

  const pid = tgtd.pid!;
  await tgtd.kill();
  assert.ok(!alive(pid));
  assert.ok(await refused(tgtd.port));
});
