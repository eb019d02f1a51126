import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { IscsiNbdError, ScsiError } from '../../src/errors';
import * as p from '../../src/scsi/parse';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const asc = (s: string): string => Buffer.from(s, 'latin1').toString('hex');

// Standard INQUIRY: disk, SPC-4, HiSup, RDF 2, TPGS=1 (implicit ALUA), 3PC, CmdQue, "LIO-ORG ", "disk0           ", "4.0 "
const STD_INQ = hex('00 00 06 12 1f 18 00 02' + asc('LIO-ORG ') + asc('disk0           ') + asc('4.0 '));

test('standard INQUIRY', () => {
  const i = p.parseStandardInquiry(STD_INQ);
  assert.equal(i.peripheralQualifier, 0);
  assert.equal(i.deviceType, 0);
  assert.equal(i.removable, false);
  assert.equal(i.version, 6);
  assert.equal(i.hiSup, true);
  assert.equal(i.normAca, false);
  assert.equal(i.responseDataFormat, 2);
  assert.equal(i.additionalLength, 31);
  assert.equal(i.tpgs, 1);
  assert.equal(i.threePc, true);
  assert.equal(i.cmdQue, true);
  assert.equal(i.vendor, 'LIO-ORG');
  assert.equal(i.product, 'disk0');
  assert.equal(i.revision, '4.0');
  const other = p.parseStandardInquiry(hex('7f 80 05 02 1f 01 50 00'));
  assert.equal(other.peripheralQualifier, 3);
  assert.equal(other.deviceType, 0x1f);
  assert.equal(other.removable, true);
  assert.equal(other.protect, true);
  assert.equal(other.encServ, true);
  assert.equal(other.multiP, true);
  assert.equal(other.vendor, '');
});

test('standard INQUIRY truncated at every length', () => {
  assert.throws(() => p.parseStandardInquiry(Buffer.alloc(0)), ScsiError);
  for (let n = 1; n <= STD_INQ.length; n++) {
    const i = p.parseStandardInquiry(STD_INQ.subarray(0, n));
    assert.equal(i.deviceType, 0);
    assert.ok('LIO-ORG'.startsWith(i.vendor));
  }
  assert.equal(p.parseStandardInquiry(STD_INQ.subarray(0, 12)).vendor, 'LIO-');
});

