import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32c, crc32cOf, digestBytes, readDigest } from '../../src/iscsi/crc32c';
import { hex } from './fixtures';

// RFC 3720 appendix B.4 test vectors.
test('crc32c: RFC 3720 B.4 vectors', () => {
  assert.equal(crc32c(Buffer.alloc(32, 0)), 0x8a9136aa);
  assert.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  const asc = Buffer.from(Array.from({ length: 32 }, (_, i) => i));
  assert.equal(crc32c(asc), 0x46dd794e);
  assert.equal(crc32c(Buffer.from(asc).reverse()), 0x113fdb5c);
  const readPdu = hex(`
    01 c0 00 00  00 00 00 00  00 00 00 00  00 00 00 00
    14 00 00 00  00 00 04 00  00 00 00 14  00 00 00 18
    28 00 00 00  00 00 00 00  02 00 00 00  00 00 00 00`);
  assert.equal(crc32c(readPdu), 0xd9963a56);
});

test('crc32c: digest goes on the wire little-endian (B.4 lists aa 36 91 8a for zeros)', () => {
  assert.deepEqual(digestBytes(crc32c(Buffer.alloc(32))), hex('aa 36 91 8a'));
  assert.equal(readDigest(hex('aa 36 91 8a')), 0x8a9136aa);
});

test('crc32c: chaining equals concatenation', () => {
  const a = Buffer.from('hello, '), b = Buffer.from('world');
  assert.equal(crc32c(b, crc32c(a)), crc32c(Buffer.concat([a, b])));
  assert.equal(crc32cOf([a, Buffer.alloc(0), b]), crc32c(Buffer.concat([a, b])));
});
