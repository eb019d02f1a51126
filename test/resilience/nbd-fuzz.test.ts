// Socket-level fuzzing of a real NbdServer (memory export): random bytes,
// and mutations of a valid handshake + transmission stream, each sent on a
// new TCP connection. The server must never crash, a well-behaved client on
// another connection keeps working throughout, and every case ends with
// the server closing the connection or going quiet (waiting for more),
// having sent only well-framed NBD output after a correct greeting.
//
// Fixed seed, bounded count. A longer local run:
//   FUZZ_RUNS=5000 FUZZ_SEED=7 node --test dist/test/resilience/nbd-fuzz.test.js

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fc from 'fast-check';
import { NbdServer } from '../../src/nbd/server';
import * as C from '../../src/nbd/constants';
import { MemoryExport, memoryRegistry } from '../helpers/memory-export';
import { opt, infoData, req, u32 } from '../nbd/util';
import { testLog } from './env';

const RUNS = Number(process.env.FUZZ_RUNS ?? 120);
const SEED = Number(process.env.FUZZ_SEED ?? 20261124);
const IDLE_MS = 25;
const CASE_MS = 3000;

/** A correct client stream: flags, OPT_GO 'disk', then write/read/flush/disconnect. */
function validStream(): Buffer {
  const data = Buffer.alloc(1024, 0x61);
  return Buffer.concat([
    u32(C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES),
    opt(C.OPT_LIST),
    opt(C.OPT_STRUCTURED_REPLY),
    opt(C.OPT_GO, infoData('disk', [C.INFO_EXPORT])),
    req(1, 1, 4096, data.length, 0, data),
    req(0, 2, 4096, 1024),
    req(3, 3, 0, 0),
    req(2, 4, 0, 0),
  ]);
}

interface CaseResult {
  out: Buffer;
  closedByServer: boolean;
}

function runCase(port: number, input: Buffer, split: number): Promise<CaseResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let closedByServer = false;
    let idle: NodeJS.Timeout | undefined;
    const s = net.connect({ port, host: '127.0.0.1' });
    const finish = (): void => {
      clearTimeout(idle);
      clearTimeout(hard);
      s.destroy();
      resolve({ out: Buffer.concat(chunks), closedByServer });
    };
    const hard = setTimeout(finish, CASE_MS);
    const arm = (): void => {
      clearTimeout(idle);
      idle = setTimeout(finish, IDLE_MS);
    };
    s.on('connect', () => {
      const at = Math.min(split, input.length);
      s.write(input.subarray(0, at));
      if (at < input.length) setImmediate(() => !s.destroyed && s.write(input.subarray(at)));
      arm();
    });
    s.on('data', (b) => {
      chunks.push(b);
      arm();
    });
    s.on('error', () => undefined);
    s.on('close', () => {
      closedByServer = true;
      finish();
    });
  });
}

/**
 * The output must be the greeting followed by option replies, then (after
 * a successful GO) an export info block and simple/structured replies. A
 * cut-off last frame is fine (the server may drop us mid-write).
 */
function checkFraming(out: Buffer): void {
  assert.ok(out.length >= 18, 'greeting sent');
  assert.equal(out.readBigUInt64BE(0), C.NBDMAGIC);
  assert.equal(out.readBigUInt64BE(8), C.IHAVEOPT);
  let p = 18;
  let trans = false;
  while (p < out.length) {
    if (!trans) {
      if (out.length - p < 20) return;
      if (out.readBigUInt64BE(p) !== C.OPTION_REPLY_MAGIC) {
        // EXPORT_NAME answers with size+flags(+zeroes) and no option-reply framing.
        trans = true;
        p += 10;
        continue;
      }
      const option = out.readUInt32BE(p + 8);
      const type = out.readUInt32BE(p + 12);
      const len = out.readUInt32BE(p + 16);
      p += 20 + len;
      if (option === C.OPT_GO && type === C.REP_ACK) trans = true;
      continue;
    }
    if (out.length - p < 4) return;
    const magic = out.readUInt32BE(p);
    if (magic === C.SIMPLE_REPLY_MAGIC) {
      // A read reply carries data we cannot size without the request: stop checking here.
      return;
    }
    if (magic === C.STRUCTURED_REPLY_MAGIC) {
      if (out.length - p < 20) return;
      p += 20 + out.readUInt32BE(p + 16);
      continue;
    }
    // EXPORT_NAME's 124 zero bytes (without NO_ZEROES) or data of a read; stop.
    return;
  }
}

/** A client that stays connected and checks a write + read round trip. */
class Sentinel {
  private s!: net.Socket;
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  private cookie = 100n;

