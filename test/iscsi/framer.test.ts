import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PduFramer } from '../../src/iscsi/framer';
import { decodeFrame, encodePdu, Frame, Pdu } from '../../src/iscsi/pdu';
import { DigestError } from '../../src/iscsi/crc32c';
import { IscsiNbdError, ProtocolError } from '../../src/errors';
import { FIXTURES, hex, withDigests } from './fixtures';

function collect(opts: { hd?: boolean; dd?: boolean; max?: number } = {}) {
  const frames: Frame[] = [];
  const digestErrors: DigestError[] = [];
  const framer = new PduFramer({
    headerDigest: opts.hd, dataDigest: opts.dd, maxDataSegmentLength: opts.max ?? 1 << 20,
    onFrame: (f) => frames.push(f),
    onDataDigestError: (e) => digestErrors.push(e),
  });
  return { framer, frames, digestErrors, pdus: () => frames.map(decodeFrame) };
}

const MODES = [[false, false], [true, false], [false, true], [true, true]] as const;

for (const f of FIXTURES) {
  test(`framer: ${f.name}: whole, byte by byte, split at every boundary, all digest modes`, () => {
    for (const [hd, dd] of MODES) {
      const wire = withDigests(f.bytes, f.headerLength, f.dataLength, hd, dd);
      // whole
      let c = collect({ hd, dd });
      c.framer.push(wire);
      assert.deepEqual(c.pdus(), [f.pdu]);
      assert.ok(c.framer.idle);
      // byte by byte
      c = collect({ hd, dd });
      for (let i = 0; i < wire.length; i++) {
        assert.equal(c.frames.length, 0);
        c.framer.push(wire.subarray(i, i + 1));
      }
      assert.deepEqual(c.pdus(), [f.pdu]);
      // every two-way split
      for (let i = 0; i <= wire.length; i++) {
        c = collect({ hd, dd });
        c.framer.push(wire.subarray(0, i));
        c.framer.push(wire.subarray(i));
        assert.deepEqual(c.pdus(), [f.pdu], `split at ${i}`);
        assert.equal(c.framer.buffered, 0);
      }
    }
  });
}

test('framer: all fixtures back to back, random chunking', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 50 }), fc.constantFrom(...MODES), (cuts, [hd, dd]) => {
      const wire = Buffer.concat(FIXTURES.map((f) => withDigests(f.bytes, f.headerLength, f.dataLength, hd, dd)));
      const c = collect({ hd, dd });
      let o = 0;
      let k = 0;
      while (o < wire.length) {
        const n = cuts[k++ % cuts.length];
        c.framer.push(wire.subarray(o, o + n));
        o += n;
      }
      assert.deepEqual(c.pdus(), FIXTURES.map((f) => f.pdu));
    }),
    { numRuns: 200 },
  );
});

test('framer: data segment inside one chunk is a view (no copy); spanning chunks is copied', () => {
  const f = FIXTURES.find((x) => x.name === 'Data-Out')!;
  const wire = Buffer.alloc(f.bytes.length); // unpooled: its own ArrayBuffer
  f.bytes.copy(wire);
  const inWire = (b: Buffer) => b.buffer === wire.buffer;
  const c = collect();
  c.framer.push(wire);
  assert.ok(inWire(c.frames[0].data) && c.frames[0].data.byteOffset === 48);
  assert.ok(inWire(c.frames[0].bhs));
  const c2 = collect();
  c2.framer.push(wire.subarray(0, 50));
  c2.framer.push(wire.subarray(50));
  assert.ok(!inWire(c2.frames[0].data));
  assert.deepEqual(c2.frames[0].data, f.pdu.opcode === 0x05 ? f.pdu.data : null);
});

test('framer: oversized DataSegmentLength is refused as soon as the BHS is in, before buffering data', () => {
  const bhs = hex(`25 00 00 00  00 00 20 01  ${'00'.repeat(40)}`); // DSL 8193
  const c = collect({ max: 8192 });
  assert.throws(() => c.framer.push(bhs), (e: unknown) => e instanceof ProtocolError && e.code === 'EPROTO' && /8193/.test(e.message));
  assert.ok(c.framer.error instanceof ProtocolError);
  assert.throws(() => c.framer.push(Buffer.alloc(10)), ProtocolError); // dead after
  const ok = collect({ max: 8193 });
  ok.framer.push(bhs);
  assert.equal(ok.frames.length, 0);
  assert.equal(ok.framer.buffered, 0);
});

