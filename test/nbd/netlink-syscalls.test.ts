// The koffi adapter on a real kernel. Needs no nbd module: socketpair and the
// generic netlink controller ("nlctrl") exist everywhere; NbdKernel.open()
// either works (nbd loaded or loadable) or must say to run `modprobe nbd`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import {
  NbdKernel, createSocketPair, closeFd, resolveGenlFamily, watchMulticast,
} from '../../src/nbd/netlink/kernel';
import { NetlinkSocket } from '../../src/nbd/netlink/syscalls';
import * as nl from '../../src/nbd/netlink/codec';
import * as K from '../../src/nbd/netlink/constants';
import { NetlinkError } from '../../src/nbd/netlink/errors';

const wrap = (fd: number): net.Socket => new net.Socket({ fd, readable: true, writable: true });

async function readBytes(s: net.Socket, n: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  while (got < n) {
    const [chunk] = (await once(s, 'data')) as [Buffer];
    parts.push(chunk);
    got += chunk.length;
  }
  return Buffer.concat(parts);
}

test('createSocketPair: close-on-exec fds that net.Socket wraps, bytes both ways, EOF on close', { timeout: 5000 },
  async () => {
    const { ours, kernel } = createSocketPair();
    assert.ok(ours >= 0 && kernel >= 0 && ours !== kernel);
    for (const fd of [ours, kernel]) {
      const flags = /flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      assert.ok(flags && (parseInt(flags[1], 8) & 0o2000000) !== 0, `fd ${fd} has O_CLOEXEC`);
    }
    const a = wrap(ours);
    const b = wrap(kernel);
    try {
      a.write(Buffer.from('request'));
      assert.equal((await readBytes(b, 7)).toString(), 'request');
      const big = Buffer.alloc(256 * 1024, 0xa5);
      b.write(big);
      assert.deepEqual(await readBytes(a, big.length), big);
      b.destroy(); // closes the fd: the peer reads EOF, as when the kernel drops its end
      await once(a, 'end');
    } finally {
      a.destroy();
      b.destroy();
    }
  });

test('closeFd closes, and a second close is a NetlinkError naming EBADF', { timeout: 5000 }, () => {
  const { ours, kernel } = createSocketPair();
  closeFd(ours);
  closeFd(kernel);
  assert.throws(() => closeFd(ours), (err: unknown) => err instanceof NetlinkError && err.errno === 'EBADF');
});

test('CTRL_CMD_GETFAMILY "nlctrl" round-trips through NetlinkSocket', { timeout: 10000 }, async () => {
  const sock = NetlinkSocket.open();
  try {
    for (const sendOnWorker of [false, true]) {
      const raws = await sock.request(nl.buildGetFamily('nlctrl', 41), 41, { timeoutMs: 3000, sendOnWorker });
      const reply = nl.collectReply(raws.flatMap((r) => nl.parseMessages(r)), 41);
      assert.equal(reply.ack.errno, 0);
      assert.equal(reply.replies.length, 1);
      const fam = nl.parseGetFamilyReply(reply.replies[0]);
      assert.equal(fam.id, K.GENL_ID_CTRL);
      assert.equal(fam.name, 'nlctrl');
      assert.ok(fam.mcastGroups.some((g) => g.name === 'notify'));
    }
    const fam = await resolveGenlFamily(sock, 'nlctrl', 3000);
    assert.equal(fam.id, K.GENL_ID_CTRL);
    await assert.rejects(resolveGenlFamily(sock, 'no-such-family', 3000),
      (err: unknown) => err instanceof NetlinkError && err.errno === 'ENOENT' && /not found/.test(err.message));
  } finally {
    sock.close();
  }
});

test('the kernel\'s extended ack comes through (policy violation)', { timeout: 10000 }, async (t) => {
  const sock = NetlinkSocket.open();
  try {
    // CTRL_ATTR_FAMILY_ID is a u16; one byte fails the controller's policy.
    const msg = nl.encodeGenlmsg({ familyId: K.GENL_ID_CTRL, cmd: K.CTRL_CMD_GETFAMILY, version: 1, seq: 51 },
      [nl.nla(K.CTRL_ATTR_FAMILY_ID, Buffer.from([7]))]);
    const { ack } = nl.collectReply((await sock.request(msg, 51, { timeoutMs: 3000 })).flatMap(nl.parseMessages), 51);
    assert.ok(ack.errno > 0);
    assert.equal(ack.request.seq, 51);
    t.diagnostic(`errno ${ack.errno}, ext ack ${JSON.stringify(ack.extAck)}`);
    if (ack.extAck !== undefined) assert.ok(ack.extAck.length > 0);
  } finally {
    sock.close();
  }
});

