// The kernel NBD netlink codec against hand-laid bytes. Fixtures follow the
// uapi headers and the kernel's own writers (ctrl_fill_info, netlink_ack,
// nbd_genl_status, nbd_connect_reply, nbd_mcast_index); they are written
// field by field here, not produced by the encoder. Host order is
// little-endian (x86-64, arm64).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import * as nl from '../../src/nbd/netlink/codec';
import * as K from '../../src/nbd/netlink/constants';
import { NetlinkError, NetlinkMessageError, errnoName } from '../../src/nbd/netlink/errors';
import {
  commandError, devicePath, parseDevice, readSysfsBackend, readSysfsPid,
} from '../../src/nbd/netlink/kernel';
import { ConfigError } from '../../src/errors';

/** Hex fields joined; whitespace is ignored so fields can be grouped. */
const bytes = (...fields: string[]): Buffer => Buffer.from(fields.join('').replace(/\s/g, ''), 'hex');

const NBD_FAMILY = 0x1c; // a family id the kernel could hand out (GENL_START_ALLOC and up)

// ---- requests ---------------------------------------------------------------

const GETFAMILY_NBD = bytes(
  '1c000000', // nlmsg_len 28
  '1000', // nlmsg_type GENL_ID_CTRL
  '0500', // nlmsg_flags NLM_F_REQUEST | NLM_F_ACK
  '01000000', // nlmsg_seq 1
  '00000000', // nlmsg_pid 0 (the kernel knows our port)
  '03 01 0000', // genlmsghdr: CTRL_CMD_GETFAMILY, version 1, reserved
  '0800 0200 6e626400', // CTRL_ATTR_FAMILY_NAME "nbd\0"
);

const CONNECT = bytes(
  '90000000', // nlmsg_len 144
  '1c00', // nlmsg_type: the nbd family
  '0500', // NLM_F_REQUEST | NLM_F_ACK
  '07000000', // seq 7
  '00000000', // pid
  '01 01 0000', // NBD_CMD_CONNECT, NBD_GENL_VERSION 1
  '0c00 0200 00000040 00000000', // NBD_ATTR_SIZE_BYTES u64 1 GiB
  '0c00 0300 00100000 00000000', // NBD_ATTR_BLOCK_SIZE_BYTES u64 4096
  '0c00 0400 1e000000 00000000', // NBD_ATTR_TIMEOUT u64 30
  '0c00 0800 78000000 00000000', // NBD_ATTR_DEAD_CONN_TIMEOUT u64 120
  '0c00 0500 6d010000 00000000', // NBD_ATTR_SERVER_FLAGS u64 0x16d (HAS_FLAGS|FLUSH|FUA|TRIM|WRITE_ZEROES|MULTI_CONN)
  '0c00 0600 02000000 00000000', // NBD_ATTR_CLIENT_FLAGS u64 NBD_CFLAG_DISCONNECT_ON_CLOSE
  '1800 0a00 6e61612e 36303031 34303566 30306463 616665 00', // NBD_ATTR_BACKEND_IDENTIFIER "naa.6001405f00dcafe\0"
  '1c00 0780', // NBD_ATTR_SOCKETS | NLA_F_NESTED, len 28
  '0c00 0180 0800 0100 05000000', //   NBD_SOCK_ITEM | NLA_F_NESTED { NBD_SOCK_FD u32 5 }
  '0c00 0180 0800 0100 09000000', //   NBD_SOCK_ITEM | NLA_F_NESTED { NBD_SOCK_FD u32 9 }
);

const CONNECT_CONFIG: nl.NbdConnectRequest = {
  sizeBytes: 1n << 30n,
  blockSize: 4096,
  timeoutSec: 30,
  deadConnTimeoutSec: 120,
  serverFlags: 0x16d,
  clientFlags: K.NBD_CFLAG_DISCONNECT_ON_CLOSE,
  backendId: 'naa.6001405f00dcafe',
  fds: [5, 9],
};

