// One SCSI logical unit (a direct-access block device) over a ScsiTransport:
// identification the way qemu does it, byte-addressed I/O split to the
// transfer limits, and retries decided by the table in sense.ts.

import { runLimited } from '../util/limit';
import type { Logger } from '../log';
import { rootLogger } from '../log';
import { IscsiNbdError, RequestError, ScsiError } from '../errors';
import * as cdb from './cdb';
import {
  Capacity16, ModeSenseData, ProvisioningState, StandardInquiry, ReportedLun, TargetPortGroup,
  parseLbaStatus, parseModeSense, parseReadCapacity10, parseReadCapacity16, parseReportLuns, parseReportTargetPortGroups, parseStandardInquiry,
  parseVpdHeader,
} from './parse';
import { SK, SenseData, classify, describeOutcome, parseSense, scsiError, statusName } from './sense';
import { SAM_STAT_CHECK_CONDITION, SAM_STAT_GOOD, ScsiResponse, ScsiTransport } from './transport';
import { describeDevice, identify, sameDevice, type LunInfo } from './identify';

// Identification (identify(), the identity string, the info types) lives in identify.ts.
export { buildIdentity, deviceTypeName, describeDevice, sameDevice } from './identify';
export type { LunCapabilities, LunInfo, LunLimits, LunProvisioning } from './identify';

export interface LunOptions {
  log?: Logger;
  /** Retries per command, whatever the cause (default 7, like qemu). */
  maxRetries?: number;
  /** First backoff delay for BUSY/TASK SET FULL/not-ready/timeouts (default 8 ms), doubled each time. */
  baseBackoffMs?: number;
  /** Cap of the backoff delay (default 32000 ms). */
  maxBackoffMs?: number;
  /** Per-command timeout handed to the transport (its default otherwise). */
  commandTimeoutMs?: number;
  /** Retry commands the transport failed with ETIMEOUT (default true, like qemu). */
  retryTimeouts?: boolean;
  /** WRITE SAME chunk in blocks when VPD B0 gives no MAXIMUM WRITE SAME LENGTH (default 65536). */
  defaultWriteSameBlocks?: number;
  /** Commands in flight at once for one unmap()/writeZeroes() call (default 8). */
  maxParallel?: number;
  /**
   * Logging only: this unit checks, on another session, the identity of a LUN
   * that is already open; open() logs that at debug ('LUN identity checked')
   * instead of a second 'LUN opened'.
   */
  identityCheck?: boolean;
  /** Called on every UNIT ATTENTION (e.g. 2A/09 capacity changed, 3F/0E LUNs changed). */
  onUnitAttention?: (asc: number, ascq: number) => void;
  /** Test hook: how to wait between retries. */
  sleep?: (ms: number) => Promise<void>;
}

/** Limits in bytes (or blocks where named so); 0 = the device reported no limit. */
export interface LbaExtent {
  offset: bigint;
  length: bigint;
  state: ProvisioningState;
}

/** Per-command data and logging options for LogicalUnit.execute(). */
export interface ExecuteOptions {
  dataOut?: Buffer;
  dataInLength?: number;
  dataIn?: Buffer;
  /** Log a final failure at debug instead of warn (the caller expects and handles it). */
  quiet?: boolean;
}

const UNLIMITED32 = 0xffffffff;
const ZERO_BUF_BYTES = 1 << 20;

const sleepReal = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** ILLEGAL REQUEST saying the command or one of its fields is unsupported. */
function isUnsupported(e: unknown): boolean {
  return e instanceof ScsiError && e.status === SAM_STAT_CHECK_CONDITION && e.senseKey === SK.ILLEGAL_REQUEST &&
    (e.asc === 0x20 || e.asc === 0x24);
}

function isIllegalRequest(e: unknown): boolean {
  return e instanceof ScsiError && e.status === SAM_STAT_CHECK_CONDITION && e.senseKey === SK.ILLEGAL_REQUEST;
}

/** Wait for every promise (so no Data-In still lands in a caller's buffer), then throw the first error. */
async function settleAll(ps: Promise<unknown>[]): Promise<void> {
  const rs = await Promise.allSettled(ps);
  for (const r of rs) if (r.status === 'rejected') throw r.reason;
}

