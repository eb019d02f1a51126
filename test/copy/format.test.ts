// Image format detection for `copy`: hand-made headers (written here from the
// formats' specifications, not from the detector), real images from qemu-img,
// and things that must pass as raw.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { detectImageFormat, notRawError, HEAD_BYTES, VHD_FOOTER_BYTES } from '../../src/copy/format';
import { onPath } from '../helpers/tools';

/** A 4 KiB head made of `parts` at their offsets, the rest zeros. */
function head(...parts: Array<[number, Buffer | string]>): Buffer {
  const b = Buffer.alloc(HEAD_BYTES);
  for (const [off, p] of parts) (typeof p === 'string' ? Buffer.from(p, 'latin1') : p).copy(b, off);
  return b;
}
const u32be = (n: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(n); return b; };
const u32le = (n: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };
const u16be = (n: number): Buffer => { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; };

test('qcow2 (v2, v3) and qcow v1 headers: "QFI\\xfb" + big-endian version', () => {
  const magic = Buffer.from([0x51, 0x46, 0x49, 0xfb]);
  assert.equal(detectImageFormat(head([0, magic], [4, u32be(3)]))?.id, 'qcow2');
  assert.equal(detectImageFormat(head([0, magic], [4, u32be(2)]))?.id, 'qcow2');
  assert.equal(detectImageFormat(head([0, magic], [4, u32be(1)]))?.id, 'qcow');
  assert.equal(detectImageFormat(head([0, 'QFI?'], [4, u32be(3)])), undefined, 'one byte off is not qcow2');
});

test('VMDK: sparse extent "KDMV", VMFS sparse "COWD", and text descriptors', () => {
  // VMDK4 sparse extent: magic, version 1, flags... (little-endian fields after the magic)
  assert.deepEqual(detectImageFormat(head([0, 'KDMV'], [4, u32le(1)], [8, u32le(3)])), { id: 'vmdk', what: 'a VMDK image (sparse extent)' });
  assert.equal(detectImageFormat(head([0, 'COWD'], [4, u32le(1)]))?.id, 'vmdk');
  const desc = '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n# Extent description\nRW 2048 FLAT "disk-flat.vmdk" 0\n';
  assert.deepEqual(detectImageFormat(head([0, desc])), { id: 'vmdk', what: 'a VMDK descriptor' });
  // CRLF, other comments and blank lines before version=, as qemu's probe allows.
  assert.equal(detectImageFormat(head([0, '# made by hand\r\n\r\n   \r\nversion=2\r\ncreateType="vmfs"\r\n']))?.id, 'vmdk');
  assert.equal(detectImageFormat(head([0, '# Disk DescriptorFile\n']))?.id, 'vmdk', 'the descriptor marker alone');
  // A shell script is not a descriptor.
  assert.equal(detectImageFormat(head([0, '#!/bin/sh\necho version=1\n'])), undefined);
  assert.equal(detectImageFormat(head([0, '# notes\nhello\nversion=1\n'])), undefined);
});

test('VHD: "conectix" footer copy at offset 0 (dynamic) or only in the last 512 bytes (fixed)', () => {
  // A VHD footer: cookie, features 2, version 0x00010000, data offset...
  const footer = Buffer.alloc(VHD_FOOTER_BYTES);
  footer.write('conectix', 0, 'latin1');
  u32be(2).copy(footer, 8);
  u32be(0x00010000).copy(footer, 12);
  footer.write('qem2', 28, 'latin1');
  u32be(3).copy(footer, 60); // disk type: dynamic
  assert.deepEqual(detectImageFormat(head([0, footer])), { id: 'vpc', what: 'a VHD image (dynamic)' });
  u32be(2).copy(footer, 60); // disk type: fixed
  const data = crypto.randomBytes(HEAD_BYTES);
  assert.deepEqual(detectImageFormat(data, footer), { id: 'vpc', what: 'a VHD image (fixed, footer at the end)' });
  assert.equal(detectImageFormat(data, crypto.randomBytes(VHD_FOOTER_BYTES)), undefined);
});

test('VHDX, VDI, QED and LUKS headers', () => {
  assert.equal(detectImageFormat(head([0, 'vhdxfile'], [8, Buffer.from('Q\0E\0M\0U\0', 'latin1')]))?.id, 'vhdx');
  // VDI: a 64-byte text pre-header, then the signature 0xbeda107f (little-endian) and version 1.1.
  const vdiText = '<<< Oracle VM VirtualBox Disk Image >>>\n';
  assert.equal(detectImageFormat(head([0, vdiText], [0x40, Buffer.from([0x7f, 0x10, 0xda, 0xbe])], [0x44, u32le(0x00010001)]))?.id, 'vdi');
  assert.equal(detectImageFormat(head([0x40, Buffer.from([0x7f, 0x10, 0xda, 0xbe])]))?.id, 'vdi', 'the signature alone');
  assert.equal(detectImageFormat(head([0, '<<< QEMU VM Virtual Disk Image >>>\n']))?.id, 'vdi', 'the pre-header alone');
  // QED: "QED\0", cluster size 64 KiB (little-endian).
  assert.equal(detectImageFormat(head([0, Buffer.from('QED\0', 'latin1')], [4, u32le(65536)]))?.id, 'qed');
  assert.equal(detectImageFormat(head([0, 'QEDX'])), undefined);
  // LUKS: "LUKS\xba\xbe", version 1 (big-endian u16), cipher name.
  assert.equal(detectImageFormat(head([0, Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])], [6, u16be(1)], [8, 'aes']))?.id, 'luks');
  assert.equal(detectImageFormat(head([0, Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])], [6, u16be(2)]))?.id, 'luks');
});

