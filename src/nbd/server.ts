// Thin socket adapter: accepts TCP / unix connections, runs the handshake and
// transmission engines over them, upgrades to TLS on STARTTLS, enforces the
// handshake time limit and connection caps, and keeps per-connection stats.
import { TickCork } from '../tick-cork';
import net from 'node:net';
import tls from 'node:tls';
import { EventEmitter } from 'node:events';
import type { Logger } from '../log';
import { rootLogger } from '../log';
import { ConfigError, IscsiNbdError } from '../errors';
import { encodeHandover, parseHandover, type HandoverState } from './handover';
import type { Export } from '../bridge/export';
import { HandshakeEngine, HandshakeResult, TlsMode } from './handshake';
import { TransmissionEngine } from './transmission';
import { ExportRegistry, DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_BUFFERED, transmissionFlagsFor } from './common';
import { NBD_DEFAULT_PORT } from './constants';

/** After draining, how long a connection stays open answering ESHUTDOWN before it is closed. */
const SHUTDOWN_LINGER_MS = 500;

export type { ExportRegistry } from './common';
export type { TlsMode } from './handshake';

export interface NbdTlsOptions {
  /** off: STARTTLS refused; on: optional; require: FORCEDTLS (no option but STARTTLS/ABORT before TLS). */
  mode: TlsMode;
  cert: Buffer | string;
  key: Buffer | string;
  ca?: Buffer | string;
  /** Ask for a client certificate and refuse clients whose certificate does not verify against `ca`. */
  requestClientCert?: boolean;
}

export interface NbdServerOptions {
  exports: ExportRegistry;
  tls?: NbdTlsOptions;
  /** Time from accept to transmission phase (TLS included). Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Connections allowed in the handshake at once; beyond it the longest-idle one is evicted. Default 64. */
  maxHandshakes?: number;
  /** All connections; beyond it a handshaking connection is evicted, else the new one is refused. Default 1024. */
  maxConnections?: number;
  /** Largest READ/WRITE (and advertised maximum block size). Default 32 MiB. */
  maxPayload?: number;
  /** Per connection: requests in flight before reading pauses. Default 128. */
  maxInFlight?: number;
  /** Per connection: bytes held (payloads, replies, unsent output) before reading pauses. Default 16 MiB. */
  maxBufferedBytes?: number;
  log?: Logger;
}

/** A connection served without a handshake (see NbdServer.adopt). */
export interface AdoptedConnection {
  id: number;
  /** Resolves with the reason once the socket is closed, by either side. */
  closed: Promise<string>;
  /**
   * Stop reading new requests, answer every request already read, then close:
   * what the kernel has not handed us yet stays queued in the kernel for the
   * next daemon, and nothing gets ESHUTDOWN. Resolves once the socket is closed.
   * `keep` is called just before the close when the socket stopped at a
   * request boundary with every request it carried answered and flushed:
   * with the bytes read and not handled (to give the next reader of the same
   * socket; see adopt). Not called otherwise.
   */
  handOver(timeoutMs: number, keep?: (unread: Buffer) => void): Promise<void>;
  /** Resolves once no request read on this connection is still being executed (even after it closed). */
  idle(): Promise<void>;
  info(): NbdConnectionInfo;
}

export type NbdListenAddress = { host?: string; port?: number } | { path: string };

export type NbdConnectionState = 'handshake' | 'tls' | 'transmission' | 'draining' | 'closed';

export interface NbdConnectionInfo {
  id: number;
  /** "1.2.3.4:5678", "[::1]:5678" or "unix". */
  remote: string;
  /** The listener it came in on ("127.0.0.1:10809" or the socket path). */
  listener: string;
  state: NbdConnectionState;
  tls: boolean;
  exportName?: string;
  structuredReplies: boolean;
  inFlight: number;
  bytesRead: number;
  bytesWritten: number;
  requests: number;
  errors: number;
  connectedAt: Date;
  /** Date.now() of the last byte received. */
  lastActivity: number;
}

