// Identifying a SCSI logical unit the way qemu does: TEST UNIT READY,
// INQUIRY, the VPD pages the device lists (serial, device identification,
// block limits and characteristics, provisioning), MODE SENSE and READ
// CAPACITY; the identity string built from its designators and serial, and
// the comparison that tells whether two identifications are the same device.
// LogicalUnit (lun.ts) opens and revalidates with identify().

import type { Logger } from '../log';
import { ScsiError } from '../errors';
import * as cdb from './cdb';
import {
  BlockLimits, CachingPage, Capacity16, Designator, ModeSenseData, PDT_DISK, StandardInquiry, LogicalBlockProvisioning,
  ASSOC, DESIG, findCachingPage, parseVpdBlockCharacteristics, parseVpdBlockLimits, parseVpdDeviceId, parseVpdLbp,
  parseVpdSupportedPages, parseVpdUnitSerial,
} from './parse';
import { SK } from './sense';
import { SAM_STAT_CHECK_CONDITION, SAM_STAT_GOOD } from './transport';

export interface LunLimits {
  maxTransferBytes: number;
  optimalTransferBytes: number;
  optimalGranularityBytes: number;
  /** Per UNMAP command; 0xffffffff = unlimited, 0 = UNMAP not supported (when B0 present). */
  maxUnmapBlocks: number;
  maxUnmapDescriptors: number;
  maxWriteSameBlocks: number;
  unmapGranularityBytes: number;
  /** Byte offset of the first aligned unmap granule (valid only when unmapGranularityBytes > 0). */
  unmapAlignmentBytes: number;
}

export interface LunProvisioning {
  lbpme: boolean;
  lbprz: boolean;
  lbpu: boolean;
  lbpws: boolean;
  lbpws10: boolean;
  anc: boolean;
  /** VPD B2 PROVISIONING TYPE: 0 unknown, 1 resource, 2 thin. */
  type: number;
}

/** What the LUN can do. unmap/writeSame/writeSameUnmap/getLbaStatus may turn false as the device refuses them. */
export interface LunCapabilities {
  unmap: boolean;
  writeSame: boolean;
  writeSameUnmap: boolean;
  getLbaStatus: boolean;
  sync16: boolean;
  rw16: boolean;
}

export interface LunInfo {
  lun: number;
  deviceType: number;
  vendor: string;
  product: string;
  revision: string;
  serial?: string;
  designators: Designator[];
  /** Stable identity from VPD 0x83 (NAA > EUI-64 > SCSI name > T10) and the 0x80 serial. */
  identity: string;
  blockSize: number;
  blocks: bigint;
  sizeBytes: bigint;
  physicalBlockSize: number;
  lowestAlignedLba: number;
  writeProtect: boolean;
  writeCache: boolean;
  dpoFua: boolean;
  rotational: boolean;
  protectionEnabled: boolean;
  limits: LunLimits;
  provisioning: LunProvisioning;
  capabilities: LunCapabilities;
  vpdPages: number[];
  inquiry: StandardInquiry;
}

/** The commands identify() sends: LogicalUnit provides them (with its retries and timeouts). */
export interface LunProber {
  readonly lun: number;
  testUnitReady(): Promise<void>;
  inquiry(): Promise<StandardInquiry>;
  vpd(page: number, quiet?: boolean): Promise<Buffer>;
  readCapacity10(): Promise<{ returnedLba: number; blockLength: number }>;
  readCapacity16(quiet?: boolean): Promise<Capacity16>;
  modeSense(page: number, quiet?: boolean): Promise<ModeSenseData>;
}

const MIN_BLOCK = 512;
const MAX_BLOCK = 65536;
const UNLIMITED32 = 0xffffffff;

function isIllegalRequest(e: unknown): boolean {
  return e instanceof ScsiError && e.status === SAM_STAT_CHECK_CONDITION && e.senseKey === SK.ILLEGAL_REQUEST;
}

/** Identity string: the best LU-associated designator plus the unit serial. */
export function buildIdentity(designators: Designator[], serial: string | undefined, inq?: StandardInquiry): string {
  const lu = designators.filter((d) => d.association === ASSOC.LU);
  const pick = (type: number): Designator | undefined => lu.find((d) => d.type === type);
  const d = pick(DESIG.NAA) ?? pick(DESIG.EUI64) ?? pick(DESIG.SCSI_NAME) ?? pick(DESIG.UUID) ?? pick(DESIG.T10);
  const parts: string[] = [];
  if (d) {
    const prefix = d.type === DESIG.NAA ? 'naa.' : d.type === DESIG.EUI64 ? 'eui.' : d.type === DESIG.SCSI_NAME ? 'name:'
      : d.type === DESIG.UUID ? 'uuid.' : 't10:';
    parts.push(prefix + d.value);
  }
  if (serial) parts.push(`sn:${serial}`);
  if (parts.length === 0 && inq) parts.push(`inq:${inq.vendor}/${inq.product}`);
  return parts.join('|');
}

