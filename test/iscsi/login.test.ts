import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChapAlgorithmRejectedError, LoginEngine, LoginOptions, LoginStep, loginHint, loginStatusError, parseTargetAddress, withAclHint, withoutHint } from '../../src/iscsi/login';
import { chapResponse, decodeChapBinary, encodeChapBinary } from '../../src/iscsi/chap';
import { decodePdu, encodePdu, LoginRequestPdu, LoginResponsePdu } from '../../src/iscsi/pdu';
import { decodeText, encodeText, TextPair } from '../../src/iscsi/text';
import { LoginError, ProtocolError } from '../../src/errors';

const INI = 'iqn.2026-11.io.iscsi-nbd:test';
const TGT = 'iqn.2003-01.org.linux-iscsi.box:disk1';
const ISID = 0x80123456789a;

function opts(extra: Partial<LoginOptions> = {}): LoginOptions {
  return { initiatorName: INI, targetName: TGT, isid: ISID, cid: 1, itt: 5, cmdSN: 10, expStatSN: 0, ...extra };
}

let statSN = 100;
function resp(p: Partial<LoginResponsePdu> & { keys?: TextPair[]; data?: Buffer }): LoginResponsePdu {
  const { keys, ...rest } = p;
  const r: LoginResponsePdu = {
    opcode: 0x23, transit: false, continue: false, csg: 0, nsg: 0, versionMax: 0, versionActive: 0, isid: ISID,
    tsih: 0, itt: 5, statSN: statSN++, expCmdSN: 10, maxCmdSN: 41, statusClass: 0, statusDetail: 0,
    data: keys ? encodeText(keys) : Buffer.alloc(0), ...rest,
  } as LoginResponsePdu;
  // Go through the wire format so the fake target speaks real bytes.
  return decodePdu(encodePdu(r)) as LoginResponsePdu;
}

function sent(step: LoginStep): LoginRequestPdu {
  assert.ok('send' in step, `expected a request, got ${JSON.stringify(Object.keys(step))}`);
  const pdu = (step as { send: LoginRequestPdu }).send;
  return decodePdu(encodePdu(pdu)) as LoginRequestPdu;
}

const keysOf = (p: LoginRequestPdu) => new Map(decodeText(p.data));

const OP_ANSWERS: TextPair[] = [
  ['HeaderDigest', 'None'], ['DataDigest', 'None'], ['InitialR2T', 'No'], ['ImmediateData', 'Yes'],
  ['MaxBurstLength', '1048576'], ['FirstBurstLength', '262144'], ['MaxConnections', '1'], ['MaxOutstandingR2T', '1'],
  ['DefaultTime2Wait', '2'], ['DefaultTime2Retain', '0'], ['DataPDUInOrder', 'Yes'], ['DataSequenceInOrder', 'Yes'],
  ['ErrorRecoveryLevel', '0'], ['MaxRecvDataSegmentLength', '131072'],
];

test('login: no auth, straight to operational and full feature phase', () => {
  const e = new LoginEngine(opts());
  const first = decodePdu(encodePdu(e.start())) as LoginRequestPdu;
  assert.equal(first.csg, 1);
  assert.equal(first.nsg, 3);
  assert.ok(first.transit);
  assert.equal(first.isid, ISID);
  assert.equal(first.tsih, 0);
  assert.equal(first.cid, 1);
  assert.equal(first.cmdSN, 10);
  const k = keysOf(first);
  assert.equal(k.get('InitiatorName'), INI);
  assert.equal(k.get('TargetName'), TGT);
  assert.equal(k.get('SessionType'), 'Normal');
  assert.equal(k.get('ImmediateData'), 'Yes');
  assert.equal(k.has('AuthMethod'), false);
  const step = e.receive(resp({ csg: 1, nsg: 3, transit: true, tsih: 0x1234, keys: [['TargetPortalGroupTag', '1'], ...OP_ANSWERS] }));
  assert.ok('done' in step);
  const d = (step as { done: import('../../src/iscsi/login').LoginResult }).done;
  assert.equal(d.tsih, 0x1234);
  assert.equal(d.maxBurstLength, 1048576);
  assert.equal(d.maxXmitDataSegmentLength, 131072);
  assert.equal(d.maxRecvDataSegmentLength, 262144);
  assert.equal(d.targetPortalGroupTag, 1);
  assert.equal(d.expStatSN, statSN); // last StatSN + 1
  assert.equal(d.cmdSN, 10);
  assert.equal(d.maxCmdSN, 41);
  assert.equal(d.chapAlgorithm, 0);
  assert.equal(e.state, 'done');
});

