import { test } from 'node:test';
import assert from 'node:assert/strict';
import { HandshakeEngine, HandshakeOptions, HandshakeResult } from '../../src/nbd/handshake';
import * as C from '../../src/nbd/constants';
import { MemoryExport, memoryRegistry } from '../helpers/memory-export';
import { hex, u32, opt, infoData, metaData, req, parseOptReplies, splits, OptReply } from './util';

const disk = new MemoryExport({ name: 'disk', description: 'the disk', size: 1 << 20, blockSizes: { minimum: 512, preferred: 4096, maximum: 1 << 20 } });
const other = new MemoryExport({ name: 'other', size: 4096, flags: { readOnly: true } });
const reg = memoryRegistry(disk, other);

function hs(chunks: Buffer[], opts: Partial<HandshakeOptions> = {}) {
  const sent: Buffer[] = [];
  const r: { result?: HandshakeResult; closed?: { reason: string; soft: boolean }; tls: number; after: Buffer[] } = { tls: 0, after: [] };
  const eng = new HandshakeEngine({ exports: reg, ...opts }, {
    send: (b) => sent.push(...b),
    startTls: () => r.tls++,
    done: (res) => (r.result = res),
    close: (reason, soft) => (r.closed = { reason, soft }),
  });
  eng.start();
  // Bytes arriving after the result belong to the transmission phase (the adapter routes them there).
  for (const c of chunks) (r.result ? r.after.push(c) : eng.push(c));
  const out = Buffer.concat(sent);
  assert.deepEqual(out.subarray(0, 18), hex('4e42444d41474943 49484156454f5054 0003'));
  const { replies, rest } = parseOptReplies(out.subarray(18));
  /** What the engine sent after the first call's input: `later(mark)` with mark = `sent.length` taken before. */
  const later = (mark: number): Buffer => Buffer.concat(sent.slice(mark));
  return { eng, out, replies, rest, after: r.after, sent, later, get result() { return r.result; }, get closed() { return r.closed; }, get tls() { return r.tls; } };
}

const FLAGS = u32(3); // FIXED_NEWSTYLE | NO_ZEROES
const types = (rs: OptReply[]) => rs.map((x) => x.type);

test('full GO session gives identical results however the bytes are split', () => {
  const leftover = req(C.CMD_READ, 1, 0, 512);
  const input = Buffer.concat([
    FLAGS,
    opt(C.OPT_STRUCTURED_REPLY),
    opt(C.OPT_SET_META_CONTEXT, metaData('disk', ['base:allocation'])),
    opt(C.OPT_GO, infoData('disk', [C.INFO_NAME, C.INFO_BLOCK_SIZE])),
    leftover,
  ]);
  let first: Buffer | undefined;
  for (const parts of splits(input)) {
    const h = hs(parts);
    assert.ok(h.result, 'negotiated');
    assert.equal(h.closed, undefined);
    if (!first) first = h.out;
    else assert.deepEqual(h.out, first);
    assert.equal(h.result.exportName, 'disk');
    assert.equal(h.result.structuredReplies, true);
    assert.deepEqual([...h.result.metaContexts], [[1, 'base:allocation']]);
    assert.equal(h.result.blockSizeRequested, true);
    assert.deepEqual(Buffer.concat([h.result.leftover, ...h.after]), leftover);
    assert.equal(h.result.transmissionFlags & C.FLAG_SEND_DF, C.FLAG_SEND_DF);
    assert.deepEqual(types(h.replies), [C.REP_ACK, C.REP_META_CONTEXT, C.REP_ACK, C.REP_INFO, C.REP_INFO, C.REP_INFO, C.REP_ACK]);
    // INFO_EXPORT first, then NAME, then BLOCK_SIZE.
    const infos = h.replies.filter((x) => x.type === C.REP_INFO);
    assert.deepEqual(infos[0].data, Buffer.concat([hex('0000 0000000000100000'), Buffer.from([h.result.transmissionFlags >> 8, h.result.transmissionFlags & 0xff])]));
    assert.deepEqual(infos[1].data, Buffer.concat([hex('0001'), Buffer.from('disk')]));
    assert.deepEqual(infos[2].data, hex('0003 00000200 00001000 00100000'));
  }
});

