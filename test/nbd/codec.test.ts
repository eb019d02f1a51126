import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as codec from '../../src/nbd/codec';
import * as C from '../../src/nbd/constants';
import { hex } from './util';

const COOKIE = 0x0102030405060708n;

test('greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES', () => {
  assert.deepEqual(codec.encodeGreeting(), hex('4e42444d41474943 49484156454f5054 0003'));
});

test('option header parse', () => {
  const h = codec.parseOptionHeader(hex('49484156454f5054 00000007 0000000a'));
  assert.deepEqual(h, { magicOk: true, option: 7, length: 10 });
  assert.equal(codec.parseOptionHeader(hex('49484156454f5055 00000007 0000000a')).magicOk, false);
  assert.throws(() => codec.parseOptionHeader(hex('49484156454f5054 00000007')));
});

test('option replies: ACK, SERVER, INFO_*, META_CONTEXT, errors', () => {
  assert.deepEqual(codec.encodeAck(7), hex('0003e889045565a9 00000007 00000001 00000000'));
  assert.deepEqual(codec.encodeRepServer(3, 'ab'), hex('0003e889045565a9 00000003 00000002 00000006 00000002 6162'));
  assert.deepEqual(codec.encodeRepServer(3, 'ab', 'x'), hex('0003e889045565a9 00000003 00000002 00000007 00000002 6162 78'));
  assert.deepEqual(codec.encodeInfoExport(7, 0x100000n, 0x0d6d), hex('0003e889045565a9 00000007 00000003 0000000c 0000 0000000000100000 0d6d'));
  assert.deepEqual(codec.encodeInfoString(6, C.INFO_NAME, 'd'), hex('0003e889045565a9 00000006 00000003 00000003 0001 64'));
  assert.deepEqual(codec.encodeInfoString(6, C.INFO_DESCRIPTION, 'd'), hex('0003e889045565a9 00000006 00000003 00000003 0002 64'));
  assert.deepEqual(codec.encodeInfoBlockSize(7, 512, 4096, 32 << 20), hex('0003e889045565a9 00000007 00000003 0000000e 0003 00000200 00001000 02000000'));
  assert.deepEqual(codec.encodeMetaContext(10, 1, 'base:allocation'),
    Buffer.concat([hex('0003e889045565a9 0000000a 00000004 00000013 00000001'), Buffer.from('base:allocation')]));
  assert.deepEqual(codec.encodeOptionError(99, C.REP_ERR_UNSUP, 'x'), hex('0003e889045565a9 00000063 80000001 00000001 78'));
  assert.deepEqual(codec.encodeOptionError(5, C.REP_ERR_POLICY), hex('0003e889045565a9 00000005 80000002 00000000'));
});

test('error messages are capped and never split a UTF-8 character', () => {
  const r = codec.encodeOptionError(1, C.REP_ERR_INVALID, 'é'.repeat(1000));
  const len = r.readUInt32BE(16);
  assert.ok(len <= codec.MAX_ERROR_MESSAGE);
  assert.equal(r.subarray(20).toString('utf8'), 'é'.repeat(len / 2));
  assert.equal(codec.utf8Truncated('aé', 2).toString(), 'a');
});

test('EXPORT_NAME reply with and without zeroes', () => {
  assert.deepEqual(codec.encodeExportNameReply(0x200n, 0x0003, true), hex('0000000000000200 0003'));
  const z = codec.encodeExportNameReply(0x200n, 0x0003, false);
  assert.equal(z.length, 134);
  assert.deepEqual(z.subarray(0, 10), hex('0000000000000200 0003'));
  assert.ok(z.subarray(10).every((x) => x === 0));
});

test('parseInfoRequest', () => {
  assert.deepEqual(codec.parseInfoRequest(hex('00000005 6469736b31 0002 0001 0003')), { ok: true, value: { name: 'disk1', infos: [1, 3] } });
  assert.deepEqual(codec.parseInfoRequest(hex('00000000 0000')), { ok: true, value: { name: '', infos: [] } });
  assert.equal(codec.parseInfoRequest(hex('00000009 6469736b31 0000')).ok, false); // name longer than data
  assert.equal(codec.parseInfoRequest(hex('00000005 6469736b31 0002 0001')).ok, false); // count mismatch
  assert.equal(codec.parseInfoRequest(hex('00000005 6469736b31 0000 00')).ok, false); // trailing byte
  assert.equal(codec.parseInfoRequest(hex('00000001 00 0000')).ok, false); // NUL in name
  assert.equal(codec.parseInfoRequest(hex('0000')).ok, false);
});

