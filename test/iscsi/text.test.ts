import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodeText, encodeText, SEND_TARGETS_REPEATABLE, splitText, TextCollector, textToMap } from '../../src/iscsi/text';
import { IscsiNbdError, ProtocolError } from '../../src/errors';

const b = (s: string) => Buffer.from(s, 'latin1');

test('text: encode in order with NUL after every pair', () => {
  assert.deepEqual(encodeText([['InitiatorName', 'iqn.2026-11.io.x:a'], ['SessionType', 'Normal']]),
    b('InitiatorName=iqn.2026-11.io.x:a\0SessionType=Normal\0'));
  assert.deepEqual(encodeText({ HeaderDigest: 'CRC32C,None', X_empty: '' }), b('HeaderDigest=CRC32C,None\0X_empty=\0'));
  assert.deepEqual(encodeText([]), Buffer.alloc(0));
});

test('text: encode refuses bad keys and values', () => {
  assert.throws(() => encodeText([['1digit', 'x']]), RangeError);
  assert.throws(() => encodeText([['Bad#key', 'x']]), RangeError);
  assert.throws(() => encodeText([['A'.repeat(64), 'x']]), RangeError);
  assert.throws(() => encodeText([['Key', 'a\0b']]), RangeError);
  assert.throws(() => encodeText([['Key', 'x'.repeat(256)]]), RangeError);
  encodeText([['A'.repeat(63), 'x'.repeat(255)]]);
  encodeText([['CHAP_C', '0x' + 'ab'.repeat(1024)]]); // long binary value allowed
});

test('text: decode', () => {
  assert.deepEqual(decodeText(b('TargetName=iqn.x\0MaxRecvDataSegmentLength=262144\0')),
    [['TargetName', 'iqn.x'], ['MaxRecvDataSegmentLength', '262144']]);
  assert.deepEqual(decodeText(b('A=\0')), [['A', '']]);
  assert.deepEqual(decodeText(b('A=b=c\0')), [['A', 'b=c']]); // value is all after the first "="
  assert.deepEqual(decodeText(b('A=1\0\0\0')), [['A', '1']]); // stray NULs skipped
  assert.deepEqual(decodeText(Buffer.alloc(0)), []);
  assert.deepEqual(decodeText(Buffer.from('TargetAlias=d\u00e9j\u00e0\0', 'utf8')), [['TargetAlias', 'd\u00e9j\u00e0']]);
  assert.deepEqual(decodeText(b(`CHAP_C=0x${'ab'.repeat(600)}\0`))[0][1].length, 1202);
});

test('text: decode errors', () => {
  assert.throws(() => decodeText(b('A=1')), /NUL/);
  assert.throws(() => decodeText(b('novalue\0')), ProtocolError);
  assert.throws(() => decodeText(b('-dash=1\0')), ProtocolError);
  assert.throws(() => decodeText(b(`${'K'.repeat(64)}=1\0`)), ProtocolError);
  assert.throws(() => decodeText(b(`K=${'v'.repeat(256)}\0`)), ProtocolError);
  assert.throws(() => decodeText(b('A=1\0A=2\0')), /repeated/);
});

test('text: duplicates allowed where asked (SendTargets)', () => {
  const st = b('TargetName=iqn.a\0TargetAddress=10.0.0.1:3260,1\0TargetAddress=[::1]:3260,1\0TargetName=iqn.b\0');
  assert.equal(decodeText(st, { allowDuplicates: SEND_TARGETS_REPEATABLE }).length, 4);
  assert.equal(decodeText(st, { allowDuplicates: true }).length, 4);
  assert.throws(() => decodeText(b('TargetName=a\0MaxBurstLength=1\0MaxBurstLength=2\0'), { allowDuplicates: SEND_TARGETS_REPEATABLE }));
  assert.deepEqual(textToMap([['A', '1'], ['B', '2']]), new Map([['A', '1'], ['B', '2']]));
});

test('text: collector joins C-bit pieces cut anywhere, including inside a pair', () => {
  const whole = b(`CHAP_A=5\0CHAP_I=7\0CHAP_C=0x${'0f'.repeat(300)}\0TargetAlias=x\0`);
  for (const n of [1, 7, 100, 255, whole.length]) {
    const c = new TextCollector();
    const pieces = splitText(whole, n);
    for (let i = 0; i < pieces.length - 1; i++) {
      assert.equal(c.add(pieces[i], true), undefined);
      assert.ok(c.pending);
    }
    const pairs = c.add(pieces[pieces.length - 1], false)!;
    assert.equal(pairs.length, 4);
    assert.equal(pairs[2][1].length, 602);
    assert.ok(!c.pending);
  }
});

test('text: collector total bound and incomplete final piece', () => {
  const c = new TextCollector(100);
  c.add(Buffer.alloc(60, 0x41), true);
  assert.throws(() => c.add(Buffer.alloc(60, 0x41), true), ProtocolError);
  assert.ok(!c.pending); // reset after the error
  assert.throws(() => new TextCollector().add(b('A=1\0B=2'), false), /NUL/);
});

test('text: random bytes only raise our errors; random pairs round-trip', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (arr) => {
    try {
      decodeText(Buffer.from(arr));
    } catch (e) {
      assert.ok(e instanceof IscsiNbdError);
    }
  }), { numRuns: 2000 });
  const key = fc.stringMatching(/^[A-Z][A-Za-z0-9.+@_-]{0,20}$/);
  const value = fc.string({ maxLength: 60 }).filter((s) => !s.includes('\0'));
  fc.assert(fc.property(fc.uniqueArray(fc.tuple(key, value), { selector: (p) => p[0], maxLength: 10 }), (pairs) => {
    const nonEmptyPairs = pairs as [string, string][];
    assert.deepEqual(decodeText(encodeText(nonEmptyPairs)), nonEmptyPairs);
  }), { numRuns: 500 });
});

test('text: vendor extension keys (X-, X#) accepted, with long values', () => {
  const pairs = decodeText(b(`X#vendor=1\0X-com.example.big=${'v'.repeat(1000)}\0`));
  assert.equal(pairs.length, 2);
  assert.throws(() => decodeText(b('X#=1\0')), ProtocolError);
});

test('RFC 7144 iSCSIProtocolLevel is a valid key', () => {
  const { isValidKey, decodeText } = require('../../src/iscsi/text') as typeof import('../../src/iscsi/text');
  assert.equal(isValidKey('iSCSIProtocolLevel'), true);
  assert.deepEqual(decodeText(Buffer.from('iSCSIProtocolLevel=1\0')), [['iSCSIProtocolLevel', '1']]);
});