/** Events: 'connection' (info), 'state' (info), 'disconnect' (info, reason), 'error' (Error, from a listener). */
export class NbdServer extends EventEmitter {
  private readonly log: Logger;
  private readonly servers: net.Server[] = [];
  private readonly conns = new Map<number, Connection>();
  private nextId = 1;
  private closing = false;
  readonly secureContext?: tls.SecureContext;

  constructor(readonly options: NbdServerOptions) {
    super();
    this.log = options.log ?? rootLogger().child({ component: 'nbd-server' });
    const t = options.tls;
    if (t && t.mode !== 'off') {
      if (!t.cert || !t.key) throw new ConfigError('ECONFIG', 'NBD TLS needs a certificate and a key');
      if (t.requestClientCert && !t.ca) throw new ConfigError('ECONFIG', 'verifying client certificates needs a CA');
      const ctxOpts: tls.SecureContextOptions = { cert: t.cert, key: t.key, ca: t.ca, minVersion: 'TLSv1.2' };
      this.secureContext = tls.createSecureContext(ctxOpts);
    }
  }

  get tlsMode(): TlsMode {
    return this.options.tls?.mode ?? 'off';
  }

  /** Start a listener (several allowed). Resolves with the bound address. */
  listen(addr: NbdListenAddress = {}): Promise<net.AddressInfo | string> {
    return new Promise((resolve, reject) => {
      const srv = net.createServer({ pauseOnConnect: false, noDelay: true } as net.ServerOpts);
      let label = '';
      srv.on('connection', (s) => this.accept(s, label));
      srv.once('error', reject);
      const onListening = (): void => {
        srv.off('error', reject);
        srv.on('error', (err) => {
          // An 'error' event nobody listens to would throw; log it instead.
          if (this.listenerCount('error') > 0) this.emit('error', err);
          else this.log.error({ err }, 'NBD listener error');
        });
        const a = srv.address();
        label = typeof a === 'string' ? a : a ? `${a.address}:${a.port}` : '';
        this.servers.push(srv);
        // Not logged here: the daemon logs 'serving NBD' once per listener when all are up.
        resolve(a as net.AddressInfo | string);
      };
      if ('path' in addr) srv.listen(addr.path, onListening);
      else srv.listen(addr.port ?? NBD_DEFAULT_PORT, addr.host ?? '127.0.0.1', onListening);
    });
  }

  addresses(): Array<net.AddressInfo | string> {
    return this.servers.map((s) => s.address()).filter((a): a is net.AddressInfo | string => a !== null);
  }

  connections(): NbdConnectionInfo[] {
    return [...this.conns.values()].map((c) => c.info());
  }

  /**
   * Stop listening, end handshakes, drain transmissions (new requests get ESHUTDOWN,
   * in-flight ones finish) for up to drainMs, then close every connection.
   */
  async close(opts: { drainMs?: number } = {}): Promise<void> {
    const drainMs = opts.drainMs ?? 5000;
    this.closing = true;
    const closes = this.servers.map((s) => new Promise<void>((r) => s.close(() => r())));
    this.servers.length = 0;
    await Promise.all([...this.conns.values()].map((c) => c.shutdown(drainMs)));
    await Promise.all(closes);
  }

  /**
   * Drain only the connections using one export (it is being removed or
   * changed): their new requests get ESHUTDOWN, in-flight ones finish, then
   * they close. Other exports' clients are not touched.
   */
  async drainExport(name: string, drainMs = 30_000): Promise<void> {
    const victims = [...this.conns.values()].filter((c) => c.info().exportName === name);
    await Promise.all(victims.map((c) => c.shutdown(drainMs)));
  }

  /**
   * Hand every plain (not TLS) client in transmission phase over to the next
   * process: each stops reading at a request boundary and answers what it
   * read; `keep` then gets its fd (still open) and a record of its state and
   * unread bytes (see handover.ts), for adoptClient() in the next process.
   * Clients that cannot be handed over are left for close() to drain.
   */
  async handOverClients(timeoutMs: number, keep: (fd: number, record: Buffer) => void): Promise<void> {
    await Promise.all(
      [...this.conns.values()].map((c) => {
        const fd = c.handoverFd();
        if (fd === undefined) return undefined;
        return c.handOver(timeoutMs, (unread) => keep(fd, encodeHandover(c.handoverState()!, unread)));
      }),
    );
  }

