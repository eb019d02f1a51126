// The node guest VM (scripts/vm/node-guest.ts): one boot of Debian's kernel under qemu
// (TCG) with node in the initramfs and this repo over 9p, proving what the daemon-in-guest
// scenarios rely on: node runs; the project and koffi's prebuilt binary load over 9p and
// a koffi socketpair() call works; /dev/nbd0 exists; `hostcall` round-trips through
// hostActions (also a rejection, and an action slower than guestfwd.js's 3 s linger);
// a forward reaches a TCP server on the host.
//
// Skipped only when qemu-system-x86_64 is absent and CI is not set; in CI a missing
// tool is a failure.

import { lockShared, RESTART_VM_LOCK, VM_LOCK_WAIT_MS } from '../helpers/exclusive';
import { onPath, skipUnless } from '../helpers/tools';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { freePort } from '../helpers/ports';
import { runGuest, logTail, GUEST_REPO_DIR, type GuestRunResult } from '../../scripts/vm/node-guest';

const REQUIRED_TOOLS = ['qemu-system-x86_64', 'apt-get', 'dpkg', 'ldd', 'timeout'];

const skip = skipUnless('qemu-system-x86_64');
const VM_TIMEOUT_MS = 300000;
const REPO = path.resolve(__dirname, '../../..');
const FWD_GUEST_PORT = 3260;