const RECONFIGURE = bytes(
  '50000000 1c00 0500 08000000 00000000', // len 80, nbd family, REQUEST|ACK, seq 8
  '03 01 0000', // NBD_CMD_RECONFIGURE
  '0800 0100 03000000', // NBD_ATTR_INDEX u32 3
  '0c00 0400 1e000000 00000000', // NBD_ATTR_TIMEOUT 30
  '0c00 0800 78000000 00000000', // NBD_ATTR_DEAD_CONN_TIMEOUT 120
  '0a00 0a00 6c756e2d30 00 0000', // NBD_ATTR_BACKEND_IDENTIFIER "lun-0\0", 2 bytes of padding
  '1000 0780 0c00 0180 0800 0100 0b000000', // SOCKETS { SOCK_ITEM { SOCK_FD 11 } }
);

// A resize alone: no sockets, the new size and the same block size, the backend repeated.
const RESIZE = bytes(
  '40000000 1c00 0500 0c000000 00000000', // len 64, nbd family, REQUEST|ACK, seq 12
  '03 01 0000', // NBD_CMD_RECONFIGURE
  '0800 0100 03000000', // NBD_ATTR_INDEX u32 3
  '0c00 0200 00000080 00000000', // NBD_ATTR_SIZE_BYTES 2 GiB
  '0c00 0300 00100000 00000000', // NBD_ATTR_BLOCK_SIZE_BYTES 4096
  '0a00 0a00 6c756e2d30 00 0000', // NBD_ATTR_BACKEND_IDENTIFIER "lun-0\0", 2 bytes of padding
);

const DISCONNECT = bytes(
  '1c000000 1c00 0500 09000000 00000000', // len 28, seq 9
  '02 01 0000', // NBD_CMD_DISCONNECT
  '0800 0100 03000000', // NBD_ATTR_INDEX 3
);

const STATUS_ALL = bytes('14000000 1c00 0500 0a000000 00000000', '05 01 0000'); // no attributes
const STATUS_ONE = bytes('1c000000 1c00 0500 0b000000 00000000', '05 01 0000', '0800 0100 03000000');

// ---- replies -------------------------------------------------------------------

/** ctrl_fill_info() for family "nbd" on 6.1: name, id, version, hdrsize, maxattr, 4 ops, one group. */
const GETFAMILY_NBD_REPLY = bytes(
  'b4000000', // len 180
  '1000 0000', // GENL_ID_CTRL, no flags
  '01000000 10250000', // seq 1, pid = our port id
  '01 02 0000', // CTRL_CMD_NEWFAMILY, controller version 2
  '0800 0200 6e626400', // CTRL_ATTR_FAMILY_NAME "nbd"
  '0600 0100 1c00 0000', // CTRL_ATTR_FAMILY_ID u16 0x1c, 2 bytes padding
  '0800 0300 01000000', // CTRL_ATTR_VERSION 1
  '0800 0400 00000000', // CTRL_ATTR_HDRSIZE 0
  '0800 0500 0a000000', // CTRL_ATTR_MAXATTR 10 (NBD_ATTR_BACKEND_IDENTIFIER)
  '5400 0600', // CTRL_ATTR_OPS, no NLA_F_NESTED (nla_nest_start_noflag), len 84
  '1400 0100 0800 0100 01000000 0800 0200 0a000000', //   op 1: CONNECT, DO|HASPOL
  '1400 0200 0800 0100 02000000 0800 0200 0a000000', //   op 2: DISCONNECT
  '1400 0300 0800 0100 03000000 0800 0200 0a000000', //   op 3: RECONFIGURE
  '1400 0400 0800 0100 05000000 0800 0200 0a000000', //   op 4: STATUS
  '2400 0700', // CTRL_ATTR_MCAST_GROUPS, len 36
  '2000 0100', //   group 1, len 32
  '0800 0200 0b000000', //     CTRL_ATTR_MCAST_GRP_ID 11
  '1100 0100 6e62645f 6d635f67 726f7570 00 000000', //     CTRL_ATTR_MCAST_GRP_NAME "nbd_mc_group\0" + 3 pad
);

/** netlink_ack() for a success with NETLINK_CAP_ACK: error 0 and only the request's header. */
const GETFAMILY_NBD_ACK = bytes(
  '24000000 0200 0001 01000000 10250000', // len 36, NLMSG_ERROR, NLM_F_CAPPED, seq 1
  '00000000', // error 0
  '1c000000 1000 0500 01000000 00000000', // the request's nlmsghdr
);