test('login: CHAP one-way, InitiatorName only in the first PDU, StatSN tracking', () => {
  const e = new LoginEngine(opts({ auth: { user: 'alice', secret: 'alicesecret1' } }));
  const reqs: LoginRequestPdu[] = [decodePdu(encodePdu(e.start())) as LoginRequestPdu];
  assert.equal(reqs[0].csg, 0);
  assert.equal(reqs[0].transit, false);
  assert.equal(keysOf(reqs[0]).get('AuthMethod'), 'CHAP,None');
  reqs.push(sent(e.receive(resp({ keys: [['AuthMethod', 'CHAP'], ['TargetPortalGroupTag', '1']], statSN: 7 }))));
  assert.equal(reqs[1].expStatSN, 8);
  assert.deepEqual(decodeText(reqs[1].data), [['CHAP_A', '7,6,5']]);
  const challenge = Buffer.alloc(300, 0x42); // longer than 255 bytes
  reqs.push(sent(e.receive(resp({ keys: [['CHAP_A', '5'], ['CHAP_I', '9'], ['CHAP_C', encodeChapBinary(challenge)]], statSN: 8 }))));
  const k = keysOf(reqs[2]);
  assert.equal(k.get('CHAP_N'), 'alice');
  assert.deepEqual(decodeChapBinary(k.get('CHAP_R')!), chapResponse(5, 9, 'alicesecret1', challenge));
  assert.equal(k.has('CHAP_C'), false);
  assert.ok(reqs[2].transit);
  assert.equal(reqs[2].nsg, 1);
  reqs.push(sent(e.receive(resp({ transit: true, csg: 0, nsg: 1, statSN: 9 }))));
  assert.equal(reqs[3].csg, 1);
  assert.equal(reqs[3].nsg, 3);
  assert.equal(keysOf(reqs[3]).get('MaxBurstLength'), '16776192');
  const step = e.receive(resp({ transit: true, csg: 1, nsg: 3, tsih: 9, keys: OP_ANSWERS, statSN: 10 }));
  assert.ok('done' in step);
  assert.equal((step as { done: { chapAlgorithm: number; expStatSN: number } }).done.chapAlgorithm, 5);
  assert.equal((step as { done: { expStatSN: number } }).done.expStatSN, 11);
  for (const [i, r] of reqs.entries()) {
    assert.equal(keysOf(r).has('InitiatorName'), i === 0, `PDU ${i}`);
    assert.equal(r.cmdSN, 10);
    assert.equal(r.itt, 5);
  }
});

function mutualLogin(targetAnswer: (ourId: number, ourChallenge: Buffer) => TextPair[]): LoginStep {
  const e = new LoginEngine(opts({ auth: { user: 'alice', secret: 'alicesecret1', targetUser: 'box', targetSecret: 'boxsecret123' } }));
  assert.equal(keysOf(e.start()).get('AuthMethod'), 'CHAP'); // mutual: no None
  sent(e.receive(resp({ keys: [['AuthMethod', 'CHAP']] })));
  const r = keysOf(sent(e.receive(resp({ keys: [['CHAP_A', '7'], ['CHAP_I', '3'], ['CHAP_C', encodeChapBinary(Buffer.alloc(32, 0x11))]] }))));
  const id = +r.get('CHAP_I')!;
  const ch = decodeChapBinary(r.get('CHAP_C')!);
  assert.ok(ch.length >= 16);
  return e.receive(resp({ transit: true, csg: 0, nsg: 1, keys: targetAnswer(id, ch) }));
}

test('login: mutual CHAP succeeds with the right target secret', () => {
  const step = mutualLogin((id, ch) => [['CHAP_N', 'box'], ['CHAP_R', encodeChapBinary(chapResponse(7, id, 'boxsecret123', ch))]]);
  assert.equal(sent(step).csg, 1);
});

