import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TransmissionEngine, TransmissionOptions } from '../../src/nbd/transmission';
import { transmissionFlagsFor } from '../../src/nbd/common';
import * as C from '../../src/nbd/constants';
import { RequestError, ScsiError } from '../../src/errors';
import { MemoryExport, MemoryExportOptions } from '../helpers/memory-export';
import { req, parseReplies, settle, splits, Reply, u32 } from './util';

const EPERM = 1, EIO = 5, EINVAL = 22, ENOSPC = 28, ENOTSUP = 95, ESHUTDOWN = 108;

function setup(expOpts: MemoryExportOptions = {}, o: Partial<TransmissionOptions> & { structured?: boolean; meta?: boolean } = {}) {
  const exp = new MemoryExport({ size: 1 << 20, ...expOpts });
  const structured = o.structured ?? false;
  const sent: Buffer[] = [];
  const ev = { paused: 0, resumed: 0, closed: undefined as undefined | { reason: string; soft: boolean } };
  const eng = new TransmissionEngine({
    export: exp,
    structuredReplies: structured,
    metaContexts: o.meta ? new Map([[1, 'base:allocation']]) : new Map(),
    transmissionFlags: transmissionFlagsFor(exp, structured),
    ...o,
  }, {
    send: (b) => sent.push(...b),
    pause: () => ev.paused++,
    resume: () => ev.resumed++,
    close: (reason, soft) => (ev.closed = { reason, soft }),
  });
  const reads = new Map<bigint, number>();
  return {
    exp, eng, ev, sent, reads,
    push(b: Buffer) { eng.push(b); },
    read(cookie: number, offset: number, length: number, flags = 0) { reads.set(BigInt(cookie), length); return req(C.CMD_READ, cookie, offset, length, flags); },
    replies(): Reply[] { return parseReplies(Buffer.concat(sent), reads); },
    byCookie(): Map<bigint, Reply[]> {
      const m = new Map<bigint, Reply[]>();
      for (const r of parseReplies(Buffer.concat(sent), reads)) m.set(r.cookie, [...(m.get(r.cookie) ?? []), r]);
      return m;
    },
  };
}

function simpleErr(rs: Map<bigint, Reply[]>, cookie: number): number {
  const r = rs.get(BigInt(cookie));
  assert.ok(r && r.length === 1 && r[0].kind === 'simple', `one simple reply for cookie ${cookie}`);
  return (r[0] as { error: number }).error;
}

test('a request sequence gives the same replies however the bytes are split', async () => {
  const data = Buffer.alloc(512, 0x5a);
  let first: string | undefined;
  const t0 = setup();
  const input = Buffer.concat([
    req(C.CMD_WRITE, 1, 512, 512, C.CMD_FLAG_FUA, data),
    t0.read(2, 2048, 512),
    req(C.CMD_FLUSH, 3, 0, 0),
    req(C.CMD_TRIM, 4, 65536, 4096),
    req(C.CMD_WRITE_ZEROES, 5, 8192, 512, C.CMD_FLAG_NO_HOLE),
    req(C.CMD_CACHE, 6, 0, 4096, C.CMD_FLAG_FUA),
  ]);
  for (const parts of splits(input)) {
    const t = setup();
    t.reads.set(2n, 512);
    t.exp.poke(2048, data);
    for (const p of parts) { t.push(p); await settle(2); }
    await settle();
    const rs = t.byCookie();
    const summary = JSON.stringify([...rs.keys()].sort().map((k) => [k.toString(), rs.get(k)!.map((r) => r.kind === 'simple' ? [r.error, r.data.toString('hex')] : [])]));
    if (!first) first = summary; else assert.equal(summary, first);
    for (let c = 1; c <= 6; c++) assert.equal(simpleErr(rs, c), 0);
    assert.deepEqual((rs.get(2n)![0] as { data: Buffer }).data, data);
    assert.deepEqual(t.exp.peek(512, 512), data);
    assert.equal(t.exp.calls.find((c) => c.op === 'write')?.fua, true);
    assert.equal(t.ev.closed, undefined);
  }
});

