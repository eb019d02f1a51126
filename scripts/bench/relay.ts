// The Node.js floor (bench --relay): a process that only copies bytes between an NBD client
// and qemu-nbd, with the same socket work per request as our daemon (a read and a write on
// each side) and none of the protocol work. Put in front of qemu-nbd at queue depth 1, its
// CPU per I/O is what any Node.js server pays before it parses a byte.
//   node relay.js LISTEN UPSTREAM       (each a unix socket path, or 127.0.0.1:PORT; LISTEN
//                                        port 0 picks one)
// It prints "listening ADDRESS" on stdout once it accepts connections.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { killGroup, sleep, track } from './exec';

export type Endpoint = { path: string } | { host: string; port: number };

/** "/abs/path" or "HOST:PORT". */
export function parseEndpoint(s: string): Endpoint {
  if (s.startsWith('/')) return { path: s };
  const m = /^(.+):(\d+)$/.exec(s);
  if (!m || Number(m[2]) > 65535) throw new Error(`not a socket path or HOST:PORT: ${s}`);
  return { host: m[1], port: Number(m[2]) };
}

/** Relay every connection to `upstream`; closing either side closes both. */
export function startRelay(listen: Endpoint, upstream: Endpoint): Promise<net.Server> {
  const server = net.createServer((client) => {
    const up = 'path' in upstream ? net.connect(upstream.path) : net.connect(upstream.port, upstream.host);
    client.setNoDelay?.(true);
    up.once('connect', () => { if (!('path' in upstream)) up.setNoDelay(true); });
    client.pipe(up);
    up.pipe(client);
    const end = (): void => { client.destroy(); up.destroy(); };
    client.once('close', end);
    up.once('close', end);
    client.on('error', end);
    up.on('error', end);
  });
  if ('path' in listen) fs.rmSync(listen.path, { force: true });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const ready = (): void => { server.off('error', reject); resolve(server); };
    if ('path' in listen) server.listen(listen.path, ready);
    else server.listen(listen.port, listen.host, ready);
  });
}

function addressOf(server: net.Server): string {
  const a = server.address();
  return typeof a === 'string' ? a : `${a!.address}:${a!.port}`;
}

/** A relay started as a child process by the bench; its pid is what the bench samples. */
export class RelayProcess {
  private constructor(readonly argv: string[], private readonly child: ChildProcess, readonly uri: string, private readonly socket: string | null) {}

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /**
   * Start `node relay.js` listening on `listenPath` (a unix socket) or, when null, on a free
   * 127.0.0.1 port, relaying to upstream; `uri` is then the libnbd URI of export `name` through it.
   */
  static async start(upstream: string, listenPath: string | null, name: string, timeoutMs = 10000): Promise<RelayProcess> {
    const argv = [process.execPath, __filename, listenPath ?? '127.0.0.1:0', upstream];
    const child = track(spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', 'pipe', 'pipe'] }));
    let out = '';
    const addr = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`relay did not listen within ${timeoutMs} ms: ${out.trim()}`)), timeoutMs);
      const onData = (b: Buffer): void => {
        out += b.toString();
        const m = /^listening (.+)$/m.exec(out);
        if (m) { clearTimeout(timer); resolve(m[1]); }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', (b: Buffer) => { out += b.toString(); });
      child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`relay exited (code ${code}): ${out.trim()}`)); });
    }).catch((err: Error) => { killGroup(child); throw err; });
    const uri = listenPath !== null
      ? `nbd+unix:///${name}?socket=${encodeURIComponent(listenPath).replace(/%2F/g, '/')}`
      : `nbd://127.0.0.1:${addr.slice(addr.lastIndexOf(':') + 1)}/${name}`;
    return new RelayProcess(argv, child, uri, listenPath);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
      killGroup(this.child, 'SIGTERM');
      await Promise.race([gone, sleep(3000)]);
      killGroup(this.child);
    }
    if (this.socket !== null) fs.rmSync(this.socket, { force: true });
  }
}

if (require.main === module) {
  const [listen, upstream] = process.argv.slice(2);
  if (!listen || !upstream) {
    process.stderr.write('usage: relay LISTEN UPSTREAM\n');
    process.exit(2);
  }
  startRelay(parseEndpoint(listen), parseEndpoint(upstream)).then(
    (s) => { process.stdout.write(`listening ${addressOf(s)}\n`); },
    (err: Error) => { process.stderr.write(`relay: ${err.message}\n`); process.exit(1); },
  );
}