  /**
   * Carry on a client connection handed over by the previous process: the
   * same export, the same agreed flags, from where it stopped reading. Throws
   * (and leaves `fd` to the caller) when that cannot be honoured.
   */
  adoptClient(fd: number, record: Buffer): number {
    const { state, unread } = parseHandover(record);
    const exp = this.options.exports.get(state.exportName);
    if (!exp) throw new IscsiNbdError('ECONFIG', `export "${state.exportName}" is not served now`);
    if (transmissionFlagsFor(exp, state.structuredReplies) !== state.transmissionFlags) {
      throw new IscsiNbdError('ECONFIG', `export "${state.exportName}" changed its flags since the client connected`);
    }
    const sock = new net.Socket({ fd, readable: true, writable: true });
    const c = new Connection(this, this.nextId++, sock, state.label, this.log);
    this.conns.set(c.id, c);
    this.emit('connection', c.info());
    c.startTransmission({
      export: exp,
      exportName: state.exportName,
      structuredReplies: state.structuredReplies,
      metaContexts: new Map(state.metaContexts),
      transmissionFlags: state.transmissionFlags,
      blockSizeRequested: state.blockSizeRequested,
      leftover: unread,
    });
    return c.id;
  }

  /**
   * Serve a socket that is already in the transmission phase: the kernel's
   * end of a socketpair handed over with netlink NBD_CMD_CONNECT/RECONFIGURE
   * skips the handshake. Simple replies only, as the kernel wants.
   */
  adopt(sock: net.Socket, exportName: string, exp: Export, label = 'kernel', unread: Buffer = Buffer.alloc(0)): AdoptedConnection {
    const c = new Connection(this, this.nextId++, sock, label, this.log);
    this.conns.set(c.id, c);
    this.emit('connection', c.info());
    c.startTransmission({
      export: exp,
      exportName,
      structuredReplies: false,
      metaContexts: new Map(),
      transmissionFlags: transmissionFlagsFor(exp, false),
      blockSizeRequested: false,
      leftover: unread,
    });
    return { id: c.id, closed: c.whenClosed(), handOver: (ms, keep) => c.handOver(ms, keep), idle: () => c.idle(), info: () => c.info() };
  }

  // ---- internals used by Connection ----

  /** @internal */ unregister(c: Connection, reason: string): void {
    if (!this.conns.delete(c.id)) return;
    this.emit('disconnect', c.info(), reason);
  }

  /** @internal */ stateChanged(c: Connection): void {
    this.emit('state', c.info());
  }

  private accept(sock: net.Socket, listener: string): void {
    if (this.closing) {
      sock.destroy();
      return;
    }
    const maxConns = this.options.maxConnections ?? 1024;
    const maxHs = this.options.maxHandshakes ?? 64;
    if (this.conns.size >= maxConns && !this.evictIdleHandshake('connection limit')) {
      this.log.warn({ remote: sock.remoteAddress }, 'NBD connection refused: connection limit reached');
      sock.destroy();
      return;
    }
    let handshaking = 0;
    for (const c of this.conns.values()) if (c.inHandshake) handshaking++;
    if (handshaking >= maxHs) this.evictIdleHandshake('handshake limit');
    const c = new Connection(this, this.nextId++, sock, listener, this.log);
    this.conns.set(c.id, c);
    this.emit('connection', c.info());
    c.start();
  }

  private evictIdleHandshake(why: string): boolean {
    let victim: Connection | undefined;
    for (const c of this.conns.values()) {
      if (c.inHandshake && (!victim || c.lastActivity < victim.lastActivity)) victim = c;
    }
    if (!victim) return false;
    victim.fail(`evicted (${why})`);
    return true;
  }
}

