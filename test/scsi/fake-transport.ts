// A scripted ScsiTransport for LogicalUnit tests, plus an in-memory disk that
// answers the commands the SCSI layer sends. Response fixtures are built by
// hand here (byte layouts from SPC-4/SBC-3), independent of src/scsi/parse.ts.

import type { ScsiRequest, ScsiResponse, ScsiTransport } from '../../src/scsi/transport';

export interface FakeReply {
  status?: number;
  sense?: Buffer;
  data?: Buffer;
}

export type Handler = (req: ScsiRequest) => FakeReply | Promise<FakeReply>;
export type Matcher = (req: ScsiRequest) => boolean;

export const byOp = (op: number, sa?: number): Matcher => (r) => r.cdb[0] === op && (sa === undefined || (r.cdb[1] & 0x1f) === sa);
export const vpdPage = (page: number): Matcher => (r) => r.cdb[0] === 0x12 && (r.cdb[1] & 1) === 1 && r.cdb[2] === page;
export const stdInquiry: Matcher = (r) => r.cdb[0] === 0x12 && (r.cdb[1] & 1) === 0;

/** Fixed-format sense (0x70), hand-built: 18 bytes. */
export function fixedSense(key: number, asc: number, ascq: number, info?: number, deferred = false): Buffer {
  const b = Buffer.alloc(18);
  b[0] = (deferred ? 0x71 : 0x70) | (info !== undefined ? 0x80 : 0);
  b[2] = key;
  if (info !== undefined) b.writeUInt32BE(info, 3);
  b[7] = 10;
  b[12] = asc;
  b[13] = ascq;
  return b;
}

export const CHECK = (key: number, asc: number, ascq: number): FakeReply => ({ status: 0x02, sense: fixedSense(key, asc, ascq) });
export const GOOD: FakeReply = { status: 0 };

export class FakeTransport implements ScsiTransport {
  maxTransferBytes = 1 << 20;
  readonly requests: ScsiRequest[] = [];
  private oneShots: Array<{ match: Matcher; reply: Handler }> = [];
  private handlers: Array<{ match: Matcher; reply: Handler }> = [];
  /** Calls in flight now / at most. */
  inFlight = 0;
  maxInFlight = 0;

  /** Answer the next matching request once (one-shots are used before permanent handlers, oldest first). */
  once(match: Matcher, reply: FakeReply | Handler): this {
    this.oneShots.push({ match, reply: typeof reply === 'function' ? reply : () => reply });
    return this;
  }

  /** Answer every matching request (the latest registration wins). */
  on(match: Matcher, reply: FakeReply | Handler): this {
    this.handlers.unshift({ match, reply: typeof reply === 'function' ? reply : () => reply });
    return this;
  }

  /** CDB opcodes (with service action / page) of what was sent, for sequence checks. */
  get sequence(): string[] {
    return this.requests.map((r) => {
      const op = r.cdb[0];
      if (op === 0x12) return (r.cdb[1] & 1) ? `INQ/${r.cdb[2].toString(16)}` : 'INQ';
      if (op === 0x9e) return `9e/${(r.cdb[1] & 0x1f).toString(16)}`;
      return op.toString(16).padStart(2, '0');
    });
  }

  async execute(req: ScsiRequest): Promise<ScsiResponse> {
    this.requests.push(req);
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await new Promise((r) => setImmediate(r));
      let h: Handler | undefined;
      const i = this.oneShots.findIndex((x) => x.match(req));
      if (i >= 0) {
        h = this.oneShots[i].reply;
        this.oneShots.splice(i, 1);
      } else {
        h = this.handlers.find((x) => x.match(req))?.reply;
      }
      const rep: FakeReply = h ? await h(req) : CHECK(0x05, 0x20, 0x00);
      const status = rep.status ?? 0;
      let data: Buffer | undefined;
      let residual = 0;
      const want = req.dataInLength ?? 0;
      if (rep.data && want > 0) {
        const n = Math.min(want, rep.data.length);
        residual = want - rep.data.length;
        if (req.dataIn) {
          rep.data.copy(req.dataIn, 0, 0, n);
          data = req.dataIn.subarray(0, n);
        } else {
          data = Buffer.from(rep.data.subarray(0, n));
        }
      } else if (want > 0) {
        residual = want;
      }
      return { status, sense: rep.sense, data, residual };
    } finally {
      this.inFlight--;
    }
  }
}

export interface DiskOptions {
  blockSize?: number;
  blocks?: number;
  vendor?: string;
  product?: string;
  serial?: string;
  naa?: string; // hex
  deviceType?: number;
  qualifier?: number;
  vpdPages?: number[];
  wp?: boolean;
  dpofua?: boolean;
  wce?: boolean;
  lbpme?: boolean;
  lbprz?: boolean;
  lbpu?: boolean;
  lbpws?: boolean;
  maxTransferBlocks?: number;
  maxUnmapBlocks?: number;
  maxUnmapDescriptors?: number;
  maxWriteSameBlocks?: number;
  rotationRate?: number;
}