  async open(port: number): Promise<void> {
    this.s = net.connect({ port, host: '127.0.0.1' });
    this.s.on('data', (b) => {
      this.buf = Buffer.concat([this.buf, b]);
      for (const w of this.waiters.splice(0)) w();
    });
    this.s.on('error', () => undefined);
    await this.need(18);
    this.take(18);
    this.s.write(Buffer.concat([u32(C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES), opt(C.OPT_GO, infoData('disk'))]));
    // Option replies until ACK.
    for (;;) {
      await this.need(20);
      const len = this.buf.readUInt32BE(16);
      const type = this.buf.readUInt32BE(12);
      await this.need(20 + len);
      this.take(20 + len);
      if (type === C.REP_ACK) break;
      assert.ok(type < 0x80000000, 'GO refused');
    }
  }

  private need(n: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('sentinel: no answer')), 5000);
      const check = (): void => {
        if (this.buf.length >= n) {
          clearTimeout(timer);
          resolve();
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
  }

  private take(n: number): Buffer {
    const b = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return b;
  }

  async roundTrip(i: number): Promise<void> {
    const data = Buffer.alloc(512, i & 0xff);
    const off = 512 * 1024;
    this.s.write(req(1, ++this.cookie, off, 512, 0, data));
    await this.need(16);
    const w = this.take(16);
    assert.equal(w.readUInt32BE(0), C.SIMPLE_REPLY_MAGIC);
    assert.equal(w.readUInt32BE(4), 0, 'sentinel write ok');
    this.s.write(req(0, ++this.cookie, off, 512));
    await this.need(16 + 512);
    const r = this.take(16 + 512);
    assert.equal(r.readUInt32BE(4), 0, 'sentinel read ok');
    assert.ok(r.subarray(16).equals(data), 'sentinel reads back its data');
  }

  close(): void {
    this.s.destroy();
  }
}

function mutate(base: Buffer, muts: Array<{ kind: number; pos: number; val: number; len: number }>): Buffer {
  let b = Buffer.from(base);
  for (const m of muts) {
    const pos = b.length === 0 ? 0 : m.pos % b.length;
    switch (m.kind) {
      case 0: // flip a byte
        if (b.length) b[pos] ^= m.val || 1;
        break;
      case 1: // truncate
        b = b.subarray(0, pos);
        break;
      case 2: // insert random bytes
        b = Buffer.concat([b.subarray(0, pos), Buffer.alloc(m.len % 64, m.val), b.subarray(pos)]);
        break;
      case 3: // duplicate a slice
        b = Buffer.concat([b.subarray(0, pos), b.subarray(pos, pos + (m.len % 200)), b.subarray(pos)]);
        break;
      default: // a 32-bit field set to an extreme
        if (b.length >= pos + 4) b.writeUInt32BE([0, 0xffffffff, 0x7fffffff, 0x80000000][m.val % 4], pos);
        break;
    }
  }
  return b;
}

test('socket fuzz: random and mutated NBD streams never crash the server or disturb other clients', { timeout: 600000 }, async (t) => {
  const exp = new MemoryExport({ name: 'disk', size: 1 << 20 });
  const srv = new NbdServer({ exports: memoryRegistry(exp), handshakeTimeoutMs: 2000, log: testLog() });
  const a = (await srv.listen({ host: '127.0.0.1', port: 0 })) as net.AddressInfo;
  const sentinel = new Sentinel();
  t.after(async () => {
    sentinel.close();
    await srv.close({ drainMs: 200 });
  });
  const crashes: unknown[] = [];
  const onCrash = (e: unknown): void => {
    crashes.push(e);
  };
  process.on('uncaughtException', onCrash);
  process.on('unhandledRejection', onCrash);
  t.after(() => {
    process.off('uncaughtException', onCrash);
    process.off('unhandledRejection', onCrash);
  });
  await sentinel.open(a.port);
  await sentinel.roundTrip(0);

  // The valid stream itself works end to end.
  const good = await runCase(a.port, validStream(), 1 << 30);
  checkFraming(good.out);
  assert.equal(good.closedByServer, true, 'NBD_CMD_DISC closes the connection');

  let n = 0;
  const check = async (r: CaseResult): Promise<void> => {
    checkFraming(r.out);
    if (++n % 20 === 0) await sentinel.roundTrip(n);
  };
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ maxLength: 600 }), fc.nat(700), async (raw, split) => {
      // Raw garbage after a correct client-flags word, and from the first byte.
      await check(await runCase(a.port, Buffer.from(raw), split));
      await check(await runCase(a.port, Buffer.concat([u32(3), Buffer.from(raw)]), split));
    }),
    { numRuns: RUNS, seed: SEED },
  );
  const mutation = fc.record({ kind: fc.nat(4), pos: fc.nat(5000), val: fc.nat(255), len: fc.nat(1000) });
  await fc.assert(
    fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 6 }), fc.nat(3000), async (muts, split) => {
      await check(await runCase(a.port, mutate(validStream(), muts), split));
    }),
    { numRuns: RUNS * 2, seed: SEED + 1 },
  );
  await sentinel.roundTrip(255);
  assert.deepEqual(crashes, []);
  t.diagnostic(`${n} cases, seed ${SEED}`);
});
