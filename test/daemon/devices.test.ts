// The device manager against a real tgtd, with a fake kernel that behaves as
// drivers/block/nbd.c does at its netlink and socket edges: it takes the
// socketpair ends it is given, speaks NBD transmission (simple replies) over
// them, keeps a device's backend identifier, and on RECONFIGURE replaces only
// dead sockets (dropping the new one silently when none is dead). The real
// kernel is exercised in the VM test (test/e2e/map.test.ts).

import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { startTgtdWithLuns, type Tgtd } from '../helpers/tgtd';
import { freePort } from '../helpers/ports';
import { startDaemon, type RunningDaemon } from '../../src/daemon/daemon';
import type { KernelNbd } from '../../src/daemon/devices';
import { createSocketPair, closeFd } from '../../src/nbd/netlink/kernel';
import type { FdKeeper } from '../../src/daemon/fd-store';
import { FakeFdStore } from '../helpers/fd-store';
import { TargetServer } from '../../src/target/server';
import { MemoryBackend } from '../../src/target/backend';
import { SimpleRequester } from '../helpers/simple-replies';
import { DEFAULT_TIMEOUTS, type DaemonConfig } from '../../src/config';
import { setRootLogger, createLogger } from '../../src/log';
import { render as renderStatus } from '../../src/cli/status';
import { callControl } from '../../src/daemon/control';
import { req } from '../nbd/util';

const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;

/** A kernel-side NBD connection: sends requests, matches replies by cookie. */
class KernelSock extends SimpleRequester {
  readonly closed: Promise<void>;

  constructor(sock: net.Socket) {
    super(sock);
    sock.on('data', (c: Buffer) => this.onData(c));
    sock.on('error', () => undefined);
    this.closed = new Promise((r) =>
      sock.once('close', () => {
        // Unanswered requests stay with the kernel, which re-sends them on a new socket.
        this.abandon();
        r();
      }),
    );
  }

  get dead(): boolean {
    return this.sock.destroyed;
  }
}

interface FakeDevice {
  backendId: string;
  sizeBytes: bigint;
  blockSize: number;
  socks: KernelSock[];
}

class FakeKernel implements KernelNbd {
  readonly devices = new Map<number, FakeDevice>();
  private readonly owned = new Set<number>();
  reconfigures = 0;
  dropped = 0;

  private wrap(fd: number): KernelSock {
    this.owned.add(fd);
    return new KernelSock(new net.Socket({ fd, readable: true, writable: true }));
  }

  async connect(c: Parameters<KernelNbd['connect']>[0]): Promise<number> {
    let index = c.index ?? 0;
    if (c.index === undefined) while (this.devices.has(index)) index++;
    else if (this.devices.has(index)) throw new Error('EBUSY');
    this.devices.set(index, { backendId: c.backendId, sizeBytes: c.sizeBytes, blockSize: c.blockSize, socks: c.fds.map((fd) => this.wrap(fd)) });
    return index;
  }

  async reconfigure(c: Parameters<KernelNbd['reconfigure']>[0]): Promise<void> {
    const d = this.devices.get(c.index);
    if (!d) throw new Error('EINVAL: not a netlink-made running device');
    if (d.backendId !== c.backendId) throw new Error('EINVAL: backend differs');
    this.reconfigures++;
    for (const fd of c.fds) {
      const slot = d.socks.findIndex((s) => s.dead);
      const s = this.wrap(fd);
      if (slot < 0) {
        this.dropped++;
        s.sock.destroy(); // the kernel drops it: our end reads EOF
      } else d.socks[slot] = s;
    }
  }

  resizes: { index: number; sizeBytes: bigint; blockSize: number }[] = [];

  async resize(c: Parameters<KernelNbd['resize']>[0]): Promise<void> {
    const d = this.devices.get(c.index);
    if (!d) throw new Error('EINVAL: not configured');
    if (d.backendId !== c.backendId) throw new Error('EINVAL: must specify backend');
    this.resizes.push({ index: c.index, sizeBytes: c.sizeBytes, blockSize: c.blockSize });
    d.sizeBytes = c.sizeBytes;
  }