/** Captured on Linux 6.18: CTRL_CMD_GETFAMILY "nlctrl" reply, byte for byte. */
const GETFAMILY_NLCTRL_CAPTURED = bytes(
  '88000000 1000 0000 07000000 b4170000', // len 136, GENL_ID_CTRL, seq 7, port 0x17b4
  '01 02 0000', // CTRL_CMD_NEWFAMILY, version 2
  '0b00 0200 6e6c6374726c00 00', // FAMILY_NAME "nlctrl\0" + 1 pad
  '0600 0100 1000 0000', // FAMILY_ID 0x10
  '0800 0300 02000000', // VERSION 2
  '0800 0400 00000000', // HDRSIZE 0
  '0800 0500 00000000', // MAXATTR 0 (the controller has per-op policies)
  '2c00 0600', // OPS, len 44
  '1400 0100 0800 0100 03000000 0800 0200 0e000000', //   GETFAMILY: DO|DUMP|HASPOL
  '1400 0200 0800 0100 0a000000 0800 0200 0c000000', //   GETPOLICY: DUMP|HASPOL
  '1c00 0700', // MCAST_GROUPS, len 28
  '1800 0100 0800 0200 10000000 0b00 0100 6e6f74696679 00 00', //   group 1: id 16, "notify"
);

/** Captured on Linux 6.18: a GETFAMILY with a 1-byte FAMILY_ID, refused with ERANGE and an extended ack. */
const ERROR_EXTACK_CAPTURED = bytes(
  '78000000 0200 0003 63000000 0d250000', // len 120, NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, seq 99
  'deffffff', // error -34 (ERANGE)
  '1c000000 1000 0500 63000000 00000000', // the request's header only (capped)
  '2700 0100', // NLMSGERR_ATTR_MSG, len 39
  '41747472 69627574 65206661 696c6564 20706f6c 69637920 76616c69 64617469 6f6e 00 00', // "Attribute failed policy validation\0" + 1 pad
  '0800 0200 14000000', // NLMSGERR_ATTR_OFFS 20: the bad attribute's offset in the request
  '2400 0480', // NLMSGERR_ATTR_POLICY | NLA_F_NESTED, len 36 (we skip it)
  '0c00 0400 00000000 00000000', '0c00 0500 ffff0000 00000000', '0800 0100 03000000',
);

/** CONNECT of /dev/nbd3 refused with EBUSY, capped, no TLVs. */
const ERROR_EBUSY_CAPPED = bytes(
  '24000000 0200 0001 07000000 10250000', // len 36, NLMSG_ERROR, NLM_F_CAPPED, seq 7
  'f0ffffff', // error -16 (EBUSY)
  '98000000 1c00 0500 07000000 00000000', // the request's header
);

/** Not capped: the whole request comes back, then the TLVs. */
const ERROR_EINVAL_FULL_ECHO = bytes(
  '4c000000 0200 0002 09000000 10250000', // len 76, NLMSG_ERROR, NLM_F_ACK_TLVS only, seq 9
  'eaffffff', // error -22 (EINVAL)
  '1c000000 1c00 0500 09000000 00000000 02010000 0800 0100 03000000', // the DISCONNECT request, 28 bytes
  '1900 0100 6d757374 20737065 63696679 20626163 6b656e64 00 000000', // MSG "must specify backend\0" + 3 pad
);

/** A kernel before 4.12: no flags, the whole request echoed, no TLVs. */
const ERROR_EPERM_OLD = bytes(
  '28000000 0200 0000 0a000000 10250000', // len 40, NLMSG_ERROR, no flags, seq 10
  'ffffffff', // error -1 (EPERM)
  '14000000 1c00 0500 0a000000 00000000 05010000', // the STATUS request, 20 bytes
);

/** nbd_genl_status() with two devices: nbd0 connected, nbd3 not. */
const STATUS_REPLY = bytes(
  '40000000 1c00 0000 0a000000 10250000', // len 64, nbd family, seq 10
  '05 01 0000', // NBD_CMD_STATUS
  '2c00 0900', // NBD_ATTR_DEVICE_LIST (no NLA_F_NESTED), len 44
  '1400 0100 0800 0100 00000000 0500 0200 01 000000', //   NBD_DEVICE_ITEM { INDEX 0, CONNECTED u8 1 + 3 pad }
  '1400 0100 0800 0100 03000000 0500 0200 00 000000', //   NBD_DEVICE_ITEM { INDEX 3, CONNECTED 0 }
);

