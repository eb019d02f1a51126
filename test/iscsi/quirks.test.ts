import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TargetQuirks } from '../../src/iscsi/quirks';
import { discoveryAuthPlan } from '../../src/iscsi/discovery';

test('TargetQuirks: what one object learns stays in it, and reset() forgets it', () => {
  const a = new TargetQuirks();
  const b = new TargetQuirks();
  assert.equal(a.rememberMd5Only('h:3260', 'iqn.x'), true, 'news the first time');
  assert.equal(a.rememberMd5Only('h:3260', 'iqn.x'), false);
  assert.equal(a.md5OnlyFor('h:3260', 'iqn.x'), true);
  assert.equal(a.md5OnlyFor('h:3260', 'iqn.y'), false, 'per target');
  assert.equal(b.md5OnlyFor('h:3260', 'iqn.x'), false, 'another object knows nothing of it');

  a.rememberDiscoveryAuth('h:3260', true);
  assert.deepEqual(discoveryAuthPlan('h:3260', true, a), ['none', 'chap']);
  assert.deepEqual(discoveryAuthPlan('h:3260', true, b), ['chap', 'none']);
  a.rememberDiscoveryAuth('h:3260', false);
  assert.deepEqual(discoveryAuthPlan('h:3260', true, a), ['chap', 'none'], 'CHAP works there again');

  const c = Buffer.from('00112233', 'hex');
  a.rememberChallenge(c);
  assert.equal(a.isOurChallenge(Buffer.from(c)), true);
  assert.equal(b.isOurChallenge(c), false);
  for (let i = 0; i < 1100; i++) a.rememberChallenge(Buffer.from([i >> 8, i & 0xff, 1]));
  assert.equal(a.isOurChallenge(c), false, 'bounded: the oldest goes first');

  a.rememberMd5Only('h:3260');
  a.reset();
  assert.equal(a.md5OnlyFor('h:3260'), false);
});