  async disconnect(index: number): Promise<void> {
    const d = this.devices.get(index);
    if (!d) return;
    for (const s of d.socks) if (!s.dead) s.sock.end(req(CMD_DISC, 0n, 0, 0));
    await Promise.all(d.socks.map((s) => Promise.race([s.closed, new Promise((r) => setTimeout(r, 2000))])));
    for (const s of d.socks) s.sock.destroy();
    this.devices.delete(index);
  }

  async configured(index: number): Promise<boolean> {
    return this.devices.has(index);
  }

  backend(index: number): string | undefined {
    return this.devices.get(index)?.backendId;
  }

  async probe(index: number, blockSize: number): Promise<void> {
    const r = await this.sock(index).io(CMD_READ, 0, blockSize);
    assert.equal(r.error, 0);
  }

  sock(index: number, slot = 0): KernelSock {
    return this.devices.get(index)!.socks[slot];
  }

  socketPair(): { ours: number; kernel: number } {
    return createSocketPair();
  }

  closeFd(fd: number): void {
    if (!this.owned.has(fd)) closeFd(fd); // the fake keeps the ends it wrapped, as the kernel keeps its reference
  }

  close(): void {}
}

let tgtd: Tgtd;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'devices-test-'));
const BS = 4096;

before(async () => {
  setRootLogger(createLogger({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }));
  tgtd = await startTgtdWithLuns({ targets: [{ luns: [{ size: 32 << 20, blockSize: BS }, { size: 16 << 20, blockSize: BS }, { size: 16 << 20, blockSize: BS }] }] });
});

after(async () => {
  await tgtd?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

function config(name: string): DaemonConfig {
  return {
    listen: [], sessions: 1, digest: 'prefer-none', readOnly: false, tls: { mode: 'off' },
    timeouts: { ...DEFAULT_TIMEOUTS, replacement: 20 }, exports: [], devices: [],
    stateDir: path.join(tmp, name), control: path.join(tmp, `${name}.sock`), initiatorName: 'iqn.2026-11.test.iscsi-nbd:devices',
  };
}

async function daemon(cfg: DaemonConfig, kernel: FakeKernel, fdStore?: FdKeeper): Promise<RunningDaemon> {
  return startDaemon(cfg, { kernel: async () => kernel, fdStore });
}

test('map, I/O, kernel drops a socket and gets a new one, hand-over on stop, reattach by the next daemon, unmap', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const cfg = config('a');
  let d = await daemon(cfg, kernel);
  try {
    const st = await callControl<{ device: string; index: number; blockSize: number; identity: string; state: string }>(cfg.control!, { op: 'map', url: tgtd.url(1, 1), stateDir: cfg.stateDir });
    assert.equal(st.device, '/dev/nbd0');
    assert.equal(st.blockSize, BS, 'the LUN block size, with nothing given');
    assert.equal(st.state, 'attached');
    const dev = kernel.devices.get(0)!;
    assert.equal(dev.blockSize, BS);
    assert.equal(dev.sizeBytes, 32n << 20n);
    assert.match(dev.backendId, /^iscsi-nbd:/);
    assert.ok(fs.existsSync(path.join(cfg.stateDir!, 'mappings', 'nbd0.json')));

    const data = crypto.randomBytes(64 * 1024);
    assert.equal((await kernel.sock(0).io(CMD_WRITE, 1 << 20, data.length, data)).error, 0);
    assert.deepEqual((await kernel.sock(0).io(CMD_READ, 1 << 20, data.length)).data, data);

    // Mapping the same LUN again is refused, naming the device.
    await assert.rejects(callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), stateDir: cfg.stateDir }), /mapped already.*\/dev\/nbd0/);
    // A device that is taken is refused and nothing else is touched.
    await assert.rejects(callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 2), device: 0, stateDir: cfg.stateDir }), /nbd0 is mapped already/);

    // The kernel marks the socket dead (a request timed out): the daemon hands it a new one.
    kernel.sock(0).sock.destroy();
    const deadline = Date.now() + 10_000;
    while ((kernel.sock(0).dead || kernel.reconfigures === 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(kernel.reconfigures, 1);
    assert.deepEqual((await kernel.sock(0).io(CMD_READ, 1 << 20, data.length)).data, data, 'I/O works on the replacement socket');

    // A graceful stop answers what it read (a request still in the socket
    // buffer stays with the kernel) and closes the socket without detaching the device.
    const inflight = kernel.sock(0).io(CMD_READ, 1 << 20, data.length);
    await new Promise((r) => setTimeout(r, 20));
    await d.stop('test');
    const answered = await inflight;
    assert.equal(answered.error, 0, 'a request sent well before the stop is answered, not failed');
    assert.deepEqual(answered.data, data);
    assert.ok(kernel.sock(0).dead);
    assert.ok(kernel.devices.has(0), 'the device stays configured');

    // The next daemon reattaches it (same backend, same LUN identity).
    d = await daemon(cfg, kernel);
    assert.equal(kernel.reconfigures, 2);
    assert.ok(!kernel.sock(0).dead);
    assert.deepEqual((await kernel.sock(0).io(CMD_READ, 1 << 20, data.length)).data, data);
    const listed = await callControl<{ mappings: { device: string; state: string }[] }>(cfg.control!, { op: 'list-mapped' });
    assert.deepEqual(listed.mappings.map((m) => [m.device, m.state]), [['/dev/nbd0', 'attached']]);

    // unmap: disconnects, forgets; the next daemon does not map it again.
    await callControl(cfg.control!, { op: 'unmap', device: '/dev/nbd0' });
    assert.ok(!kernel.devices.has(0));
    assert.ok(!fs.existsSync(path.join(cfg.stateDir!, 'mappings', 'nbd0.json')));
    await d.stop('test');
    const reconfigures = kernel.reconfigures;
    d = await daemon(cfg, kernel);
    assert.equal(kernel.reconfigures, reconfigures);
    assert.deepEqual(d.devices.list(), []);
  } finally {
    await d.stop('test');
  }
});