test('write payloads reach the export as views of the received chunk', async () => {
  const t = setup();
  let seen: Buffer | undefined;
  const orig = t.exp.write.bind(t.exp);
  t.exp.write = (o, d, f) => { seen = d; return orig(o, d, f); };
  const chunk = req(C.CMD_WRITE, 1, 0, 4096, 0, Buffer.alloc(4096, 1));
  t.push(chunk);
  await settle();
  assert.ok(seen);
  assert.equal(seen.buffer, chunk.buffer);
  assert.equal(seen.byteOffset, chunk.byteOffset + 28);
});

test('structured replies: READ as one OFFSET_DATA chunk with DONE; zero-length READ is NONE', async () => {
  const t = setup({}, { structured: true });
  t.exp.poke(100, Buffer.from('hello'));
  t.push(Buffer.concat([req(C.CMD_READ, 7, 100, 5), req(C.CMD_READ, 8, 0, 0), req(C.CMD_READ, 9, 0, 4, C.CMD_FLAG_DF), req(C.CMD_WRITE, 10, 0, 1, 0, Buffer.from('x'))]));
  await settle();
  const rs = t.byCookie();
  const c7 = rs.get(7n)![0] as { kind: 'chunk'; flags: number; type: number; payload: Buffer };
  assert.equal(c7.kind, 'chunk');
  assert.equal(c7.flags, C.REPLY_FLAG_DONE);
  assert.equal(c7.type, C.REPLY_TYPE_OFFSET_DATA);
  assert.equal(c7.payload.readBigUInt64BE(0), 100n);
  assert.equal(c7.payload.subarray(8).toString(), 'hello');
  const c8 = rs.get(8n)![0] as { type: number; flags: number };
  assert.equal(c8.type, C.REPLY_TYPE_NONE);
  assert.equal(c8.flags, C.REPLY_FLAG_DONE);
  assert.equal((rs.get(9n)![0] as { type: number }).type, C.REPLY_TYPE_OFFSET_DATA);
  assert.equal(simpleErr(rs, 10), 0); // success without payload may be simple
});

test('structured errors: validation -> ERROR chunk (even for READ), export failure on READ -> ERROR_OFFSET', async () => {
  const t = setup({}, { structured: true });
  t.exp.fail({ op: 'read', error: new RequestError('EIO', 'medium error'), times: 1 });
  t.push(Buffer.concat([req(C.CMD_READ, 1, 0, 512), req(C.CMD_READ, 2, 1 << 20, 512), req(C.CMD_WRITE, 3, 1 << 20, 1, 0, Buffer.from('x'))]));
  await settle();
  const rs = t.byCookie();
  const e1 = rs.get(1n)![0] as { type: number; flags: number; payload: Buffer };
  assert.equal(e1.type, C.REPLY_TYPE_ERROR_OFFSET);
  assert.equal(e1.flags, C.REPLY_FLAG_DONE);
  assert.equal(e1.payload.readUInt32BE(0), EIO);
  const mlen = e1.payload.readUInt16BE(4);
  assert.match(e1.payload.subarray(6, 6 + mlen).toString(), /medium error/);
  assert.equal(e1.payload.readBigUInt64BE(6 + mlen), 0n);
  const e2 = rs.get(2n)![0] as { type: number; payload: Buffer };
  assert.equal(e2.type, C.REPLY_TYPE_ERROR);
  assert.equal(e2.payload.readUInt32BE(0), EINVAL);
  const e3 = rs.get(3n)![0] as { type: number; payload: Buffer };
  assert.equal(e3.payload.readUInt32BE(0), ENOSPC);
});