/** nbd_connect_reply(): the index the kernel used. */
const CONNECT_REPLY = bytes('1c000000 1c00 0000 07000000 10250000', '01 01 0000', '0800 0100 03000000');

/** nbd_mcast_index(): NBD_CMD_LINK_DEAD for nbd2, multicast (seq 0, pid 0). */
const LINK_DEAD = bytes('1c000000 1c00 0000 00000000 00000000', '04 01 0000', '0800 0100 02000000');

const one = (b: Buffer): nl.NlMessage => {
  const ms = nl.parseMessages(b);
  assert.equal(ms.length, 1);
  return ms[0];
};

// ---- encoding ----------------------------------------------------------------------

test('constants match the uapi headers', () => {
  assert.deepEqual(
    [K.NLMSG_ERROR, K.NLMSG_DONE, K.NLM_F_REQUEST, K.NLM_F_ACK, K.NLM_F_CAPPED, K.NLM_F_ACK_TLVS],
    [2, 3, 1, 4, 0x100, 0x200]);
  assert.deepEqual([K.NLMSGERR_ATTR_MSG, K.NLMSGERR_ATTR_OFFS, K.GENL_ID_CTRL, K.CTRL_CMD_GETFAMILY], [1, 2, 0x10, 3]);
  assert.deepEqual([K.CTRL_ATTR_FAMILY_ID, K.CTRL_ATTR_FAMILY_NAME, K.CTRL_ATTR_VERSION, K.CTRL_ATTR_MCAST_GROUPS,
    K.CTRL_ATTR_MCAST_GRP_NAME, K.CTRL_ATTR_MCAST_GRP_ID], [1, 2, 3, 7, 1, 2]);
  assert.deepEqual([K.NBD_CMD_CONNECT, K.NBD_CMD_DISCONNECT, K.NBD_CMD_RECONFIGURE, K.NBD_CMD_LINK_DEAD,
    K.NBD_CMD_STATUS], [1, 2, 3, 4, 5]);
  assert.deepEqual([K.NBD_ATTR_INDEX, K.NBD_ATTR_SIZE_BYTES, K.NBD_ATTR_BLOCK_SIZE_BYTES, K.NBD_ATTR_TIMEOUT,
    K.NBD_ATTR_SERVER_FLAGS, K.NBD_ATTR_CLIENT_FLAGS, K.NBD_ATTR_SOCKETS, K.NBD_ATTR_DEAD_CONN_TIMEOUT,
    K.NBD_ATTR_DEVICE_LIST, K.NBD_ATTR_BACKEND_IDENTIFIER], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual([K.NBD_SOCK_ITEM, K.NBD_SOCK_FD, K.NBD_DEVICE_ITEM, K.NBD_DEVICE_INDEX, K.NBD_DEVICE_CONNECTED,
    K.NBD_CFLAG_DESTROY_ON_DISCONNECT, K.NBD_CFLAG_DISCONNECT_ON_CLOSE, K.NBD_GENL_VERSION], [1, 1, 1, 1, 2, 1, 2, 1]);
  assert.deepEqual([K.SOL_NETLINK, K.NETLINK_ADD_MEMBERSHIP, K.NETLINK_CAP_ACK, K.NETLINK_EXT_ACK, K.NLA_F_NESTED],
    [270, 1, 10, 11, 0x8000]);
  assert.equal(K.NBD_GENL_MCAST_GROUP_NAME, 'nbd_mc_group');
});

test('attributes: header, payload, padding to 4, NLA_F_NESTED', () => {
  assert.deepEqual(nl.nlaU8(2, 1), bytes('0500 0200 01 000000'));
  assert.deepEqual(nl.nlaU16(1, 0x1c), bytes('0600 0100 1c00 0000'));
  assert.deepEqual(nl.nlaU32(1, 0xdeadbeef), bytes('0800 0100 efbeadde'));
  assert.deepEqual(nl.nlaU64(2, 0x0102030405060708n), bytes('0c00 0200 0807060504030201'));
  assert.deepEqual(nl.nlaString(2, 'nbd'), bytes('0800 0200 6e626400'));
  assert.deepEqual(nl.nlaString(2, ''), bytes('0500 0200 00 000000'));
  assert.deepEqual(nl.nlaNested(7, [nl.nlaU32(1, 5)]), bytes('0c00 0780 0800 0100 05000000'));
  assert.deepEqual(nl.nlaNested(7, [nl.nlaU32(1, 5)], false), bytes('0c00 0700 0800 0100 05000000'));
  assert.deepEqual(nl.encodeNlmsg({ type: 3, flags: 2, seq: 1, pid: 4 }, Buffer.from([9])),
    bytes('11000000 0300 0200 01000000 04000000 09 000000'));
});

test('CTRL_CMD_GETFAMILY request', () => {
  assert.deepEqual(nl.buildGetFamily('nbd', 1), GETFAMILY_NBD);
  assert.throws(() => nl.buildGetFamily('', 1), RangeError);
  assert.throws(() => nl.buildGetFamily('x'.repeat(16), 1), RangeError);
});

test('NBD_CMD_CONNECT: 1 GiB, 4096-byte blocks, timeouts 30/120, flags, backend, two fds', () => {
  assert.deepEqual(nl.buildNbdConnect(NBD_FAMILY, 7, CONNECT_CONFIG), CONNECT);
  // With an index, NBD_ATTR_INDEX comes first and the length grows by 8.
  const withIndex = nl.buildNbdConnect(NBD_FAMILY, 7, { ...CONNECT_CONFIG, index: 3 });
  assert.deepEqual(withIndex, Buffer.concat([
    bytes('98000000'), CONNECT.subarray(4, 20), bytes('0800 0100 03000000'), CONNECT.subarray(20),
  ]));
});

test('NBD_CMD_RECONFIGURE, DISCONNECT, STATUS requests', () => {
  assert.deepEqual(nl.buildNbdReconfigure(NBD_FAMILY, 8, {
    index: 3, fds: [11], backendId: 'lun-0', timeoutSec: 30, deadConnTimeoutSec: 120,
  }), RECONFIGURE);
  assert.deepEqual(nl.buildNbdReconfigure(NBD_FAMILY, 12, { index: 3, fds: [], sizeBytes: 2n << 30n, blockSize: 4096, backendId: 'lun-0' }), RESIZE);
  assert.throws(() => nl.buildNbdReconfigure(NBD_FAMILY, 12, { index: 3, fds: [] }), ConfigError, 'neither sockets nor a size');
  assert.deepEqual(nl.buildNbdDisconnect(NBD_FAMILY, 9, 3), DISCONNECT);
  assert.deepEqual(nl.buildNbdStatus(NBD_FAMILY, 10), STATUS_ALL);
  assert.deepEqual(nl.buildNbdStatus(NBD_FAMILY, 11, 3), STATUS_ONE);
});

test('builders refuse what the kernel would misread', () => {
  const bad: Array<Partial<nl.NbdConnectRequest>> = [
    { fds: [] }, { fds: [-1] }, { fds: [1.5] }, { index: -1 }, { index: 2 ** 31 }, { sizeBytes: -1n },
    { sizeBytes: 1n << 64n }, { blockSize: -512 }, { timeoutSec: 0.5 }, { backendId: 'a\0b' },
  ];
  for (const b of bad) {
    assert.throws(() => nl.buildNbdConnect(NBD_FAMILY, 1, { ...CONNECT_CONFIG, ...b }), ConfigError, JSON.stringify(
      b, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)));
  }
  assert.throws(() => nl.buildNbdDisconnect(NBD_FAMILY, 1, -3), ConfigError);
});