test('VPD 0x00 and 0x80', () => {
  assert.deepEqual(p.parseVpdSupportedPages(hex('00 00 0006 00 80 83 b0 b1 b2')), [0, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
  // truncated by allocation length: what arrived
  assert.deepEqual(p.parseVpdSupportedPages(hex('00 00 0006 00 80 83')), [0, 0x80, 0x83]);
  assert.equal(p.parseVpdUnitSerial(hex('00 80 000a' + asc(' beaf11  ') + '00')), 'beaf11');
  assert.throws(() => p.parseVpdUnitSerial(hex('00 83 0000')), ScsiError);
  assert.throws(() => p.parseVpdUnitSerial(hex('00 80 00')), ScsiError);
  const h = p.parseVpdHeader(hex('00 80 0010 41 42'));
  assert.equal(h.truncated, true);
  assert.equal(h.body.length, 2);
});

// VPD 0x83 with NAA (binary, LU), T10 vendor id (ASCII, LU), EUI-64, SCSI name string (UTF-8, target device)
// and a relative target port (iSCSI protocol, PIV, target port association).
const NAA = '6001405abcdef0123456789abcdef012';
const DEVID_BODY =
  '01 03 00 10' + NAA +
  '02 01 00 0c' + asc('LIO-ORG ') + asc('abcd') +
  '01 02 00 08 0011223344556677' +
  '53 a8 00 10' + asc('iqn.2003-01.x') + '000000' +
  '51 94 00 04 00000001';
const DEVID = hex('00 83 ' + (hex(DEVID_BODY).length).toString(16).padStart(4, '0') + DEVID_BODY);

test('VPD 0x83 designators', () => {
  const d = p.parseVpdDeviceId(DEVID);
  assert.equal(d.length, 5);
  assert.deepEqual([d[0].type, d[0].codeSet, d[0].association, d[0].value], [3, 1, 0, NAA]);
  assert.deepEqual([d[1].type, d[1].codeSet, d[1].value], [1, 2, 'LIO-ORG abcd']);
  assert.deepEqual([d[2].type, d[2].value], [2, '0011223344556677']);
  assert.deepEqual([d[3].type, d[3].codeSet, d[3].association, d[3].protocolId, d[3].value], [8, 3, 2, 5, 'iqn.2003-01.x']);
  assert.deepEqual([d[4].type, d[4].association, d[4].piv, d[4].protocolId], [4, 1, true, 5]);
  // cut inside the second descriptor: only the first survives
  assert.equal(p.parseVpdDeviceId(DEVID.subarray(0, 4 + 20 + 6)).length, 1);
  for (let n = 4; n <= DEVID.length; n++) assert.ok(p.parseVpdDeviceId(DEVID.subarray(0, n)).length <= 5);
});

// Block limits: WSNZ, max C&W 1, granularity 8, max xfer 0x4000, opt xfer 0x400, prefetch 0,
// max unmap LBA 0x8000, max descriptors 16, opt unmap granularity 8, UGAVALID + alignment 2,
// max write same 0x10000.
const B0 = hex('00 b0 003c 01 01 0008 00004000 00000400 00000000 00008000 00000010 00000008 80000002 0000000000010000'
  + '00'.repeat(0x3c - 40));

test('VPD 0xB0 block limits (and truncation)', () => {
  const b = p.parseVpdBlockLimits(B0);
  assert.deepEqual(b, {
    wsnz: true, maxCompareAndWriteLength: 1, optimalTransferLengthGranularity: 8, maxTransferLength: 0x4000,
    optimalTransferLength: 0x400, maxPrefetchLength: 0, maxUnmapLbaCount: 0x8000, maxUnmapBlockDescriptorCount: 16,
    optimalUnmapGranularity: 8, ugaValid: true, unmapGranularityAlignment: 2, maxWriteSameLength: 0x10000n,
  });
  // old SBC-2 short page (page length 0x0c): unmap fields absent = 0
  const short = p.parseVpdBlockLimits(hex('00 b0 000c 00 00 0001 00000080 00000008 deadbeef'));
  assert.equal(short.maxTransferLength, 0x80);
  assert.equal(short.maxUnmapLbaCount, 0); // beyond the declared page length: not read
  assert.equal(short.maxWriteSameLength, 0n);
  for (let n = 4; n <= B0.length; n++) p.parseVpdBlockLimits(B0.subarray(0, n));
  assert.equal(p.parseVpdBlockLimits(B0.subarray(0, 11)).maxTransferLength, 0);
  assert.equal(p.parseVpdBlockLimits(B0.subarray(0, 12)).maxTransferLength, 0x4000);
});

test('VPD 0xB1 and 0xB2', () => {
  assert.equal(p.parseVpdBlockCharacteristics(hex('00 b1 003c 0001 00 03')).mediumRotationRate, 1);
  assert.equal(p.parseVpdBlockCharacteristics(hex('00 b1 003c 1c20 00 02')).mediumRotationRate, 7200);
  assert.equal(p.parseVpdBlockCharacteristics(hex('00 b1 003c 1c')).mediumRotationRate, 0);
  // threshold exp 0x0c; LBPU LBPWS LBPWS10 LBPRZ=001b ANC_SUP DP; min% 0, type 2 (thin); threshold% 0
  const l = p.parseVpdLbp(hex('00 b2 0004 0c e7 02 00'));
  assert.deepEqual(l, {
    thresholdExponent: 12, lbpu: true, lbpws: true, lbpws10: true, lbprzField: 1, lbprz: true, ancSup: true, dp: true,
    minimumPercentage: 0, provisioningType: 2, thresholdPercentage: 0,
  });
  const l2 = p.parseVpdLbp(hex('00 b2 0004 00 88 01 00')); // LBPU, LBPRZ=010b (pattern, not zeros), resource
  assert.equal(l2.lbpu, true);
  assert.equal(l2.lbprzField, 2);
  assert.equal(l2.lbprz, false);
  assert.equal(l2.provisioningType, 1);
  assert.equal(p.parseVpdLbp(hex('00 b2 0004 00')).lbpu, false);
});

test('READ CAPACITY (10)/(16)', () => {
  assert.deepEqual(p.parseReadCapacity10(hex('0001ffff 00000200')), { returnedLba: 0x1ffff, blockLength: 512 });
  assert.throws(() => p.parseReadCapacity10(hex('0001ffff 0000')), ScsiError);
  // LBA 0x1_0000_0000, 4096, P_TYPE 1 PROT_EN, exp 3, LBPME LBPRZ, lowest aligned 7
  const c = p.parseReadCapacity16(hex('0000000100000000 00001000 03 03 c0 07' + '00'.repeat(16)));
  assert.deepEqual(c, {
    returnedLba: 0x100000000n, blockLength: 4096, pType: 1, protEn: true, pIExponent: 0, logicalPerPhysicalExponent: 3,
    lbpme: true, lbprz: true, lowestAlignedLba: 7,
  });
  const c12 = p.parseReadCapacity16(hex('00000000000003ff 00000200'));
  assert.equal(c12.lbpme, false);
  assert.equal(c12.returnedLba, 0x3ffn);
  assert.throws(() => p.parseReadCapacity16(hex('00000000000003ff 0000')), ScsiError);
});

// MODE SENSE(6): length 0x1f, medium 0, WP|DPOFUA, 8-byte block descriptor, caching page (WCE|RCD), control page.
const MS6 = hex('23 00 90 08' + '0000000000000200' + '08 12 05' + '00'.repeat(17) + '0a 02 00 00');
// MODE SENSE(10): length, medium 0, dsp DPOFUA only, LONGLBA 0, bdl 0, caching page WCE.
const MS10_BODY = '08 12 04' + '00'.repeat(17);
const MS10 = hex(((6 + hex(MS10_BODY).length)).toString(16).padStart(4, '0') + '00 10 00 00 0000' + MS10_BODY);

test('MODE SENSE (6)/(10) headers and the caching page', () => {
  const m = p.parseModeSense(MS6, false);
  assert.equal(m.writeProtect, true);
  assert.equal(m.dpoFua, true);
  assert.equal(m.blockDescriptorLength, 8);
  assert.deepEqual(m.pages.map((x) => x.pageCode), [0x08, 0x0a]);
  assert.deepEqual(p.findCachingPage(m), { wce: true, rcd: true });
  const m10 = p.parseModeSense(MS10, true);
  assert.equal(m10.writeProtect, false);
  assert.equal(m10.dpoFua, true);
  assert.deepEqual(p.findCachingPage(m10), { wce: true, rcd: false });
  // subpage format page (SPF) is skipped over correctly
  const spf = hex('0d 00 00 00' + '4a 01 0002 aabb' + '08 02 04 00');
  assert.deepEqual(p.parseModeSense(spf, false).pages.map((x) => [x.pageCode, x.subpage, x.spf]), [[0x0a, 1, true], [8, 0, false]]);
  assert.deepEqual(p.findCachingPage(p.parseModeSense(spf, false)), { wce: true, rcd: false });
});

test('MODE SENSE truncated at every length never throws a foreign error', () => {
  for (const [buf, ten] of [[MS6, false], [MS10, true]] as const) {
    for (let n = 0; n <= buf.length; n++) {
      try {
        const m = p.parseModeSense(buf.subarray(0, n), ten);
        if (n < buf.length) assert.equal(m.truncated, true);
        p.findCachingPage(m);
      } catch (e) {
        assert.ok(e instanceof ScsiError, String(e));
      }
    }
  }
  // cut inside the caching page: no caching page reported (only 2 bytes of it)
  assert.equal(p.findCachingPage(p.parseModeSense(MS6.subarray(0, 14), false)), undefined);
});

test('REPORT LUNS with SAM addressing', () => {
  const b = hex('00000020 00000000' + '0000000000000000' + '0001000000000000' + '4123000000000000' + '0201000000000000');
  const r = p.parseReportLuns(b);
  assert.deepEqual(r.luns.map((l) => [l.lun, l.addressing, l.bus]), [[0, 'peripheral', 0], [1, 'peripheral', 0], [0x123, 'flat', 0], [-1, 'peripheral', 2]]);
  assert.equal(r.luns[2].raw, '4123000000000000');
  assert.equal(r.truncated, false);
  const t = p.parseReportLuns(b.subarray(0, 20));
  assert.equal(t.truncated, true);
  assert.equal(t.luns.length, 1);
  assert.equal(p.decodeLun(hex('8000')).addressing, 'logical-unit');
  assert.equal(p.decodeLun(hex('c0')).addressing, 'extended');
  assert.throws(() => p.parseReportLuns(hex('0000')), ScsiError);
});

test('GET LBA STATUS descriptors', () => {
  const b = hex('00000034 00000000'
    + '0000000000000000 00000010 00 000000'
    + '0000000000000010 00000020 01 000000'
    + '0000000000000030 00000008 02 000000');
  const r = p.parseLbaStatus(b);
  assert.deepEqual(r.descriptors.map((d) => [d.lba, d.blocks, d.state]), [[0n, 16, 'mapped'], [16n, 32, 'deallocated'], [48n, 8, 'anchored']]);
  assert.equal(p.parseLbaStatus(b.subarray(0, 30)).descriptors.length, 1);
  assert.equal(p.parseLbaStatus(b.subarray(0, 30)).truncated, true);
  assert.equal(p.parseLbaStatus(hex('00000014 00000000 0000000000000000 00000010 03 000000')).descriptors[0].state, 'mapped');
});

test('fuzz: every parser survives random buffers', () => {
  const parsers: Array<(b: Buffer) => unknown> = [
    p.parseStandardInquiry, (b) => p.parseVpdHeader(b), p.parseVpdSupportedPages, p.parseVpdUnitSerial,
    p.parseVpdDeviceId, p.parseVpdBlockLimits, p.parseVpdBlockCharacteristics, p.parseVpdLbp,
    p.parseReadCapacity10, p.parseReadCapacity16, (b) => p.findCachingPage(p.parseModeSense(b, false)),
    (b) => p.findCachingPage(p.parseModeSense(b, true)), p.parseReportLuns, p.parseLbaStatus,
  ];
  const pageCodes = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];
  fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.constantFrom(...pageCodes), (arr, page) => {
    const b = Buffer.from(arr);
    const variant = Buffer.from(b);
    if (variant.length > 1) variant[1] = page; // give VPD parsers a matching page code sometimes
    for (const fn of parsers) {
      for (const x of [b, variant]) {
        try {
          fn(x);
        } catch (e) {
          assert.ok(e instanceof IscsiNbdError, `${fn.name}: ${String(e)}`);
        }
      }
    }
  }), { numRuns: 2000 });
});