test('EXPORT_NAME: reply with and without zero padding; unknown name drops', () => {
  let h = hs([FLAGS, opt(C.OPT_EXPORT_NAME, Buffer.from('disk'))]);
  assert.equal(h.result?.exportName, 'disk');
  assert.equal(h.out.length, 18 + 10);
  assert.equal(h.out.readBigUInt64BE(18), 1n << 20n);
  h = hs([u32(1), opt(C.OPT_EXPORT_NAME, Buffer.from('other'))]);
  assert.equal(h.out.length, 18 + 134);
  assert.equal(h.out.readUInt16BE(26) & C.FLAG_READ_ONLY, C.FLAG_READ_ONLY);
  h = hs([FLAGS, opt(C.OPT_EXPORT_NAME, Buffer.from('nope'))]);
  assert.equal(h.result, undefined);
  assert.equal(h.closed?.soft, false);
});

test('empty name selects the default export (first, or the designated one)', () => {
  let h = hs([FLAGS, opt(C.OPT_GO, infoData(''))]);
  assert.equal(h.result?.exportName, 'disk');
  h = hs([FLAGS, opt(C.OPT_GO, infoData(''))], { exports: { ...reg, defaultName: 'other' } });
  assert.equal(h.result?.exportName, 'other');
});

test('LIST returns every export then ACK; data is refused', () => {
  let h = hs([FLAGS, opt(C.OPT_LIST)]);
  assert.deepEqual(types(h.replies), [C.REP_SERVER, C.REP_SERVER, C.REP_ACK]);
  assert.deepEqual(h.replies[0].data, Buffer.concat([u32(4), Buffer.from('diskthe disk')]));
  assert.deepEqual(h.replies[1].data, Buffer.concat([u32(5), Buffer.from('other')]));
  h = hs([FLAGS, opt(C.OPT_LIST, Buffer.from('x')), opt(C.OPT_LIST)]);
  assert.deepEqual(types(h.replies), [C.REP_ERR_INVALID, C.REP_SERVER, C.REP_SERVER, C.REP_ACK]);
});

test('INFO: INFO_EXPORT and BLOCK_SIZE always, DESCRIPTION on request; errors', () => {
  let h = hs([FLAGS, opt(C.OPT_INFO, infoData('disk'))]);
  assert.deepEqual(types(h.replies), [C.REP_INFO, C.REP_INFO, C.REP_ACK]);
  assert.equal(h.replies[0].data.readUInt16BE(0), C.INFO_EXPORT);
  assert.equal(h.replies[1].data.readUInt16BE(0), C.INFO_BLOCK_SIZE);
  assert.equal(h.result, undefined);
  h = hs([FLAGS, opt(C.OPT_INFO, infoData('disk', [C.INFO_DESCRIPTION, 999]))]);
  assert.deepEqual(h.replies[1].data, Buffer.concat([hex('0002'), Buffer.from('the disk')]));
  h = hs([FLAGS, opt(C.OPT_INFO, infoData('nope')), opt(C.OPT_GO, hex('00000009 61 0000')), opt(C.OPT_GO, infoData('other'))]);
  assert.deepEqual(types(h.replies), [C.REP_ERR_UNKNOWN, C.REP_ERR_INVALID, C.REP_INFO, C.REP_INFO, C.REP_ACK]);
  assert.equal(h.result?.exportName, 'other');
  assert.equal(h.result?.blockSizeRequested, false);
});

test('unknown options get ERR_UNSUP with their data consumed; option error strings are short', () => {
  const h = hs([FLAGS, opt(42, Buffer.alloc(1000, 0x41)), opt(C.OPT_EXTENDED_HEADERS), opt(C.OPT_LIST)]);
  assert.deepEqual(types(h.replies), [C.REP_ERR_UNSUP, C.REP_ERR_UNSUP, C.REP_SERVER, C.REP_SERVER, C.REP_ACK]);
  assert.equal(h.replies[0].option, 42);
  assert.ok(h.replies.every((r) => r.data.length < 4096));
});