export class LogicalUnit {
  readonly lun: number;
  private readonly transport: ScsiTransport;
  private readonly log: Logger;
  private readonly maxRetries: number;
  private readonly baseBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly timeoutMs?: number;
  private readonly retryTimeouts: boolean;
  private readonly defaultWsBlocks: number;
  private readonly maxParallel: number;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly onUnitAttention?: (asc: number, ascq: number) => void;
  private readonly identityCheck: boolean;
  private _info?: LunInfo;
  private useModeSense10 = false;
  private zeroBlock?: Buffer;
  private zeroBuf?: Buffer;

  constructor(transport: ScsiTransport, lun: number, opts: LunOptions = {}) {
    this.transport = transport;
    this.lun = lun;
    this.log = (opts.log ?? rootLogger()).child({ lun });
    this.maxRetries = opts.maxRetries ?? 7;
    this.baseBackoffMs = opts.baseBackoffMs ?? 8;
    this.maxBackoffMs = opts.maxBackoffMs ?? 32000;
    this.timeoutMs = opts.commandTimeoutMs;
    this.retryTimeouts = opts.retryTimeouts ?? true;
    this.defaultWsBlocks = opts.defaultWriteSameBlocks ?? 65536;
    this.maxParallel = opts.maxParallel ?? 8;
    this.sleep = opts.sleep ?? sleepReal;
    this.onUnitAttention = opts.onUnitAttention;
    this.identityCheck = opts.identityCheck === true;
  }

  /** The LUN's description; throws before open() succeeded. The same object is updated as capabilities are learnt. */
  get info(): LunInfo {
    if (!this._info) throw new RequestError('EINVAL', `LUN ${this.lun} is not open`);
    return this._info;
  }

  get isOpen(): boolean {
    return this._info !== undefined;
  }

  // ------------------------------------------------------------ commands

  /**
   * Execute one CDB with retries per the sense table. Resolves with the response of a
   * successful attempt (GOOD, CONDITION MET, RECOVERED ERROR); rejects with ScsiError, or with
   * the transport's own error.
   */
  async execute(c: Buffer, io: ExecuteOptions = {}): Promise<ScsiResponse> {
    // The hot path is one transport call and a GOOD status: nothing else is
    // computed (names, sense text) unless something went wrong.
    let first: ScsiResponse;
    try {
      first = await this.executeOnce(c, io);
    } catch (e) {
      return this.executeSlow(c, io, undefined, e);
    }
    if (first.status === SAM_STAT_GOOD) return first;
    return this.executeSlow(c, io, first);
  }

  private executeOnce(c: Buffer, io: ExecuteOptions): Promise<ScsiResponse> {
    return this.transport.execute({
      lun: this.lun, cdb: c, dataOut: io.dataOut, dataInLength: io.dataInLength, dataIn: io.dataIn,
      timeoutMs: this.timeoutMs,
    });
  }