test('login: mutual CHAP fails with a wrong answer or none', () => {
  assert.throws(() => mutualLogin((id, ch) => [['CHAP_N', 'box'], ['CHAP_R', encodeChapBinary(chapResponse(7, id, 'wrong', ch))]]),
    (e: unknown) => e instanceof LoginError && e.code === 'EAUTH');
  assert.throws(() => mutualLogin(() => []), (e: unknown) => e instanceof LoginError && e.code === 'EAUTH');
});

test('login: mutual CHAP refuses AuthMethod=None and a skipped challenge', () => {
  const e = new LoginEngine(opts({ auth: { user: 'a', secret: 'b', targetUser: 'c', targetSecret: 'd' } }));
  e.start();
  assert.throws(() => e.receive(resp({ keys: [['AuthMethod', 'None']] })), (x: unknown) => x instanceof LoginError && x.code === 'EAUTH');
  assert.equal(e.state, 'failed');
});

test('login: a reflected challenge is refused', () => {
  let ours: Buffer = Buffer.alloc(0);
  mutualLogin((id, ch) => {
    ours = ch;
    return [['CHAP_N', 'box'], ['CHAP_R', encodeChapBinary(chapResponse(7, id, 'boxsecret123', ch))]];
  });
  const e = new LoginEngine(opts({ auth: { user: 'alice', secret: 'alicesecret1' } }));
  e.start();
  sent(e.receive(resp({ keys: [['AuthMethod', 'CHAP']] })));
  assert.throws(() => e.receive(resp({ keys: [['CHAP_A', '7'], ['CHAP_I', '1'], ['CHAP_C', encodeChapBinary(ours)]] })), /reflection/);
});

test('login: CHAP_A list rejected -> ChapAlgorithmRejectedError, MD5-only retry works', () => {
  const e = new LoginEngine(opts({ auth: { user: 'u', secret: 's' } }));
  e.start();
  sent(e.receive(resp({ keys: [['AuthMethod', 'CHAP']] })));
  assert.throws(() => e.receive(resp({ keys: [['CHAP_A', 'Reject']] })), (x: unknown) => x instanceof ChapAlgorithmRejectedError && x.retryWithMd5);
  // Old LIO: a failure status right after the list
  const f = new LoginEngine(opts({ auth: { user: 'u', secret: 's' } }));
  f.start();
  sent(f.receive(resp({ keys: [['AuthMethod', 'CHAP']] })));
  assert.throws(() => f.receive(resp({ statusClass: 2, statusDetail: 0 })), (x: unknown) => x instanceof ChapAlgorithmRejectedError && x.statusClass === 2);
  // retry with MD5 only
  const g = new LoginEngine(opts({ auth: { user: 'u', secret: 's' }, chapAlgorithms: [5] }));
  g.start();
  assert.deepEqual(decodeText(sent(g.receive(resp({ keys: [['AuthMethod', 'CHAP']] }))).data), [['CHAP_A', '5']]);
  // with one algorithm there is nothing to retry
  assert.throws(() => g.receive(resp({ keys: [['CHAP_A', 'Reject']] })), (x: unknown) => x instanceof LoginError && !(x instanceof ChapAlgorithmRejectedError));
});

test('login: AuthMethod=None accepted when offered', () => {
  const e = new LoginEngine(opts({ auth: { user: 'u', secret: 's' } }));
  e.start();
  const r = sent(e.receive(resp({ keys: [['AuthMethod', 'None']] })));
  assert.equal(r.csg, 0);
  assert.ok(r.transit);
  assert.equal(r.nsg, 1);
  assert.equal(sent(e.receive(resp({ transit: true, csg: 0, nsg: 1 }))).csg, 1);
});