function pad(s: string, n: number): Buffer {
  return Buffer.from(s.padEnd(n, ' ').slice(0, n), 'latin1');
}

/** Hand-built standard INQUIRY data (36 bytes). */
export function inquiryData(o: DiskOptions = {}): Buffer {
  const b = Buffer.alloc(36);
  b[0] = ((o.qualifier ?? 0) << 5) | (o.deviceType ?? 0);
  b[2] = 0x06; // SPC-4
  b[3] = 0x02;
  b[4] = 31;
  b[7] = 0x02; // CmdQue
  pad(o.vendor ?? 'FAKE', 8).copy(b, 8);
  pad(o.product ?? 'DISK', 16).copy(b, 16);
  pad('0001', 4).copy(b, 32);
  return b;
}

/** A little disk in memory answering SBC commands; `mapped` tracks provisioning per block. */
export class FakeDisk {
  readonly t: FakeTransport;
  readonly o: Required<Omit<DiskOptions, 'naa'>> & { naa?: string };
  readonly mem: Buffer;
  readonly mapped: Uint8Array;

  constructor(t: FakeTransport, o: DiskOptions = {}) {
    this.t = t;
    this.o = {
      blockSize: 512, blocks: 2048, vendor: 'FAKE', product: 'DISK', serial: 'SER123', deviceType: 0, qualifier: 0,
      vpdPages: [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2], wp: false, dpofua: true, wce: true, lbpme: true, lbprz: true,
      lbpu: true, lbpws: true, maxTransferBlocks: 0, maxUnmapBlocks: 0xffffffff, maxUnmapDescriptors: 16,
      maxWriteSameBlocks: 0, rotationRate: 1, naa: '600140512345678901234567890abcde', ...o,
    };
    this.mem = Buffer.alloc(this.o.blockSize * this.o.blocks);
    this.mapped = new Uint8Array(this.o.blocks).fill(1);
    this.install();
  }

  private vpd(page: number, body: Buffer): Buffer {
    const h = Buffer.from([this.o.deviceType, page, body.length >> 8, body.length & 0xff]);
    return Buffer.concat([h, body]);
  }

  vpdData(page: number): Buffer | undefined {
    const o = this.o;
    switch (page) {
      case 0x00: return this.vpd(0, Buffer.from(o.vpdPages));
      case 0x80: return this.vpd(0x80, Buffer.from(o.serial, 'latin1'));
      case 0x83: {
        const parts: Buffer[] = [];
        if (o.naa) {
          const id = Buffer.from(o.naa, 'hex');
          parts.push(Buffer.from([0x01, 0x03, 0x00, id.length]), id); // binary, LU, NAA
        }
        const t10 = Buffer.from('FAKE    DISK-' + o.serial, 'latin1');
        parts.push(Buffer.from([0x02, 0x01, 0x00, t10.length]), t10); // ASCII, LU, T10
        parts.push(Buffer.from([0x51, 0x94, 0x00, 0x04, 0, 0, 0, 1])); // iSCSI, port, relative port 1
        return this.vpd(0x83, Buffer.concat(parts));
      }
      case 0xb0: {
        const b = Buffer.alloc(0x3c);
        b.writeUInt32BE(o.maxTransferBlocks, 4);
        b.writeUInt32BE(o.maxUnmapBlocks, 16);
        b.writeUInt32BE(o.maxUnmapDescriptors, 20);
        b.writeBigUInt64BE(BigInt(o.maxWriteSameBlocks), 32);
        return this.vpd(0xb0, b);
      }
      case 0xb1: {
        const b = Buffer.alloc(0x3c);
        b.writeUInt16BE(o.rotationRate, 0);
        return this.vpd(0xb1, b);
      }
      case 0xb2: {
        const b = Buffer.alloc(4);
        b[1] = (o.lbpu ? 0x80 : 0) | (o.lbpws ? 0x40 : 0) | (o.lbprz ? 0x04 : 0);
        b[2] = 0x02; // thin
        return this.vpd(0xb2, b);
      }
      default: return undefined;
    }
  }

  modeData(ten: boolean, page: number): Buffer {
    const caching = Buffer.alloc(20);
    caching[0] = 0x08;
    caching[1] = 18;
    caching[2] = this.o.wce ? 0x04 : 0;
    const control = Buffer.alloc(12);
    control[0] = 0x0a;
    control[1] = 10;
    const pages = page === 0x3f ? Buffer.concat([caching, control]) : page === 0x08 ? caching : Buffer.alloc(0);
    const dsp = (this.o.wp ? 0x80 : 0) | (this.o.dpofua ? 0x10 : 0);
    if (ten) {
      const h = Buffer.alloc(8);
      h.writeUInt16BE(6 + pages.length, 0);
      h[3] = dsp;
      return Buffer.concat([h, pages]);
    }
    return Buffer.concat([Buffer.from([3 + pages.length, 0, dsp, 0]), pages]);
  }