// REPORT TARGET PORT GROUPS as LIO answers it (extended header, implicit transition time 10 s):
// group 1 active/optimized, preferred, ports 1 and 2; group 2 standby, port 3.
const RTPG_EXT = hex(
  '00 00 00 20' + // RETURN DATA LENGTH 32
  '10 0a 00 00' + // FORMAT TYPE 1, IMPLICIT TRANSITION TIME 10
  '80 0f 00 01 00 00 00 02' + // PREF, AO; supports T/O... AO; group 1; status 0; 2 ports
  '00 00 00 01 00 00 00 02' + // relative ports 1, 2
  '02 0f 00 02 00 02 00 01' + // standby; group 2; status 02 (implicit change); 1 port
  '00 00 00 03', // relative port 3
);

test('REPORT TARGET PORT GROUPS: extended and length-only headers, states, ports', () => {
  const r = p.parseReportTargetPortGroups(RTPG_EXT, true);
  assert.equal(r.transitionTimeSec, 10);
  assert.equal(r.truncated, false);
  assert.deepEqual(r.groups, [
    { id: 1, state: 'active/optimized', preferred: true, statusCode: 0, ports: [1, 2] },
    { id: 2, state: 'standby', preferred: false, statusCode: 2, ports: [3] },
  ]);
  // A target that ignores PARAMETER DATA FORMAT answers with the length-only header.
  const short = Buffer.concat([hex('00 00 00 1c'), RTPG_EXT.subarray(8)]);
  assert.deepEqual(p.parseReportTargetPortGroups(short, true).groups.map((g) => [g.id, g.state]), [[1, 'active/optimized'], [2, 'standby']]);
  // Every other state code.
  for (const [code, name] of [[1, 'active/non-optimized'], [3, 'unavailable'], [4, 'logical block dependent'], [0xe, 'offline'], [0xf, 'transitioning'], [7, 'reserved']] as const) {
    const b = Buffer.from(short);
    b[4] = code;
    assert.equal(p.parseReportTargetPortGroups(b, true).groups[0].state, name);
  }
});