test('login: redirection', () => {
  const e = new LoginEngine(opts());
  e.start();
  assert.deepEqual(e.receive(resp({ statusClass: 1, statusDetail: 1, csg: 1, keys: [['TargetAddress', '10.1.1.1:3261,2']] })),
    { redirect: { address: '10.1.1.1', port: 3261, targetPortalGroupTag: 2, permanent: false } });
  const f = new LoginEngine(opts());
  f.start();
  assert.deepEqual(f.receive(resp({ statusClass: 1, statusDetail: 2, keys: [['TargetAddress', '[fe80::1]']] })),
    { redirect: { address: 'fe80::1', port: 3260, permanent: true } });
  const g = new LoginEngine(opts());
  g.start();
  assert.throws(() => g.receive(resp({ statusClass: 1, statusDetail: 1 })), ProtocolError);
  assert.deepEqual(parseTargetAddress('host.example'), { address: 'host.example', port: 3260 });
  assert.deepEqual(parseTargetAddress('[::1]:3262,7'), { address: '::1', port: 3262, targetPortalGroupTag: 7 });
  assert.throws(() => parseTargetAddress('h:99999'), ProtocolError);
});

test('login: every error status class/detail gives an actionable LoginError', () => {
  const expect: [number, string, RegExp][] = [
    [0x0200, 'ELOGIN', /initiator error/], [0x0201, 'EAUTH', /CHAP user name and secret/], [0x0202, 'EAUTH', /not allowed/],
    [0x0203, 'ENOTARGET', new RegExp(`not found: ${TGT.replace(/\./g, '\\.')}`)], [0x0204, 'ENOTARGET', /removed/],
    [0x0205, 'ELOGIN', /version/], [0x0206, 'ELOGIN', /too many connections/], [0x0207, 'ELOGIN', /missing parameter/],
    [0x0208, 'ELOGIN', /cannot include/], [0x0209, 'ELOGIN', /session type/], [0x020a, 'ELOGIN', /does not exist/],
    [0x020b, 'ELOGIN', /invalid request/], [0x0300, 'ELOGIN', /target error/], [0x0301, 'ETARGETBUSY', /busy/],
    [0x0302, 'ETARGETBUSY', /out of resources/], [0x0299, 'ELOGIN', /0x0299/], [0x0377, 'ELOGIN', /target error/],
  ];
  for (const [st, code, re] of expect) {
    const e = new LoginEngine(opts());
    e.start();
    assert.throws(() => e.receive(resp({ statusClass: st >> 8, statusDetail: st & 0xff, csg: 1 })), (x: unknown) => {
      assert.ok(x instanceof LoginError, String(x));
      assert.equal(x.code, code, `status ${st.toString(16)}`);
      assert.match(x.message, re);
      assert.equal(x.statusClass, st >> 8);
      assert.equal(x.statusDetail, st & 0xff);
      return true;
    });
  }
  assert.match(loginStatusError(2, 1).message, /0x0201/);
});

test('login: target text spanning PDUs (C bit) is requested with empty requests and joined', () => {
  const e = new LoginEngine(opts());
  e.start();
  const all = encodeText([['TargetAlias', 'x'.repeat(200)], ...OP_ANSWERS]);
  const a = all.subarray(0, 50), b = all.subarray(50, 150), c = all.subarray(150);
  const r1 = sent(e.receive(resp({ csg: 1, continue: true, data: a })));
  assert.equal(r1.data.length, 0);
  assert.equal(r1.transit, true); // still asking to move on
  assert.equal(r1.continue, false);
  assert.equal(r1.csg, 1);
  sent(e.receive(resp({ csg: 1, continue: true, data: b })));
  const step = e.receive(resp({ csg: 1, nsg: 3, transit: true, tsih: 1, data: c }));
  assert.ok('done' in step);
  assert.equal((step as { done: { targetAlias?: string } }).done.targetAlias, 'x'.repeat(200));
});

test('login: keys offered by the target are answered before leaving login', () => {
  const e = new LoginEngine(opts());
  e.start();
  const r = sent(e.receive(resp({ csg: 1, keys: [...OP_ANSWERS, ['X-vendor.key', '1'], ['OFMarker', 'No']] })));
  assert.deepEqual(decodeText(r.data), [['X-vendor.key', 'NotUnderstood'], ['OFMarker', 'No']]);
  assert.ok(r.transit);
  assert.ok('done' in e.receive(resp({ csg: 1, nsg: 3, transit: true, tsih: 3 })));
});

