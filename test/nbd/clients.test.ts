// Real NBD clients (libnbd tools, qemu, fio, nbd-client) against NbdServer
// serving memory exports on free loopback ports. Every process has a timeout
// and is killed with its process group.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { NbdServer, NbdServerOptions } from '../../src/nbd/server';
import { MemoryExport, memoryRegistry } from '../helpers/memory-export';
import { run, tmpdir as tmpdirFor } from '../helpers/process';
import { makePki } from '../helpers/pki';
import { nbdJson, nbdPython } from '../helpers/libnbd';
import { haveAll } from '../helpers/tools';

/** In CI a missing tool never skips: the test runs and fails. */
function have(cmd: string): boolean {
  return haveAll(cmd);
}

const MiB = 1024 * 1024;

async function serve(t: { after: (f: () => Promise<void>) => void }, exps: MemoryExport[], opts: Partial<NbdServerOptions> = {}) {
  const srv = new NbdServer({ exports: memoryRegistry(...exps), ...opts });
  const a = (await srv.listen({ host: '127.0.0.1', port: 0 })) as net.AddressInfo;
  t.after(() => srv.close({ drainMs: 1000 }));
  return { srv, port: a.port, uri: (name: string) => `nbd://127.0.0.1:${a.port}/${name}` };
}

const tmpdir = (t: { after: (f: () => void) => void }): string => tmpdirFor(t, 'nbd-test-');

function ok(r: { code: number | null; stdout: string; stderr: string; timedOut: boolean }, what: string): void {
  assert.equal(r.timedOut, false, `${what} timed out`);
  assert.equal(r.code, 0, `${what} failed: ${r.stderr}${r.stdout}`);
}

