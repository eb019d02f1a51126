// Random peer input must never throw, hang the engines, or produce output that breaks framing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { HandshakeEngine } from '../../src/nbd/handshake';
import { TransmissionEngine } from '../../src/nbd/transmission';
import { transmissionFlagsFor } from '../../src/nbd/common';
import * as C from '../../src/nbd/constants';
import { MemoryExport, memoryRegistry } from '../helpers/memory-export';
import { opt, u32, req, settle, parseReplies } from './util';

const exp = new MemoryExport({ name: 'disk', size: 1 << 20 });
const reg = memoryRegistry(exp);

test('handshake engine: random options and garbage never throw', () => {
  const option = fc.tuple(fc.integer({ min: 0, max: 12 }), fc.uint8Array({ maxLength: 64 })).map(([o, d]) => opt(o, Buffer.from(d)));
  fc.assert(fc.property(fc.array(fc.oneof(option, fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b))), { maxLength: 12 }), fc.constantFrom('off', 'on', 'require'), (parts, mode) => {
    const eng = new HandshakeEngine({ exports: reg, tlsMode: mode as 'off' | 'on' | 'require' }, {
      send: () => undefined, startTls: () => undefined, done: () => undefined, close: () => undefined,
    });
    eng.start();
    eng.push(u32(3));
    for (const p of parts) eng.push(p);
    if (eng.state === 'tls') eng.tlsStarted();
  }), { numRuns: 300 });
});

test('transmission engine: random requests always get well-framed replies or a drop', async () => {
  const request = fc.record({
    type: fc.integer({ min: 0, max: 9 }).filter((t) => t !== C.CMD_DISC),
    flags: fc.integer({ min: 0, max: 0x3f }),
    offset: fc.oneof(fc.integer({ min: 0, max: 1 << 21 }), fc.constant(0xffffffff)),
    length: fc.oneof(fc.integer({ min: 0, max: 70000 }), fc.constant(0xffffffff)),
  });
  await fc.assert(fc.asyncProperty(fc.array(request, { maxLength: 8 }), fc.boolean(), async (reqs, structured) => {
    const sent: Buffer[] = [];
    let closed = false;
    const eng = new TransmissionEngine({
      export: exp, structuredReplies: structured, metaContexts: structured ? new Map([[1, 'base:allocation']]) : new Map(),
      transmissionFlags: transmissionFlagsFor(exp, structured), maxDiscard: 1 << 17,
    }, { send: (b) => sent.push(...b), pause: () => undefined, resume: () => undefined, close: () => (closed = true) });
    const reads = new Map<bigint, number>();
    reqs.forEach((r, i) => {
      const payload = r.type === C.CMD_WRITE && r.length <= 1 << 17 ? Buffer.alloc(r.length) : undefined;
      if (r.type === C.CMD_READ) reads.set(BigInt(i), r.length);
      eng.push(req(r.type, i, r.offset, r.length, r.flags, payload));
    });
    await settle(30);
    const replies = parseReplies(Buffer.concat(sent), reads); // throws on broken framing
    if (!closed) assert.equal(new Set(replies.map((r) => r.cookie)).size, reqs.length);
  }), { numRuns: 200 });
});