test('ABORT: ACK then a soft close', () => {
  const h = hs([FLAGS, opt(C.OPT_ABORT, Buffer.from('ignored'))]);
  assert.deepEqual(types(h.replies), [C.REP_ACK]);
  assert.deepEqual(h.closed, { reason: 'client sent NBD_OPT_ABORT', soft: true });
});

test('meta contexts: list, set, wildcard, unknown namespaces, prerequisites', () => {
  let h = hs([FLAGS, opt(C.OPT_LIST_META_CONTEXT, metaData('disk', []))]);
  assert.deepEqual(types(h.replies), [C.REP_ERR_INVALID]); // structured replies first
  h = hs([FLAGS, opt(C.OPT_STRUCTURED_REPLY),
    opt(C.OPT_LIST_META_CONTEXT, metaData('disk', [])),
    opt(C.OPT_LIST_META_CONTEXT, metaData('disk', ['base:'])),
    opt(C.OPT_LIST_META_CONTEXT, metaData('disk', ['qemu:dirty-bitmap:x'])),
    opt(C.OPT_SET_META_CONTEXT, metaData('disk', ['base:'])),
    opt(C.OPT_SET_META_CONTEXT, metaData('disk', ['nocolon'])),
    opt(C.OPT_SET_META_CONTEXT, metaData('nope', ['base:allocation'])),
    opt(C.OPT_SET_META_CONTEXT, hex('00000004 6469736b 00000001 000000ff')),
  ]);
  assert.deepEqual(types(h.replies), [
    C.REP_ACK,
    C.REP_META_CONTEXT, C.REP_ACK,
    C.REP_META_CONTEXT, C.REP_ACK,
    C.REP_ACK,
    C.REP_ACK, // "base:" selects nothing in SET
    C.REP_ERR_INVALID,
    C.REP_ERR_UNKNOWN,
    C.REP_ERR_INVALID,
  ]);
  assert.deepEqual(h.replies[1].data, Buffer.concat([u32(0), Buffer.from('base:allocation')]));
});

test('contexts selected for another export do not carry over to GO', () => {
  const h = hs([FLAGS, opt(C.OPT_STRUCTURED_REPLY), opt(C.OPT_SET_META_CONTEXT, metaData('other', ['base:allocation'])), opt(C.OPT_GO, infoData('disk'))]);
  assert.equal(h.result?.metaContexts.size, 0);
  const h2 = hs([FLAGS, opt(C.OPT_STRUCTURED_REPLY), opt(C.OPT_SET_META_CONTEXT, metaData('', ['base:allocation'])), opt(C.OPT_GO, infoData('disk'))]);
  assert.equal(h2.result?.metaContexts.size, 1);
});

test('STARTTLS with TLS off is refused by policy', () => {
  const h = hs([FLAGS, opt(C.OPT_STARTTLS), opt(C.OPT_STARTTLS, Buffer.from('x'))]);
  assert.deepEqual(types(h.replies), [C.REP_ERR_POLICY, C.REP_ERR_INVALID]);
  assert.equal(h.tls, 0);
});

test('STARTTLS (optional TLS): ACK, upgrade, negotiation state forgotten, second STARTTLS invalid', () => {
  const h = hs([FLAGS, opt(C.OPT_STRUCTURED_REPLY), opt(C.OPT_STARTTLS)], { tlsMode: 'on' });
  assert.deepEqual(types(h.replies), [C.REP_ACK, C.REP_ACK]);
  assert.equal(h.tls, 1);
  assert.equal(h.eng.state, 'tls');
  h.eng.tlsStarted();
  assert.equal(h.eng.tlsActive, true);
  const mark = h.sent.length;
  h.eng.push(Buffer.concat([opt(C.OPT_STARTTLS), opt(C.OPT_GO, infoData('disk'))]));
  const rs = parseOptReplies(h.later(mark)).replies;
  assert.deepEqual(types(rs), [C.REP_ERR_INVALID, C.REP_INFO, C.REP_INFO, C.REP_ACK]);
  assert.equal(h.result?.structuredReplies, false, 'STRUCTURED_REPLY before STARTTLS is forgotten');
});