test('nbdinfo --json reports size and capabilities; --list lists exports', { skip: !have('nbdinfo') && 'nbdinfo (libnbd-bin) missing' }, async (t) => {
  const rw = new MemoryExport({ name: 'disk', description: 'rw disk', size: 8 * MiB, blockSizes: { minimum: 512, preferred: 4096, maximum: 4 * MiB } });
  const ro = new MemoryExport({ name: 'ro', size: MiB, flags: { readOnly: true, multiConn: false, flush: false, fua: false, cache: false } });
  const { uri, port } = await serve(t, [rw, ro]);
  const r = await run('nbdinfo', ['--json', uri('disk')], { timeoutMs: 20000 });
  ok(r, 'nbdinfo --json');
  const j = JSON.parse(r.stdout);
  const e = j.exports[0];
  assert.equal(j.structured, true);
  assert.equal(e['export-name'], 'disk');
  assert.equal(e.description, 'rw disk');
  assert.equal(e['export-size'], 8 * MiB);
  assert.equal(e.is_read_only, false);
  for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_fast_zero', 'can_df', 'can_cache']) assert.equal(e[k], true, k);
  assert.deepEqual(e.contexts, ['base:allocation']);
  assert.equal(e.block_size_minimum, 512);
  assert.equal(e.block_size_preferred, 4096);
  assert.equal(e.block_size_maximum, 4 * MiB);
  const r2 = await run('nbdinfo', ['--json', uri('ro')], { timeoutMs: 20000 });
  ok(r2, 'nbdinfo ro');
  const e2 = JSON.parse(r2.stdout).exports[0];
  assert.equal(e2.is_read_only, true);
  for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_cache']) assert.equal(e2[k], false, k);
  const l = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`], { timeoutMs: 20000 });
  ok(l, 'nbdinfo --list');
  assert.deepEqual(JSON.parse(l.stdout).exports.map((x: { 'export-name': string }) => x['export-name']), ['disk', 'ro']);
  // An unknown export is refused with a message, not a hang.
  const u = await run('nbdinfo', [uri('nope')], { timeoutMs: 20000 });
  assert.notEqual(u.code, 0);
  assert.equal(u.timedOut, false);
});

test('qemu-io patterns, nbdinfo --map after a trim, qemu-img compare', { skip: (!have('qemu-io') || !have('nbdinfo')) && 'qemu-utils / libnbd-bin missing' }, async (t) => {
  const exp = new MemoryExport({ name: 'disk', size: 4 * MiB });
  const { uri } = await serve(t, [exp]);
  const dir = tmpdir(t);
  const cmds = ['write -P 0xab 0 1M', 'write -z 1M 512K', 'write -P 0xcd 2M 1M', 'discard 2M 512K', 'flush', 'write -P 0x11 -f 3M 4k',
    'read -P 0xab 0 1M', 'read -P 0 1M 512K', 'read -P 0xcd 2560K 512K', 'read -P 0x11 3M 4k'];
  const r = await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri('disk')], { timeoutMs: 30000 });
  ok(r, 'qemu-io');
  assert.doesNotMatch(r.stdout + r.stderr, /Pattern verification failed|error/i);
  assert.equal(exp.peek(3 * MiB, 1)[0], 0x11);
  assert.ok(exp.calls.some((c) => c.op === 'write' && c.fua && c.offset === BigInt(3 * MiB)), 'FUA reached the export');
  assert.ok(exp.calls.some((c) => c.op === 'trim'), 'discard became TRIM');
  assert.ok(exp.flushes >= 1, 'flush reached the export');
  const m = await run('nbdinfo', ['--map', '--json', uri('disk')], { timeoutMs: 20000 });
  ok(m, 'nbdinfo --map');
  const map = JSON.parse(m.stdout) as Array<{ offset: number; length: number; type: number }>;
  const at = (off: number) => map.find((x) => x.offset <= off && off < x.offset + x.length)!;
  assert.equal(at(0).type & 1, 0, 'written data is allocated');
  assert.equal(at(2 * MiB).type, 3, 'trimmed range is a hole reading as zero');
  assert.equal(at(2 * MiB + 512 * 1024).type & 1, 0);
  // Build the same image locally and compare.
  const img = path.join(dir, 'ref.img');
  ok(await run('qemu-img', ['create', '-f', 'raw', img, '4M'], { timeoutMs: 10000 }), 'qemu-img create');
  ok(await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 1M', '-c', 'write -P 0xcd 2560K 512K', '-c', 'write -P 0x11 3M 4k', img], { timeoutMs: 10000 }), 'qemu-io ref');
  ok(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri('disk'), img], { timeoutMs: 30000 }), 'qemu-img compare');
});

test('nbdcopy round trip preserves the data', { skip: !have('nbdcopy') && 'nbdcopy (libnbd-bin) missing' }, async (t) => {
  const exp = new MemoryExport({ name: 'disk', size: 16 * MiB });
  const { uri } = await serve(t, [exp]);
  const dir = tmpdir(t);
  const src = path.join(dir, 'src.img');
  const dst = path.join(dir, 'dst.img');
  const data = crypto.randomBytes(16 * MiB);
  data.fill(0, 4 * MiB, 8 * MiB); // a sparse stretch
  fs.writeFileSync(src, data);
  ok(await run('nbdcopy', [src, uri('disk')], { timeoutMs: 60000 }), 'nbdcopy in');
  ok(await run('nbdcopy', [uri('disk'), dst], { timeoutMs: 60000 }), 'nbdcopy out');
  const h = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
  assert.equal(h(fs.readFileSync(dst)), h(data));
});

test('nbdsh with strict mode off: invalid requests get errors and the connection survives', { skip: !have('nbdsh') && 'python3-libnbd missing' }, async (t) => {
  const disk = new MemoryExport({ name: 'disk', size: 8 * MiB, blockSizes: { minimum: 512, preferred: 4096, maximum: 32 * MiB } });
  const ro = new MemoryExport({ name: 'ro', size: MiB, flags: { readOnly: true } });
  const { uri } = await serve(t, [disk, ro]);
  const res = await nbdJson('nbdsh script', `
h = connect(sys.argv[1], strict=False)
size = h.get_size()
tryit('read_past_end', lambda: h.pread(1024, size - 512))
tryit('write_past_end', lambda: h.pwrite(b'x' * 1024, size - 512))
tryit('zero_past_end', lambda: h.zero(1024, size - 512))
tryit('trim_past_end', lambda: h.trim(1024, size - 512))
tryit('misaligned_read', lambda: h.pread(100, 1))
tryit('misaligned_write', lambda: h.pwrite(b'y' * 100, 0))
tryit('unknown_flag', lambda: h.pread(512, 0, 1 << 7))
tryit('req_one_on_read', lambda: h.pread(512, 0, nbd.CMD_FLAG_REQ_ONE))
tryit('zero_len_read', lambda: h.pread(0, 0))
tryit('zero_len_write', lambda: h.pwrite(b'', 0))
tryit('zero_len_trim', lambda: h.trim(0, 0))
tryit('zero_len_zero', lambda: h.zero(0, 0))
tryit('oversized_read', lambda: h.pread(33 * 1024 * 1024, 0))
tryit('oversized_write', lambda: h.pwrite(b'z' * (33 * 1024 * 1024), 0))
tryit('fua_flush', lambda: h.flush(nbd.CMD_FLAG_FUA))
tryit('write_ok', lambda: h.pwrite(b'k' * 512, 4096, nbd.CMD_FLAG_FUA))
res['readback'] = h.pread(512, 4096) == b'k' * 512
res['connected'] = h.aio_is_ready()
h.shutdown()
r = connect(sys.argv[2], strict=False)
tryit('ro_write', lambda: r.pwrite(b'x' * 512, 0))
tryit('ro_trim', lambda: r.trim(512, 0))
tryit('ro_zero', lambda: r.zero(512, 0))
res['ro_read'] = len(r.pread(512, 0))
r.shutdown()
done()
`, [uri('disk'), uri('ro')], { timeoutMs: 60000 });
  const EINVAL = 22, ENOSPC = 28, EPERM = 1;
  assert.deepEqual(res, {
    read_past_end: EINVAL, write_past_end: ENOSPC, zero_past_end: ENOSPC, trim_past_end: EINVAL,
    misaligned_read: EINVAL, misaligned_write: EINVAL, unknown_flag: EINVAL, req_one_on_read: EINVAL,
    zero_len_read: 0, zero_len_write: 0, zero_len_trim: 0, zero_len_zero: 0,
    oversized_read: EINVAL, oversized_write: EINVAL, fua_flush: 0, write_ok: 0, readback: true, connected: true,
    ro_write: EPERM, ro_trim: EPERM, ro_zero: EPERM, ro_read: 512,
  });
});

test('fio nbd engine with crc32c verification', { skip: !have('fio') && 'fio missing' }, async (t) => {
  const exp = new MemoryExport({ name: 'disk', size: 32 * MiB });
  const { uri } = await serve(t, [exp]);
  const dir = tmpdir(t);
  const r = await run('fio', ['--verify_state_save=0','--name=nbdverify', '--ioengine=nbd', `--uri=${uri('disk')}`, '--rw=randwrite', '--bs=4k', '--size=4M',
    '--offset_increment=8M', '--numjobs=2', '--iodepth=32', '--verify=crc32c', '--do_verify=1', '--runtime=30', '--output-format=json'], { timeoutMs: 90000, cwd: dir });
  ok(r, 'fio');
  const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
  for (const job of j.jobs) assert.equal(job.error, 0);
});

test('nbd-client -l lists exports (no /dev/nbd needed)', { skip: !have('nbd-client') && 'nbd-client missing' }, async (t) => {
  const { port } = await serve(t, [new MemoryExport({ name: 'alpha', description: 'first' }), new MemoryExport({ name: 'beta' })]);
  const r = await run('nbd-client', ['-l', '127.0.0.1', String(port)], { timeoutMs: 20000 });
  ok(r, 'nbd-client -l');
  assert.match(r.stdout, /^alpha/m);
  assert.match(r.stdout, /^beta/m);
});

test('300 idle half-open TCP connections do not stop a new client being served', { skip: !have('nbdinfo') && 'nbdinfo missing' }, async (t) => {
  const { srv, uri, port } = await serve(t, [new MemoryExport({ name: 'disk', size: MiB })]);
  const socks: net.Socket[] = [];
  t.after(() => socks.forEach((s) => s.destroy()));
  await Promise.all(Array.from({ length: 300 }, () => new Promise<void>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => resolve());
    s.once('data', () => resolve()); // the greeting arrived; now stay silent
    s.once('close', () => resolve());
    socks.push(s);
  })));
  const r = await run('nbdinfo', ['--size', uri('disk')], { timeoutMs: 20000 });
  ok(r, 'nbdinfo with 300 idle connections');
  assert.equal(r.stdout.trim(), String(MiB));
  assert.ok(srv.connections().length <= 65, 'handshakes are capped');
});

// ---- TLS ----

test('TLS: required with client certificates; libnbd and nbd-client 3.x (TLS 1.2) succeed, plain and rogue clients are refused', { skip: (!have('openssl') || !have('nbdinfo')) && 'openssl / nbdinfo missing' }, async (t) => {
  const dir = tmpdir(t);
  makePki(dir);
  const rd = (f: string) => fs.readFileSync(path.join(dir, f));
  const { srv, port } = await serve(t, [new MemoryExport({ name: 'disk', size: MiB })], {
    tls: { mode: 'require', cert: rd('server-cert.pem'), key: rd('server-key.pem'), ca: rd('ca-cert.pem'), requestClientCert: true },
  });
  const tlsUri = (sub: string) => `nbds://localhost:${port}/disk?tls-certificates=${path.join(dir, sub)}`;
  let seenTls = false;
  srv.on('state', (i: { tls: boolean; state: string }) => { if (i.state === 'transmission' && i.tls) seenTls = true; });
  const r = await run('nbdinfo', ['--json', tlsUri('good')], { timeoutMs: 30000 });
  ok(r, 'nbdinfo over TLS');
  const j = JSON.parse(r.stdout);
  assert.equal(j.TLS, true);
  assert.equal(j.exports[0]['export-size'], MiB);
  assert.ok(seenTls);
  const plain = await run('nbdinfo', [`nbd://127.0.0.1:${port}/disk`], { timeoutMs: 20000 });
  assert.notEqual(plain.code, 0, 'plain client refused');
  assert.equal(plain.timedOut, false);
  const rogue = await run('nbdinfo', [tlsUri('rogue')], { timeoutMs: 20000 });
  assert.notEqual(rogue.code, 0, 'untrusted client certificate refused');
  assert.equal(rogue.timedOut, false);
  if (have('nbd-client')) {
    const l = await run('nbd-client', ['-l', '127.0.0.1', String(port), '-cacertfile', path.join(dir, 'ca-cert.pem'),
      '-certfile', path.join(dir, 'client-cert.pem'), '-keyfile', path.join(dir, 'client-key.pem'), '-tlshostname', 'localhost'], { timeoutMs: 20000 });
    ok(l, 'nbd-client -l over TLS');
    assert.match(l.stdout, /^disk/m);
  }
});