test('login: discovery session', () => {
  const e = new LoginEngine({ initiatorName: INI, sessionType: 'Discovery', isid: ISID });
  const k = keysOf(e.start());
  assert.equal(k.get('SessionType'), 'Discovery');
  assert.equal(k.has('TargetName'), false);
  assert.equal(k.has('MaxBurstLength'), false);
  const step = e.receive(resp({ csg: 1, nsg: 3, transit: true, tsih: 2, itt: 0, keys: [['HeaderDigest', 'None'], ['DataDigest', 'None']] }));
  assert.ok('done' in step);
});

test('login: protocol violations', () => {
  const bad: Partial<LoginResponsePdu>[] = [
    { csg: 1, nsg: 3, transit: true, tsih: 1, itt: 6 }, // wrong ITT
    { csg: 0, nsg: 3, transit: true, tsih: 1 }, // wrong CSG
    { csg: 1, nsg: 3, transit: true, tsih: 1, versionActive: 1 },
    { csg: 1, nsg: 3, transit: true, tsih: 1, isid: 1 },
    { csg: 1, nsg: 3, transit: true, tsih: 0 }, // no TSIH for a Normal session
    { csg: 1, nsg: 2, transit: true, tsih: 1 },
  ];
  for (const b of bad) {
    const e = new LoginEngine(opts());
    e.start();
    assert.throws(() => e.receive(resp(b)), ProtocolError, JSON.stringify(b));
  }
  // transit although we did not ask (we sent T=0 with AuthMethod)
  const e = new LoginEngine(opts({ auth: { user: 'u', secret: 's' } }));
  e.start();
  assert.throws(() => e.receive(resp({ transit: true, csg: 0, nsg: 1, keys: [['AuthMethod', 'None']] })), ProtocolError);
  // a target that never finishes
  const f = new LoginEngine(opts({ maxRoundTrips: 5 }));
  f.start();
  assert.throws(() => {
    for (let i = 0; i < 10; i++) f.receive(resp({ csg: 1 }));
  }, /within 5 exchanges/);
  // after done, more responses are refused
  const g = new LoginEngine(opts());
  g.start();
  g.receive(resp({ csg: 1, nsg: 3, transit: true, tsih: 1 }));
  assert.throws(() => g.receive(resp({ csg: 1 })), ProtocolError);
});

test('login: security stage without credentials (AuthMethod=None) when asked', () => {
  const e = new LoginEngine(opts({ securityStageWithoutAuth: true }));
  const first = e.start();
  assert.equal(first.csg, 0);
  assert.ok(first.transit);
  assert.equal(first.nsg, 1);
  assert.equal(keysOf(first).get('AuthMethod'), 'None');
  const op = sent(e.receive(resp({ transit: true, csg: 0, nsg: 1, keys: [['AuthMethod', 'None']] })));
  assert.equal(op.csg, 1);
  assert.equal(keysOf(op).has('InitiatorName'), false);
  assert.ok('done' in e.receive(resp({ csg: 1, nsg: 3, transit: true, tsih: 4 })));
  // a target insisting on CHAP when we have no credentials
  const f = new LoginEngine(opts({ securityStageWithoutAuth: true }));
  f.start();
  assert.throws(() => f.receive(resp({ keys: [['AuthMethod', 'CHAP']] })), (x: unknown) => x instanceof LoginError && x.code === 'EAUTH');
});

test('login: our own text longer than 8192 bytes goes out in C-bit pieces', () => {
  const e = new LoginEngine(opts());
  e.start();
  // The target offers 400 unknown keys (in two C-bit pieces); our NotUnderstood answers exceed 8192 bytes.
  const offers: TextPair[] = Array.from({ length: 400 }, (_, i) => [`X-com.example.key${i}`, '1']);
  const text = encodeText([...OP_ANSWERS, ...offers]);
  sent(e.receive(resp({ csg: 1, continue: true, data: text.subarray(0, 8000) })));
  const p1 = sent(e.receive(resp({ csg: 1, data: text.subarray(8000) })));
  assert.ok(p1.continue);
  assert.equal(p1.transit, false);
  assert.equal(p1.data.length, 8192);
  const p2 = sent(e.receive(resp({ csg: 1 }))); // the target acknowledges the piece
  assert.equal(p2.continue, false);
  assert.ok(p2.transit);
  const answers = decodeText(Buffer.concat([p1.data, p2.data]));
  assert.equal(answers.length, 400);
  assert.ok(answers.every(([, v]) => v === 'NotUnderstood'));
  assert.ok('done' in e.receive(resp({ csg: 1, nsg: 3, transit: true, tsih: 4 })));
});

