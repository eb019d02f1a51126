import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IscsiNbdError } from '../../src/errors';
import { parseSendTargets } from '../../src/iscsi/discovery';

const DEF = { host: '192.0.2.9', port: 3260 };

test('parseSendTargets: names, addresses with tpgt, IPv6 in brackets, default port', () => {
  const r = parseSendTargets([
    ['TargetName', 'iqn.2026-11.a:one'],
    ['TargetAddress', '10.0.0.1:3261,1'],
    ['TargetAddress', '[fe80::1%eth0]:3260,2'],
    ['TargetAlias', 'ignored'],
    ['TargetName', 'iqn.2026-11.a:two'],
    ['TargetAddress', 'host.example,5'],
    ['TargetAddress', '[2001:db8::7],3'],
  ], DEF);
  assert.deepEqual(r, [
    { name: 'iqn.2026-11.a:one', portals: [{ host: '10.0.0.1', port: 3261, tpgt: 1 }, { host: 'fe80::1%eth0', port: 3260, tpgt: 2 }] },
    { name: 'iqn.2026-11.a:two', portals: [{ host: 'host.example', port: 3260, tpgt: 5 }, { host: '2001:db8::7', port: 3260, tpgt: 3 }] },
  ]);
});

test('parseSendTargets: a target without TargetAddress is reached through the portal asked', () => {
  assert.deepEqual(parseSendTargets([['TargetName', 'iqn.x:y']], DEF), [{ name: 'iqn.x:y', portals: [{ host: '192.0.2.9', port: 3260, tpgt: -1 }] }]);
  assert.deepEqual(parseSendTargets([], DEF), []);
});

test('parseSendTargets: malformed answers are protocol errors', () => {
  for (const pairs of [
    [['TargetAddress', '10.0.0.1:3260,1']],
    [['TargetName', '']],
    [['TargetName', 'iqn.x:y'], ['TargetAddress', '10.0.0.1:99999,1']],
    [['TargetName', 'iqn.x:y'], ['TargetAddress', '[::1:3260,1']],
  ] as [string, string][][]) {
    assert.throws(() => parseSendTargets(pairs, DEF), (e: IscsiNbdError) => e.code === 'EPROTO', JSON.stringify(pairs));
  }
});