  private async executeSlow(c: Buffer, io: ExecuteOptions, firstResp?: ScsiResponse, firstErr?: unknown): Promise<ScsiResponse> {
    const name = cdb.cdbName(c);
    let retries = 0;
    let backoffStep = 0;
    let pending = firstResp;
    const backoff = (): number => Math.min(this.baseBackoffMs * 2 ** backoffStep++, this.maxBackoffMs);
    for (;;) {
      let resp: ScsiResponse;
      try {
        if (firstErr !== undefined) {
          const e = firstErr;
          firstErr = undefined;
          throw e;
        }
        if (pending) {
          resp = pending;
          pending = undefined;
        } else {
          resp = await this.executeOnce(c, io);
        }
      } catch (e) {
        if (this.retryTimeouts && e instanceof IscsiNbdError && e.code === 'ETIMEOUT' && retries < this.maxRetries) {
          const delay = backoff();
          retries++;
          this.log.debug({ cmd: name, attempt: retries, delayMs: delay }, 'command timed out, retrying');
          await this.sleep(delay);
          continue;
        }
        this.log.warn({ cmd: name, err: e instanceof Error ? e.message : String(e) }, 'transport failed command');
        throw e;
      }
      const sense: SenseData | undefined = resp.status === SAM_STAT_CHECK_CONDITION ? parseSense(resp.sense) : undefined;
      const out = classify(resp.status, sense);
      const what = describeOutcome(resp.status, sense);
      if (sense?.deferred) this.log.error({ cmd: name, sense: what }, 'deferred error: an earlier command failed');
      if (out.action === 'success') {
        if (resp.status === SAM_STAT_CHECK_CONDITION) {
          if (io.dataInLength && !resp.data) {
            // recovered, but the transport gave no data: treat as a retry-worthy event
            out.action = 'retry';
          } else {
            this.log.info({ cmd: name, sense: what }, 'command completed with recovered error');
            return resp;
          }
        } else {
          return resp;
        }
      }
      const fields = {
        cmd: name, status: statusName(resp.status), senseKey: sense?.senseKey, asc: sense?.asc, ascq: sense?.ascq,
        sense: what,
      };
      if (out.action === 'fail') {
        this.log[io.quiet ? 'debug' : 'warn'](fields, 'SCSI command failed');
        throw scsiError(out.code, resp.status, sense, name);
      }
      const limit = Math.min(out.maxRetries ?? this.maxRetries, this.maxRetries);
      if (retries >= limit) {
        this.log[io.quiet ? 'debug' : 'warn']({ ...fields, retries }, 'SCSI command failed, retries exhausted');
        throw scsiError(out.code, resp.status, sense, name, `(gave up after ${retries} retries)`);
      }
      retries++;
      if (sense?.senseKey === SK.UNIT_ATTENTION) {
        // The one line per UNIT ATTENTION (onUnitAttention callers do not log it again).
        this.log.info({ cmd: name, asc: sense.asc, ascq: sense.ascq, sense: what }, 'unit attention');
        try { this.onUnitAttention?.(sense.asc, sense.ascq); } catch { /* a callback's problem is not ours */ }
      }
      const delay = out.action === 'retry-backoff' ? backoff() : 0;
      this.log.debug({ ...fields, attempt: retries, delayMs: delay, why: out.why }, 'retrying SCSI command');
      if (delay > 0) await this.sleep(delay);
    }
  }

  private async dataIn(c: Buffer, allocLen: number, quiet = false): Promise<Buffer> {
    const r = await this.execute(c, { dataInLength: allocLen, quiet });
    const d = r.data ?? Buffer.alloc(0);
    return d.length > allocLen ? d.subarray(0, allocLen) : d;
  }

  /** REPORT TARGET PORT GROUPS (extended header; a target that ignores it answers the short one). */
  async reportTargetPortGroups(): Promise<TargetPortGroup[]> {
    let alloc = 1024;
    for (;;) {
      const b = await this.dataIn(cdb.reportTargetPortGroups(alloc), alloc);
      const r = parseReportTargetPortGroups(b, true);
      if (!r.truncated || alloc >= 65536) return r.groups;
      // Room for what it says plus the extended header LIO leaves out of the length; always more.
      alloc = Math.min(65536, Math.max(alloc * 2, 8 + b.readUInt32BE(0)));
    }
  }

  async testUnitReady(): Promise<void> {
    await this.execute(cdb.testUnitReady());
  }

  /** Standard INQUIRY data. */
  async inquiry(): Promise<StandardInquiry> {
    return parseStandardInquiry(await this.dataIn(cdb.inquiry(255), 255));
  }

  /** A whole VPD page (asked again with a larger allocation length when it did not fit). */
  async vpd(page: number, quiet = false): Promise<Buffer> {
    let alloc = 255;
    for (let i = 0; i < 2; i++) {
      const b = await this.dataIn(cdb.inquiry(alloc, page), alloc, quiet);
      const h = parseVpdHeader(b, page);
      const need = Math.min(4 + h.pageLength, 0xffff);
      if (!h.truncated || b.length < alloc || need <= alloc) return b;
      alloc = need;
    }
    return this.dataIn(cdb.inquiry(alloc, page), alloc, quiet);
  }

  async readCapacity10(): Promise<{ returnedLba: number; blockLength: number }> {
    return parseReadCapacity10(await this.dataIn(cdb.readCapacity10(), 8));
  }

  async readCapacity16(quiet = false): Promise<Capacity16> {
    return parseReadCapacity16(await this.dataIn(cdb.readCapacity16(32), 32, quiet));
  }

  /** MODE SENSE(6), or (10) once (6) drew ILLEGAL REQUEST. DBD set: no block descriptors. */
  async modeSense(page: number, quiet = false): Promise<ModeSenseData> {
    if (!this.useModeSense10) {
      try {
        return parseModeSense(await this.dataIn(cdb.modeSense6(page, 255, { dbd: true }), 255, true), false);
      } catch (e) {
        if (!isIllegalRequest(e)) throw e;
        this.log.debug({ page }, 'MODE SENSE(6) refused, using MODE SENSE(10)');
        this.useModeSense10 = true;
      }
    }
    return parseModeSense(await this.dataIn(cdb.modeSense10(page, 4096, { dbd: true }), 4096, quiet), true);
  }