test('BLOCK_STATUS: holes from the export, REQ_ONE, prerequisites and bounds', async () => {
  const t = setup({ size: 1 << 20 }, { structured: true, meta: true });
  t.exp.poke(65536, Buffer.alloc(10, 1));
  t.push(Buffer.concat([
    req(C.CMD_BLOCK_STATUS, 1, 0, 1 << 20),
    req(C.CMD_BLOCK_STATUS, 2, 0, 1 << 20, C.CMD_FLAG_REQ_ONE),
    req(C.CMD_BLOCK_STATUS, 3, 0, 0),
    req(C.CMD_BLOCK_STATUS, 4, (1 << 20) - 512, 1024),
    req(C.CMD_BLOCK_STATUS, 5, 0, 4096, C.CMD_FLAG_DF),
  ]));
  await settle();
  const rs = t.byCookie();
  const bs = (c: bigint) => {
    const r = rs.get(c)![0] as { type: number; flags: number; payload: Buffer };
    assert.equal(r.type, C.REPLY_TYPE_BLOCK_STATUS);
    assert.equal(r.flags, C.REPLY_FLAG_DONE);
    assert.equal(r.payload.readUInt32BE(0), 1);
    const ex = [];
    for (let p = 4; p < r.payload.length; p += 8) ex.push([r.payload.readUInt32BE(p), r.payload.readUInt32BE(p + 4)]);
    return ex;
  };
  assert.deepEqual(bs(1n), [[65536, 3], [65536, 0], [(1 << 20) - 131072, 3]]);
  assert.deepEqual(bs(2n), [[65536, 3]]);
  for (const c of [3n, 4n, 5n]) {
    const r = rs.get(c)![0] as { type: number; payload: Buffer };
    assert.equal(r.type, C.REPLY_TYPE_ERROR);
    assert.equal(r.payload.readUInt32BE(0), EINVAL);
  }
  // Without a negotiated context, or without structured replies: EINVAL.
  const u = setup({}, { structured: true });
  const v = setup();
  u.push(req(C.CMD_BLOCK_STATUS, 1, 0, 512));
  v.push(req(C.CMD_BLOCK_STATUS, 1, 0, 512));
  await settle();
  assert.equal((u.replies()[0] as { payload: Buffer }).payload.readUInt32BE(0), EINVAL);
  assert.equal(simpleErr(v.byCookie(), 1), EINVAL);
  // An export without block status answers "allocated" for the whole range.
  const w = setup({ flags: { blockStatus: false } }, { structured: true, meta: true });
  w.push(req(C.CMD_BLOCK_STATUS, 1, 0, 8192));
  await settle();
  assert.deepEqual((w.replies()[0] as { payload: Buffer }).payload, Buffer.concat([u32(1), u32(8192), u32(0)]));
  assert.equal(w.exp.calls.length, 0);
});

