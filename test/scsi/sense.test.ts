import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ScsiError, nbdErrnoOf, NBD_ENOSPC, NBD_EPERM, NBD_EINVAL, NBD_ENOTSUP, NBD_EIO } from '../../src/errors';
import { classify, describeOutcome, parseSense, scsiError, SK, ascName } from '../../src/scsi/sense';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('fixed sense: current, VALID information, SKSV', () => {
  // VALID|0x70, key MEDIUM ERROR, INFORMATION 0x4d2, add. len 10, ASC 11 ASCQ 00, SKSV set
  const s = parseSense(hex('f0 00 03 000004d2 0a 00000000 11 00 00 80 12 34'))!;
  assert.equal(s.descriptor, false);
  assert.equal(s.deferred, false);
  assert.equal(s.senseKey, SK.MEDIUM_ERROR);
  assert.equal(s.asc, 0x11);
  assert.equal(s.ascq, 0x00);
  assert.equal(s.information, 1234n);
  assert.equal(s.senseKeySpecific, 0x1234);
  assert.equal(describeOutcome(2, s), 'MEDIUM ERROR: unrecovered read error (11/00) at LBA 1234');
});

test('fixed sense: deferred, no VALID, ILI, truncated', () => {
  const s = parseSense(hex('71 00 26 00000000 06 00000000 2a 09'))!;
  assert.equal(s.deferred, true);
  assert.equal(s.senseKey, SK.UNIT_ATTENTION);
  assert.equal(s.ili, true);
  assert.equal(s.information, undefined);
  assert.deepEqual([s.asc, s.ascq], [0x2a, 0x09]);
  // cut before ASC: key only
  const t = parseSense(hex('70 00 05 00000000 0a'))!;
  assert.deepEqual([t.senseKey, t.asc, t.ascq], [5, 0, 0]);
  // additional sense length says the ASC is not there
  assert.deepEqual([parseSense(hex('70 00 05 00000000 00 00000000 24 00'))!.asc], [0]);
  assert.equal(parseSense(hex('70'))!.senseKey, 0);
});

test('descriptor sense: information and sense-key-specific descriptors', () => {
  const s = parseSense(hex('72 03 11 00 00 00 00 14' + '00 0a 80 00 0000000100000000' + '02 06 00 00 80 00 10 00'))!;
  assert.equal(s.descriptor, true);
  assert.equal(s.senseKey, 3);
  assert.equal(s.information, 0x100000000n);
  assert.equal(s.senseKeySpecific, 0x10);
  const d = parseSense(hex('73 06 29 00 00 00 00 00'))!;
  assert.equal(d.deferred, true);
  assert.equal(d.information, undefined);
  // descriptor cut short: ignored
  assert.equal(parseSense(hex('72 03 11 00 00 00 00 0c 00 0a 80 00 0000'))!.information, undefined);
});

test('unknown or empty sense', () => {
  assert.equal(parseSense(undefined), undefined);
  assert.equal(parseSense(Buffer.alloc(0)), undefined);
  assert.equal(parseSense(hex('7f 00 00')), undefined);
});

test('fuzz: parseSense never throws', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), fc.constantFrom(0x70, 0x71, 0x72, 0x73, 0xf0), (a, rc) => {
    const b = Buffer.from(a);
    parseSense(b);
    if (b.length) { b[0] = rc; parseSense(b); }
  }), { numRuns: 3000 });
});

const fx = (key: number, asc: number, ascq: number): Buffer => {
  const b = Buffer.alloc(18);
  b[0] = 0x70; b[2] = key; b[7] = 10; b[12] = asc; b[13] = ascq;
  return b;
};
const cls = (status: number, key?: number, asc = 0, ascq = 0) =>
  classify(status, key === undefined ? undefined : parseSense(fx(key, asc, ascq)));