test('a LUN that changed identity is never reattached; a device gone since is forgotten', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const cfg = config('b');
  let d = await daemon(cfg, kernel);
  try {
    await callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 2), stateDir: cfg.stateDir });
    await callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), stateDir: cfg.stateDir });
    await d.stop('test');
    // Swap LUN 2 for another device while no daemon runs.
    await tgtd.deleteLun(1, 2);
    await tgtd.addLun(1, 2, { size: 16 << 20, blockSize: BS });
    // tgtd derives the identity from tid/lun: give the new disk a serial of its own, as a real array would.
    await tgtd.tgtadm(['--op', 'update', '--mode', 'logicalunit', '--tid', '1', '--lun', '2', '--params', 'scsi_sn=swapped0002']);
    // And nbd1 went away (detached by hand).
    await kernel.disconnect(1);
    const before = kernel.reconfigures;
    d = await daemon(cfg, kernel);
    const st = d.devices.list();
    assert.deepEqual(st.map((m) => [m.device, m.state]), [['/dev/nbd0', 'refused']]);
    assert.match(st[0].error!, /another device now: mapped \S+, found \S+/);
    assert.equal(kernel.reconfigures, before, 'no socket was handed to the kernel for the changed LUN');
    assert.ok(fs.existsSync(path.join(cfg.stateDir!, 'mappings', 'nbd0.json')), 'the refused mapping is kept for unmap');
    assert.ok(!fs.existsSync(path.join(cfg.stateDir!, 'mappings', 'nbd1.json')), 'the vanished device is forgotten');
  } finally {
    await d.stop('test');
  }
});

test('an older connection the kernel kept alive makes the reattach refuse loudly, not half-attach', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const cfg = config('c');
  let d = await daemon(cfg, kernel);
  try {
    await callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), stateDir: cfg.stateDir });
    await d.stop('test');
    // Another process still holds a live socket to nbd0.
    const [a, b] = [createSocketPair(), undefined];
    void b;
    const live = new KernelSock(new net.Socket({ fd: a.kernel, readable: true, writable: true }));
    kernel.devices.get(0)!.socks[0] = live;
    d = await daemon(cfg, kernel);
    const st = d.devices.list();
    assert.equal(st[0].state, 'refused');
    assert.match(st[0].error!, /kept an older connection/);
    assert.equal(kernel.dropped, 1);
    live.sock.destroy();
    closeFd(a.ours);
  } finally {
    await d.stop('test');
  }
});

