// `iscsi-nbd serve --tls require` with a throwaway CA: libnbd and
// nbd-client over TLS reach a real tgtd LUN; plaintext and untrusted clients
// are refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';
import { startTgtdWithLuns } from '../helpers/tgtd';
import { startBridge, tmpdir, describeRun } from '../helpers/bridge';
import { nbdPython } from '../helpers/libnbd';
import { skipUnless, onPath } from '../helpers/tools';
import { run } from '../helpers/process';
import { makePki } from '../helpers/pki';

const MiB = 1024 * 1024;

test('serve --tls require: TLS clients work end to end, plain and rogue clients are refused', { skip: skipUnless('tgtd', 'tgtadm', 'openssl', 'nbdinfo', 'nbdsh'), timeout: 120_000 }, async (t) => {
  const dir = tmpdir(t, 'bridge-tls-');
  makePki(dir);
  const tgt = await startTgtdWithLuns({ targets: [{ luns: [{ size: 8 * MiB }] }] });
  t.after(() => tgt.stop());
  const tlsUri = (port: number, sub = 'good') => `nbds://localhost:${port}/disk?tls-certificates=${path.join(dir, sub)}`;
  const b = await startBridge({
    exports: [['disk', tgt.url(1, 1)]],
    sessions: 1,
    args: ['--tls', 'require', '--tls-cert', path.join(dir, 'server-cert.pem'), '--tls-key', path.join(dir, 'server-key.pem'),
      '--tls-ca', path.join(dir, 'ca-cert.pem'), '--tls-verify-client'],
    readyUri: (port) => tlsUri(port),
  });
  t.after(() => b.stop());

  const r = await run('nbdinfo', ['--json', tlsUri(b.port)], { timeoutMs: 30000 });
  assert.equal(r.code, 0, describeRun(r, 'nbdinfo over TLS'));
  const j = JSON.parse(r.stdout);
  assert.equal(j.TLS, true);
  assert.equal(j.exports[0]['export-size'], 8 * MiB);

  // Data over TLS reaches the LUN on the target.
  const w = await nbdPython(`
h = connect(sys.argv[1], tls_certs=sys.argv[2])
h.pwrite(b'tls!' * 1024, 65536, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 65536) == b'tls!' * 1024
# Large reads in flight together, three rounds: their reply buffers are
# reused once sent, so each round checks that no reply carries another's bytes.
import os
K = 262144
data = os.urandom(8 * K)
for i in range(8):
    h.pwrite(data[i * K:(i + 1) * K], 1048576 + i * K)
for rnd in range(3):
    cmds = []
    for i in range(8):
        buf = nbd.Buffer(K)
        cmds.append((h.aio_pread(buf, 1048576 + i * K), buf, i))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c, buf, i in cmds:
        assert h.aio_command_completed(c)
        assert bytes(buf.to_bytearray()) == data[i * K:(i + 1) * K], (rnd, i)
print(h.get_tls_negotiated())
h.shutdown()`, [`nbds://localhost:${b.port}/disk`, path.join(dir, 'good')], { timeoutMs: 30000 });
  assert.equal(w.code, 0, describeRun(w, 'libnbd TLS write/read'));
  assert.equal(w.stdout.trim(), 'True');
  const fd = fs.openSync(tgt.lunInfo(1, 1).path, 'r');
  const buf = Buffer.alloc(4);
  fs.readSync(fd, buf, 0, 4, 65536);
  fs.closeSync(fd);
  assert.equal(buf.toString(), 'tls!');

  // Plaintext is refused (the server requires TLS), promptly.
  const plain = await run('nbdinfo', [`nbd://127.0.0.1:${b.port}/disk`], { timeoutMs: 20000 });
  assert.equal(plain.timedOut, false);
  assert.notEqual(plain.code, 0, 'plain client refused');
  // A client certificate from an unknown CA is refused.
  const rogue = await run('nbdinfo', [tlsUri(b.port, 'rogue')], { timeoutMs: 20000 });
  assert.equal(rogue.timedOut, false);
  assert.notEqual(rogue.code, 0, 'untrusted client certificate refused');

  // nbd-client 3.x (GnuTLS, TLS 1.2) lists the exports over TLS.
  if (onPath('nbd-client') || process.env.CI) {
    const l = await run('nbd-client', ['-l', '127.0.0.1', String(b.port), '-cacertfile', path.join(dir, 'ca-cert.pem'),
      '-certfile', path.join(dir, 'client-cert.pem'), '-keyfile', path.join(dir, 'client-key.pem'), '-tlshostname', 'localhost'], { timeoutMs: 20000 });
    assert.equal(l.code, 0, describeRun(l, 'nbd-client -l over TLS'));
    assert.match(l.stdout, /^disk/m);
  }
  // The daemon is still healthy after the refused clients.
  const again = await run('nbdinfo', ['--size', tlsUri(b.port)], { timeoutMs: 20000 });
  assert.equal(again.stdout.trim(), String(8 * MiB), describeRun(again, 'nbdinfo after refusals'));
});
