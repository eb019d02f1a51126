// A TCP proxy for fault tests: forwards 127.0.0.1:<port> to a target and
// can, on command, reset every connection (RST), stall them (stop
// forwarding both ways, sockets stay open), half-close them (FIN towards
// the client while the upstream side stays open), or refuse new ones.

import net from 'node:net';

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
}

export class FaultProxy {
  private server: net.Server | undefined;
  private readonly pairs = new Set<Pair>();
  private stalled = false;
  private refusing = false;
  /** Connections accepted so far. */
  accepted = 0;
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async listen(port = 0): Promise<number> {
    const srv = net.createServer((c) => this.onClient(c));
    this.server = srv;
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(port, '127.0.0.1', () => {
        srv.off('error', reject);
        resolve();
      });
    });
    this.port = (srv.address() as net.AddressInfo).port;
    return this.port;
  }

  get connections(): number {
    return this.pairs.size;
  }

  private onClient(client: net.Socket): void {
    if (this.refusing) {
      client.resetAndDestroy();
      return;
    }
    this.accepted++;
    const upstream = net.connect(this.target);
    const pair: Pair = { client, upstream };
    this.pairs.add(pair);
    const end = (): void => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.on('data', (b: Buffer) => {
      if (!upstream.write(b)) client.pause();
    });
    upstream.on('data', (b: Buffer) => {
      if (!client.write(b)) upstream.pause();
    });
    client.on('drain', () => !this.stalled && upstream.resume());
    upstream.on('drain', () => !this.stalled && client.resume());
    if (this.stalled) {
      client.pause();
      upstream.pause();
    }
  }

  /** RST every connection now. */
  reset(): void {
    for (const p of [...this.pairs]) {
      p.client.resetAndDestroy();
      p.upstream.destroy();
    }
  }

  /** Stop (true) or resume (false) forwarding in both directions. */
  stall(on: boolean): void {
    this.stalled = on;
    for (const p of this.pairs) {
      if (on) {
        p.client.pause();
        p.upstream.pause();
      } else {
        p.client.resume();
        p.upstream.resume();
      }
    }
  }

  /** Send FIN to the clients (their read side ends) and stop forwarding to them; upstream stays open. */
  halfClose(): void {
    for (const p of this.pairs) {
      p.upstream.pause();
      p.client.end();
    }
  }

  /** Refuse (RST) new connections while true. */
  refuse(on: boolean): void {
    this.refusing = on;
  }

  async close(): Promise<void> {
    this.reset();
    const srv = this.server;
    this.server = undefined;
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
  }
}
