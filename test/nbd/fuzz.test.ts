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
  fc.assert(fc.property(fc.array(fc.oneof(option, fc.constant(opt(1, Buffer.alloc(0))), fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b))), { maxLength: 12 }), fc.constantFrom('off', 'on', 'require'), (parts, mode) => {
    // Everything sent before negotiation ends must be the greeting followed by
    // whole, well-formed option replies: a client can always keep in sync.
    // (EXPORT_NAME's success answer is no option reply: it is the batch sent just before done.)
    const out: Buffer[] = [];
    let finished = false;
    const eng = new HandshakeEngine({ exports: reg, tlsMode: mode as 'off' | 'on' | 'require' }, {
      send: (b) => { if (!finished) out.push(Buffer.concat(b)); },
      startTls: () => undefined,
      done: () => {
        const last = out[out.length - 1];
        if (last && (last.length < 8 || last.readBigUInt64BE(0) !== 0x3e889045565a9n)) out.pop();
        finished = true;
      },
      close: () => { finished = true; },
    });
    eng.start();
    eng.push(u32(3));
    for (const p of parts) eng.push(p);
    if (eng.state === 'tls') eng.tlsStarted();
    const wire = Buffer.concat(out);
    assert.ok(wire.length >= 18, 'greeting sent');
    assert.equal(wire.readBigUInt64BE(0), 0x4e42444d41474943n);
    assert.equal(wire.readBigUInt64BE(8), 0x49484156454f5054n);
    for (let off = 18; off < wire.length; ) {
      assert.ok(wire.length - off >= 20, `truncated option reply at ${off}`);
      assert.equal(wire.readBigUInt64BE(off), 0x3e889045565a9n, `option reply magic at ${off}`);
      off += 20 + wire.readUInt32BE(off + 16);
      assert.ok(off <= wire.length, 'option reply data runs past what was sent');
    }
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