test('TLS optional: plain and TLS clients both work', { skip: (!have('openssl') || !have('nbdsh')) && 'openssl / python3-libnbd missing' }, async (t) => {
  const dir = tmpdir(t);
  makePki(dir);
  const rd = (f: string) => fs.readFileSync(path.join(dir, f));
  const exp = new MemoryExport({ name: 'disk', size: MiB });
  const { port } = await serve(t, [exp], { tls: { mode: 'on', cert: rd('server-cert.pem'), key: rd('server-key.pem') } });
  const plain = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/disk`], { timeoutMs: 20000 });
  ok(plain, 'plain nbdinfo');
  fs.mkdirSync(path.join(dir, 'caonly'));
  fs.copyFileSync(path.join(dir, 'ca-cert.pem'), path.join(dir, 'caonly', 'ca-cert.pem'));
  const r = await nbdPython(`
h = connect(sys.argv[1], tls_certs=sys.argv[2])
h.pwrite(b'tls!' * 128, 0)
assert h.pread(512, 0) == b'tls!' * 128
print(h.get_tls_negotiated())
h.shutdown()
`, [`nbds://localhost:${port}/disk`, path.join(dir, 'caonly')], { timeoutMs: 30000 });
  ok(r, 'libnbd TLS read/write');
  assert.equal(r.stdout.trim(), 'True');
  assert.equal(exp.peek(0, 4).toString(), 'tls!');
});

