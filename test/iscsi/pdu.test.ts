import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  decodeBhs, decodeFrame, decodeLun, decodePdu, encodeBhs, encodeLun, encodePdu, encodePduVectors, lunToBuffer,
  makeIsid, peekBhs, Pdu, randomIsid, ScsiCommandPdu, splitSenseData,
} from '../../src/iscsi/pdu';
import { crc32c, digestBytes, DigestError } from '../../src/iscsi/crc32c';
import { IscsiNbdError, ProtocolError } from '../../src/errors';
import { FIXTURES, hex, withDigests } from './fixtures';

for (const f of FIXTURES) {
  test(`pdu: decode fixture: ${f.name}`, () => {
    assert.deepEqual(decodePdu(f.bytes), f.pdu);
  });
  test(`pdu: encode reproduces fixture: ${f.name}`, () => {
    assert.deepEqual(encodePdu(f.pdu), f.bytes);
  });
  test(`pdu: digests on, decode and encode: ${f.name}`, () => {
    for (const [hd, dd] of [[true, false], [false, true], [true, true]] as const) {
      const wire = withDigests(f.bytes, f.headerLength, f.dataLength, hd, dd);
      assert.deepEqual(decodePdu(wire, { headerDigest: hd, dataDigest: dd }), f.pdu);
      assert.deepEqual(encodePdu(f.pdu, { headerDigest: hd, dataDigest: dd }), wire);
    }
  });
}

test('pdu: decoded payloads are views of the input, not copies', () => {
  const f = FIXTURES.find((x) => x.name.startsWith('Data-In with status'))!;
  const buf = Buffer.from(f.bytes);
  const pdu = decodePdu(buf);
  assert.equal(pdu.opcode, 0x25);
  if (pdu.opcode !== 0x25) return;
  assert.equal(pdu.data.buffer, buf.buffer);
  buf[48] = 0xee;
  assert.equal(pdu.data[0], 0xee);
});

test('pdu: encodePduVectors reuses the header buffer and passes data through', () => {
  const data = Buffer.alloc(1001, 7);
  const header = Buffer.alloc(48, 0xaa);
  const pdu: Pdu = {
    opcode: 0x05, final: true, lun: 0n, itt: 1, ttt: 2, expStatSN: 3, dataSN: 0, bufferOffset: 0, data,
  };
  const v = encodePduVectors(pdu, { headerDigest: true, dataDigest: true }, header);
  assert.equal(v.length, 5);
  assert.equal(v[0].buffer, header.buffer);
  assert.equal(v[2], data); // same object, no copy
  assert.equal(v[3].length, 3); // padding
  assert.deepEqual(v[1], digestBytes(crc32c(v[0])));
  assert.deepEqual(v[4], digestBytes(crc32c(Buffer.concat([data, Buffer.alloc(3)]))));
  // no data: only the header
  const nop: Pdu = { opcode: 0x00, immediate: true, lun: 0n, itt: 1, ttt: 0xffffffff, cmdSN: 1, expStatSN: 1, data: Buffer.alloc(0) };
  assert.equal(encodePduVectors(nop, { headerDigest: false, dataDigest: true }, header).length, 1);
});

test('pdu: SCSI Command with AHS allocates a bigger header when needed', () => {
  const f = FIXTURES.find((x) => x.name.startsWith('SCSI Command 32-byte'))!;
  const v = encodePduVectors(f.pdu, { headerDigest: false, dataDigest: false }, Buffer.alloc(48));
  assert.equal(v[0].length, f.headerLength);
  assert.deepEqual(Buffer.concat(v), f.bytes);
});

test('pdu: encodeBhs zeroes a dirty reused buffer', () => {
  const f = FIXTURES[0];
  const out = Buffer.alloc(48, 0xff);
  encodeBhs(f.pdu, out);
  assert.deepEqual(out, f.bytes.subarray(0, 48));
});

test('pdu: decodeBhs and peekBhs read the header alone', () => {
  const f = FIXTURES.find((x) => x.name.startsWith('R2T'))!;
  assert.deepEqual(decodeBhs(f.bytes.subarray(0, 48)), f.pdu);
  const p = peekBhs(FIXTURES[0].bytes);
  assert.deepEqual(p, { opcode: 0, immediate: true, totalAhsLength: 0, dataSegmentLength: 4, itt: 10 });
});

test('pdu: CDB shorter than 16 is zero-padded; 16-byte CDB needs no AHS', () => {
  const pdu: ScsiCommandPdu = {
    opcode: 0x01, immediate: false, final: true, read: false, write: false, attr: 1, lun: 0n, itt: 1,
    expectedDataTransferLength: 0, cmdSN: 1, expStatSN: 1, cdb: hex('00 00 00 00 00 00'), data: Buffer.alloc(0),
  };
  const b = encodePdu(pdu);
  assert.equal(b.length, 48);
  assert.equal(b[4], 0);
  const d = decodePdu(b) as ScsiCommandPdu;
  assert.equal(d.cdb.length, 16);
  const cdb16 = Buffer.alloc(16, 0x9e);
  const d16 = decodePdu(encodePdu({ ...pdu, cdb: cdb16 })) as ScsiCommandPdu;
  assert.deepEqual(d16.cdb, cdb16);
  const cdb17 = Buffer.alloc(17, 0x9e);
  const b17 = encodePdu({ ...pdu, cdb: cdb17 });
  assert.equal(b17[4], 2); // AHSLength 2 + type + rsvd + 1 byte -> 8 bytes
  assert.deepEqual((decodePdu(b17) as ScsiCommandPdu).cdb, cdb17);
});