class Connection {
  state: NbdConnectionState = 'handshake';
  sock: net.Socket;
  tlsSocket?: tls.TLSSocket;
  private readonly raw: net.Socket;
  private readonly log: Logger;
  private hs?: HandshakeEngine;
  private tx?: TransmissionEngine;
  private result?: HandshakeResult;
  private exp?: Export;
  private timer?: NodeJS.Timeout;
  private readonly cork = new TickCork();
  private readonly remote: string;
  bytesRead = 0;
  bytesWritten = 0;
  lastActivity = Date.now();
  private readonly connectedAt = new Date();
  private closed = false;
  private closedPromise: Promise<void>;
  private resolveClosed!: () => void;
  private closeReason = '';
  /** Handing over: reading stays paused whatever the engine asks. */
  private holding = false;
  private readonly maxBuffered: number;

  constructor(
    private readonly server: NbdServer,
    readonly id: number,
    sock: net.Socket,
    private readonly listener: string,
    parentLog: Logger,
  ) {
    this.raw = sock;
    this.sock = sock;
    this.remote = sock.remoteAddress ? (sock.remoteFamily === 'IPv6' ? `[${sock.remoteAddress}]:${sock.remotePort}` : `${sock.remoteAddress}:${sock.remotePort}`) : 'unix';
    this.log = parentLog.child({ conn: id, remote: this.remote });
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
    this.maxBuffered = server.options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED;
  }

  get inHandshake(): boolean {
    return this.state === 'handshake' || this.state === 'tls';
  }

  info(): NbdConnectionInfo {
    return {
      id: this.id,
      remote: this.remote,
      listener: this.listener,
      state: this.state,
      tls: this.tlsSocket !== undefined && this.state !== 'tls',
      exportName: this.result?.exportName,
      structuredReplies: this.result?.structuredReplies ?? false,
      inFlight: this.tx?.inFlight ?? 0,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      requests: this.tx?.counters.requests ?? 0,
      errors: this.tx?.counters.errors ?? 0,
      connectedAt: this.connectedAt,
      lastActivity: this.lastActivity,
    };
  }

  private listen(): void {
    this.raw.on('error', (err) => this.log.debug({ err }, 'socket error'));
    this.raw.on('close', () => this.onClose('socket closed'));
    this.raw.on('data', this.onData);
  }

  idle(): Promise<void> {
    return this.tx ? this.tx.whenIdle() : Promise.resolve();
  }

  whenClosed(): Promise<string> {
    return this.closedPromise.then(() => this.closeReason);
  }

  /** A socket that starts in the transmission phase (no handshake, no TLS). */
  startTransmission(r: HandshakeResult): void {
    this.log.debug('NBD connection adopted in transmission phase');
    this.listen();
    this.onNegotiated(r);
  }

  /**
   * Read nothing more from the socket. pause() alone lets the handle read on
   * into the stream's buffer; what it buffered already goes to the engine.
   */
  private stopReading(): void {
    const s = this.raw as net.Socket & { _handle?: { readStop?: () => number } };
    s.pause();
    s._read = () => undefined; // read() below must not start the handle again
    s._handle?.readStop?.();
    while (s.read() !== null); // each chunk is emitted as 'data' to onData
  }

  /** Our fd of a plain socket in transmission phase (what can be handed to another process), else undefined. */
  handoverFd(): number | undefined {
    if (this.closed || !this.tx || this.state !== 'transmission' || this.tlsSocket) return undefined;
    const fd = (this.raw as net.Socket & { _handle?: { fd?: number } })._handle?.fd;
    return typeof fd === 'number' && fd >= 0 ? fd : undefined;
  }

  handoverState(): HandoverState | undefined {
    const r = this.result;
    if (!r) return undefined;
    return {
      exportName: r.exportName, structuredReplies: r.structuredReplies, metaContexts: [...r.metaContexts],
      transmissionFlags: r.transmissionFlags, blockSizeRequested: r.blockSizeRequested, label: this.listener,
    };
  }