test('libnbd without structured replies (simple replies only, like the kernel)', { skip: !have('nbdsh') && 'python3-libnbd missing' }, async (t) => {
  const exp = new MemoryExport({ name: 'disk', size: 4 * MiB });
  const { uri, srv } = await serve(t, [exp]);
  const script = `
h = connect(sys.argv[1], strict=False, structured=False)
out = {'structured': h.get_structured_replies_negotiated()}
h.pwrite(b'\\xa5' * 65536, 0, nbd.CMD_FLAG_FUA)
out['read'] = h.pread(65536, 0) == b'\\xa5' * 65536
h.zero(4096, 4096)
out['zeroed'] = h.pread(4096, 4096) == bytes(4096)
h.trim(65536, 65536)
h.flush()
try:
    h.pread(512, h.get_size())
    out['past_end'] = 0
except nbd.Error as e:
    out['past_end'] = e.errnum
out['after_error'] = h.pread(4, 0) == b'\\xa5' * 4
h.shutdown()
print(json.dumps(out))
`;
  let sawSimple = false;
  srv.on('state', (i: { state: string; structuredReplies: boolean }) => { if (i.state === 'transmission' && !i.structuredReplies) sawSimple = true; });
  const r = await nbdPython(script, [uri('disk')], { timeoutMs: 30000 });
  ok(r, 'libnbd simple replies');
  assert.deepEqual(JSON.parse(r.stdout.trim()), { structured: false, read: true, zeroed: true, past_end: 22, after_error: true });
  assert.ok(sawSimple);
});
