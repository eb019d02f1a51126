import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChapInitiator, chapResponse, decodeChapBinary, encodeChapBinary } from '../../src/iscsi/chap';
import { ConfigError, LoginError, ProtocolError } from '../../src/errors';

const C = Buffer.from('0102030405060708090a0b0c0d0e0f10', 'hex');

test('chap: H(id || secret || challenge) for MD5, SHA-1, SHA-256, SHA3-256 (vectors from Python hashlib)', () => {
  assert.equal(chapResponse(5, 7, 'verysecretpw', C).toString('hex'), 'ad9938344058c9f048a2f8461185da2c');
  assert.equal(chapResponse(6, 7, 'verysecretpw', C).toString('hex'), '46b3f3ca17bbbd8a0c214686a43ab6bd0f97d1a4');
  assert.equal(chapResponse(7, 7, 'verysecretpw', C).toString('hex'), '84d7b9ffdd79078427012dee96e51533a385d1c146703e62ffa899ac4e4bab49');
  assert.equal(chapResponse(8, 7, 'verysecretpw', C).toString('hex'), '14a2f4545fc4e8d1b1d8ce242e7d25409855072994b23f6f4c26966442b241f2');
  assert.throws(() => chapResponse(9, 1, 's', C), RangeError);
});

test('chap: binary value encodings', () => {
  assert.deepEqual(decodeChapBinary('0x0a0B'), Buffer.from([10, 11]));
  assert.deepEqual(decodeChapBinary('0XABC'), Buffer.from([0x0a, 0xbc])); // odd digit count
  assert.deepEqual(decodeChapBinary('0bAQID'), Buffer.from([1, 2, 3]));
  assert.deepEqual(decodeChapBinary('0BAQI='), Buffer.from([1, 2]));
  for (const bad of ['', '0x', '0xzz', '1234', '0b', '0b!!', '0bA']) assert.throws(() => decodeChapBinary(bad), ProtocolError, bad);
  assert.equal(encodeChapBinary(Buffer.from([0, 255])), '0x00ff');
  const long = Buffer.alloc(1000, 0x5a); // > 255 bytes must be accepted
  assert.deepEqual(decodeChapBinary(encodeChapBinary(long)), long);
});

function seq(start: number) {
  let n = start;
  return (len: number) => Buffer.from(Array.from({ length: len }, () => n++ & 0xff));
}

test('chap: one-way exchange', () => {
  const c = new ChapInitiator({ user: 'alice', secret: 'verysecretpw' }, [7, 6, 5]);
  assert.equal(c.offer(), '7,6,5');
  assert.equal(c.mutual, false);
  const out = c.respond(new Map([['CHAP_A', '5'], ['CHAP_I', '7'], ['CHAP_C', '0x' + C.toString('hex')]]));
  assert.deepEqual(out, [['CHAP_N', 'alice'], ['CHAP_R', '0xad9938344058c9f048a2f8461185da2c']]);
  assert.equal(c.algorithm, 5);
});

test('chap: mutual exchange, verification, wrong secret, wrong name', () => {
  const mk = () => new ChapInitiator({ user: 'alice', secret: 'verysecretpw', targetUser: 'tgt', targetSecret: 'targetsecret1' }, [7], seq(40));
  const c = mk();
  const out = new Map(c.respond(new Map([['CHAP_A', '7'], ['CHAP_I', '1'], ['CHAP_C', '0b' + C.toString('base64')]])));
  assert.equal(out.get('CHAP_I'), '40');
  const ours = decodeChapBinary(out.get('CHAP_C')!);
  assert.equal(ours.length, 32); // digest length of SHA-256
  const good = chapResponse(7, 40, 'targetsecret1', ours);
  c.verifyTarget(new Map([['CHAP_N', 'tgt'], ['CHAP_R', encodeChapBinary(good)]]));
  const c2 = mk();
  c2.respond(new Map([['CHAP_A', '7'], ['CHAP_I', '1'], ['CHAP_C', '0x' + 'ee'.repeat(16)]]));
  assert.throws(() => c2.verifyTarget(new Map([['CHAP_N', 'tgt'], ['CHAP_R', encodeChapBinary(Buffer.alloc(32))]])), (e: unknown) => e instanceof LoginError && e.code === 'EAUTH');
  assert.throws(() => c2.verifyTarget(new Map([['CHAP_N', 'other'], ['CHAP_R', '0x00']])), /expected "tgt"/);
  assert.throws(() => c2.verifyTarget(new Map()), /did not answer/);
});

test('chap: reflected challenge refused (same connection and across connections)', () => {
  const a = new ChapInitiator({ user: 'u', secret: 's', targetUser: 't', targetSecret: 'ts' }, [5], seq(100));
  const out = new Map(a.respond(new Map([['CHAP_A', '5'], ['CHAP_I', '1'], ['CHAP_C', '0x' + 'aa'.repeat(16)]])));
  const ourChallenge = out.get('CHAP_C')!;
  // a second connection whose "target" replays the challenge we just sent
  const b = new ChapInitiator({ user: 'u', secret: 's' }, [5]);
  assert.throws(() => b.respond(new Map([['CHAP_A', '5'], ['CHAP_I', '2'], ['CHAP_C', ourChallenge]])), /reflection/);
  // our challenge never equals the target's
  const fixed = () => Buffer.alloc(16, 0xaa);
  let calls = 0;
  const c = new ChapInitiator({ user: 'u', secret: 's', targetUser: 't', targetSecret: 'ts' }, [5], (n) => (calls++ < 2 ? fixed().subarray(0, n) : Buffer.alloc(n, 0xbb)));
  const o = new Map(c.respond(new Map([['CHAP_A', '5'], ['CHAP_I', '1'], ['CHAP_C', '0x' + 'aa'.repeat(16)]])));
  assert.notEqual(o.get('CHAP_C'), '0x' + 'aa'.repeat(16));
});

test('chap: bad target input and bad config', () => {
  const c = new ChapInitiator({ user: 'u', secret: 's' }, [7, 5]);
  assert.throws(() => c.respond(new Map([['CHAP_A', '6'], ['CHAP_I', '1'], ['CHAP_C', '0x01']])), /did not offer/);
  assert.throws(() => c.respond(new Map([['CHAP_A', '5'], ['CHAP_I', '256'], ['CHAP_C', '0x01']])), ProtocolError);
  assert.throws(() => c.respond(new Map([['CHAP_A', '5'], ['CHAP_I', '1']])), ProtocolError);
  assert.throws(() => c.respond(new Map([['CHAP_A', '5'], ['CHAP_I', '1'], ['CHAP_C', 'xyz']])), ProtocolError);
  // long challenge (FreeBSD ctld) is fine
  const out = c.respond(new Map([['CHAP_A', '5'], ['CHAP_I', '1'], ['CHAP_C', '0x' + '12'.repeat(1024)]]));
  assert.equal(out.length, 2);
  assert.throws(() => new ChapInitiator({ user: 'u', secret: 's' }, []), ConfigError);
  assert.throws(() => new ChapInitiator({ user: 'u', secret: 's' }, [4]), ConfigError);
  assert.throws(() => new ChapInitiator({ user: '', secret: 's' }), ConfigError);
  assert.throws(() => new ChapInitiator({ user: 'u', secret: 's', targetUser: 't' }), ConfigError);
});