test('plaintext after the STARTTLS ACK drops the connection', () => {
  const h = hs([FLAGS, Buffer.concat([opt(C.OPT_STARTTLS), Buffer.from('junk')])], { tlsMode: 'on' });
  assert.equal(h.closed?.soft, false);
  assert.equal(h.tls, 0);
});

test('TLS required: options refused with TLS_REQD, EXPORT_NAME drops, ABORT works', () => {
  let h = hs([FLAGS, opt(C.OPT_LIST), opt(C.OPT_GO, infoData('disk')), opt(C.OPT_STRUCTURED_REPLY), opt(C.OPT_ABORT)], { tlsMode: 'require' });
  assert.deepEqual(types(h.replies), [C.REP_ERR_TLS_REQD, C.REP_ERR_TLS_REQD, C.REP_ERR_TLS_REQD, C.REP_ACK]);
  assert.equal(h.closed?.soft, true);
  h = hs([FLAGS, opt(C.OPT_EXPORT_NAME, Buffer.from('disk'))], { tlsMode: 'require' });
  assert.equal(h.result, undefined);
  assert.equal(h.closed?.soft, false);
  h = hs([FLAGS, opt(C.OPT_STARTTLS)], { tlsMode: 'require' });
  assert.equal(h.tls, 1);
  h.eng.tlsStarted();
  h.eng.push(opt(C.OPT_EXPORT_NAME, Buffer.from('disk')));
  assert.equal(h.result?.exportName, 'disk');
});

test('client flags: unknown bits drop; non-fixed clients only get EXPORT_NAME', () => {
  assert.equal(hs([u32(4)]).closed?.soft, false);
  assert.equal(hs([u32(0), opt(C.OPT_LIST)]).closed?.soft, false);
  assert.equal(hs([u32(0), opt(C.OPT_EXPORT_NAME, Buffer.from('disk'))]).result?.exportName, 'disk');
  assert.equal(hs([u32(0)], { tlsMode: 'require' }).closed?.soft, false);
});

test('bad option magic drops', () => {
  const h = hs([FLAGS, hex('49484156454f5055 00000003 00000000')]);
  assert.equal(h.closed?.soft, false);
});

test('limits: option count, oversized and absurd option data', () => {
  const many = Array.from({ length: 65 }, () => opt(C.OPT_STRUCTURED_REPLY));
  let h = hs([FLAGS, ...many]);
  assert.equal(h.replies.length, 64);
  assert.equal(h.closed?.soft, false);
  h = hs([FLAGS, opt(C.OPT_INFO, Buffer.alloc(100 * 1024)), opt(C.OPT_LIST)]);
  assert.deepEqual(types(h.replies), [C.REP_ERR_TOO_BIG, C.REP_SERVER, C.REP_SERVER, C.REP_ACK]);
  h = hs([FLAGS, Buffer.concat([hex('49484156454f5054'), u32(C.OPT_INFO), u32(2 * 1024 * 1024)])]);
  assert.equal(h.closed?.soft, false);
  h = hs([FLAGS, opt(C.OPT_EXPORT_NAME, Buffer.alloc(70 * 1024, 0x61))]);
  assert.equal(h.closed?.soft, false);
  assert.equal(h.result, undefined);
});

test('shutdown: options answered with ERR_SHUTDOWN, ABORT still ACKed', () => {
  const h = hs([FLAGS]);
  h.eng.shutdown();
  const mark = h.sent.length;
  h.eng.push(Buffer.concat([opt(C.OPT_GO, infoData('disk')), opt(C.OPT_ABORT)]));
  assert.deepEqual(types(parseOptReplies(h.later(mark)).replies), [C.REP_ERR_SHUTDOWN, C.REP_ACK]);
});