test('framer: limit and digests are runtime-settable between PDUs', () => {
  const nop: Pdu = { opcode: 0x20, lun: 0n, itt: 1, ttt: 0xffffffff, statSN: 1, expCmdSN: 1, maxCmdSN: 1, data: Buffer.alloc(100) };
  const frames: Frame[] = [];
  const framer = new PduFramer({
    maxDataSegmentLength: 8192,
    onFrame: (f) => {
      frames.push(f);
      if (frames.length === 1) {
        framer.headerDigest = true;
        framer.dataDigest = true;
        framer.maxDataSegmentLength = 50;
      }
    },
  });
  // first PDU plain, second with digests, arriving in the same chunk
  const second = encodePdu({ ...nop, data: Buffer.alloc(20, 1) }, { headerDigest: true, dataDigest: true });
  framer.push(Buffer.concat([encodePdu(nop), second]));
  assert.equal(frames.length, 2);
  assert.deepEqual(frames[1].data, Buffer.alloc(20, 1));
  assert.throws(() => framer.push(encodePdu(nop, { headerDigest: true, dataDigest: true })), ProtocolError);
});

test('framer: header digest mismatch is fatal', () => {
  const f = FIXTURES[0];
  const wire = withDigests(f.bytes, f.headerLength, f.dataLength, true, false);
  wire[48] ^= 0xff;
  const c = collect({ hd: true });
  assert.throws(() => c.framer.push(wire), (e: unknown) => e instanceof DigestError && e.code === 'EDIGEST' && e.kind === 'header');
  assert.throws(() => c.framer.push(Buffer.alloc(1)), DigestError);
});

test('framer: data digest mismatch is reported with the ITT and framing continues', () => {
  const a = FIXTURES.find((x) => x.name === 'Data-In with status')!;
  const b = FIXTURES.find((x) => x.name === 'R2T')!;
  const bad = withDigests(a.bytes, a.headerLength, a.dataLength, true, true);
  bad[bad.length - 5] ^= 1; // a data byte
  const good = withDigests(b.bytes, b.headerLength, b.dataLength, true, true);
  const c = collect({ hd: true, dd: true });
  c.framer.push(Buffer.concat([bad, good]));
  assert.equal(c.digestErrors.length, 1);
  assert.equal(c.digestErrors[0].itt, 0x21);
  assert.equal(c.digestErrors[0].opcode, 0x25);
  assert.equal(c.digestErrors[0].fatal, false);
  assert.deepEqual(c.pdus(), [b.pdu]);
  // without a handler it is thrown
  const framer = new PduFramer({ dataDigest: true, onFrame: () => undefined });
  const w = withDigests(a.bytes, a.headerLength, a.dataLength, false, true);
  w[w.length - 1] ^= 1;
  assert.throws(() => framer.push(w), DigestError);
});

test('framer: garbage never throws anything but our error classes', () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 120 }), { maxLength: 8 }), fc.boolean(), fc.boolean(), (chunks, hd, dd) => {
      const framer = new PduFramer({
        headerDigest: hd, dataDigest: dd, maxDataSegmentLength: 256,
        onFrame: (f) => {
          try {
            decodeFrame(f);
          } catch (e) {
            assert.ok(e instanceof IscsiNbdError, String(e));
          }
        },
        onDataDigestError: () => undefined,
      });
      for (const ch of chunks) {
        try {
          framer.push(Buffer.from(ch));
        } catch (e) {
          assert.ok(e instanceof IscsiNbdError, String(e));
          break;
        }
      }
    }),
    { numRuns: 2000 },
  );
});

test('framer: many small chunks stay linear (bounded chunk list)', () => {
  const f = FIXTURES.find((x) => x.name === 'Data-In with status')!;
  const big: Pdu = { ...(f.pdu as Extract<Pdu, { opcode: 0x25 }>), data: Buffer.alloc(200_000, 3) };
  const wire = encodePdu(big);
  const c = collect();
  for (let i = 0; i < wire.length; i += 7) c.framer.push(wire.subarray(i, i + 7));
  assert.equal(c.frames.length, 1);
  assert.deepEqual(c.frames[0].data, big.data);
});

test('framer: an exception from onFrame propagates, keeps the rest buffered, and does not kill the framer', () => {
  const a = FIXTURES[0], b = FIXTURES[1];
  let calls = 0;
  const seen: Frame[] = [];
  const framer = new PduFramer({
    onFrame: (f) => {
      calls++;
      if (calls === 1) throw new ProtocolError('session says no');
      seen.push(f);
    },
  });
  assert.throws(() => framer.push(Buffer.concat([a.bytes, b.bytes])), /session says no/);
  assert.equal(framer.error, undefined);
  assert.equal(framer.buffered, b.bytes.length);
  framer.push(Buffer.alloc(0)); // resumes with what is buffered
  assert.deepEqual(seen.map(decodeFrame), [b.pdu]);
});