test('validation table: errnos, and the connection survives every case', async () => {
  const MiB = 1 << 20;
  type Case = [string, Buffer, number, MemoryExportOptions?, Partial<TransmissionOptions>?];
  const cases: Case[] = [
    ['unknown command', req(9, 1, 0, 512), EINVAL],
    ['unknown command flag', req(C.CMD_READ, 1, 0, 512, 1 << 5), EINVAL],
    ['DF without structured replies', req(C.CMD_READ, 1, 0, 512, C.CMD_FLAG_DF), EINVAL],
    ['NO_HOLE on WRITE (payload skipped)', req(C.CMD_WRITE, 1, 0, 512, C.CMD_FLAG_NO_HOLE, Buffer.alloc(512)), EINVAL],
    ['REQ_ONE on READ', req(C.CMD_READ, 1, 0, 512, C.CMD_FLAG_REQ_ONE), EINVAL],
    ['READ past the end', req(C.CMD_READ, 1, MiB - 512, 1024), EINVAL],
    ['READ at a huge offset', req(C.CMD_READ, 1, 0xfffffffffffffe00n, 1024), EINVAL],
    ['WRITE past the end (payload skipped)', req(C.CMD_WRITE, 1, MiB - 512, 1024, 0, Buffer.alloc(1024)), ENOSPC],
    ['WRITE_ZEROES past the end', req(C.CMD_WRITE_ZEROES, 1, MiB, 512), ENOSPC],
    ['TRIM past the end', req(C.CMD_TRIM, 1, MiB, 512), EINVAL],
    ['CACHE past the end', req(C.CMD_CACHE, 1, MiB, 512), EINVAL],
    ['WRITE on read-only', req(C.CMD_WRITE, 1, 0, 512, 0, Buffer.alloc(512)), EPERM, { flags: { readOnly: true } }],
    ['TRIM on read-only', req(C.CMD_TRIM, 1, 0, 512), EPERM, { flags: { readOnly: true } }],
    ['WRITE_ZEROES on read-only', req(C.CMD_WRITE_ZEROES, 1, 0, 512), EPERM, { flags: { readOnly: true } }],
    ['misaligned offset', req(C.CMD_READ, 1, 1, 512), EINVAL, { blockSizes: { minimum: 512 } }],
    ['misaligned length', req(C.CMD_WRITE, 1, 0, 100, 0, Buffer.alloc(100)), EINVAL, { blockSizes: { minimum: 512 } }],
    ['READ above the maximum', req(C.CMD_READ, 1, 0, 2 * 65536), EINVAL, { blockSizes: { maximum: 65536 } }],
    ['WRITE above the maximum (payload skipped)', req(C.CMD_WRITE, 1, 0, 65536 + 512, 0, Buffer.alloc(65536 + 512)), EINVAL, { blockSizes: { maximum: 65536 } }],
    ['READ above maxPayload', req(C.CMD_READ, 1, 0, 65536 + 1), EINVAL, {}, { maxPayload: 65536 }],
    ['FAST_ZERO not advertised', req(C.CMD_WRITE_ZEROES, 1, 0, 512, C.CMD_FLAG_FAST_ZERO), EINVAL, { flags: { fastZero: false } }],
    ['FAST_ZERO that cannot be fast', req(C.CMD_WRITE_ZEROES, 1, 0, 512, C.CMD_FLAG_FAST_ZERO), ENOTSUP, { fastZeroWorks: false }],
    ['FLUSH not advertised', req(C.CMD_FLUSH, 1, 0, 0), EINVAL, { flags: { flush: false } }],
    ['TRIM not advertised', req(C.CMD_TRIM, 1, 0, 512), EINVAL, { flags: { trim: false } }],
    ['WRITE_ZEROES not advertised', req(C.CMD_WRITE_ZEROES, 1, 0, 512), EINVAL, { flags: { writeZeroes: false } }],
    ['CACHE not advertised', req(C.CMD_CACHE, 1, 0, 512), EINVAL, { flags: { cache: false } }],
    ['FUA on READ is accepted', req(C.CMD_READ, 1, 0, 0, C.CMD_FLAG_FUA), 0],
    ['FUA on FLUSH is accepted', req(C.CMD_FLUSH, 1, 0, 0, C.CMD_FLAG_FUA), 0],
    ['zero-length READ', req(C.CMD_READ, 1, 0, 0), 0],
    ['zero-length WRITE', req(C.CMD_WRITE, 1, 0, 0), 0],
    ['zero-length TRIM', req(C.CMD_TRIM, 1, 0, 0), 0],
    ['zero-length WRITE_ZEROES', req(C.CMD_WRITE_ZEROES, 1, 0, 0), 0],
    ['zero-length CACHE', req(C.CMD_CACHE, 1, 0, 0), 0],
    ['zero-length at the very end', req(C.CMD_WRITE, 1, MiB, 0), 0],
    ['TRIM of almost 4 GiB is not capped', req(C.CMD_TRIM, 1, 0, 0xfffff000), 0, { size: 8n << 30n, blockSizes: { minimum: 4096, maximum: 65536 } }],
    ['WRITE_ZEROES of almost 4 GiB is not capped', req(C.CMD_WRITE_ZEROES, 1, 4096, 0xfffff000), 0, { size: 8n << 30n, blockSizes: { minimum: 4096, maximum: 65536 } }],
  ];
  for (const [name, bytes, errno, expOpts, txOpts] of cases) {
    const t = setup(expOpts, txOpts);
    const probe = Number(t.exp.size) - 4096;
    t.exp.poke(probe, Buffer.from('ok'));
    t.push(Buffer.concat([bytes, t.read(2, probe, 4096)]));
    await settle();
    const rs = t.byCookie();
    assert.equal(simpleErr(rs, 1), errno, name);
    assert.equal(simpleErr(rs, 2), 0, `${name}: connection still usable`);
    assert.equal((rs.get(2n)![0] as { data: Buffer }).data.subarray(0, 2).toString(), 'ok', name);
    assert.equal(t.ev.closed, undefined, name);
    if (errno !== 0 && errno !== ENOTSUP) assert.ok(t.exp.calls.every((c) => c.op === 'read'), `${name}: export not called`);
    if (name.startsWith('zero-length') && !name.includes('READ')) assert.equal(t.exp.calls.length, 1, `${name}: no export call`);
  }
});

