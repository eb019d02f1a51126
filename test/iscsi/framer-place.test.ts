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

// A socket with onread reuses one buffer for every read: frames must not
// point into it, and bytes held over to the next read must be our own copy.
test('transientChunks: frames survive the caller reusing its read buffer', () => {
  const pdus = [randomBytes(700), randomBytes(5), randomBytes(3000)].map((d, i) => encodePdu(dataIn(i + 1, 0, d), { headerDigest: true, dataDigest: true }));
  const wire = Buffer.concat(pdus);
  for (const step of [1, 7, 48, 53, 1000, wire.length]) {
    const frames: Frame[] = [];
    const f = new PduFramer({ headerDigest: true, dataDigest: true, transientChunks: true, onFrame: (fr) => frames.push(fr) });
    const reused = Buffer.alloc(step);
    for (let i = 0; i < wire.length; i += step) {
      const n = wire.copy(reused, 0, i, Math.min(i + step, wire.length));
      f.push(reused.subarray(0, n));
      reused.fill(0xee); // what the next socket read would do to it
    }
    assert.equal(frames.length, 3, `step ${step}`);
    frames.forEach((fr, k) => {
      const d = decodeFrame(fr) as DataInPdu;
      assert.equal(d.itt, k + 1);
      assert.deepEqual(Buffer.concat([fr.bhs]).length, 48);
      assert.deepEqual(encodePdu(d, { headerDigest: true, dataDigest: true }), pdus[k], `step ${step} pdu ${k}`);
    });
    assert.ok(f.idle);
  }
});

// The engine may take its buffer back (the command failed, the reader's
// buffer returns to its pool) while a segment is arriving: nothing more is
// written there, and the frame arrives whole and unplaced.
for (const digest of [false, true]) {
  test(`divert mid-segment: the destination is left alone, the frame is whole and says it was not placed (digests ${digest ? 'on' : 'off'})`, () => {
    const d = randomBytes(4000);
    const wire = encodePdu(dataIn(3, 0, d), { headerDigest: digest, dataDigest: digest });
    const headerLen = 48 + (digest ? 4 : 0);
    for (const cut of [headerLen, headerLen + 1, headerLen + 1000, headerLen + 3999]) {
      const dest = Buffer.alloc(4000);
      const frames: Frame[] = [];
      const errs: string[] = [];
      const f = new PduFramer({
        headerDigest: digest, dataDigest: digest, onFrame: (fr) => frames.push(fr), onDataDigestError: (e) => errs.push(e.code),
        placeData: (_bhs, dsl) => dest.subarray(0, dsl),
      });
      f.push(wire.subarray(0, cut));
      const before = Buffer.from(dest);
      f.divert();
      dest.fill(0x5a); // the buffer's next owner writes it
      f.push(wire.subarray(cut));
      assert.deepEqual(errs, [], `cut ${cut}`);
      assert.equal(frames.length, 1, `cut ${cut}`);
      assert.equal(frames[0].placed, undefined, `cut ${cut}`);
      assert.deepEqual(frames[0].data, d, `cut ${cut}`);
      assert.ok(dest.equals(Buffer.alloc(4000, 0x5a)), `cut ${cut}: not written after divert`);
      assert.deepEqual(before.subarray(0, cut - headerLen), d.subarray(0, cut - headerLen));
      // The next PDU is placed again.
      f.push(wire);
      assert.equal(frames[1].placed, true);
    }
  });
}