test('pdu: sequence numbers wrap as uint32 on encode', () => {
  const pdu: Pdu = { opcode: 0x00, immediate: false, lun: 0n, itt: -1, ttt: 2 ** 32 + 5, cmdSN: 0, expStatSN: 0, data: Buffer.alloc(0) };
  const d = decodePdu(encodePdu(pdu));
  assert.equal(d.opcode === 0x00 && d.itt, 0xffffffff);
  assert.equal(d.opcode === 0x00 && d.ttt, 5);
});

test('pdu: malformed input gives ProtocolError / DigestError', () => {
  assert.throws(() => decodePdu(Buffer.alloc(47)), ProtocolError);
  const unknown = Buffer.alloc(48);
  unknown[0] = 0x0f;
  assert.throws(() => decodePdu(unknown), /unknown opcode/);
  // trailing byte
  assert.throws(() => decodePdu(Buffer.concat([FIXTURES[0].bytes, Buffer.alloc(1)])), ProtocolError);
  // SenseLength larger than the segment
  assert.throws(() => splitSenseData(hex('00 10 70 00')), ProtocolError);
  assert.throws(() => splitSenseData(hex('00')), ProtocolError);
  // bad AHS
  const f = FIXTURES.find((x) => x.name.startsWith('SCSI Command 32-byte'))!;
  const bad = Buffer.from(f.bytes);
  bad.writeUInt16BE(0x40, 48);
  assert.throws(() => decodePdu(bad), ProtocolError);
  // digests
  const wire = withDigests(f.bytes, f.headerLength, f.dataLength, true, true);
  const h = Buffer.from(wire);
  h[f.headerLength] ^= 1;
  assert.throws(() => decodePdu(h, { headerDigest: true, dataDigest: true }), (e: unknown) => e instanceof DigestError && e.kind === 'header' && e.fatal);
  const d = Buffer.from(wire);
  d[d.length - 1] ^= 1;
  assert.throws(() => decodePdu(d, { headerDigest: true, dataDigest: true }), (e: unknown) => e instanceof DigestError && e.kind === 'data' && e.itt === 0x12345678 && !e.fatal);
});

test('pdu: random bytes never throw anything but our errors', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), fc.boolean(), fc.boolean(), (arr, hd, dd) => {
      const buf = Buffer.from(arr);
      try {
        decodePdu(buf, { headerDigest: hd, dataDigest: dd });
      } catch (e) {
        assert.ok(e instanceof IscsiNbdError, String(e));
      }
      if (buf.length >= 48) {
        try {
          decodeFrame({ bhs: buf.subarray(0, 48), ahs: buf.subarray(48, 48 + buf[4] * 4), data: buf.subarray(48) });
        } catch (e) {
          assert.ok(e instanceof IscsiNbdError, String(e));
        }
      }
    }),
    { numRuns: 3000 },
  );
});

test('pdu: random valid BHS headers decode and re-encode to the same PDU', () => {
  const ops = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f];
  fc.assert(
    fc.property(fc.constantFrom(...ops), fc.uint8Array({ minLength: 48, maxLength: 48 }), (op, arr) => {
      const bhs = Buffer.from(arr);
      bhs[0] = op | (bhs[0] & 0x40);
      bhs[4] = 0;
      bhs[5] = bhs[6] = bhs[7] = 0;
      const pdu = decodeBhs(bhs);
      const again = decodeBhs(encodePdu(pdu));
      assert.deepEqual(again, pdu);
    }),
    { numRuns: 2000 },
  );
});

test('lun: SAM encoding like libiscsi', () => {
  assert.equal(encodeLun(0), 0n);
  assert.deepEqual(lunToBuffer(encodeLun(5)), hex('00 05 00 00 00 00 00 00'));
  assert.deepEqual(lunToBuffer(encodeLun(255)), hex('00 ff 00 00 00 00 00 00'));
  assert.deepEqual(lunToBuffer(encodeLun(256)), hex('41 00 00 00 00 00 00 00'));
  assert.deepEqual(lunToBuffer(encodeLun(0x3fff)), hex('7f ff 00 00 00 00 00 00'));
  assert.deepEqual(lunToBuffer(encodeLun(0x4000)), hex('d2 00 40 00 00 00 00 00'));
  for (const n of [0, 1, 255, 256, 1000, 0x3fff, 0x4000, 0xffffff]) {
    assert.equal(decodeLun(encodeLun(n)), n);
    assert.equal(decodeLun(lunToBuffer(encodeLun(n))), n);
  }
  assert.throws(() => encodeLun(-1), RangeError);
  assert.throws(() => encodeLun(2 ** 24), RangeError);
  assert.throws(() => decodeLun(hex('80 00 00 00 00 00 00 00')), ProtocolError);
});

test('isid: parts and random type', () => {
  assert.equal(makeIsid(2, 0, 0x1234, 0x56, 0x789a), 0x80123456789a);
  const r = randomIsid();
  assert.equal(Math.floor(r / 2 ** 46), 2);
  assert.ok(r < 2 ** 48);
});
