// The systemd side of the fd store, spoken for real: datagrams with SCM_RIGHTS
// to a NOTIFY_SOCKET (a python receiver here, which checks what it was handed),
// and fds given back from fd 3 on with LISTEN_FDS/LISTEN_FDNAMES to a child
// process, as systemd hands them to the next run of the service.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseListenFds, SystemdFdStore } from '../../src/daemon/fd-store';
import { createLogger } from '../../src/log';
import { closeFd, memfdWith, socketpairUnixStream } from '../../src/nbd/netlink/syscalls';
import { REPO_ROOT } from '../helpers/process';

test('parseListenFds: only for our pid, named from fd 3 on, unnamed ones "unknown"', () => {
  assert.deepEqual([...parseListenFds({ LISTEN_FDS: '2', LISTEN_PID: '7', LISTEN_FDNAMES: 'a:b' }, 8)], []);
  assert.deepEqual([...parseListenFds({ LISTEN_FDS: '3', LISTEN_PID: '7', LISTEN_FDNAMES: 'nbd0.0:nbd0.0.unread' }, 7)], [['nbd0.0', [3]], ['nbd0.0.unread', [4]], ['unknown', [5]]]);
  assert.deepEqual([...parseListenFds({ LISTEN_FDS: '2', LISTEN_PID: '7', LISTEN_FDNAMES: 'x:x' }, 7)], [['x', [3, 4]]]);
  assert.deepEqual([...parseListenFds({ LISTEN_FDS: 'lots', LISTEN_PID: '7' }, 7)], []);
  assert.deepEqual([...parseListenFds({}, 7)], []);
});

/** A NOTIFY_SOCKET that reports each datagram: its text, and what each fd it carried is. */
const RECEIVER = String.raw`
import socket, os, stat, sys, json
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("ready", flush=True)
s.settimeout(20)
for _ in range(int(sys.argv[2])):
    msg, fds, _, _ = socket.recv_fds(s, 4096, 8)
    kinds = []
    for fd in fds:
        st = os.fstat(fd)
        if stat.S_ISSOCK(st.st_mode):
            kinds.append("socket")
        else:
            kinds.append("bytes:" + os.pread(fd, st.st_size, 0).decode())
        os.close(fd)
    print(json.dumps({"msg": msg.decode(), "fds": kinds}), flush=True)
`;

function receiver(sockPath: string, count: number): { ready: Promise<void>; lines: Promise<{ msg: string; fds: string[] }[]> } {
  const p = spawn('python3', ['-c', RECEIVER, sockPath, String(count)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let onReady!: () => void;
  const ready = new Promise<void>((r) => (onReady = r));
  p.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    if (out.startsWith('ready\n')) onReady();
  });
  const lines = new Promise<{ msg: string; fds: string[] }[]>((resolve, reject) =>
    p.on('exit', (code) => (code === 0 ? resolve(out.split('\n').slice(1).filter(Boolean).map((l) => JSON.parse(l))) : reject(new Error(`receiver exit ${code}: ${out}`)))),
  );
  return { ready, lines };
}

test('SystemdFdStore.put/putBytes send FDSTORE datagrams with the fds attached', { timeout: 30_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fdstore-'));
  const sockPath = path.join(dir, 'notify');
  try {
    const r = receiver(sockPath, 2);
    await r.ready;
    const store = new SystemdFdStore(createLogger({ level: 'silent' }), sockPath, {}, process.pid);
    assert.equal(store.enabled, true);
    const [a, b] = socketpairUnixStream();
    store.put('nbd3.1', a);
    store.putBytes('nbd3.1.unread', Buffer.from('half a request'));
    closeFd(a);
    closeFd(b);
    assert.deepEqual(await r.lines, [
      { msg: 'FDSTORE=1\nFDNAME=nbd3.1', fds: ['socket'] },
      { msg: 'FDSTORE=1\nFDNAME=nbd3.1.unread', fds: ['bytes:half a request'] },
    ]);
    assert.throws(() => store.put('bad:name', 0), /bad fd store name/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('SystemdFdStore in the next run: takes its fds from fd 3 on, and tells systemd to forget each one it took', { timeout: 30_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fdstore-'));
  const sockPath = path.join(dir, 'notify');
  const memfd = memfdWith('nbd0.0.unread', Buffer.from('unread bytes'));
  try {
    const r = receiver(sockPath, 1);
    await r.ready;
    const child = `
      process.env.LISTEN_PID = String(process.pid); // systemd sets it after the fork
      const { SystemdFdStore } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist/src/daemon/fd-store.js'))});
      const { createLogger } = require(${JSON.stringify(path.join(REPO_ROOT, 'dist/src/log.js'))});
      const s = new SystemdFdStore(createLogger({ level: 'silent' }), process.env.NOTIFY_SOCKET);
      const has = s.has('nbd0.0.unread');
      const bytes = s.takeBytes('nbd0.0.unread');
      console.log(JSON.stringify({ has, bytes: bytes && bytes.toString(), again: s.has('nbd0.0.unread'), left: s.untaken(), env: process.env.LISTEN_FDS ?? null }));
    `;
    const p = spawn(process.execPath, ['-e', child], {
      stdio: ['ignore', 'pipe', 'inherit', memfd],
      env: { ...process.env, NOTIFY_SOCKET: sockPath, LISTEN_FDS: '1', LISTEN_FDNAMES: 'nbd0.0.unread' },
    });
    let out = '';
    p.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    await new Promise((res) => p.on('exit', res));
    assert.deepEqual(JSON.parse(out), { has: true, bytes: 'unread bytes', again: false, left: [], env: null });
    assert.deepEqual(await r.lines, [{ msg: 'FDSTOREREMOVE=1\nFDNAME=nbd0.0.unread', fds: [] }]);
  } finally {
    closeFd(memfd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