  rc16(): Buffer {
    const b = Buffer.alloc(32);
    b.writeBigUInt64BE(BigInt(this.o.blocks - 1), 0);
    b.writeUInt32BE(this.o.blockSize, 8);
    b[14] = (this.o.lbpme ? 0x80 : 0) | (this.o.lbprz ? 0x40 : 0);
    return b;
  }

  rc10(): Buffer {
    const b = Buffer.alloc(8);
    b.writeUInt32BE(Math.min(this.o.blocks - 1, 0xffffffff), 0);
    b.writeUInt32BE(this.o.blockSize, 4);
    return b;
  }

  private rw(req: ScsiRequest): FakeReply {
    const c = req.cdb;
    const ten = c.length === 10;
    const lba = Number(ten ? c.readUInt32BE(2) : c.readBigUInt64BE(2));
    const n = ten ? c.readUInt16BE(7) : c.readUInt32BE(10);
    if (lba + n > this.o.blocks) return CHECK(0x05, 0x21, 0x00);
    const bs = this.o.blockSize;
    if (c[0] === 0x28 || c[0] === 0x88) return { data: this.mem.subarray(lba * bs, (lba + n) * bs) };
    if (this.o.wp) return CHECK(0x07, 0x27, 0x00);
    req.dataOut!.copy(this.mem, lba * bs, 0, n * bs);
    this.mapped.fill(1, lba, lba + n);
    return GOOD;
  }

  private install(): void {
    const t = this.t;
    t.on(byOp(0x00), GOOD);
    t.on(stdInquiry, () => ({ data: inquiryData(this.o) }));
    t.on((r) => r.cdb[0] === 0x12 && (r.cdb[1] & 1) === 1, (r) => {
      const d = this.o.vpdPages.includes(r.cdb[2]) ? this.vpdData(r.cdb[2]) : undefined;
      return d ? { data: d } : CHECK(0x05, 0x24, 0x00);
    });
    t.on(byOp(0x1a), (r) => ({ data: this.modeData(false, r.cdb[2] & 0x3f) }));
    t.on(byOp(0x5a), (r) => ({ data: this.modeData(true, r.cdb[2] & 0x3f) }));
    t.on(byOp(0x9e, 0x10), () => ({ data: this.rc16() }));
    t.on(byOp(0x25), () => ({ data: this.rc10() }));
    for (const op of [0x28, 0x88, 0x2a, 0x8a]) t.on(byOp(op), (r) => this.rw(r));
    t.on(byOp(0x35), GOOD);
    t.on(byOp(0x91), GOOD);
    t.on(byOp(0x42), (r) => {
      const p = r.dataOut!;
      for (let o = 8; o + 16 <= p.length; o += 16) {
        const lba = Number(p.readBigUInt64BE(o));
        const n = p.readUInt32BE(o + 8);
        if (lba + n > this.o.blocks) return CHECK(0x05, 0x21, 0x00);
        this.mem.fill(0, lba * this.o.blockSize, (lba + n) * this.o.blockSize);
        this.mapped.fill(0, lba, lba + n);
      }
      return GOOD;
    });
    t.on(byOp(0x93), (r) => {
      const c = r.cdb;
      const lba = Number(c.readBigUInt64BE(2));
      const n = c.readUInt32BE(10);
      if (lba + n > this.o.blocks) return CHECK(0x05, 0x21, 0x00);
      const bs = this.o.blockSize;
      for (let i = lba; i < lba + n; i++) r.dataOut!.copy(this.mem, i * bs, 0, bs);
      this.mapped.fill(c[1] & 0x08 ? 0 : 1, lba, lba + n);
      return GOOD;
    });
    t.on(byOp(0x9e, 0x12), (r) => {
      const start = Number(r.cdb.readBigUInt64BE(2));
      const descs: Buffer[] = [];
      let i = start;
      while (i < this.o.blocks && descs.length < 4) {
        const st = this.mapped[i];
        let j = i;
        while (j < this.o.blocks && this.mapped[j] === st) j++;
        const d = Buffer.alloc(16);
        d.writeBigUInt64BE(BigInt(i), 0);
        d.writeUInt32BE(j - i, 8);
        d[12] = st ? 0 : 1;
        descs.push(d);
        i = j;
      }
      const body = Buffer.concat(descs);
      const h = Buffer.alloc(8);
      h.writeUInt32BE(body.length + 4, 0);
      return { data: Buffer.concat([h, body]) };
    });
  }
}