// ---- decoding ------------------------------------------------------------------------

test('several messages in one buffer: GETFAMILY reply then its ACK', () => {
  const msgs = nl.parseMessages(Buffer.concat([GETFAMILY_NBD_REPLY, GETFAMILY_NBD_ACK]));
  assert.equal(msgs.length, 2);
  assert.deepEqual(msgs.map((m) => [m.type, m.flags, m.seq, m.pid]), [[0x10, 0, 1, 0x2510], [2, 0x100, 1, 0x2510]]);
  assert.deepEqual(msgs[0].raw, GETFAMILY_NBD_REPLY);
  const reply = nl.collectReply(msgs, 1);
  assert.equal(reply.replies.length, 1);
  assert.deepEqual(reply.ack, { errno: 0, seq: 1, request: { type: 0x10, flags: 5, seq: 1, pid: 0 } });
  assert.deepEqual(nl.parseGetFamilyReply(reply.replies[0]), {
    id: 0x1c, name: 'nbd', version: 1, hdrSize: 0, maxAttr: 10, mcastGroups: [{ name: 'nbd_mc_group', id: 11 }],
  });
  // Messages of another request are skipped; no ACK for the seq is an error.
  assert.equal(nl.collectReply([...msgs, one(CONNECT_REPLY)], 1).replies.length, 1);
  assert.throws(() => nl.collectReply(msgs, 2), NetlinkMessageError);
});