test('a second daemon on the same state dir is refused while the first runs', { timeout: 60_000 }, async () => {
  const kernel = new FakeKernel();
  const cfg = config('d');
  const d = await daemon(cfg, kernel);
  try {
    await callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), stateDir: cfg.stateDir });
    // The owner file names a live iscsi-nbd process: the state dir is taken.
    const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)', 'iscsi-nbd-holder'], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 200));
      fs.writeFileSync(path.join(cfg.stateDir!, 'daemon.json'), JSON.stringify({ pid: holder.pid, control: 'x', startedAt: '' }));
      await assert.rejects(daemon({ ...cfg, control: path.join(tmp, 'd2.sock') }, kernel), new RegExp(`state dir .* belongs to iscsi-nbd pid ${holder.pid}.*still runs`));
    } finally {
      holder.kill('SIGKILL');
    }
  } finally {
    await d.stop('test');
  }
});

test('devices declared in the config are mapped at start, once; a bad map request is refused by shape', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const cfg = { ...config('e'), devices: [{ url: tgtd.url(1, 2), device: '/dev/nbd5' }] };
  let d = await daemon(cfg, kernel);
  try {
    assert.deepEqual(d.devices.list().map((m) => [m.device, m.state, m.blockSize]), [['/dev/nbd5', 'attached', BS]]);
    assert.equal(kernel.devices.get(5)?.blockSize, BS);
    await assert.rejects(callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), device: 'abc' }), /bad device "abc"/);
    await assert.rejects(callControl(cfg.control!, { op: 'map' }), /needs a URL/);
    await d.stop('test');
    // The next start reattaches the declared device instead of mapping it a second time.
    const connects = kernel.devices.size;
    d = await daemon(cfg, kernel);
    assert.equal(kernel.devices.size, connects);
    assert.deepEqual(d.devices.list().map((m) => [m.device, m.state]), [['/dev/nbd5', 'attached']]);
  } finally {
    await d.stop('test');
  }
});

test('map --digest: the mapped LUN logs in with CRC32C digests, and again so after a restart', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const cfg = config('f');
  const digestsOf = (d: RunningDaemon): string[] => d.devices.list()
    .flatMap((m) => (m.sessions ?? []).map((s) => `${s.negotiated?.headerDigest}/${s.negotiated?.dataDigest}`));
  let d = await daemon(cfg, kernel);
  try {
    await assert.rejects(callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), digest: 'md5' }), /bad digest "md5"/);
    // tgtd offers no digests unless told to: crc32c (required) is refused, and nothing is mapped.
    await assert.rejects(callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), digest: 'crc32c' }), /HeaderDigest=None to our offer HeaderDigest=CRC32C/);
    assert.equal(kernel.devices.size, 0);
    await tgtd.setTargetParam(1, 'HeaderDigest', 'CRC32C,None');
    await tgtd.setTargetParam(1, 'DataDigest', 'CRC32C,None');
    const st = await callControl<{ device: string }>(cfg.control!, { op: 'map', url: tgtd.url(1, 1), digest: 'crc32c' });
    assert.deepEqual(digestsOf(d), ['CRC32C/CRC32C']);
    const rec = JSON.parse(fs.readFileSync(path.join(cfg.stateDir!, 'mappings', `${st.device.slice(5)}.json`), 'utf8'));
    assert.equal(rec.digest, 'crc32c');
    const data = crypto.randomBytes(8192);
    assert.equal((await kernel.sock(0).io(CMD_WRITE, 0, data.length, data)).error, 0);
    await d.stop('test');
    d = await daemon(cfg, kernel);
    assert.deepEqual(digestsOf(d), ['CRC32C/CRC32C'], 'the restart logs in with the same digests');
    // `iscsi-nbd status` shows a mapping's pool and paths, and the pool's sessions once, under Targets.
    const text = renderStatus(d.status());
    assert.match(text, new RegExp(`\\t${st.device}:\\n\\t\\tPool: (\\S+) \\(sessions under Targets\\)\\n\\t\\t\\tPath #0: logged-in`));
    assert.match(text, /\nTargets:\n\tTarget: \S+\n\t\tPool: \S+\n[^]*LUNs: map:[^]*iSCSI sessions: 1\n\t\t\tSession #0: logged-in\n[^]*Negotiated: HeaderDigest CRC32C  DataDigest CRC32C/);
    assert.deepEqual((await kernel.sock(0).io(CMD_READ, 0, data.length)).data, data);
    await callControl(cfg.control!, { op: 'unmap', device: st.device });
    await d.stop('test');
    // A `devices:` entry of the config takes its own digest.
    const cfg2 = { ...config('g'), devices: [{ url: tgtd.url(1, 2), digest: 'crc32c' as const }] };
    d = await daemon(cfg2, kernel);
    assert.deepEqual(digestsOf(d), ['CRC32C/CRC32C']);
  } finally {
    await d.stop('test');
  }
});