test('export errors are mapped with nbdErrnoOf and do not end the connection', async () => {
  const t = setup();
  t.exp.fail({ op: 'write', error: new RequestError('ENOSPC', 'thin pool full'), times: 1 });
  t.exp.fail({ op: 'trim', error: new ScsiError('ESCSI_WRITE_PROTECT', 'write protected', 2, 7, 0x27, 0), times: 1 });
  t.exp.fail({ op: 'flush', error: new Error('boom'), times: 1 });
  t.exp.fail({ op: 'read', error: new RequestError('EIO', 'x'), times: 1 });
  t.push(Buffer.concat([req(C.CMD_WRITE, 1, 0, 1, 0, Buffer.from('a')), req(C.CMD_TRIM, 2, 0, 512), req(C.CMD_FLUSH, 3, 0, 0), t.read(4, 0, 512), t.read(5, 0, 1)]));
  await settle();
  const rs = t.byCookie();
  assert.equal(simpleErr(rs, 1), ENOSPC);
  assert.equal(simpleErr(rs, 2), EPERM);
  assert.equal(simpleErr(rs, 3), EIO);
  assert.equal(simpleErr(rs, 4), EIO);
  assert.equal((rs.get(4n)![0] as { data: Buffer }).data.length, 0, 'no payload after a simple READ error');
  assert.equal(simpleErr(rs, 5), 0);
  assert.equal(t.ev.closed, undefined);
});

test('bad magic drops the connection; oversized WRITE that cannot be skipped drops', async () => {
  const t = setup();
  t.push(Buffer.concat([t.read(1, 0, 1), Buffer.from('garbage garbage garbage garbage')]));
  await settle();
  assert.equal(t.ev.closed?.soft, false);
  const u = setup({}, { maxDiscard: 1 << 20 });
  u.push(req(C.CMD_WRITE, 1, 0, (1 << 20) + 1));
  assert.equal(u.ev.closed?.soft, false);
  assert.equal(u.eng.bufferedBytes, 0);
});

test('out-of-order completion: replies carry the right cookies', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const t = setup({ before: async (op, off) => { if (op === 'read' && off === 0n) await gate; } });
  t.exp.poke(0, Buffer.from('AAAA'));
  t.exp.poke(4096, Buffer.from('BBBB'));
  t.push(Buffer.concat([t.read(0xaaaa, 0, 4), t.read(0xbbbb, 4096, 4), req(C.CMD_FLUSH, 0xcccc, 0, 0)]));
  await settle();
  assert.deepEqual(t.replies().map((r) => r.cookie).sort(), [0xbbbbn, 0xccccn]);
  assert.equal(t.eng.inFlight, 1);
  release();
  await settle();
  const rs = t.replies();
  assert.equal(rs[2].cookie, 0xaaaan);
  const m = t.byCookie();
  assert.equal((m.get(0xaaaan)![0] as { data: Buffer }).data.toString(), 'AAAA');
  assert.equal((m.get(0xbbbbn)![0] as { data: Buffer }).data.toString(), 'BBBB');
});