test('login: random Login Responses only ever raise our error classes', async () => {
  const fc = (await import('fast-check')).default;
  const { IscsiNbdError } = await import('../../src/errors');
  const keyArb = fc.constantFrom('AuthMethod', 'CHAP_A', 'CHAP_I', 'CHAP_C', 'CHAP_N', 'CHAP_R', 'MaxBurstLength',
    'HeaderDigest', 'ImmediateData', 'TargetAddress', 'MaxRecvDataSegmentLength', 'X-a', 'TargetPortalGroupTag', 'OFMarker');
  const valArb = fc.oneof(fc.constantFrom('CHAP', 'None', '5', '7', '0x0102', 'Reject', 'Yes', 'No', '512', '99999999', 'CRC32C', '1.2.3.4:5,6'), fc.string({ maxLength: 10 }));
  const respArb = fc.record({
    transit: fc.boolean(), continue: fc.boolean(), csg: fc.integer({ min: 0, max: 3 }), nsg: fc.integer({ min: 0, max: 3 }),
    tsih: fc.integer({ min: 0, max: 3 }), statusClass: fc.constantFrom(0, 0, 0, 1, 2, 3, 9), statusDetail: fc.integer({ min: 0, max: 12 }),
    pairs: fc.array(fc.tuple(keyArb, valArb), { maxLength: 6 }),
  });
  fc.assert(fc.property(fc.boolean(), fc.array(respArb, { minLength: 1, maxLength: 8 }), (withAuth, rs) => {
    const e = new LoginEngine(opts(withAuth ? { auth: { user: 'u', secret: 's', targetUser: 't', targetSecret: 'x' } } : {}));
    e.start();
    for (const r of rs) {
      let data: Buffer;
      try {
        data = encodeText(r.pairs);
      } catch {
        data = Buffer.from(r.pairs.map(([k, v]) => `${k}=${v}\0`).join(''));
      }
      try {
        const step = e.receive(resp({ ...r, data }));
        if (!('send' in step)) break;
      } catch (x) {
        assert.ok(x instanceof IscsiNbdError, String(x));
        break;
      }
    }
  }), { numRuns: 3000 });
});

test('a refused login says what to do by its cause: ACL, no CHAP given, a wrong secret, mutual CHAP', () => {
  const name = 'iqn.2026-12.test:me';
  const authz = loginStatusError(0x02, 0x02);
  assert.match(loginHint(authz, name, { chapUser: 'u' }), /add this name to the target's ACL/);
  const notFound = loginStatusError(0x02, 0x03);
  assert.match(loginHint(notFound, name, {}), /add this name to the target's ACL/);
  const authFailed = loginStatusError(0x02, 0x01);
  assert.match(loginHint(authFailed, name, {}), /without CHAP; the target may want CHAP: give a user and secret/);
  assert.match(loginHint(authFailed, name, { chapUser: 'db' }), /with CHAP user db; check the secret/);
  const mutual = new LoginError('EAUTH', 'target failed mutual CHAP authentication (wrong target secret?)');
  assert.match(loginHint(mutual, name, { chapUser: 'db', mutual: true }), /did not pass mutual CHAP: check the target user and secret/);
  // Added once, and removable for a message that is built again.
  const e = withAclHint(withAclHint(loginStatusError(0x02, 0x01), name, { chapUser: 'db' }), name, {});
  assert.equal(e.message.split('; logged in as ').length, 2);
  assert.equal(withoutHint(e.message), 'iSCSI login failed, status 0x0201: authentication failed: check the CHAP user name and secret (and whether the target requires CHAP)');
});