  async handOver(timeoutMs: number, keep?: (unread: Buffer) => void): Promise<void> {
    if (this.closed) return;
    this.holding = true;
    this.stopReading();
    const deadline = Date.now() + timeoutMs;
    // Requests already read are answered, including whole ones the engine
    // still had queued (a tick lets it start them); a partial one is left to
    // the kernel, which re-sends it on the next socket.
    while (this.tx && !this.closed && Date.now() < deadline) {
      await Promise.race([this.tx.whenIdle(), this.closedPromise, new Promise((r) => setTimeout(r, 50))]);
      await new Promise((r) => setImmediate(r));
      if (this.tx.inFlight === 0) break;
    }
    this.cork.flush();
    while (this.sock.writableLength > 0 && Date.now() < deadline && !this.closed) await new Promise((r) => setTimeout(r, 10));
    if (keep && !this.closed && this.tx && this.tx.inFlight === 0 && this.sock.writableLength === 0) {
      const unread = this.tx.takeUnparsed();
      if (unread) keep(unread);
    }
    this.fail('handed over');
    await this.closedPromise;
  }

  start(): void {
    const o = this.server.options;
    this.log.debug('NBD connection accepted');
    this.raw.setNoDelay(true);
    this.listen();
    this.timer = setTimeout(() => this.fail('handshake timeout'), o.handshakeTimeoutMs ?? 10_000);
    this.timer.unref?.();
    this.hs = new HandshakeEngine(
      { exports: this.warnUnknown(o.exports), tlsMode: this.server.tlsMode, maxPayload: o.maxPayload ?? DEFAULT_MAX_PAYLOAD, log: this.log },
      {
        send: (bufs) => this.send(bufs),
        startTls: () => this.startTls(),
        done: (r) => this.onNegotiated(r),
        close: (reason, soft) => (soft ? this.end(reason) : this.fail(reason)),
      },
    );
    this.hs.start();
  }

  /** The same registry; a name it does not know is logged once per connection (warn, with this client's conn and remote). */
  private warnUnknown(reg: ExportRegistry): ExportRegistry {
    const warned = new Set<string>();
    const log = this.log;
    return {
      get(name) {
        const e = reg.get(name);
        if (!e && !warned.has(name)) {
          warned.add(name);
          log.warn({ export: name }, 'NBD client asked for an unknown export');
        }
        return e;
      },
      list: () => reg.list(),
      get defaultName() {
        return reg.defaultName;
      },
    };
  }

  private setState(s: NbdConnectionState): void {
    if (this.state === s) return;
    this.log.debug({ from: this.state, to: s }, 'NBD connection state');
    this.state = s;
    this.server.stateChanged(this);
  }

  private readonly onData = (b: Buffer): void => {
    this.bytesRead += b.length;
    this.lastActivity = Date.now();
    if (this.tx) this.tx.push(b);
    else this.hs?.push(b);
  };

  private send(bufs: Buffer[], sent?: () => void): void {
    if (this.closed || this.sock.destroyed) return;
    const s = this.sock;
    for (const b of bufs) this.bytesWritten += b.length;
    this.cork.write(s, bufs, sent);
    // Output backpressure: a client that does not read its replies stops being read from.
    if (this.tx && s.writableLength > this.maxBuffered) this.tx.setOutputBlocked(true);
  }

  private startTls(): void {
    const t = this.server.options.tls!;
    this.setState('tls');
    this.cork.flush(); // the ACK goes out in plaintext before anything else
    this.raw.removeListener('data', this.onData);
    const verify = !!t.requestClientCert;
    const s = new tls.TLSSocket(this.raw, {
      isServer: true,
      secureContext: this.server.secureContext,
      requestCert: verify,
      rejectUnauthorized: verify,
    });
    this.tlsSocket = s;
    s.on('error', (err) => this.fail(`TLS error: ${err.message}`));
    s.on('close', () => this.onClose('TLS socket closed'));
    s.once('secure', () => {
      if (verify) {
        // A bare server-side TLSSocket does not check the client's chain itself
        // (tls.Server does that in its own listener): ask the handle, fail closed.
        const h = (s as unknown as { _handle?: { verifyError?: () => unknown } })._handle;
        const e = typeof h?.verifyError === 'function' ? h.verifyError() : new Error('cannot verify');
        if (e) {
          const code = (e as { code?: string }).code ?? String(e);
          this.log.warn({ code }, 'NBD client certificate rejected');
          return this.fail(`client certificate rejected: ${code}`);
        }
      }
      this.onSecure(s);
    });
  }