test('GETFAMILY reply captured from the kernel (nlctrl)', () => {
  assert.deepEqual(nl.parseGetFamilyReply(one(GETFAMILY_NLCTRL_CAPTURED)), {
    id: 0x10, name: 'nlctrl', version: 2, hdrSize: 0, maxAttr: 0, mcastGroups: [{ name: 'notify', id: 16 }],
  });
  assert.throws(() => nl.parseGetFamilyReply(one(CONNECT_REPLY)), NetlinkMessageError);
});

test('NLMSG_ERROR: extended ack (capped), capped without TLVs, full echo, pre-4.12 kernel', () => {
  assert.deepEqual(nl.parseAck(one(ERROR_EXTACK_CAPTURED)), {
    errno: 34, seq: 99, request: { type: 0x10, flags: 5, seq: 99, pid: 0 },
    extAck: 'Attribute failed policy validation', badAttrOffset: 20,
  });
  assert.deepEqual(nl.parseAck(one(ERROR_EBUSY_CAPPED)), {
    errno: 16, seq: 7, request: { type: 0x1c, flags: 5, seq: 7, pid: 0 },
  });
  assert.deepEqual(nl.parseAck(one(ERROR_EINVAL_FULL_ECHO)), {
    errno: 22, seq: 9, request: { type: 0x1c, flags: 5, seq: 9, pid: 0 }, extAck: 'must specify backend',
  });
  assert.deepEqual(nl.parseAck(one(ERROR_EPERM_OLD)), {
    errno: 1, seq: 10, request: { type: 0x1c, flags: 5, seq: 10, pid: 0 },
  });
  assert.throws(() => nl.parseAck(one(CONNECT_REPLY)), NetlinkMessageError);
  // A positive error field is not something the kernel sends.
  const positive = Buffer.from(ERROR_EBUSY_CAPPED);
  positive.writeInt32LE(16, 16);
  assert.throws(() => nl.parseAck(one(positive)), /not -errno/);
});

test('NBD replies: CONNECT index, STATUS with two devices, LINK_DEAD', () => {
  assert.equal(nl.parseNbdConnectReply(one(CONNECT_REPLY), NBD_FAMILY), 3);
  assert.throws(() => nl.parseNbdConnectReply(one(CONNECT_REPLY), 0x1d), NetlinkMessageError);
  assert.deepEqual(nl.parseNbdStatusReply(one(STATUS_REPLY), NBD_FAMILY),
    [{ index: 0, connected: true }, { index: 3, connected: false }]);
  // An unknown index: the kernel sends an empty DEVICE_LIST.
  assert.deepEqual(nl.parseNbdStatusReply(one(bytes('18000000 1c00 0000 0a000000 00000000 05010000 0400 0900')),
    NBD_FAMILY), []);
  assert.equal(nl.parseNbdLinkDead(one(LINK_DEAD), NBD_FAMILY), 2);
  assert.equal(nl.parseNbdLinkDead(one(LINK_DEAD), 0x1d), undefined);
  assert.equal(nl.parseNbdLinkDead(one(CONNECT_REPLY), NBD_FAMILY), undefined);
});

test('requests decode back to their attributes (nested SOCKETS list)', () => {
  const g = nl.parseGenl(one(CONNECT));
  assert.equal(g.cmd, K.NBD_CMD_CONNECT);
  const t = nl.AttrTable.parse(g.attrs, 'CONNECT');
  assert.equal(t.u64(K.NBD_ATTR_SIZE_BYTES), 1n << 30n);
  assert.equal(t.str(K.NBD_ATTR_BACKEND_IDENTIFIER), 'naa.6001405f00dcafe');
  const socks = t.nested(K.NBD_ATTR_SOCKETS, 'SOCKETS');
  assert.ok(socks);
  assert.deepEqual(socks.list.map((i) => [i.type, i.nested, nl.AttrTable.parse(i.data, 'item').u32(K.NBD_SOCK_FD)]),
    [[1, true, 5], [1, true, 9]]);
  assert.throws(() => t.u32(K.NBD_ATTR_SIZE_BYTES), /is 8 bytes, a u32 is 4/);
});

