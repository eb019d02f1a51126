// A peer that is not an iSCSI target (here one that answers HTTP): discover
// and copy say so in one plain line, with no stack trace.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { runCliAsync } from '../helpers/process';

test('discover and copy against an HTTP server: "not an iSCSI target", no stack trace', { timeout: 60_000 }, async (t) => {
  const srv = net.createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', () => s.end('HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request'));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => srv.close(() => r())));
  const port = (srv.address() as net.AddressInfo).port;
  const env = { ISCSI_NBD_STATE_DIR: path.join(os.tmpdir(), 'no-such-iscsi-nbd-state'), ISCSI_NBD_CONTROL: path.join(os.tmpdir(), 'no-such-iscsi-nbd.sock') };

  const d = await runCliAsync(['discover', `127.0.0.1:${port}`], 30_000, env);
  assert.equal(d.code, 1, d.err);
  assert.match(d.err, new RegExp(`^iscsi-nbd: 127\\.0\\.0\\.1:${port} is not an iSCSI target \\(it answered our login with something else: .*\\) \\[EPROTO\\]$`, 'm'));
  const c = await runCliAsync(['copy', `iscsi://127.0.0.1:${port}/iqn.2000-01.org.example:disk/0`, '/dev/null'], 30_000, env);
  assert.equal(c.code, 1, c.err);
  assert.match(c.err, new RegExp(`^iscsi-nbd: iscsi://127\\.0\\.0\\.1:${port}/iqn\\.2000-01\\.org\\.example:disk/0: cannot log in: 127\\.0\\.0\\.1:${port} is not an iSCSI target `, 'm'));
  for (const r of [d, c]) {
    assert.doesNotMatch(r.err, /^\s+at /m, 'a stack trace was printed');
    assert.equal(r.err.match(/is not an iSCSI target/g)?.length, 1, `said once: ${r.err}`);
  }
});