test('REPORT TARGET PORT GROUPS: cut by the allocation length at every byte, never misread', () => {
  for (let n = 4; n < RTPG_EXT.length; n++) {
    const r = p.parseReportTargetPortGroups(RTPG_EXT.subarray(0, n), true);
    assert.equal(r.truncated, true, `cut at ${n}`);
    for (const g of r.groups) assert.ok(g.id === 1 ? g.ports.length === 2 : g.ports.length === 1, `cut at ${n}: a group is whole or absent`);
    assert.equal(r.groups.length, n >= 24 ? 1 : 0, `cut at ${n}`);
  }
  assert.throws(() => p.parseReportTargetPortGroups(hex('00 00'), true), RangeError);
});

// LIO (Linux 6.1) with two target port groups of one port each, as it sends it: RETURN DATA
// LENGTH 24 counts the descriptors only, not the extended header, and it sends 24 + 4 bytes,
// so the port entry of the last group never arrives.
const RTPG_LIO = hex(
  '00 00 00 18' + // RETURN DATA LENGTH 24 (4 short: the extended header is left out)
  '10 00 00 00' + // FORMAT TYPE 1, IMPLICIT TRANSITION TIME 0
  '02 cf 00 10 00 02 00 01' + '00 00 00 01' + // group 16 standby (implicit change), relative port 1
  '00 cf 00 20 00 02 00 01', // group 32 active/optimized, 1 port (its entry is not sent)
);