/** Two identifications are the same device: same identity string and block size. */
export function sameDevice(a: Pick<LunInfo, 'identity' | 'blockSize'>, b: Pick<LunInfo, 'identity' | 'blockSize'>): boolean {
  return a.identity === b.identity && a.blockSize === b.blockSize;
}

/** "<identity> (<n> B blocks)", for messages naming a device. */
export function describeDevice(i: Pick<LunInfo, 'identity' | 'blockSize'>): string {
  return `${i.identity || '(no id)'} (${i.blockSize} B blocks)`;
}

/**
 * Identify the LU: VPD 0x00 and the pages it lists among 0x80/0x83/0xB0/0xB1/0xB2,
 * MODE SENSE (WP, DPOFUA, caching page), READ CAPACITY(16) falling back to (10).
 */
export async function identify(lu: LunProber, log: Logger): Promise<LunInfo> {
  try {
    await lu.testUnitReady();
  } catch (e) {
    if (e instanceof ScsiError && e.senseKey === SK.ILLEGAL_REQUEST && e.asc === 0x25) {
      throw new ScsiError('ENOLUN', `no logical unit at LUN ${lu.lun} (${e.message})`, e.status, e.senseKey, e.asc, e.ascq);
    }
    // A port in ALUA standby refuses TEST UNIT READY but answers what identifies the LU
    // (INQUIRY, READ CAPACITY): the path is known, it just does not get I/O.
    const aluaNotReady = e instanceof ScsiError && e.senseKey === SK.NOT_READY && e.asc === 0x04 && (e.ascq === 0x0a || e.ascq === 0x0b);
    if (!aluaNotReady) throw e;
  }

  const inq = await lu.inquiry();
  if (inq.peripheralQualifier === 1 || inq.peripheralQualifier === 3) {
    throw new ScsiError('ENOLUN',
      `no logical unit at LUN ${lu.lun} (peripheral qualifier ${inq.peripheralQualifier})`, SAM_STAT_GOOD);
  }
  if (inq.deviceType !== PDT_DISK) {
    throw new ScsiError('ESCSI_UNSUPPORTED',
      `LUN ${lu.lun} is not a disk (peripheral device type 0x${inq.deviceType.toString(16).padStart(2, '0')}: ${deviceTypeName(inq.deviceType)})`,
      SAM_STAT_GOOD);
  }

  // VPD pages: only those the device lists; a failing page is skipped, not fatal.
  let pages: number[] = [];
  try {
    pages = parseVpdSupportedPages(await lu.vpd(0x00, true));
  } catch (e) {
    if (!(e instanceof ScsiError)) throw e;
    log.debug({ err: e }, 'no VPD pages');
  }
  const page = async <T>(code: number, parse: (b: Buffer) => T): Promise<T | undefined> => {
    if (!pages.includes(code)) return undefined;
    try {
      return parse(await lu.vpd(code, true));
    } catch (e) {
      if (!(e instanceof ScsiError)) throw e;
      log.warn({ page: code, err: e }, 'VPD page unreadable, ignored');
      return undefined;
    }
  };
  const serial = await page(0x80, parseVpdUnitSerial);
  const designators = (await page(0x83, parseVpdDeviceId)) ?? [];
  const bl: BlockLimits | undefined = await page(0xb0, parseVpdBlockLimits);
  const bc = await page(0xb1, parseVpdBlockCharacteristics);
  const lbp: LogicalBlockProvisioning | undefined = await page(0xb2, parseVpdLbp);

  // MODE SENSE: all pages for the header and, with luck, the caching page.
  let ms: ModeSenseData | undefined;
  let caching: CachingPage | undefined;
  try {
    ms = await lu.modeSense(cdb.MODE_PAGE_ALL, true);
    caching = findCachingPage(ms);
  } catch (e) {
    if (!(e instanceof ScsiError)) throw e;
    log.debug({ err: e }, 'MODE SENSE for all pages refused');
  }
  if (!caching) {
    try {
      const m8 = await lu.modeSense(cdb.MODE_PAGE_CACHING, true);
      ms ??= m8;
      caching = findCachingPage(m8);
    } catch (e) {
      if (!(e instanceof ScsiError)) throw e;
      log.debug({ err: e }, 'MODE SENSE caching page refused');
    }
  }
  if (!ms) log.warn('MODE SENSE unsupported: assuming writable, no FUA, write cache on');

  // READ CAPACITY(16), falling back to (10) on ILLEGAL REQUEST.
  let c16: Capacity16 | undefined;
  try {
    c16 = await lu.readCapacity16(true);
  } catch (e) {
    if (!isIllegalRequest(e)) throw e;
    log.debug('READ CAPACITY(16) refused, using READ CAPACITY(10)');
  }
  let blockSize: number;
  let blocks: bigint;
  if (c16) {
    blockSize = c16.blockLength;
    blocks = c16.returnedLba + 1n;
  } else {
    const c10 = await lu.readCapacity10();
    if (c10.returnedLba === 0xffffffff) {
      throw new ScsiError('ESCSI_UNSUPPORTED',
        `LUN ${lu.lun} is larger than READ CAPACITY(10) can say and refuses READ CAPACITY(16)`, SAM_STAT_GOOD);
    }
    blockSize = c10.blockLength;
    blocks = BigInt(c10.returnedLba) + 1n;
  }
  if (blockSize < MIN_BLOCK || blockSize > MAX_BLOCK || (blockSize & (blockSize - 1)) !== 0) {
    throw new ScsiError('ESCSI_UNSUPPORTED', `LUN ${lu.lun} has an unsupported block size of ${blockSize} bytes`, SAM_STAT_GOOD);
  }
  if (c16?.protEn) log.warn({ pType: c16.pType }, 'LUN is formatted with protection information; reading/writing without it');

  const limits: LunLimits = {
    maxTransferBytes: (bl?.maxTransferLength ?? 0) * blockSize,
    optimalTransferBytes: (bl?.optimalTransferLength ?? 0) * blockSize,
    optimalGranularityBytes: (bl?.optimalTransferLengthGranularity ?? 0) * blockSize,
    maxUnmapBlocks: bl ? bl.maxUnmapLbaCount : UNLIMITED32,
    maxUnmapDescriptors: bl ? bl.maxUnmapBlockDescriptorCount : 1,
    maxWriteSameBlocks: bl ? Number(bl.maxWriteSameLength > BigInt(UNLIMITED32) ? BigInt(UNLIMITED32) : bl.maxWriteSameLength) : 0,
    unmapGranularityBytes: (bl?.optimalUnmapGranularity ?? 0) * blockSize,
    unmapAlignmentBytes: bl?.ugaValid ? bl.unmapGranularityAlignment * blockSize : 0,
  };
  const provisioning: LunProvisioning = {
    lbpme: c16?.lbpme ?? false,
    lbprz: (c16?.lbprz ?? false) || (lbp?.lbprz ?? false),
    lbpu: lbp?.lbpu ?? false,
    lbpws: lbp?.lbpws ?? false,
    lbpws10: lbp?.lbpws10 ?? false,
    anc: lbp?.ancSup ?? false,
    type: lbp?.provisioningType ?? 0,
  };
  const capabilities: LunCapabilities = {
    // UNMAP only when B2 says LBPU (like qemu), and B0 (if any) allows some blocks and descriptors.
    unmap: provisioning.lbpu && (!bl || (limits.maxUnmapBlocks > 0 && limits.maxUnmapDescriptors > 0)),
    // Optimistic: learnt false on ILLEGAL REQUEST.
    writeSame: true,
    writeSameUnmap: provisioning.lbprz && provisioning.lbpws,
    getLbaStatus: provisioning.lbpme,
    sync16: c16 !== undefined,
    rw16: c16 !== undefined,
  };
  return {
    lun: lu.lun,
    deviceType: inq.deviceType,
    vendor: inq.vendor,
    product: inq.product,
    revision: inq.revision,
    serial: serial || undefined,
    designators,
    identity: buildIdentity(designators, serial || undefined, inq),
    blockSize,
    blocks,
    sizeBytes: blocks * BigInt(blockSize),
    physicalBlockSize: blockSize * 2 ** Math.min(c16?.logicalPerPhysicalExponent ?? 0, 15),
    lowestAlignedLba: c16?.lowestAlignedLba ?? 0,
    writeProtect: ms?.writeProtect ?? false,
    // No caching page: assume a write cache, so flushes are advertised and sent (harmless if none).
    writeCache: caching ? caching.wce : true,
    dpoFua: ms?.dpoFua ?? false,
    // Like Linux sd: rotational unless B1 says non-rotating (1); no B1 page = rotational.
    rotational: bc ? bc.mediumRotationRate !== 1 : true,
    protectionEnabled: c16?.protEn ?? false,
    limits,
    provisioning,
    capabilities,
    vpdPages: pages,
    inquiry: inq,
  };
}

const DEVICE_TYPES: Record<number, string> = {
  0x00: 'disk', 0x01: 'tape', 0x03: 'processor', 0x05: 'CD/DVD', 0x07: 'optical memory', 0x08: 'media changer',
  0x0c: 'storage array controller', 0x0d: 'enclosure', 0x0e: 'simplified direct-access', 0x11: 'object storage',
  0x1e: 'well known LU', 0x1f: 'unknown',
};

export function deviceTypeName(t: number): string {
  return DEVICE_TYPES[t] ?? 'other';
}
