import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { PduFramer } from '../../src/iscsi/framer';
import { decodeFrame, encodePdu, DataInPdu, Frame } from '../../src/iscsi/pdu';

function dataIn(itt: number, off: number, data: Buffer): DataInPdu {
  return {
    opcode: 0x25, final: false, ack: false, overflow: false, underflow: false, statusPresent: false, status: 0,
    lun: 0n, itt, ttt: 0xffffffff, statSN: 0, expCmdSN: 1, maxCmdSN: 1, dataSN: 0, bufferOffset: off, residualCount: 0, data,
  };
}

// Data segments streamed straight into a destination arrive intact however
// the bytes are cut, with and without digests, and a bad digest is still caught.
for (const digest of [false, true]) {
  test(`placeData streams Data-In into the destination (digests ${digest ? 'on' : 'off'})`, () => {
    const a = randomBytes(1001); // odd length: padding follows
    const b = randomBytes(4096);
    const wire = Buffer.concat([
      encodePdu(dataIn(7, 0, a), { headerDigest: digest, dataDigest: digest }),
      encodePdu(dataIn(7, 1001, b), { headerDigest: digest, dataDigest: digest }),
    ]);
    for (const step of [1, 3, 47, 48, 700, wire.length]) {
      const dest = Buffer.alloc(1001 + 4096);
      const frames: Frame[] = [];
      const f = new PduFramer({
        headerDigest: digest, dataDigest: digest, maxDataSegmentLength: 8192,
        onFrame: (fr) => frames.push(fr),
        placeData: (bhs, dsl) => dest.subarray(bhs.readUInt32BE(40), bhs.readUInt32BE(40) + dsl),
      });
      for (let i = 0; i < wire.length; i += step) f.push(wire.subarray(i, i + step));
      assert.equal(frames.length, 2, `step ${step}`);
      assert.deepEqual(dest, Buffer.concat([a, b]), `step ${step}`);
      assert.equal(frames[0].data.buffer, dest.buffer);
      assert.equal((decodeFrame(frames[1]) as DataInPdu).bufferOffset, 1001);
      assert.ok(f.idle);
    }
  });
}

test('placeData: a corrupted data digest is reported, not delivered', () => {
  const wire = encodePdu(dataIn(9, 0, randomBytes(512)), { headerDigest: true, dataDigest: true });
  wire[48 + 4 + 100] ^= 0xff;
  const errs: string[] = [];
  let frames = 0;
  const f = new PduFramer({
    headerDigest: true, dataDigest: true, onFrame: () => frames++,
    onDataDigestError: (e) => errs.push(e.code),
    placeData: (_bhs, dsl) => Buffer.alloc(dsl),
  });
  for (const byte of wire) f.push(Buffer.from([byte]));
  assert.equal(frames, 0);
  assert.deepEqual(errs, ['EDIGEST']);
});

test('placeData returning nothing falls back to buffering', () => {
  const d = randomBytes(300);
  const frames: Frame[] = [];
  const f = new PduFramer({ onFrame: (fr) => frames.push(fr), placeData: () => undefined });
  f.push(encodePdu(dataIn(1, 0, d)));
  assert.deepEqual(frames[0].data, d);
});