test('a start that fails at a late step undoes every step before it: sessions, listeners, devices, the state dir', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const cfg = config('u');
  const a = await daemon(cfg, kernel);
  await callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), stateDir: cfg.stateDir });
  await a.stop('test');
  const nexuses = async (): Promise<number> => ((await tgtd.tgtadm(['--op', 'show', '--mode', 'target'])).match(/I_T nexus: /g) ?? []).length;

  // The metrics address is taken: the last step before the control socket fails.
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  const metricsPort = (taken.address() as net.AddressInfo).port;
  const nbdPort = await freePort();
  const b = { ...cfg, listen: [`127.0.0.1:${nbdPort}`], metrics: `127.0.0.1:${metricsPort}`, exports: [{ name: 'e2', url: tgtd.url(1, 2) }] };
  try {
    await assert.rejects(daemon(b, kernel), /cannot serve metrics on 127\.0\.0\.1:\d+: the address is in use/);
  } finally {
    taken.close();
  }
  // The reattached device was handed back, not left half-served: its socket is closed, the kernel waits.
  assert.ok(kernel.sock(0).dead, 'the rolled-back daemon no longer serves nbd0');
  assert.equal(fs.existsSync(path.join(cfg.stateDir!, 'daemon.json')), false, 'the state dir claim is released');
  const probe = net.createServer();
  await new Promise<void>((resolve, reject) => probe.once('error', reject).listen(nbdPort, '127.0.0.1', resolve));
  probe.close();
  for (let i = 0; i < 50 && (await nexuses()) > 0; i++) await new Promise((r) => setTimeout(r, 100));
  assert.equal(await nexuses(), 0, 'every session the failed start opened logged out');

  // The next daemon finds everything as the first one left it.
  const c = await daemon(cfg, kernel);
  try {
    assert.deepEqual(c.devices.list().map((m) => [m.device, m.state]), [['/dev/nbd0', 'attached']]);
    assert.equal((await kernel.sock(0).io(CMD_READ, 0, BS)).error, 0);
    await callControl(cfg.control!, { op: 'unmap', device: '/dev/nbd0' });
  } finally {
    await c.stop('test');
  }
});