  async reportLuns(): Promise<ReportedLun[]> {
    let alloc = 4096;
    for (let i = 0; i < 3; i++) {
      const r = parseReportLuns(await this.dataIn(cdb.reportLuns(alloc), alloc));
      if (!r.truncated || r.listLength + 8 <= alloc) return r.luns;
      alloc = Math.min(r.listLength + 8, 1 << 20);
    }
    return parseReportLuns(await this.dataIn(cdb.reportLuns(alloc), alloc)).luns;
  }

  // ------------------------------------------------------------ open

  /**
   * Identify the LUN: TEST UNIT READY (clears unit attentions), INQUIRY (must be a disk),
   * VPD 0x00 and the pages it lists among 0x80/0x83/0xB0/0xB1/0xB2, MODE SENSE (WP, DPOFUA,
   * caching page), READ CAPACITY(16) falling back to (10).
   */
  async open(): Promise<LunInfo> {
    this._info = await identify(this, this.log);
    const i = this._info;
    const fields = {
      vendor: i.vendor, product: i.product, identity: i.identity, blockSize: i.blockSize, blocks: String(i.blocks),
      writeProtect: i.writeProtect, writeCache: i.writeCache, caps: i.capabilities,
    };
    if (this.identityCheck) this.log.debug(fields, 'LUN identity checked');
    else this.log.info(fields, 'LUN opened');
    return i;
  }

  /**
   * Identify again (after a reconnect) and check it is the same LU. Throws ScsiError ELUN_CHANGED
   * when the identity differs (info is left unchanged); otherwise updates info (e.g. a new size).
   */
  async revalidate(): Promise<LunInfo> {
    const old = this.info;
    const now = await identify(this, this.log);
    if (!sameDevice(old, now)) {
      this.log.error({ was: old.identity, now: now.identity }, 'LUN identity changed');
      throw new ScsiError('ELUN_CHANGED', `LUN ${this.lun} changed: was ${describeDevice(old)}, now ${describeDevice(now)}`, SAM_STAT_GOOD);
    }
    if (now.blocks !== old.blocks) this.log.warn({ was: String(old.blocks), now: String(now.blocks) }, 'LUN size changed');
    // keep what we learnt the device refuses
    for (const k of ['unmap', 'writeSame', 'writeSameUnmap', 'getLbaStatus'] as const) {
      if (!old.capabilities[k]) now.capabilities[k] = false;
    }
    // keep the objects others hold (info, info.capabilities) and update them in place
    Object.assign(old.capabilities, now.capabilities);
    now.capabilities = old.capabilities;
    Object.assign(old, now);
    return old;
  }

  /** A capacity read elsewhere (the identity check of a new login): take it over. */
  setCapacity(c: { blocks: bigint; sizeBytes: bigint }): void {
    const i = this.info;
    i.blocks = c.blocks;
    i.sizeBytes = c.sizeBytes;
  }

  // ------------------------------------------------------------ I/O

  /** Largest byte count of one READ/WRITE: the transport's and the device's limits, whole blocks. */
  maxIoBytes(): number {
    const i = this.info;
    let m = this.transport.maxTransferBytes;
    if (i.limits.maxTransferBytes > 0) m = Math.min(m, i.limits.maxTransferBytes);
    m = Math.min(m, UNLIMITED32 * i.blockSize);
    m -= m % i.blockSize;
    return Math.max(m, i.blockSize);
  }

  private checkRange(op: string, offset: bigint, length: number | bigint): bigint {
    const i = this.info;
    const len = BigInt(length);
    const bs = BigInt(i.blockSize);
    if (typeof offset !== 'bigint' || offset < 0n || len < 0n) throw new RequestError('EINVAL', `${op}: bad offset/length`);
    if (offset % bs !== 0n || len % bs !== 0n) {
      throw new RequestError('EINVAL', `${op}: offset ${offset} / length ${len} not aligned to ${i.blockSize}-byte blocks`);
    }
    if (offset + len > i.sizeBytes) {
      throw new RequestError('EINVAL', `${op}: ${offset}+${len} beyond the end of the LUN (${i.sizeBytes} bytes)`);
    }
    return len;
  }

