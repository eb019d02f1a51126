// TEST ONLY: a deliberately broken NBD proxy. It passes the handshake and every
// request through, except that some WRITE requests are acknowledged with a
// success reply and never forwarded: the data is silently lost. The kernel e2e
// scenario must go red through it (proof that the scenario can fail).
//
// It understands just enough of the protocol (doc/proto.md) for the Linux client:
// fixed newstyle handshake, EXPORT_NAME or GO, simple replies only.

import net from 'node:net';

const NBD_OPT_MAGIC = 0x49484156454f5054n; // "IHAVEOPT"
const NBD_REP_MAGIC = 0x3e889045565a9n;
const NBD_REQUEST_MAGIC = 0x25609513;
const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
const NBD_OPT_EXPORT_NAME = 1;
const NBD_OPT_GO = 7;
const NBD_REP_ACK = 1;
const NBD_FLAG_C_NO_ZEROES = 2;
const NBD_CMD_READ = 0;
const NBD_CMD_WRITE = 1;
const MAX_FRAME = 64 << 20;

export interface LossyProxyOptions {
  upstreamPort: number;
  upstreamHost?: string;
  /** Forward this many WRITEs untouched before dropping any (default 50). */
  skipFirst?: number;
  /** After that, drop one WRITE in every dropEvery (default 8). */
  dropEvery?: number;
}

export class LossyProxy {
  readonly stats = { connections: 0, writes: 0, dropped: 0 };
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private writeSeq = 0;

  constructor(private readonly o: LossyProxyOptions) {}

  /** Listen on 127.0.0.1 (port 0 = any); resolves with the port. */
  async start(port = 0): Promise<number> {
    const srv = net.createServer((c) => this.onClient(c));
    this.server = srv;
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, '127.0.0.1', () => resolve());
    });
    return (srv.address() as net.AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    const srv = this.server;
    this.server = null;
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
  }

  private shouldDrop(): boolean {
    this.stats.writes++;
    const n = this.writeSeq++;
    const skip = this.o.skipFirst ?? 50;
    const every = this.o.dropEvery ?? 8;
    return n >= skip && (n - skip) % every === every - 1;
  }

  private onClient(client: net.Socket): void {
    this.stats.connections++;
    const up = net.connect({ port: this.o.upstreamPort, host: this.o.upstreamHost ?? '127.0.0.1' });
    this.sockets.add(client);
    this.sockets.add(up);
    const kill = (): void => {
      client.destroy();
      up.destroy();
      this.sockets.delete(client);
      this.sockets.delete(up);
    };
    client.on('error', kill);
    up.on('error', kill);
    client.on('close', kill);
    up.on('close', kill);

    let transmission = false;
    let noZeroes = false;
    let lastOpt = -1;
    const inflight = new Map<string, { type: number; length: number }>();

    // client -> server
    let cbuf: Buffer = Buffer.alloc(0);
    let cstate: 'flags' | 'options' = 'flags';
    client.on('data', (d: Buffer) => {
      cbuf = cbuf.length ? Buffer.concat([cbuf, d]) : d;
      for (;;) {
        if (cstate === 'flags') {
          if (cbuf.length < 4) return;
          noZeroes = (cbuf.readUInt32BE(0) & NBD_FLAG_C_NO_ZEROES) !== 0;
          up.write(cbuf.subarray(0, 4));
          cbuf = cbuf.subarray(4);
          cstate = 'options';
        } else if (!transmission) {
          // IHAVEOPT(8) option(4) length(4) data
          if (cbuf.length < 16) return;
          if (cbuf.readBigUInt64BE(0) !== NBD_OPT_MAGIC) return kill();
          const len = cbuf.readUInt32BE(12);
          if (len > MAX_FRAME) return kill();
          if (cbuf.length < 16 + len) return;
          lastOpt = cbuf.readUInt32BE(8);
          up.write(cbuf.subarray(0, 16 + len));
          cbuf = cbuf.subarray(16 + len);
          // After EXPORT_NAME the client only sends requests, once the server answered.
          if (lastOpt === NBD_OPT_EXPORT_NAME && cbuf.length > 0) return kill();
        } else {
          // magic(4) flags(2) type(2) handle(8) offset(8) length(4) [data]
          if (cbuf.length < 28) return;
          if (cbuf.readUInt32BE(0) !== NBD_REQUEST_MAGIC) return kill();
          const type = cbuf.readUInt16BE(6);
          const length = cbuf.readUInt32BE(24);
          const payload = type === NBD_CMD_WRITE ? length : 0;
          if (payload > MAX_FRAME) return kill();
          if (cbuf.length < 28 + payload) return;
          const frame = cbuf.subarray(0, 28 + payload);
          cbuf = cbuf.subarray(28 + payload);
          const handle = frame.subarray(8, 16);
          if (type === NBD_CMD_WRITE && this.shouldDrop()) {
            this.stats.dropped++;
            const rep = Buffer.alloc(16);
            rep.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
            handle.copy(rep, 8);
            client.write(rep);
            continue;
          }
          inflight.set(handle.toString('hex'), { type, length });
          up.write(Buffer.from(frame));
        }
      }
    });

    // server -> client; only whole frames go to the client so injected replies never split one.
    let sbuf: Buffer = Buffer.alloc(0);
    let sstate: 'hello' | 'options' | 'export' | 'trans' = 'hello';
    up.on('data', (d: Buffer) => {
      sbuf = sbuf.length ? Buffer.concat([sbuf, d]) : d;
      for (;;) {
        if (sstate === 'hello') {
          // NBDMAGIC(8) IHAVEOPT(8) handshake flags(2)
          if (sbuf.length < 18) return;
          client.write(sbuf.subarray(0, 18));
          sbuf = sbuf.subarray(18);
          sstate = 'options';
        } else if (sstate === 'options') {
          if (lastOpt === NBD_OPT_EXPORT_NAME) {
            sstate = 'export';
            continue;
          }
          // magic(8) option(4) reply type(4) length(4) data
          if (sbuf.length < 20) return;
          if (sbuf.readBigUInt64BE(0) !== NBD_REP_MAGIC) return kill();
          const len = sbuf.readUInt32BE(16);
          if (len > MAX_FRAME) return kill();
          if (sbuf.length < 20 + len) return;
          const opt = sbuf.readUInt32BE(8);
          const rtype = sbuf.readUInt32BE(12);
          client.write(sbuf.subarray(0, 20 + len));
          sbuf = sbuf.subarray(20 + len);
          if (opt === NBD_OPT_GO && rtype === NBD_REP_ACK) {
            sstate = 'trans';
            transmission = true;
          }
        } else if (sstate === 'export') {
          // size(8) transmission flags(2) [124 zero bytes]
          const n = noZeroes ? 10 : 134;
          if (sbuf.length < n) return;
          client.write(sbuf.subarray(0, n));
          sbuf = sbuf.subarray(n);
          sstate = 'trans';
          transmission = true;
        } else {
          // magic(4) error(4) handle(8) [read data]
          if (sbuf.length < 16) return;
          if (sbuf.readUInt32BE(0) !== NBD_SIMPLE_REPLY_MAGIC) return kill();
          const key = sbuf.subarray(8, 16).toString('hex');
          const req = inflight.get(key);
          if (!req) return kill();
          const err = sbuf.readUInt32BE(4);
          const payload = req.type === NBD_CMD_READ && err === 0 ? req.length : 0;
          if (sbuf.length < 16 + payload) return;
          inflight.delete(key);
          client.write(Buffer.from(sbuf.subarray(0, 16 + payload)));
          sbuf = sbuf.subarray(16 + payload);
        }
      }
    });
  }
}