/** A one-shot line server: answers "pong <token>" to the first line of each connection. */
async function startPongServer(token: string): Promise<{ port: number; lines: string[]; stop(): Promise<void> }> {
  const port = await freePort();
  const lines: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString();
      const i = buf.indexOf('\n');
      if (i >= 0) {
        lines.push(buf.slice(0, i));
        s.end(`pong ${token}\n`);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return {
    port,
    lines,
    stop: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

// Runs in the guest (busybox sh). Each check prints a RESULT line; the test asserts them.
const KOFFI_SOCKETPAIR = `
const koffi = require('${GUEST_REPO_DIR}/node_modules/koffi');
const net = require('net');
const libc = koffi.load('libc.so.6');
const socketpair = libc.func('int socketpair(int domain, int type, int protocol, int *sv)');
const sv = new Int32Array(2);
const rc = socketpair(1 /* AF_UNIX */, 1 /* SOCK_STREAM */, 0, sv);
if (rc !== 0) { console.error('socketpair returned ' + rc); process.exit(1); }
const a = new net.Socket({ fd: sv[0], readable: true, writable: true });
const b = new net.Socket({ fd: sv[1], readable: true, writable: true });
b.once('data', (d) => { console.log('RESULT koffi_socketpair ' + d.toString()); a.destroy(); b.destroy(); });
a.write('ping-through-socketpair');
setTimeout(() => { console.error('no data through the socketpair'); process.exit(1); }, 60000).unref();
`;

const FORWARD_CLIENT = `
const s = require('net').connect(${FWD_GUEST_PORT}, process.env.NG_HOST, () => s.write('ping-from-guest\\n'));
let got = '';
s.on('data', (d) => { got += d; });
s.on('close', () => console.log('RESULT forward ' + got.trim()));
s.on('error', (e) => { console.error('forward: ' + e.message); process.exit(1); });
`;

const SCRIPT = `
up() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

t=$(up)
v=$(node -e 'process.stdout.write(process.version)')
echo "RESULT first_node_ms $(ms_since "$t")"
echo "RESULT node_version $v"

t=$(up)
node -e '0'
echo "RESULT second_node_ms $(ms_since "$t")"

t=$(up)
node -e "$KOFFI_SOCKETPAIR"
echo "RESULT koffi_ms $(ms_since "$t")"

t=$(up)
cli=$(node ${GUEST_REPO_DIR}/bin/iscsi-nbd.js --version)
echo "RESULT cli_ms $(ms_since "$t")"
echo "RESULT cli_version $cli"

[ -b /dev/nbd0 ] && echo "RESULT nbd0 block"
echo "RESULT nbd_count $(ls /dev | grep -c '^nbd[0-9]*$')"
grep -q ' /tmp tmpfs ' /proc/mounts && echo "RESULT tmp tmpfs"
grep -q ' ${GUEST_REPO_DIR} 9p ' /proc/mounts && echo "RESULT repo 9p"
dmesg | grep -q 'Linux version' && echo "RESULT dmesg readable"

echo "RESULT hostcall $(hostcall echo hi)"
hostcall fail because >/dev/null 2>/tmp/hc.err
echo "RESULT hostcall_fail_rc $? $(cat /tmp/hc.err)"
t=$(up)
echo "RESULT hostcall_slow $(hostcall sleep 5000)"
echo "RESULT hostcall_slow_ms $(ms_since "$t")"

node -e "$FORWARD_CLIENT"
exit 0
`;

function report(t: { diagnostic(s: string): void }, r: GuestRunResult): void {
  const img = r.image;
  t.diagnostic(`node layer ${img.key} (${img.cached ? 'cached' : `built in ${img.buildMs} ms`}), base ${img.base.key} (${img.base.cached ? 'cached' : `built in ${img.base.buildMs} ms`})`);
  t.diagnostic(`VM ran ${r.vmMs} ms; ready (modules, network, 9p) ${r.readyMs} ms after qemu started, guest uptime ${r.guestReadyUptime} s`);
  t.diagnostic(`guest timings (ms): first node -e ${r.results.first_node_ms}, second ${r.results.second_node_ms}, koffi socketpair ${r.results.koffi_ms}, iscsi-nbd --version ${r.results.cli_ms}, hostcall sleep 5000 ${r.results.hostcall_slow_ms}`);
}

test('node guest VM: node, koffi over 9p, /dev/nbd0, hostcall and a forward', { skip, timeout: VM_LOCK_WAIT_MS + VM_TIMEOUT_MS + 180000 }, async (t) => {
  t.after(await lockShared(RESTART_VM_LOCK, VM_LOCK_WAIT_MS));
  const missing = REQUIRED_TOOLS.filter((x) => !onPath(x));
  assert.deepEqual(missing, [], `tools missing for the node guest test: ${missing.join(', ')}`);
  const token = crypto.randomBytes(6).toString('hex');
  const pong = await startPongServer(token);
  t.after(() => pong.stop());

  const r = await runGuest({
    script: SCRIPT,
    env: { KOFFI_SOCKETPAIR, FORWARD_CLIENT },
    forwards: [{ guestPort: FWD_GUEST_PORT, hostPort: pong.port }],
    hostActions: {
      echo: async (args) => args.join(' '),
      fail: async (args) => {
        throw new Error(`refused: ${args.join(' ')}`);
      },
      sleep: async (args) => {
        await new Promise((resolve) => setTimeout(resolve, Number(args[0])));
        return 'slept';
      },
    },
    timeoutMs: VM_TIMEOUT_MS,
  });
  report(t, r);
  const ctx = `\nresults: ${JSON.stringify(r.results)}\n--- console tail ---\n${logTail(r, 60)}`;
  assert.equal(r.timedOut, false, `the VM timed out${ctx}`);
  assert.equal(r.setupError, undefined, `guest setup failed: ${r.setupError}${ctx}`);
  assert.equal(r.exitCode, 0, `guest script exit code${ctx}`);
  assert.ok(r.ok);

  assert.equal(r.results.node_version, process.version, `node in the guest${ctx}`);
  assert.equal(r.results.koffi_socketpair, 'ping-through-socketpair', `koffi socketpair in the guest${ctx}`);
  const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
  assert.equal(r.results.cli_version, pkg.version, `the project's CLI over 9p${ctx}`);
  assert.equal(r.results.nbd0, 'block', `/dev/nbd0${ctx}`);
  assert.equal(r.results.nbd_count, '16', `nbds_max=16${ctx}`);
  assert.equal(r.results.tmp, 'tmpfs', `/tmp${ctx}`);
  assert.equal(r.results.repo, '9p', `repo mount${ctx}`);
  assert.equal(r.results.dmesg, 'readable', `dmesg${ctx}`);

  assert.equal(r.results.hostcall, 'hi', `hostcall echo hi${ctx}`);
  assert.equal(r.results.hostcall_fail_rc, '1 refused: because', `a rejected hostcall exits 1 with the message${ctx}`);
  assert.equal(r.results.hostcall_slow, 'slept', `a hostcall longer than guestfwd's 3 s linger${ctx}`);
  assert.deepEqual(
    r.hostCalls.map((c) => [c.name, c.args, c.ok]),
    [['echo', ['hi'], true], ['fail', ['because'], false], ['sleep', ['5000'], true]],
    `host calls${ctx}`,
  );

  assert.equal(r.results.forward, `pong ${token}`, `forward to the host's TCP server${ctx}`);
  assert.deepEqual(pong.lines, ['ping-from-guest'], `lines the host server got${ctx}`);
  assert.equal(r.connections[FWD_GUEST_PORT], 1, `connections through the forward${ctx}`);
});