  /** Read `length` bytes at `offset`; Data-In lands in `into` when given (a view of it is returned). */
  async read(offset: bigint, length: number, into?: Buffer): Promise<Buffer> {
    this.checkRange('read', offset, length);
    if (!Number.isSafeInteger(length)) throw new RequestError('EINVAL', 'read: bad length');
    if (into && into.length < length) throw new RequestError('EINVAL', `read: buffer of ${into.length} bytes for ${length}`);
    const buf = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    if (length === 0) return buf;
    const bs = this.info.blockSize;
    const chunk = this.maxIoBytes();
    if (length <= chunk) {
      // One command: no splitting machinery (nor an extra promise) on the common path.
      const lba = offset / BigInt(bs);
      const c = cdb.readCdb(lba, length / bs);
      this.checkRead(c, lba, await this.execute(c, { dataInLength: length, dataIn: buf }), buf);
      return buf;
    }
    const ps: Promise<void>[] = [];
    for (let pos = 0; pos < length; pos += chunk) {
      const view = buf.subarray(pos, Math.min(pos + chunk, length));
      ps.push(this.readChunk((offset + BigInt(pos)) / BigInt(bs), view));
    }
    await settleAll(ps);
    return buf;
  }

  private async readChunk(lba: bigint, view: Buffer): Promise<void> {
    const c = cdb.readCdb(lba, view.length / this.info.blockSize);
    this.checkRead(c, lba, await this.execute(c, { dataInLength: view.length, dataIn: view }), view);
  }

  /** The data is already in `view` (the transport's dataIn contract); only how much arrived is checked. */
  private checkRead(c: Buffer, lba: bigint, r: ScsiResponse, view: Buffer): void {
    const got = r.data?.length ?? 0;
    if (got < view.length || r.residual > 0) {
      // Never hand back a buffer with bytes the device did not send.
      throw new ScsiError('ESCSI_IO', `${cdb.cdbName(c)}: short read at LBA ${lba}: ${got} of ${view.length} bytes`, r.status);
    }
  }

  /**
   * Write `data` at `offset`. With fua, the FUA bit is set when the device supports it
   * (MODE SENSE DPOFUA); otherwise the write is followed by a flush.
   */
  async write(offset: bigint, data: Buffer, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkRange('write', offset, data.length);
    if (data.length === 0) return;
    const i = this.info;
    const fuaBit = !!opts.fua && i.dpoFua;
    const chunk = this.maxIoBytes();
    if (data.length <= chunk) {
      await this.execute(cdb.writeCdb(offset / BigInt(i.blockSize), data.length / i.blockSize, { fua: fuaBit }), { dataOut: data });
      if (opts.fua && !fuaBit) await this.flush();
      return;
    }
    const ps: Promise<void>[] = [];
    for (let pos = 0; pos < data.length; pos += chunk) {
      const view = data.subarray(pos, Math.min(pos + chunk, data.length));
      const lba = (offset + BigInt(pos)) / BigInt(i.blockSize);
      ps.push(this.execute(cdb.writeCdb(lba, view.length / i.blockSize, { fua: fuaBit }), { dataOut: view }).then(() => undefined));
    }
    await settleAll(ps);
    if (opts.fua && !fuaBit) await this.flush();
  }

  /** SYNCHRONIZE CACHE over the whole LUN ((10) with LBA 0 / 0 blocks; (16) if (10) is unsupported). */
  async flush(): Promise<void> {
    const i = this.info;
    if (!i.capabilities.sync16 || i.blocks <= 0x100000000n) {
      try {
        await this.execute(cdb.synchronizeCache10(0n, 0));
        return;
      } catch (e) {
        if (!(e instanceof ScsiError && e.code === 'ESCSI_UNSUPPORTED' && i.capabilities.sync16)) throw e;
        this.log.debug('SYNCHRONIZE CACHE(10) unsupported, using (16)');
      }
    }
    await this.execute(cdb.synchronizeCache16(0n, 0));
  }

