import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatHostPort, parseIscsiUrl } from '../../src/iscsi/url';
import { ConfigError } from '../../src/errors';

const T = 'iqn.2003-01.org.linux-iscsi.host:target1';

test('url: full libiscsi form', () => {
  const u = parseIscsiUrl(`iscsi://alice%s3cr%40t@storage.example.com:3261/${T}/2`);
  assert.equal(u.host, 'storage.example.com');
  assert.equal(u.port, 3261);
  assert.equal(u.target, T);
  assert.equal(u.lun, 2);
  assert.deepEqual(u.auth, { user: 'alice', password: 's3cr@t' });
  assert.equal(u.toString(), `iscsi://alice@storage.example.com:3261/${T}/2`);
  assert.equal(u.redacted(), `iscsi://alice%[redacted]@storage.example.com:3261/${T}/2`);
  assert.ok(!u.toString().includes('s3cr') && !u.redacted().includes('s3cr'));
});

test('url: defaults, IPv4, IPv6, discovery forms', () => {
  let u = parseIscsiUrl(`iscsi://10.0.0.1/${T}/0`);
  assert.equal(u.port, 3260);
  assert.equal(u.lun, 0);
  assert.equal(u.auth, undefined);
  u = parseIscsiUrl(`iscsi://[fe80::1%eth0]:3262/${T}/1`);
  assert.equal(u.host, 'fe80::1%eth0');
  assert.equal(u.port, 3262);
  u = parseIscsiUrl(`iscsi://[::1]/${T}/1`);
  assert.equal(u.host, '::1');
  assert.equal(u.port, 3260);
  assert.equal(u.toString(), `iscsi://[::1]:3260/${T}/1`);
  for (const d of ['iscsi://host', 'iscsi://host/', 'iscsi://host:3270', 'iscsi://[::1]:3270/', 'ISCSI://host']) {
    const x = parseIscsiUrl(d);
    assert.equal(x.target, undefined, d);
    assert.equal(x.lun, undefined, d);
  }
  u = parseIscsiUrl(`iscsi://host/${T}`);
  assert.equal(u.target, T);
  assert.equal(u.lun, undefined);
  u = parseIscsiUrl(`iscsi://host/${T}/3/`);
  assert.equal(u.lun, 3);
});

test('url: user:password form and percent-decoding', () => {
  const u = parseIscsiUrl(`iscsi://bob:p%25w@host/${encodeURIComponent(T)}/1`);
  assert.deepEqual(u.auth, { user: 'bob', password: 'p%w' });
  assert.equal(u.target, T);
  const v = parseIscsiUrl(`iscsi://bob@host/${T}/1`);
  assert.deepEqual(v.auth, { user: 'bob', password: '' });
  const w = parseIscsiUrl(`iscsi://bob%pa:ss@host/${T}/1`); // libiscsi form wins: ":" is part of the password
  assert.deepEqual(w.auth, { user: 'bob', password: 'pa:ss' });
});

test('url: mutual CHAP query', () => {
  const u = parseIscsiUrl(`iscsi://me%mine@host/${T}/1?target_user=tgt&target_password=th%26eirs`);
  assert.deepEqual(u.auth, { user: 'me', password: 'mine', targetUser: 'tgt', targetPassword: 'th&eirs' });
  assert.ok(!u.toString().includes('eirs') && !u.redacted().includes('eirs') && !u.redacted().includes('mine'));
  assert.throws(() => parseIscsiUrl(`iscsi://host/${T}/1?target_user=a&target_password=b`), /user%password/);
  assert.throws(() => parseIscsiUrl(`iscsi://a%b@host/${T}/1?target_user=a`), /go together/);
  assert.throws(() => parseIscsiUrl(`iscsi://host/${T}/1?header_digest=crc32c`), /unsupported option/);
});

test('url: errors are ConfigError EBADURL and never echo the password', () => {
  for (const bad of [
    'http://host/x/1', 'iscsi://', 'iscsi://host:0', 'iscsi://host:65536', 'iscsi://host:abc', 'iscsi://[::1',
    'iscsi://[::1]x', 'iscsi://ho st/', `iscsi://host/${T}/x`, `iscsi://host/${T}/1/2`, 'iscsi://host/not-a-name/1',
    `iscsi://host/${T}/99999999`, 'iscsi://%pw@host/', `iscsi://u%secretpw@host/${T}/-1`, 'iscsi://u%secretpw@host/%zz/1',
  ]) {
    assert.throws(() => parseIscsiUrl(bad), (e: unknown) => {
      assert.ok(e instanceof ConfigError && e.code === 'EBADURL', bad);
      assert.ok(!(e as Error).message.includes('secretpw'), (e as Error).message);
      return true;
    });
  }
});

test('url: formatHostPort', () => {
  assert.equal(formatHostPort('::1', 3260), '[::1]:3260');
  assert.equal(formatHostPort('h', 1), 'h:1');
});