  private onSecure(s: tls.TLSSocket): void {
    if (this.closed) return;
    this.log.debug({ protocol: s.getProtocol() }, 'TLS established');
    this.sock = s;
    s.on('data', this.onData);
    this.setState('handshake');
    this.hs!.tlsStarted();
  }

  private onNegotiated(r: HandshakeResult): void {
    if (this.timer) clearTimeout(this.timer);
    this.result = r;
    this.exp = r.export;
    // Connect and disconnect: both at info, both with conn, remote (bound) and export.
    this.log.info({ export: r.exportName, structured: r.structuredReplies, tls: !!this.tlsSocket, flags: r.transmissionFlags }, 'NBD client connected');
    const o = this.server.options;
    this.tx = new TransmissionEngine(
      {
        export: r.export,
        structuredReplies: r.structuredReplies,
        metaContexts: r.metaContexts,
        transmissionFlags: r.transmissionFlags,
        maxPayload: o.maxPayload,
        maxInFlight: o.maxInFlight,
        maxBufferedBytes: o.maxBufferedBytes,
        log: this.log,
      },
      {
        send: (bufs, sent) => this.send(bufs, sent),
        pause: () => this.sock.pause(),
        resume: () => {
          if (!this.holding) this.sock.resume();
        },
        close: (reason, soft) => (soft ? this.end(reason) : this.fail(reason)),
      },
    );
    this.sock.on('drain', () => this.tx?.setOutputBlocked(false));
    try {
      r.export.attach?.();
    } catch (err) {
      this.log.warn({ err }, 'export attach failed');
    }
    this.setState('transmission');
    if (r.leftover.length) this.tx.push(r.leftover);
  }

  /** Orderly end: flush what is queued, then close. */
  end(reason: string): void {
    if (this.closed) return;
    this.log.debug({ reason }, 'ending NBD connection');
    const s = this.sock;
    s.end();
    // Never linger on a peer that does not read.
    const t = setTimeout(() => s.destroy(), 5000);
    t.unref?.();
    this.onClose(reason);
  }

  /** Hard disconnect. */
  fail(reason: string): void {
    if (this.closed) return;
    this.log.debug({ reason }, 'dropping NBD connection');
    this.sock.destroy();
    if (this.sock !== this.raw) this.raw.destroy();
    this.onClose(reason);
  }

  private onClose(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.closeReason = reason;
    if (this.timer) clearTimeout(this.timer);
    this.tx?.closed();
    if (this.exp) {
      try {
        this.exp.detach?.();
      } catch {
        /* detach problems are the export's to log */
      }
    }
    this.setState('closed');
    const fields = { reason, bytesRead: this.bytesRead, bytesWritten: this.bytesWritten };
    // A client that reached an export was logged as connected: its disconnect is the matching line.
    if (this.result) this.log.info({ export: this.result.exportName, ...fields }, 'NBD client disconnected');
    else this.log.debug(fields, 'NBD connection closed during the handshake');
    this.server.unregister(this, reason);
    this.resolveClosed();
  }

  async shutdown(drainMs: number): Promise<void> {
    if (this.closed) return;
    if (!this.tx) {
      this.hs?.shutdown();
      this.fail('server shutting down');
      return;
    }
    this.setState('draining');
    const t = setTimeout(() => this.fail('drain timeout'), drainMs);
    t.unref?.();
    const started = Date.now();
    await Promise.race([this.tx.drain(), this.closedPromise]);
    // Linger briefly: requests already on their way get ESHUTDOWN (not a
    // silent disconnect), and the client may send NBD_CMD_DISC itself.
    const linger = Math.max(0, Math.min(SHUTDOWN_LINGER_MS, drainMs - (Date.now() - started)));
    if (linger > 0 && !this.closed) {
      let lt: NodeJS.Timeout | undefined;
      await Promise.race([this.closedPromise, new Promise<void>((r) => { lt = setTimeout(r, linger); })]);
      clearTimeout(lt);
    }
    clearTimeout(t);
    this.end('server shut down');
    await this.closedPromise;
  }
}
