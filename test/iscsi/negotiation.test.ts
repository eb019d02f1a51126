import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildProposal, KEYS, OperationalNegotiation, parseNumber } from '../../src/iscsi/negotiation';
import { ConfigError, ProtocolError } from '../../src/errors';
import type { TextPair } from '../../src/iscsi/text';

test('negotiation: key table covers RFC 7143 keys with kinds and result functions', () => {
  for (const k of ['HeaderDigest', 'DataDigest', 'MaxConnections', 'SendTargets', 'TargetName', 'InitiatorName', 'TargetAlias',
    'InitiatorAlias', 'TargetAddress', 'TargetPortalGroupTag', 'InitialR2T', 'ImmediateData', 'MaxRecvDataSegmentLength',
    'MaxBurstLength', 'FirstBurstLength', 'DefaultTime2Wait', 'DefaultTime2Retain', 'MaxOutstandingR2T', 'DataPDUInOrder',
    'DataSequenceInOrder', 'ErrorRecoveryLevel', 'SessionType', 'TaskReporting', 'iSCSIProtocolLevel', 'AuthMethod']) {
    assert.ok(KEYS.has(k), k);
  }
  assert.equal(KEYS.get('MaxRecvDataSegmentLength')!.kind, 'declarative');
  assert.equal(KEYS.get('MaxRecvDataSegmentLength')!.scope, 'connection');
  assert.equal(KEYS.get('InitialR2T')!.result, 'or');
  assert.equal(KEYS.get('ImmediateData')!.result, 'and');
  assert.equal(KEYS.get('DefaultTime2Wait')!.result, 'max');
  assert.equal(KEYS.get('MaxBurstLength')!.result, 'min');
  assert.equal(parseNumber('0x10'), 16);
  assert.equal(parseNumber('12a'), undefined);
});

test('negotiation: default proposal favours speed', () => {
  const m = new Map(buildProposal());
  assert.equal(m.get('ImmediateData'), 'Yes');
  assert.equal(m.get('InitialR2T'), 'No');
  assert.equal(m.get('MaxBurstLength'), '16776192');
  assert.equal(m.get('FirstBurstLength'), '262144');
  assert.equal(m.get('MaxRecvDataSegmentLength'), '262144');
  assert.equal(m.get('MaxOutstandingR2T'), '1');
  assert.equal(m.get('DataPDUInOrder'), 'Yes');
  assert.equal(m.get('DataSequenceInOrder'), 'Yes');
  assert.equal(m.get('ErrorRecoveryLevel'), '0');
  assert.equal(m.get('HeaderDigest'), 'None');
  const c = new Map(buildProposal({ headerDigest: 'CRC32C,None', dataDigest: ['CRC32C'], maxRecvDataSegmentLength: 1048576, maxOutstandingR2T: 4 }));
  assert.equal(c.get('HeaderDigest'), 'CRC32C,None');
  assert.equal(c.get('DataDigest'), 'CRC32C');
  assert.equal(c.get('MaxRecvDataSegmentLength'), '1048576');
  assert.equal(c.get('MaxOutstandingR2T'), '4');
  // discovery: only digests and MRDSL
  assert.deepEqual(buildProposal({}, 'Discovery').map(([k]) => k), ['HeaderDigest', 'DataDigest', 'MaxRecvDataSegmentLength']);
  assert.throws(() => buildProposal({ headerDigest: 'MD5' as never }), ConfigError);
  assert.throws(() => buildProposal({ maxRecvDataSegmentLength: 100 }), ConfigError);
  assert.throws(() => buildProposal({ firstBurstLength: 1 << 20, maxBurstLength: 65536 }), ConfigError);
});

test('negotiation: typical tgt answers', () => {
  const n = new OperationalNegotiation({ headerDigest: 'CRC32C,None' });
  n.proposal();
  assert.equal(n.complete, false);
  const replies = n.receive([
    ['HeaderDigest', 'CRC32C'], ['DataDigest', 'None'], ['InitialR2T', 'Yes'], ['ImmediateData', 'Yes'],
    ['MaxBurstLength', '262144'], ['FirstBurstLength', '65536'], ['MaxConnections', '1'], ['MaxOutstandingR2T', '1'],
    ['DefaultTime2Wait', '2'], ['DefaultTime2Retain', '0'], ['DataPDUInOrder', 'Yes'], ['DataSequenceInOrder', 'Yes'],
    ['ErrorRecoveryLevel', '0'], ['MaxRecvDataSegmentLength', '65536'], ['TargetAlias', 'disk'],
  ]);
  assert.deepEqual(replies, []);
  assert.ok(n.complete);
  const r = n.result();
  assert.equal(r.headerDigest, true);
  assert.equal(r.dataDigest, false);
  assert.equal(r.initialR2T, true);
  assert.equal(r.immediateData, true);
  assert.equal(r.maxBurstLength, 262144);
  assert.equal(r.firstBurstLength, 65536);
  assert.equal(r.maxRecvDataSegmentLength, 262144); // ours
  assert.equal(r.maxXmitDataSegmentLength, 65536); // the target's
  assert.equal(r.targetAlias, 'disk');
});

