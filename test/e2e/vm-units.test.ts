// Fast checks of the VM builder's pure parts (no qemu needed).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpioNewc } from '../../scripts/vm/cpio';
import { resolveModules } from '../../scripts/vm/build';

test('cpio newc: one file, one symlink, trailer, 4-byte padding', () => {
  const got = cpioNewc([
    { kind: 'file', path: '/a', data: Buffer.from('hi'), mode: 0o755 },
    { kind: 'symlink', path: 'b', target: 'a' },
  ]);
  // Fields: ino mode uid gid nlink mtime filesize devmaj devmin rdevmaj rdevmin namesize check
  const expected =
    '070701' + '00000001' + '000081ed' + '00000000' + '00000000' + '00000001' + '00000000' + '00000002' +
    '00000000' + '00000000' + '00000000' + '00000000' + '00000002' + '00000000' +
    'a\0' + // 110 + 2 = 112: aligned, no name padding
    'hi' + '\0\0' +
    '070701' + '00000002' + '0000a1ff' + '00000000' + '00000000' + '00000001' + '00000000' + '00000001' +
    '00000000' + '00000000' + '00000000' + '00000000' + '00000002' + '00000000' +
    'b\0' +
    'a' + '\0\0\0' + // symlink target as data
    '070701' + '00000003' + '00000000' + '00000000' + '00000000' + '00000001' + '00000000' + '00000000' +
    '00000000' + '00000000' + '00000000' + '00000000' + '0000000b' + '00000000' +
    'TRAILER!!!\0' + '\0\0\0'; // 110 + 11 = 121: padded to 124
  assert.equal(got.toString('latin1'), expected);
  assert.equal(got.length % 4, 0);
});

test('resolveModules: dependencies first, each once, names with - or _', () => {
  const dep = [
    'kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko',
    'kernel/fs/jbd2/jbd2.ko:',
    'kernel/fs/mbcache.ko:',
    'kernel/lib/crc16.ko:',
    'kernel/drivers/block/nbd.ko:',
    'kernel/arch/x86/crypto/crc32c-intel.ko:',
  ].join('\n');
  assert.deepEqual(resolveModules(dep, ['nbd', 'ext4', 'crc32c_intel', 'jbd2']), [
    'kernel/drivers/block/nbd.ko',
    'kernel/fs/jbd2/jbd2.ko',
    'kernel/fs/mbcache.ko',
    'kernel/lib/crc16.ko',
    'kernel/fs/ext4/ext4.ko',
    'kernel/arch/x86/crypto/crc32c-intel.ko',
  ]);
  assert.throws(() => resolveModules(dep, ['e1000']), /e1000 not found/);
});

test('CpioTree: each directory once, parents before what they hold', async () => {
  const { CpioTree } = await import('../../scripts/vm/cpio');
  const t = new CpioTree();
  t.file('/usr/local/bin/node', Buffer.from('x'), 0o755);
  t.dir('/usr/local');
  t.file('/usr/lib/a.so', Buffer.from('y'), 0o644);
  assert.deepEqual(t.entries.map((e) => `${e.kind} ${e.path}`), [
    'dir /usr', 'dir /usr/local', 'dir /usr/local/bin', 'file /usr/local/bin/node', 'dir /usr/lib', 'file /usr/lib/a.so',
  ]);
});