test('parseMetaContextRequest', () => {
  const d = Buffer.concat([hex('00000000 00000001 0000000f'), Buffer.from('base:allocation')]);
  assert.deepEqual(codec.parseMetaContextRequest(d), { ok: true, value: { name: '', queries: ['base:allocation'] } });
  assert.deepEqual(codec.parseMetaContextRequest(hex('00000001 61 00000000')), { ok: true, value: { name: 'a', queries: [] } });
  assert.equal(codec.parseMetaContextRequest(hex('00000000 00000001 00000010 61')).ok, false); // query overruns
  assert.equal(codec.parseMetaContextRequest(hex('00000000 00000002 00000001 61')).ok, false); // missing query
  assert.equal(codec.parseMetaContextRequest(hex('00000000 00000000 00')).ok, false); // trailing
  assert.equal(codec.parseMetaContextRequest(hex('00000000 ffffffff')).ok, false); // absurd count
});

test('request header parse', () => {
  const h = codec.parseRequestHeader(hex('25609513 0001 0001 0102030405060708 0000000000001000 00000200'));
  assert.deepEqual(h, { flags: 1, type: 1, cookie: COOKIE, offset: 0x1000n, length: 0x200 });
  assert.equal(codec.parseRequestHeader(hex('25609514 0001 0001 0102030405060708 0000000000001000 00000200')), null);
  const big = codec.parseRequestHeader(hex('25609513 0000 0000 ffffffffffffffff ffffffffffffffff ffffffff'));
  assert.deepEqual(big, { flags: 0, type: 0, cookie: 0xffffffffffffffffn, offset: 0xffffffffffffffffn, length: 0xffffffff });
  assert.throws(() => codec.parseRequestHeader(Buffer.alloc(27)));
});

test('simple reply header into a reusable buffer', () => {
  assert.deepEqual(codec.encodeSimpleReply(22, COOKIE), hex('67446698 00000016 0102030405060708'));
  const b = Buffer.alloc(20, 0xee);
  assert.equal(codec.writeSimpleReplyHeader(b, 2, 0, COOKIE), 18);
  assert.deepEqual(b, hex('eeee 67446698 00000000 0102030405060708 eeee'));
});

test('structured chunks: NONE, OFFSET_DATA, OFFSET_HOLE, BLOCK_STATUS, ERROR, ERROR_OFFSET', () => {
  assert.deepEqual(codec.encodeStructuredNone(COOKIE), hex('668e33ef 0001 0000 0102030405060708 00000000'));
  const b = Buffer.alloc(codec.OFFSET_DATA_PREFIX + 3);
  Buffer.from('abc').copy(b, codec.OFFSET_DATA_PREFIX);
  assert.equal(codec.writeOffsetDataHeader(b, 0, 1, COOKIE, 0x200n, 3), codec.OFFSET_DATA_PREFIX);
  assert.deepEqual(b, hex('668e33ef 0001 0001 0102030405060708 0000000b 0000000000000200 616263'));
  assert.deepEqual(codec.encodeOffsetHole(COOKIE, 0, 0x200n, 0x1000), hex('668e33ef 0000 0002 0102030405060708 0000000c 0000000000000200 00001000'));
  assert.deepEqual(codec.encodeBlockStatus(COOKIE, 1, 1, [{ length: 0x1000, flags: 0 }, { length: 0x2000, flags: 3 }]),
    hex('668e33ef 0001 0005 0102030405060708 00000014 00000001 00001000 00000000 00002000 00000003'));
  assert.deepEqual(codec.encodeStructuredError(COOKIE, 1, 22, 'bad'), hex('668e33ef 0001 8001 0102030405060708 00000009 00000016 0003 626164'));
  assert.deepEqual(codec.encodeStructuredErrorOffset(COOKIE, 1, 5, '', 0x10n), hex('668e33ef 0001 8002 0102030405060708 0000000e 00000005 0000 0000000000000010'));
});