test('REPORT TARGET PORT GROUPS as LIO sends it: the last group, whose port entry is cut, still has its state', () => {
  const r = p.parseReportTargetPortGroups(RTPG_LIO, true);
  assert.equal(r.truncated, false);
  assert.deepEqual(r.groups.map((g) => [g.id, g.state, g.ports]), [[16, 'standby', [1]], [32, 'active/optimized', []]]);
  // With the entry there (a buffer padded past the data), it is read too.
  const padded = Buffer.concat([RTPG_LIO, hex('00 00 00 02'), Buffer.alloc(64)]);
  assert.deepEqual(p.parseReportTargetPortGroups(padded, true).groups.map((g) => [g.id, g.ports]), [[16, [1]], [32, [2]]]);
  // Cut short by the allocation length: a partial descriptor is dropped and that is said.
  const cut = p.parseReportTargetPortGroups(RTPG_LIO.subarray(0, 24), true);
  assert.equal(cut.truncated, true);
  assert.deepEqual(cut.groups.map((g) => g.id), [16]);
});

test('VPD 0x83: the relative target port and target port group of the port asked', () => {
  const vpd = hex(
    '00 83 00 20' +
    '01 03 00 08 60 01 40 50 00 00 00 01' + // NAA, association LU (not a port)
    '61 94 00 04 00 00 00 03' + // PIV, association 1 (target port), type 4: relative port 3
    '61 95 00 04 00 00 00 02', // association 1, type 5: target port group 2
  );
  assert.deepEqual(p.targetPortIds(p.parseVpdDeviceId(vpd)), { relativePort: 3, group: 2 });
  assert.deepEqual(p.targetPortIds(p.parseVpdDeviceId(hex('00 83 00 0c 01 03 00 08 60 01 40 50 00 00 00 01'))), {});
});