test('draining: new requests get ESHUTDOWN (WRITE payload skipped), in-flight ones finish', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const t = setup({ before: async (op) => { if (op === 'write') await gate; } });
  t.push(req(C.CMD_WRITE, 1, 0, 4, 0, Buffer.from('data')));
  await settle();
  let drained = false;
  const p = t.eng.drain().then(() => (drained = true));
  t.push(Buffer.concat([req(C.CMD_WRITE, 2, 0, 4, 0, Buffer.from('zzzz')), t.read(3, 0, 4)]));
  await settle();
  assert.equal(drained, false);
  let rs = t.byCookie();
  assert.equal(simpleErr(rs, 2), ESHUTDOWN);
  assert.equal(simpleErr(rs, 3), ESHUTDOWN);
  release();
  await p;
  rs = t.byCookie();
  assert.equal(simpleErr(rs, 1), 0);
  assert.equal(t.exp.peek(0, 4).toString(), 'data');
});

test('NBD_CMD_DISC: in-flight requests finish, then a soft close; later bytes are ignored', async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const t = setup({ before: async () => gate });
  t.push(Buffer.concat([t.read(1, 0, 8), req(C.CMD_DISC, 2, 0, 0), t.read(3, 0, 8)]));
  await settle();
  assert.equal(t.ev.closed, undefined);
  release();
  await settle();
  assert.deepEqual(t.replies().map((r) => r.cookie), [1n]);
  assert.deepEqual(t.ev.closed, { reason: 'client sent NBD_CMD_DISC', soft: true });
});

test('backpressure: in-flight count and buffered bytes pause reading instead of growing', async () => {
  let release!: () => void;
  let gate = new Promise<void>((r) => (release = r));
  const t = setup({ before: async () => gate }, { maxInFlight: 4 });
  const reqs: Buffer[] = [];
  for (let i = 1; i <= 10; i++) reqs.push(t.read(i, 0, 512));
  t.push(Buffer.concat(reqs));
  await settle();
  assert.equal(t.eng.inFlight, 4);
  assert.equal(t.ev.paused, 1);
  const r1 = release;
  gate = Promise.resolve();
  r1();
  await settle(50);
  assert.equal(t.replies().length, 10);
  assert.ok(t.ev.resumed >= 1);
  assert.equal(t.eng.inFlight, 0);

  // Bytes: two 64 KiB writes held by a gate exceed a 100 KiB budget.
  let rel2!: () => void;
  const g2 = new Promise<void>((r) => (rel2 = r));
  const u = setup({ before: async () => g2 }, { maxBufferedBytes: 100 * 1024 });
  for (let i = 1; i <= 4; i++) u.push(req(C.CMD_WRITE, i, 0, 65536, 0, Buffer.alloc(65536, i)));
  await settle();
  assert.equal(u.eng.inFlight, 2);
  assert.equal(u.ev.paused, 1);
  rel2();
  await settle(50);
  assert.equal(u.replies().length, 4);
  assert.equal(u.eng.inFlight, 0);

  // Output: a transport that reports a full write buffer stops new work.
  const v = setup();
  v.eng.setOutputBlocked(true);
  v.push(v.read(1, 0, 1));
  await settle();
  assert.equal(v.replies().length, 0);
  v.eng.setOutputBlocked(false);
  await settle();
  assert.equal(v.replies().length, 1);
});

test('request header fields beyond 32-bit offsets are handled as 64-bit', async () => {
  const t = setup({ size: (1n << 40n) + 4096n });
  t.push(Buffer.concat([req(C.CMD_WRITE, 1, 1n << 40n, 4, 0, Buffer.from('far!'))]));
  await settle();
  assert.equal(simpleErr(t.byCookie(), 1), 0);
  assert.equal(t.exp.calls[0].offset, 1n << 40n);
});