test('a restart through the fd store: the next daemon serves the same kernel sockets from where the last one stopped reading', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const store = new FakeFdStore();
  const cfg = config('s');
  const a = await daemon(cfg, kernel, store);
  let sock: KernelSock;
  const before = crypto.randomBytes(8 * BS);
  const partial = crypto.randomBytes(2 * BS);
  const queued = crypto.randomBytes(BS);
  try {
    await callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), stateDir: cfg.stateDir, connections: 1 });
    sock = kernel.sock(0);
    assert.equal((await sock.io(CMD_WRITE, 0, before.length, before)).error, 0);
  } catch (err) {
    await a.stop('test');
    throw err;
  }
  // A WRITE of which the daemon has read the header and half the payload when it stops.
  const w = sock.ioSplit(CMD_WRITE, 16 * BS, partial.length, partial, 28 + BS);
  await new Promise((r) => setTimeout(r, 200));
  await a.stop('restart');
  assert.deepEqual(store.names(), ['nbd0.0', 'nbd0.0.unread'], 'the socket and what was read of it are kept');
  assert.equal(sock.dead, false, 'the kernel saw no close');
  // While no daemon runs, the kernel goes on sending: the rest of that WRITE, and another request.
  w.rest();
  const q = sock.io(CMD_WRITE, 32 * BS, queued.length, queued);
  store.restart();
  const reconfigures = kernel.reconfigures;
  const b = await daemon(cfg, kernel, store);
  try {
    assert.deepEqual(await w.reply, { error: 0, data: Buffer.alloc(0) }, 'the WRITE split across the restart is answered once');
    assert.equal((await q).error, 0, 'the request queued while no daemon ran is answered');
    assert.equal(kernel.reconfigures, reconfigures, 'no RECONFIGURE');
    assert.equal(kernel.sock(0), sock, 'the very same kernel socket');
    const [m] = b.devices.list();
    assert.equal(m.state, 'attached');
    assert.equal(m.attach, 'adopted');
    assert.deepEqual(store.untaken(), [], 'everything stored was taken');
    for (const [off, data] of [[0, before], [16 * BS, partial], [32 * BS, queued]] as const) {
      const r = await sock.io(CMD_READ, off, data.length);
      assert.equal(r.error, 0);
      assert.ok(r.data.equals(data), `data at ${off} read back`);
    }
  } finally {
    await b.stop('stop');
  }
  // A stop empties the store: the next start reattaches with fresh sockets.
  store.empty();
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(sock.dead, true, 'with the store emptied the kernel sees the close');
  store.restart();
  const c = await daemon(cfg, kernel, store);
  try {
    const [m] = c.devices.list();
    assert.deepEqual([m.state, m.attach], ['attached', 'reattached']);
    assert.equal(kernel.reconfigures, reconfigures + 1);
    const r = await kernel.sock(0).io(CMD_READ, 16 * BS, partial.length);
    assert.ok(r.data.equals(partial));
    await callControl(cfg.control!, { op: 'unmap', device: '/dev/nbd0' });
  } finally {
    await c.stop('test');
  }
});

test('sockets left in the store without their unread bytes (a hand-over cut short) are shut down and the device reattached', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const store = new FakeFdStore();
  const cfg = config('t');
  const a = await daemon(cfg, kernel, store);
  try {
    await callControl(cfg.control!, { op: 'map', url: tgtd.url(1, 1), stateDir: cfg.stateDir, connections: 2 });
  } finally {
    await a.stop('restart');
  }
  const old = [kernel.sock(0, 0), kernel.sock(0, 1)];
  // As if the daemon died between storing slot 1's socket and its unread bytes.
  const s = store as unknown as { stored: Map<string, number | Buffer> };
  s.stored.delete('nbd0.1.unread');
  store.restart();
  const b = await daemon(cfg, kernel, store);
  try {
    const [m] = b.devices.list();
    assert.deepEqual([m.state, m.attach], ['attached', 'reattached']);
    assert.ok(old.every((k) => k.dead), 'both old sockets were shut down, so the kernel took new ones');
    assert.equal((await kernel.sock(0, 1).io(CMD_READ, 0, BS)).error, 0);
    assert.deepEqual(store.untaken(), []);
    await callControl(cfg.control!, { op: 'unmap', device: '/dev/nbd0' });
  } finally {
    await b.stop('test');
  }
});