  /** UNMAP the range, split to the device's per-command block and descriptor limits. */
  async unmap(offset: bigint, length: number | bigint): Promise<void> {
    const len = this.checkRange('unmap', offset, length);
    const i = this.info;
    if (!i.capabilities.unmap) throw new RequestError('ENOTSUP', `LUN ${this.lun} does not support UNMAP`);
    if (len === 0n) return;
    const bs = BigInt(i.blockSize);
    let lba = offset / bs;
    const end = lba + len / bs;
    const perCmd = BigInt(i.limits.maxUnmapBlocks > 0 ? i.limits.maxUnmapBlocks : UNLIMITED32);
    const unlimitedCmd = i.limits.maxUnmapBlocks === UNLIMITED32;
    const maxDescByXfer = Math.max(1, Math.floor((this.transport.maxTransferBytes - 8) / 16));
    const maxDesc = Math.max(1, Math.min(i.limits.maxUnmapDescriptors || 1, cdb.UNMAP_MAX_DESCRIPTORS_PER_LIST, maxDescByXfer));
    const next = (): cdb.UnmapDescriptor[] | undefined => {
      if (lba >= end) return undefined;
      const descs: cdb.UnmapDescriptor[] = [];
      let budget = unlimitedCmd ? end - lba : perCmd;
      while (lba < end && descs.length < maxDesc && budget > 0n) {
        let n = end - lba;
        if (n > budget) n = budget;
        if (n > BigInt(UNLIMITED32)) n = BigInt(UNLIMITED32);
        descs.push({ lba, blocks: Number(n) });
        lba += n;
        budget -= n;
      }
      return descs;
    };
    try {
      await runLimited(next, this.maxParallel, async (descs) => {
        const param = cdb.unmapParameterList(descs);
        await this.execute(cdb.unmap(param.length), { dataOut: param });
      });
    } catch (e) {
      if (e instanceof ScsiError && e.code === 'ESCSI_UNSUPPORTED') {
        i.capabilities.unmap = false;
        this.log.warn('device refuses UNMAP; disabled for this LUN');
      }
      throw e;
    }
  }

  /**
   * Zero the range: WRITE SAME(16) of one zero block (with UNMAP when asked and LBPRZ && LBPWS),
   * split to MAXIMUM WRITE SAME LENGTH. A device refusing WRITE SAME (ILLEGAL REQUEST 20/xx, 24/xx)
   * loses the capability for good; the range is then written with zero buffers - or, with fast,
   * RequestError ENOTSUP.
   */
  async writeZeroes(offset: bigint, length: number | bigint, opts: { unmap?: boolean; fast?: boolean; fua?: boolean } = {}): Promise<void> {
    const len = this.checkRange('writeZeroes', offset, length);
    if (len === 0n) return;
    const i = this.info;
    if (i.capabilities.writeSame) {
      try {
        await this.writeSameZero(offset, len, !!opts.unmap && i.capabilities.writeSameUnmap);
        if (opts.fua) await this.flush();
        return;
      } catch (e) {
        if (!isUnsupported(e)) {
          this.log.warn({ err: e }, 'WRITE SAME failed');
          throw e;
        }
        i.capabilities.writeSame = false;
        i.capabilities.writeSameUnmap = false;
        this.log.warn({ err: e }, 'device refuses WRITE SAME; writing zero buffers from now on');
      }
    }
    if (opts.fast) throw new RequestError('ENOTSUP', `LUN ${this.lun} cannot zero quickly (no WRITE SAME)`);
    await this.writeZeroBuffers(offset, len, !!opts.fua);
  }

  private async writeSameZero(offset: bigint, len: bigint, unmapBit: boolean): Promise<void> {
    const i = this.info;
    const bs = BigInt(i.blockSize);
    if (!this.zeroBlock || this.zeroBlock.length !== i.blockSize) this.zeroBlock = Buffer.alloc(i.blockSize);
    const zero = this.zeroBlock;
    const per = BigInt(i.limits.maxWriteSameBlocks > 0 ? Math.min(i.limits.maxWriteSameBlocks, UNLIMITED32) : this.defaultWsBlocks);
    let lba = offset / bs;
    const end = lba + len / bs;
    const next = (): [bigint, number] | undefined => {
      if (lba >= end) return undefined;
      const n = end - lba < per ? end - lba : per;
      const item: [bigint, number] = [lba, Number(n)];
      lba += n;
      return item;
    };
    await runLimited(next, this.maxParallel, async ([l, n]) => {
      await this.execute(cdb.writeSame16(l, n, { unmap: unmapBit }), { dataOut: zero, quiet: true });
    });
  }