test('NbdKernel.open() works, or says to run modprobe nbd', { timeout: 15000 }, async (t) => {
  let kernel: NbdKernel | undefined;
  try {
    kernel = await NbdKernel.open({ timeoutMs: 5000 });
  } catch (err) {
    assert.ok(err instanceof NetlinkError, String(err));
    assert.equal(err.errno, 'ENOENT');
    assert.equal(err.code, 'ENOTSUP');
    assert.match(err.message, /the kernel has no nbd module loaded: run `modprobe nbd` \(as root\)/);
    t.diagnostic('no nbd module here: ' + err.message);
    return;
  }
  try {
    t.diagnostic(`nbd family id ${kernel.family.id}, groups ${JSON.stringify(kernel.family.mcastGroups)}`);
    assert.ok(kernel.family.mcastGroups.some((g) => g.name === K.NBD_GENL_MCAST_GROUP_NAME));
    const all = await kernel.status();
    assert.ok(Array.isArray(all));
  } finally {
    kernel.close();
  }
});

test('a request with no acknowledgement times out, and the socket stays usable', { timeout: 10000 }, async () => {
  const sock = NetlinkSocket.open();
  try {
    // Without NLM_F_ACK a successful GETFAMILY gets its reply but never an NLMSG_ERROR.
    const noAck = nl.encodeGenlmsg({
      familyId: K.GENL_ID_CTRL, cmd: K.CTRL_CMD_GETFAMILY, version: 1, seq: 61, flags: K.NLM_F_REQUEST,
    }, [nl.nlaString(K.CTRL_ATTR_FAMILY_NAME, 'nlctrl')]);
    const started = Date.now();
    await assert.rejects(sock.request(noAck, 61, { timeoutMs: 300 }),
      (err: unknown) => err instanceof NetlinkError && err.errno === 'ETIMEDOUT');
    const took = Date.now() - started;
    assert.ok(took >= 250 && took < 2000, `timed out after ${took} ms`);
    const raws = await sock.request(nl.buildGetFamily('nlctrl', 62), 62, { timeoutMs: 3000 });
    assert.equal(nl.collectReply(raws.flatMap(nl.parseMessages), 62).ack.errno, 0);
  } finally {
    sock.close();
  }
});

test('close() ends a waiting request promptly', { timeout: 10000 }, async () => {
  const sock = NetlinkSocket.open();
  const noAck = nl.encodeGenlmsg({
    familyId: K.GENL_ID_CTRL, cmd: K.CTRL_CMD_GETFAMILY, version: 1, seq: 71, flags: K.NLM_F_REQUEST,
  }, [nl.nlaString(K.CTRL_ATTR_FAMILY_NAME, 'nlctrl')]);
  const pending = sock.request(noAck, 71, { timeoutMs: 8000 });
  const started = Date.now();
  setTimeout(() => sock.close(), 50);
  await assert.rejects(pending, (err: unknown) => err instanceof NetlinkError && err.code === 'ESHUTDOWN');
  assert.ok(Date.now() - started < 2000);
  await assert.rejects(sock.request(noAck, 72), (err: unknown) => err instanceof NetlinkError);
});

test('multicast membership: join nlctrl "notify" and stop again', { timeout: 10000 }, async () => {
  const sock = NetlinkSocket.open();
  let family: nl.GenlFamily;
  try {
    family = await resolveGenlFamily(sock, 'nlctrl', 3000);
  } finally {
    sock.close();
  }
  const errors: Error[] = [];
  const watch = watchMulticast(family, 'notify', () => undefined, (e) => errors.push(e));
  await new Promise((r) => setTimeout(r, 300));
  const started = Date.now();
  watch.close();
  await watch.done;
  assert.ok(Date.now() - started < 2000);
  assert.deepEqual(errors, []);
  assert.throws(() => watchMulticast(family, 'no-such-group', () => undefined), NetlinkError);
});