test('resize: a grown LUN grows its device online (RECONFIGURE with the size), a shrunk one is refused and keeps its size', { timeout: 120_000 }, async () => {
  const kernel = new FakeKernel();
  const cfg = config('r');
  const d = await daemon(cfg, kernel);
  try {
    const st = await callControl<{ device: string; index: number; size: string }>(cfg.control!, { op: 'map', url: tgtd.url(1, 3), stateDir: cfg.stateDir });
    assert.equal(st.size, String(16 << 20));
    const record = (): { size: string } => JSON.parse(fs.readFileSync(path.join(cfg.stateDir!, 'mappings', 'nbd0.json'), 'utf8'));
    assert.deepEqual(await d.resize('/dev/nbd0'), [{ export: 'map:' + tgtd.iqn(1) + '/3', device: '/dev/nbd0', was: String(16 << 20), now: String(16 << 20), changed: false }]);

    await tgtd.resizeLun(1, 3, 24 << 20);
    const [grown] = await d.resize();
    assert.deepEqual([grown.was, grown.now, grown.changed, grown.refused], [String(16 << 20), String(24 << 20), true, undefined]);
    assert.deepEqual(kernel.resizes, [{ index: 0, sizeBytes: 24n << 20n, blockSize: BS }], 'one RECONFIGURE with the new size and the same block size');
    assert.equal(record().size, String(24 << 20), 'the mapping record has the new size');
    assert.equal(d.devices.list()[0].size, String(24 << 20), 'list-mapped shows it');
    // The kernel may use the new blocks at once.
    const data = crypto.randomBytes(BS);
    assert.equal((await kernel.sock(0).io(CMD_WRITE, (20 << 20), BS, data)).error, 0);
    assert.ok((await kernel.sock(0).io(CMD_READ, (20 << 20), BS)).data.equals(data));

    await tgtd.resizeLun(1, 3, 8 << 20);
    const [shrunk] = await d.resize('/dev/nbd0');
    assert.equal(shrunk.changed, false);
    assert.match(shrunk.refused ?? '', /shrank from 25165824 to 8388608 bytes; keeping 25165824/);
    assert.equal(kernel.resizes.length, 1, 'no RECONFIGURE for a smaller LUN');
    assert.equal(record().size, String(24 << 20));

    // Another device behind the same address: refused, as a reattach would.
    await tgtd.resizeLun(1, 3, 24 << 20, 'scsi_sn=SWAPPED01');
    await assert.rejects(d.resize('/dev/nbd0'), /changed/);
    assert.equal(kernel.resizes.length, 1);
    await assert.rejects(d.resize('/dev/nbd7'), /not mapped by this daemon/);
  } finally {
    await callControl(cfg.control!, { op: 'unmap', device: '/dev/nbd0', force: true }).catch(() => undefined);
    await d.stop('test');
    await tgtd.resizeLun(1, 3, 16 << 20).catch(() => undefined);
  }
});

test('resize: CAPACITY DATA HAS CHANGED from the target (embedded, resized under I/O) grows the device with no command', { timeout: 60_000 }, async () => {
  const iqn = 'iqn.2026-12.test.iscsi-nbd:grow';
  const target = new TargetServer({ targets: [{ name: iqn, luns: [{ lun: 0, backend: new MemoryBackend({ size: 8 << 20, blockSize: 4096 }), identitySeed: 'grow-lun' }] }] });
  const { port } = await target.listen({ host: '127.0.0.1', port: 0 });
  const kernel = new FakeKernel();
  const cfg = config('ua');
  const d = await daemon(cfg, kernel);
  try {
    await callControl(cfg.control!, { op: 'map', url: `iscsi://127.0.0.1:${port}/${iqn}/0`, stateDir: cfg.stateDir });
    await target.device(iqn, 0)!.resize(12 << 20);
    const started = Date.now();
    // The next command the kernel sends takes the unit attention; it is retried, and the capacity read again.
    assert.equal((await kernel.sock(0).io(CMD_READ, 0, 4096)).error, 0);
    while (kernel.resizes.length === 0 && Date.now() - started < 10_000) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(kernel.resizes, [{ index: 0, sizeBytes: 12n << 20n, blockSize: 4096 }]);
    console.log(`# resize: unit attention to RECONFIGURE in ${Date.now() - started} ms`);
    assert.equal(d.devices.list()[0].size, String(12 << 20));
    await target.device(iqn, 0)!.resize(4 << 20);
    await kernel.sock(0).io(CMD_READ, 0, 4096);
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(kernel.resizes.length, 1, 'a shrink is refused');
    assert.equal(d.devices.list()[0].size, String(12 << 20));
    await callControl(cfg.control!, { op: 'unmap', device: '/dev/nbd0', force: true });
  } finally {
    await d.stop('test');
    await target.close();
  }
});