test('the table', () => {
  const cases: Array<[number, number | undefined, number, number, string, string]> = [
    [0x00, undefined, 0, 0, 'success', 'ESCSI_IO'],
    [0x04, undefined, 0, 0, 'success', 'ESCSI_IO'],
    [0x08, undefined, 0, 0, 'retry-backoff', 'ESCSI_RETRY'],
    [0x28, undefined, 0, 0, 'retry-backoff', 'ESCSI_RETRY'],
    [0x18, undefined, 0, 0, 'fail', 'ESCSI_IO'],
    [0x40, undefined, 0, 0, 'retry', 'ESCSI_ABORTED'],
    [0x30, undefined, 0, 0, 'fail', 'ESCSI_IO'],
    [0x02, undefined, 0, 0, 'fail', 'ESCSI_IO'],
    [0x02, SK.RECOVERED_ERROR, 0x17, 0x01, 'success', 'ESCSI_IO'],
    [0x02, SK.NO_SENSE, 0, 0, 'retry', 'ESCSI_RETRY'],
    [0x02, SK.UNIT_ATTENTION, 0x29, 0x00, 'retry', 'ESCSI_RETRY'],
    [0x02, SK.UNIT_ATTENTION, 0x3f, 0x0e, 'retry', 'ESCSI_RETRY'],
    [0x02, SK.NOT_READY, 0x3a, 0x02, 'fail', 'ESCSI_NOMEDIUM'],
    [0x02, SK.NOT_READY, 0x04, 0x01, 'retry-backoff', 'ESCSI_IO'],
    [0x02, SK.NOT_READY, 0x04, 0x02, 'fail', 'ESCSI_IO'],
    [0x02, SK.ABORTED_COMMAND, 0x47, 0x00, 'retry', 'ESCSI_ABORTED'],
    [0x02, SK.DATA_PROTECT, 0x27, 0x07, 'fail', 'ESCSI_NOSPACE'],
    [0x02, SK.DATA_PROTECT, 0x27, 0x00, 'fail', 'ESCSI_WRITE_PROTECT'],
    [0x02, SK.DATA_PROTECT, 0x27, 0x02, 'fail', 'ESCSI_WRITE_PROTECT'],
    [0x02, SK.ILLEGAL_REQUEST, 0x20, 0x00, 'fail', 'ESCSI_UNSUPPORTED'],
    [0x02, SK.ILLEGAL_REQUEST, 0x21, 0x00, 'fail', 'ESCSI_NOSPACE'],
    [0x02, SK.ILLEGAL_REQUEST, 0x24, 0x00, 'fail', 'ESCSI_INVALID'],
    [0x02, SK.ILLEGAL_REQUEST, 0x26, 0x02, 'fail', 'ESCSI_INVALID'],
    [0x02, SK.ILLEGAL_REQUEST, 0x1a, 0x00, 'fail', 'ESCSI_INVALID'],
    [0x02, SK.ILLEGAL_REQUEST, 0x25, 0x00, 'retry-backoff', 'ESCSI_IO'],
    [0x02, SK.ILLEGAL_REQUEST, 0x2c, 0x00, 'fail', 'ESCSI_IO'],
    [0x02, SK.MEDIUM_ERROR, 0x11, 0x00, 'fail', 'ESCSI_MEDIUM'],
    [0x02, SK.HARDWARE_ERROR, 0x44, 0x00, 'fail', 'ESCSI_MEDIUM'],
    [0x02, SK.MISCOMPARE, 0x1d, 0x00, 'fail', 'ESCSI_IO'],
    [0x02, SK.VOLUME_OVERFLOW, 0, 0, 'fail', 'ESCSI_IO'],
    [0x02, SK.BLANK_CHECK, 0, 0, 'fail', 'ESCSI_IO'],
    [0x22, undefined, 0, 0, 'fail', 'ESCSI_IO'],
  ];
  for (const [st, key, a, q, action, code] of cases) {
    const o = cls(st, key, a, q);
    assert.deepEqual([o.action, o.code], [action, code], `status ${st} key ${key} ${a}/${q}`);
  }
  assert.equal(cls(0x02, SK.ABORTED_COMMAND).maxRetries, 3);
  // deferred errors: the current command was not run, retry it
  const def = parseSense(hex('71 00 03 00000000 0a 00000000 0c 00'));
  assert.equal(classify(0x02, def).action, 'retry');
});

test('mapped codes reach the right NBD errno', () => {
  const e = (key: number, asc: number, ascq: number): ScsiError => {
    const s = parseSense(fx(key, asc, ascq));
    return scsiError(classify(2, s).code, 2, s, 'WRITE(10)');
  };
  assert.equal(nbdErrnoOf(e(SK.ILLEGAL_REQUEST, 0x21, 0)), NBD_ENOSPC);
  assert.equal(nbdErrnoOf(e(SK.DATA_PROTECT, 0x27, 0)), NBD_EPERM);
  assert.equal(nbdErrnoOf(e(SK.ILLEGAL_REQUEST, 0x24, 0)), NBD_EINVAL);
  assert.equal(nbdErrnoOf(e(SK.ILLEGAL_REQUEST, 0x20, 0)), NBD_ENOTSUP);
  assert.equal(nbdErrnoOf(e(SK.MEDIUM_ERROR, 0x11, 0)), NBD_EIO);
});

test('scsiError messages', () => {
  const s = parseSense(hex('f0 00 03 000004d2 0a 00000000 11 00 00 00 00 00'));
  const err = scsiError('ESCSI_MEDIUM', 2, s, 'READ(10)');
  assert.ok(err instanceof ScsiError);
  assert.equal(err.message, 'READ(10): MEDIUM ERROR: unrecovered read error (11/00) at LBA 1234');
  assert.deepEqual([err.code, err.status, err.senseKey, err.asc, err.ascq], ['ESCSI_MEDIUM', 2, 3, 0x11, 0]);
  assert.equal(scsiError('ESCSI_RETRY', 0x08).message, 'BUSY');
  assert.equal(scsiError('ESCSI_IO', 0x02).message, 'CHECK CONDITION (no sense data)');
  assert.equal(describeOutcome(2, parseSense(fx(5, 0x24, 0x01))), 'ILLEGAL REQUEST: invalid field in CDB (24/01)');
  assert.equal(describeOutcome(2, parseSense(fx(5, 0x99, 0x42))), 'ILLEGAL REQUEST: additional sense (99/42)');
  assert.equal(ascName(0x3a, 0x02), 'medium not present');
  assert.equal(ascName(0x2a, 0x09), 'capacity data has changed');
});