// Every decoder a fixture goes through; each must either return or throw NetlinkMessageError.
const DECODERS: Array<[string, Buffer, (m: nl.NlMessage) => unknown]> = [
  ['GETFAMILY reply', GETFAMILY_NBD_REPLY, nl.parseGetFamilyReply],
  ['captured nlctrl reply', GETFAMILY_NLCTRL_CAPTURED, nl.parseGetFamilyReply],
  ['ACK', GETFAMILY_NBD_ACK, nl.parseAck],
  ['ext ack', ERROR_EXTACK_CAPTURED, nl.parseAck],
  ['capped error', ERROR_EBUSY_CAPPED, nl.parseAck],
  ['full echo', ERROR_EINVAL_FULL_ECHO, nl.parseAck],
  ['old error', ERROR_EPERM_OLD, nl.parseAck],
  ['STATUS reply', STATUS_REPLY, (m) => nl.parseNbdStatusReply(m, NBD_FAMILY)],
  ['CONNECT reply', CONNECT_REPLY, (m) => nl.parseNbdConnectReply(m, NBD_FAMILY)],
  ['LINK_DEAD', LINK_DEAD, (m) => nl.parseNbdLinkDead(m, NBD_FAMILY)],
  ['CONNECT request', CONNECT, (m) => {
    const t = nl.AttrTable.parse(nl.parseGenl(m).attrs, 'CONNECT');
    return t.nested(K.NBD_ATTR_SOCKETS, 'SOCKETS')?.list.map((i) => nl.AttrTable.parse(i.data, 'item').u32(1));
  }],
];

function onlyOurErrors(fn: () => unknown): 'ok' | 'rejected' {
  try {
    fn();
    return 'ok';
  } catch (err) {
    if (!(err instanceof NetlinkMessageError)) throw err;
    assert.equal(err.code, 'EPROTO');
    assert.equal(err.errno, 'EBADMSG');
    return 'rejected';
  }
}

test('every truncation of a valid message is rejected cleanly', () => {
  for (const [name, buf, decode] of DECODERS) {
    assert.doesNotThrow(() => decode(one(buf)), name);
    assert.deepEqual(nl.parseMessages(buf.subarray(0, 0)), []);
    let rejected = 0;
    for (let k = 1; k < buf.length; k++) {
      // Cut short on the wire: nlmsg_len now points past the end.
      assert.throws(() => nl.parseMessages(buf.subarray(0, k)), NetlinkMessageError, `${name} cut at ${k}`);
      // Cut short with a consistent nlmsg_len: the inner lengths must catch it.
      if (k >= 16) {
        const cut = Buffer.from(buf.subarray(0, k));
        cut.writeUInt32LE(k, 0);
        if (onlyOurErrors(() => nl.parseMessages(cut).map(decode)) === 'rejected') rejected++;
      }
    }
    assert.ok(rejected > 0, `${name}: some inner truncation is rejected`);
  }
});

test('random bytes and mutated fixtures never escape as anything but NetlinkMessageError', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (arr) => {
    const b = Buffer.from(arr);
    onlyOurErrors(() => nl.parseMessages(b));
    for (const [, , decode] of DECODERS) {
      onlyOurErrors(() => decode({ type: 0x1c, flags: 0, seq: 0, pid: 0, payload: b, raw: b }));
      onlyOurErrors(() => decode({ type: 2, flags: 0x300, seq: 0, pid: 0, payload: b, raw: b }));
      onlyOurErrors(() => decode({ type: 0x10, flags: 0, seq: 0, pid: 0, payload: b, raw: b }));
    }
  }), { numRuns: 300 });
  fc.assert(fc.property(fc.nat({ max: DECODERS.length - 1 }), fc.nat(), fc.integer({ min: 0, max: 255 }),
    (which, pos, value) => {
      const [, buf, decode] = DECODERS[which];
      const b = Buffer.from(buf);
      b[pos % b.length] = value;
      onlyOurErrors(() => nl.parseMessages(b).map(decode));
    }), { numRuns: 2000 });
});