  private async writeZeroBuffers(offset: bigint, len: bigint, fua: boolean): Promise<void> {
    const chunk = Math.min(this.maxIoBytes(), ZERO_BUF_BYTES - (ZERO_BUF_BYTES % this.info.blockSize));
    if (!this.zeroBuf || this.zeroBuf.length < chunk) this.zeroBuf = Buffer.alloc(chunk);
    const zero = this.zeroBuf;
    let pos = offset;
    const end = offset + len;
    const next = (): [bigint, number] | undefined => {
      if (pos >= end) return undefined;
      const n = end - pos < BigInt(chunk) ? Number(end - pos) : chunk;
      const item: [bigint, number] = [pos, n];
      pos += BigInt(n);
      return item;
    };
    await runLimited(next, this.maxParallel, async ([o, n]) => {
      await this.write(o, zero.subarray(0, n), { fua: false });
    });
    if (fua) await this.flush();
  }

  /**
   * Provisioning status from `offset`: extents (bytes) covering at least the first block and at
   * most the range. Without LBPME (or when the device refuses GET LBA STATUS) the whole range is
   * one 'mapped' extent.
   */
  async lbaStatus(offset: bigint, length: number | bigint): Promise<LbaExtent[]> {
    const len = this.checkRange('lbaStatus', offset, length);
    if (len === 0n) return [];
    const i = this.info;
    const all: LbaExtent[] = [{ offset, length: len, state: 'mapped' }];
    if (!i.capabilities.getLbaStatus) return all;
    const bs = BigInt(i.blockSize);
    const start = offset / bs;
    const end = start + len / bs;
    // room for 256 descriptors, less if the transport cannot carry that much in one Data-In
    const alloc = 8 + 16 * Math.max(1, Math.min(256, Math.floor((this.transport.maxTransferBytes - 8) / 16)));
    let data: Buffer;
    try {
      data = await this.dataIn(cdb.getLbaStatus(start, alloc), alloc, true);
    } catch (e) {
      if (!isUnsupported(e)) {
        this.log.warn({ err: e }, 'GET LBA STATUS failed');
        throw e;
      }
      i.capabilities.getLbaStatus = false;
      this.log.warn('device refuses GET LBA STATUS; reporting everything as mapped');
      return all;
    }
    const { descriptors } = parseLbaStatus(data);
    const out: LbaExtent[] = [];
    let at = start;
    for (const d of descriptors) {
      if (d.blocks === 0 || d.lba > at) break; // a gap or nonsense: stop where we are sure
      const dEnd = d.lba + BigInt(d.blocks);
      if (dEnd <= at) continue;
      const stop = dEnd < end ? dEnd : end;
      const last = out[out.length - 1];
      if (last && last.state === d.state) last.length += (stop - at) * bs;
      else out.push({ offset: at * bs, length: (stop - at) * bs, state: d.state });
      at = stop;
      if (at >= end) break;
    }
    if (out.length === 0) {
      this.log.debug({ lba: String(start) }, 'GET LBA STATUS did not describe the starting LBA; reporting mapped');
      return all;
    }
    return out;
  }
}

/**
 * Identify the LUN `lun` over `transport` (e.g. a session's executeDirect
 * right after a login, before anything queued is sent there), as open() does.
 */
export async function identifyOn(transport: ScsiTransport, lun: number, opts: LunOptions = {}): Promise<LunInfo> {
  const probe = new LogicalUnit(transport, lun, { ...opts, log: opts.log ?? rootLogger(), identityCheck: true });
  return probe.open();
}

/**
 * Check that `got` (from identifyOn) is the device `expected` describes: same
 * identity and block size (a size change is logged, not refused). Throws
 * ScsiError ELUN_CHANGED naming both devices: "<what> is another device now:
 * was ..., now ...".
 */
export function checkSameLun(expected: LunInfo, got: LunInfo, what: string, log: Logger = rootLogger()): void {
  if (!sameDevice(expected, got)) {
    log.error({ was: expected.identity, now: got.identity }, 'LUN identity changed behind the same address: refusing it');
    throw new ScsiError('ELUN_CHANGED', `${what} is another device now: was ${describeDevice(expected)}, now ${describeDevice(got)}`, 0);
  }
  if (got.blocks !== expected.blocks) log.warn({ was: String(expected.blocks), now: String(got.blocks) }, 'LUN size changed');
}