test('negotiation: answers outside our offer are protocol errors', () => {
  const cases: TextPair[] = [
    ['MaxBurstLength', '16777215'], // above our offer with min()
    ['MaxBurstLength', '100'], // below the key's range
    ['DefaultTime2Wait', '1'], // below our offer with max()
    ['ImmediateData', 'Maybe'],
    ['HeaderDigest', 'CRC32C'], // we offered None only
    ['MaxRecvDataSegmentLength', '100'], // declared below 512
    ['ErrorRecoveryLevel', '3'],
  ];
  for (const pair of cases) {
    const n = new OperationalNegotiation();
    n.proposal();
    assert.throws(() => n.receive([pair]), ProtocolError, pair.join('='));
  }
  const n = new OperationalNegotiation({ immediateData: false, initialR2T: true });
  n.proposal();
  assert.throws(() => n.receive([['ImmediateData', 'Yes']]), ProtocolError); // AND with our No
  assert.throws(() => n.receive([['InitialR2T', 'No']]), ProtocolError); // OR with our Yes
});

test('negotiation: NotUnderstood / Irrelevant / Reject leave defaults', () => {
  const n = new OperationalNegotiation();
  n.proposal();
  n.receive([['MaxBurstLength', 'NotUnderstood'], ['ImmediateData', 'Reject'], ['FirstBurstLength', 'Irrelevant']]);
  const r = n.result();
  assert.equal(r.maxBurstLength, 262144);
  assert.equal(r.immediateData, true);
  assert.equal(r.firstBurstLength, 65536);
  assert.deepEqual(r.notUnderstood, ['MaxBurstLength']);
});

test('negotiation: answering keys the target offers first', () => {
  const n = new OperationalNegotiation({ maxOutstandingR2T: 8 });
  n.proposal();
  const replies = n.receive([
    ['X-com.example.Foo', 'bar'], ['X#vendor', '1'], ['Unknown', '1'], ['TaskReporting', 'FastAbort,RFC3720'],
    ['OFMarker', 'Yes'], ['IFMarkInt', '2048~4096'], ['iSCSIProtocolLevel', '2'], ['MaxOutstandingR2T', '4'],
  ]);
  assert.deepEqual(replies, [
    ['X-com.example.Foo', 'NotUnderstood'], ['X#vendor', 'NotUnderstood'], ['Unknown', 'NotUnderstood'],
    ['TaskReporting', 'RFC3720'], ['OFMarker', 'No'], ['IFMarkInt', 'Irrelevant'], ['iSCSIProtocolLevel', '1'],
  ]);
  const r = n.result();
  assert.equal(r.maxOutstandingR2T, 4);
  assert.equal(r.taskReporting, 'RFC3720');
  // numeric offers: min/max applied, out of range rejected
  const m = new OperationalNegotiation({}, 'Normal');
  assert.deepEqual(m.receive([['DefaultTime2Wait', '5'], ['MaxConnections', '8'], ['MaxBurstLength', '1']]),
    [['DefaultTime2Wait', '5'], ['MaxConnections', '1'], ['MaxBurstLength', 'Reject']]);
  // discovery: session keys are irrelevant
  const d = new OperationalNegotiation({}, 'Discovery');
  d.proposal();
  assert.deepEqual(d.receive([['InitialR2T', 'Yes']]), [['InitialR2T', 'Irrelevant']]);
});

test('negotiation: FirstBurstLength irrelevant with InitialR2T=Yes and ImmediateData=No, and never above MaxBurstLength', () => {
  const n = new OperationalNegotiation();
  n.proposal();
  n.receive([['InitialR2T', 'Yes'], ['ImmediateData', 'No']]);
  assert.equal(n.result().firstBurstLength, 0);
  const m = new OperationalNegotiation();
  m.proposal();
  m.receive([['MaxBurstLength', '65536'], ['FirstBurstLength', '262144']]);
  assert.equal(m.result().firstBurstLength, 65536);
});

test('negotiation: an answer repeated with another value is an error', () => {
  const n = new OperationalNegotiation();
  n.proposal();
  n.receive([['MaxBurstLength', '65536']]);
  n.receive([['MaxBurstLength', '65536']]);
  assert.throws(() => n.receive([['MaxBurstLength', '4096']]), ProtocolError);
});