// ---- errors for people ---------------------------------------------------------------

test('errno names come from os.constants', () => {
  assert.equal(errnoName(16), 'EBUSY');
  assert.equal(errnoName(1), 'EPERM');
  assert.equal(errnoName(11), 'EAGAIN');
  assert.equal(errnoName(95), 'EOPNOTSUPP');
  assert.equal(errnoName(9999), 'E9999');
});

test('kernel refusals become messages a person can act on', () => {
  const busy = commandError(K.NBD_CMD_CONNECT, nl.parseAck(one(ERROR_EBUSY_CAPPED)), 3);
  assert.ok(busy instanceof NetlinkError);
  assert.equal(busy.message, '/dev/nbd3 is in use already; pick another --device or leave it out');
  assert.deepEqual([busy.code, busy.errno, busy.command], ['ECONFIG', 'EBUSY', 'NBD_CMD_CONNECT']);

  const busyNoIndex = commandError(K.NBD_CMD_CONNECT, nl.parseAck(one(ERROR_EBUSY_CAPPED)));
  assert.equal(busyNoIndex.message, 'netlink NBD_CMD_CONNECT failed: EBUSY');

  const perm = commandError(K.NBD_CMD_CONNECT, nl.parseAck(one(ERROR_EPERM_OLD)));
  assert.match(perm.message, /needs root \(CAP_SYS_ADMIN\) to configure NBD devices/);
  assert.equal(perm.code, 'EPERM');

  const backend = commandError(K.NBD_CMD_RECONFIGURE, nl.parseAck(one(ERROR_EINVAL_FULL_ECHO)), 3);
  assert.match(backend.message, /cannot reattach \/dev\/nbd3: its backend identifier differs/);
  assert.equal(backend.extAck, 'must specify backend');

  const einval = commandError(K.NBD_CMD_RECONFIGURE, { errno: 22, seq: 1, request: { type: 0, flags: 0, seq: 1, pid: 0 } }, 3);
  assert.match(einval.message, /cannot reattach \/dev\/nbd3: the kernel refused \(EINVAL\).*backend identifier/);
  assert.equal(einval.extAck, undefined);

  const other = commandError(K.NBD_CMD_STATUS, nl.parseAck(one(ERROR_EXTACK_CAPTURED)));
  assert.equal(other.message,
    'netlink NBD_CMD_STATUS failed: ERANGE (Attribute failed policy validation; at request offset 20)');
  assert.equal(other.errno, 'ERANGE');
});

// ---- devices and sysfs ----------------------------------------------------------------

test('device names', () => {
  assert.equal(devicePath(3), '/dev/nbd3');
  for (const [s, n] of [['/dev/nbd3', 3], ['nbd3', 3], ['3', 3], ['0', 0], ['nbd15', 15]] as const) {
    assert.equal(parseDevice(s), n);
  }
  for (const s of ['', 'nbd', '/dev/nbd', '/dev/sda', 'nbd-1', 'nbd03', '/dev/3', '3a', 'nbd99999999999']) {
    assert.throws(() => parseDevice(s), ConfigError, s);
  }
});

test('sysfs backend and pid', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-sysfs-'));
  try {
    fs.mkdirSync(path.join(root, 'block', 'nbd2'), { recursive: true });
    fs.writeFileSync(path.join(root, 'block', 'nbd2', 'backend'), 'naa.6001405f00dcafe\n');
    fs.writeFileSync(path.join(root, 'block', 'nbd2', 'pid'), '4242\n');
    fs.mkdirSync(path.join(root, 'block', 'nbd5'), { recursive: true });
    fs.writeFileSync(path.join(root, 'block', 'nbd5', 'backend'), '\n'); // connected without an identifier
    assert.equal(readSysfsBackend(2, root), 'naa.6001405f00dcafe');
    assert.equal(readSysfsPid(2, root), 4242);
    assert.equal(readSysfsBackend(5, root), '');
    assert.equal(readSysfsPid(5, root), undefined);
    assert.equal(readSysfsBackend(7, root), undefined);
    assert.equal(readSysfsPid(7, root), undefined);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});
