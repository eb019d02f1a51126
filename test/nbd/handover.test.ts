import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeHandover, parseHandover, HandoverError, type HandoverState } from '../../src/nbd/handover';

const STATE: HandoverState = { exportName: 'e1', structuredReplies: true, metaContexts: [[1, 'base:allocation']], transmissionFlags: 0x1ed, blockSizeRequested: false, label: '127.0.0.1:10809' };

/** The record built by hand from the layout in handover.ts, not by the encoder. */
function fixture(json: string, unread: Buffer): Buffer {
  const j = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(j.length);
  return Buffer.concat([Buffer.from('INBDHO01', 'latin1'), len, j, unread]);
}

const JSON_TEXT = '{"exportName":"e1","structuredReplies":true,"metaContexts":[[1,"base:allocation"]],"transmissionFlags":493,"blockSizeRequested":false,"label":"127.0.0.1:10809"}';

test('handover record: the hand-built fixture parses, and the encoder writes the same bytes', () => {
  const unread = Buffer.from([0x25, 0x60, 0x95, 0x13, 0, 1]);
  const f = fixture(JSON_TEXT, unread);
  const p = parseHandover(f);
  assert.deepEqual(p.state, STATE);
  assert.ok(p.unread.equals(unread));
  assert.ok(encodeHandover(STATE, unread).equals(f));
  assert.equal(parseHandover(fixture(JSON_TEXT, Buffer.alloc(0))).unread.length, 0);
});

test('handover record: every truncation inside the header or state is refused with EPROTO, never taken', () => {
  const f = fixture(JSON_TEXT, Buffer.alloc(0));
  for (let n = 0; n < f.length; n++) {
    assert.throws(() => parseHandover(f.subarray(0, n)), (e: unknown) => e instanceof HandoverError && e.code === 'EPROTO', `cut at ${n}`);
  }
});

test('handover record: a wrong magic, an oversized length, non-JSON and a wrong shape are refused', () => {
  const bad = (b: Buffer): void => assert.throws(() => parseHandover(b), HandoverError);
  const f = fixture(JSON_TEXT, Buffer.alloc(0));
  const m = Buffer.from(f);
  m[0] ^= 1;
  bad(m);
  const big = Buffer.from(f);
  big.writeUInt32BE(0xffffffff, 8);
  bad(big);
  bad(fixture('{not json', Buffer.alloc(0)));
  bad(fixture('null', Buffer.alloc(0)));
  bad(fixture(JSON_TEXT.replace('493', '"493"'), Buffer.alloc(0)));
  bad(fixture(JSON_TEXT.replace('493', '70000'), Buffer.alloc(0)));
  bad(fixture(JSON_TEXT.replace('[[1,"base:allocation"]]', '[[1]]'), Buffer.alloc(0)));
  bad(fixture(JSON_TEXT.replace('"label":"127.0.0.1:10809"', '"label":7'), Buffer.alloc(0)));
});