test('raw things stay raw: zeros, random bytes, an MBR, a short file, ext4-like superblock', () => {
  assert.equal(detectImageFormat(Buffer.alloc(HEAD_BYTES)), undefined);
  assert.equal(detectImageFormat(Buffer.alloc(0)), undefined);
  assert.equal(detectImageFormat(Buffer.from('QF')), undefined);
  const mbr = Buffer.alloc(HEAD_BYTES);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  assert.equal(detectImageFormat(mbr, Buffer.alloc(VHD_FOOTER_BYTES)), undefined);
  for (let i = 0; i < 200; i++) {
    const r = crypto.randomBytes(HEAD_BYTES);
    r[0] = 0x00; // random bytes could spell a magic by chance only with a tiny probability; make it zero
    assert.equal(detectImageFormat(r, crypto.randomBytes(VHD_FOOTER_BYTES)), undefined);
  }
});

test('the refusal names the format and both ways out', () => {
  const e = notRawError('disk.qcow2', { id: 'qcow2', what: 'a qcow2 image' });
  assert.equal(e.code, 'ECONFIG');
  assert.equal(e.message, 'disk.qcow2 is a qcow2 image, not raw: convert it first with `qemu-img convert -O raw disk.qcow2 disk.raw`, or pass --format raw to copy its bytes as they are');
  assert.match(notRawError('/srv/img/vm.vmdk', { id: 'vmdk', what: 'a VMDK image (sparse extent)' }).message, /qemu-img convert -O raw \/srv\/img\/vm\.vmdk \/srv\/img\/vm\.raw/);
  assert.match(notRawError('x.raw', { id: 'qcow2', what: 'a qcow2 image' }).message, /qemu-img convert -O raw x\.raw x-converted\.raw/, 'never suggests overwriting the source');
  assert.match(notRawError('stdin', { id: 'qcow2', what: 'a qcow2 image' }, true).message, /^stdin starts like a qcow2 image, not raw: .*--format raw/);
});

// Real images, made by qemu-img. Outside CI a missing qemu-img skips only this.
const haveQemuImg = onPath('qemu-img');
const qemuSkip = !haveQemuImg && process.env.CI !== 'true' ? 'qemu-img is not installed' : false;

test('images made by qemu-img create are recognised (qcow2, qcow, vmdk, vpc, vhdx, vdi, qed, luks)', { skip: qemuSkip, timeout: 60000 }, (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'copy-fmt-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const make = (fmt: string, extra: string[] = []): string => {
    const f = path.join(dir, `img.${fmt}`);
    const r = spawnSync('qemu-img', ['create', '-q', ...extra, '-f', fmt, f, '4M'], { encoding: 'utf8', timeout: 20000 });
    assert.equal(r.status, 0, `qemu-img create -f ${fmt}: ${r.stderr}`);
    return f;
  };
  const probe = (f: string) => {
    const b = fs.readFileSync(f);
    return detectImageFormat(b.subarray(0, HEAD_BYTES), b.length >= 2 * VHD_FOOTER_BYTES ? b.subarray(b.length - VHD_FOOTER_BYTES) : undefined);
  };
  assert.equal(probe(make('qcow2'))?.id, 'qcow2');
  assert.equal(probe(make('qcow2', ['-o', 'compat=0.10']))?.id, 'qcow2');
  assert.equal(probe(make('qcow'))?.id, 'qcow');
  assert.equal(probe(make('vmdk'))?.id, 'vmdk');
  assert.equal(probe(make('vpc'))?.id, 'vpc');
  assert.equal(probe(make('vhdx'))?.id, 'vhdx');
  assert.equal(probe(make('vdi'))?.id, 'vdi');
  assert.equal(probe(make('qed'))?.id, 'qed');
  // A fixed VHD: raw data with a footer at the end only.
  const fixed = path.join(dir, 'fixed.vhd');
  const r = spawnSync('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', fixed, '4M'], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(probe(fixed), { id: 'vpc', what: 'a VHD image (fixed, footer at the end)' });
  // A VMDK descriptor with a flat extent.
  const flat = path.join(dir, 'flat.vmdk');
  const r2 = spawnSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', flat, '4M'], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r2.status, 0, r2.stderr);
  assert.deepEqual(probe(flat), { id: 'vmdk', what: 'a VMDK descriptor' });
  // LUKS, with a cheap key derivation.
  const luks = path.join(dir, 'img.luks');
  const r3 = spawnSync('qemu-img', ['create', '-q', '--object', 'secret,id=s0,data=copytest', '-f', 'luks', '-o', 'key-secret=s0,iter-time=10', luks, '1M'],
    { encoding: 'utf8', timeout: 30000 });
  if (r3.status === 0) assert.equal(probe(luks)?.id, 'luks');
  else assert.match(r3.stderr, /luks|crypto|cipher|secret/i, `qemu-img create -f luks failed oddly: ${r3.stderr}`);
  // And a raw image is raw.
  assert.equal(probe(make('raw')), undefined);
});
