// The socket adapter of one iSCSI connection: TCP connect, login (driving
// LoginEngine; the policy around it, redirects and the CHAP-MD5 fallback,
// is open.ts), then full feature phase where frames go to a handler (the
// SessionEngine) and encoded PDUs come back through send(). It owns no
// protocol state beyond switching the framer's digests and data segment
// limit when login ends. Socket errors and closes become one 'closed' event.

import { TickCork } from '../tick-cork';
import net from 'node:net';
import { EventEmitter } from 'node:events';
import { IscsiNbdError, ProtocolError, TransportError } from '../errors';
import type { Logger } from '../log';
import { DEFAULT_MAX_RECV_DSL, Opcode, opcodeName } from './constants';
import { keepAliveClock, type EngineClock } from './clock';
import { DigestError } from './crc32c';
import { PduFramer } from './framer';
import { LoginEngine, LoginOptions, LoginResult, LoginStep } from './login';
import { decodeFrame, encodePdu, Frame, Pdu } from './pdu';
import { formatHostPort, type Portal } from './url';
import { BoundConnectError, connectBound, InterfaceError, sourceAddressOf } from '../util/bind-device';

export type { Portal };

export type ConnectionState = 'connecting' | 'login' | 'full-feature' | 'closed';

export const DEFAULT_CONNECT_MS = 10000;

/** One socket read at most: the connection's reused read buffer. */
const READ_BUFFER_BYTES = 256 * 1024;

/** Where a socket made by tcpConnect delivers what it reads. */
interface ChunkReader {
  onChunk?: (chunk: Buffer) => void;
}

/** A connected socket and the chunk reader its reads go to (one reused read buffer; no 'data' events). */
export interface TcpLink {
  socket: net.Socket;
  reader: ChunkReader;
}

/** Open a TCP connection (IPv4 or IPv6), bounded by timeoutMs, through `iface` when given. */
export function tcpConnect(portal: Portal, timeoutMs = DEFAULT_CONNECT_MS, clock: EngineClock = keepAliveClock, signal?: AbortSignal, iface?: string): Promise<TcpLink> {
  // An interface name: SO_BINDTODEVICE through FFI. An address of this host: net.connect's localAddress.
  if (iface !== undefined && net.isIP(iface) === 0) return boundTcpConnect(portal, iface, timeoutMs, clock, signal);
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new TransportError('ESHUTDOWN', 'connect cancelled: the session was closed'));
      return;
    }
    let localAddress: string | undefined;
    try {
      localAddress = iface === undefined ? undefined : sourceAddressOf(iface); // InterfaceError: not an address of this host
    } catch (e) {
      reject(e);
      return;
    }
    const where = `${formatHostPort(portal.host, portal.port)}${localAddress !== undefined ? ` from ${localAddress}` : ''}`;
    const { reader, onread } = chunkReaderOpts();
    const sock = net.connect({
      host: portal.host,
      port: portal.port,
      ...(localAddress !== undefined ? { localAddress } : {}),
      onread,
    });
    const onAbort = (): void => {
      clock.clearTimeout(timer);
      sock.destroy();
      reject(new TransportError('ESHUTDOWN', 'connect cancelled: the session was closed'));
    };
    const timer = clock.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      sock.destroy();
      reject(new TransportError('ECONNECT', `cannot connect to iSCSI portal ${where}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    sock.once('connect', () => {
      signal?.removeEventListener('abort', onAbort);
      clock.clearTimeout(timer);
      sock.removeAllListeners('error');
      sock.setNoDelay(true);
      sock.setKeepAlive(true, 30000);
      resolve({ socket: sock, reader });
    });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      signal?.removeEventListener('abort', onAbort);
      clock.clearTimeout(timer);
      sock.destroy();
      if (e.code === 'EADDRNOTAVAIL' && localAddress !== undefined) {
        reject(new InterfaceError('ENODEV', `cannot connect from ${localAddress}: no interface of this host has that address now`, localAddress, e.code, { cause: e }));
        return;
      }
      const why = e.code === 'ECONNREFUSED' ? 'connection refused (is the target running and listening there?)'
        : e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN' ? 'host name not found'
        : e.code === 'EHOSTUNREACH' || e.code === 'ENETUNREACH' ? 'host unreachable' : e.message;
      reject(new TransportError('ECONNECT', `cannot connect to iSCSI portal ${where}: ${why}`, { cause: e }));
    });
  });
}

/**
 * One read buffer per connection, reused for every read: no allocation per
 * socket read (the framer copies what it has to keep).
 */
function chunkReaderOpts(): { reader: ChunkReader; onread: net.OnReadOpts } {
  const reader: ChunkReader = {};
  return {
    reader,
    onread: {
      buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
      callback: (n: number, buf: Uint8Array) => {
        reader.onChunk?.(Buffer.from(buf.buffer, buf.byteOffset, n));
        return true;
      },
    },
  };
}

function connectWhy(errno: string | undefined, fallback: string): string {
  return errno === 'ECONNREFUSED' ? 'connection refused (is the target running and listening there?)'
    : errno === 'EHOSTUNREACH' || errno === 'ENETUNREACH' ? 'host unreachable' : fallback;
}

/**
 * tcpConnect through one interface (open-iscsi's iface.net_ifacename): a
 * path of its own even when another interface reaches the same portal.
 */
async function boundTcpConnect(portal: Portal, iface: string, timeoutMs: number, clock: EngineClock, signal?: AbortSignal): Promise<TcpLink> {
  const where = `${formatHostPort(portal.host, portal.port)} through ${iface}`;
  if (signal?.aborted) throw new TransportError('ESHUTDOWN', 'connect cancelled: the session was closed');
  const { reader, onread } = chunkReaderOpts();
  // The connect timeout runs on the session's clock; the helper's own deadline is a backstop.
  const abort = new AbortController();
  const onAbort = (): void => abort.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  let timedOut = false;
  const timer = clock.setTimeout(() => {
    timedOut = true;
    abort.abort();
  }, timeoutMs);
  let sock: net.Socket;
  try {
    sock = await connectBound({ host: portal.host, port: portal.port, device: iface, timeoutMs: timeoutMs + 1000, signal: abort.signal, onread });
  } catch (e) {
    if (e instanceof InterfaceError) throw e;
    if (e instanceof BoundConnectError && (timedOut || e.code === 'ETIMEOUT')) {
      throw new TransportError('ECONNECT', `cannot connect to iSCSI portal ${where}: no answer within ${timeoutMs} ms`, { cause: e });
    }
    if (e instanceof BoundConnectError && e.code === 'ESHUTDOWN') throw new TransportError('ESHUTDOWN', 'connect cancelled: the session was closed', { cause: e });
    const code = (e as { code?: string }).code;
    const why = code === 'ENOTFOUND' || code === 'EAI_AGAIN' ? 'host name not found'
      : connectWhy(e instanceof BoundConnectError ? e.errno : undefined, (e as Error).message);
    throw new TransportError('ECONNECT', `cannot connect to iSCSI portal ${where}: ${why}`, { cause: e });
  } finally {
    clock.clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
  sock.setNoDelay(true);
  sock.setKeepAlive(true, 30000);
  return { socket: sock, reader };
}

/**
 * Events: 'closed' (reason: Error), once. In full feature phase, frames are
 * decoded and passed to the handler given to attach(); those arriving
 * before attach() are held.
 */
export class IscsiConnection extends EventEmitter {
  private st: ConnectionState = 'login';
  private readonly framer: PduFramer;
  private handler: ((pdu: Pdu) => void) | undefined;
  private held: Pdu[] = [];
  private loginEngine: LoginEngine | undefined;
  private loginDone: ((step: Exclude<LoginStep, { send: unknown }>) => void) | undefined;
  private loginFailed: ((e: Error) => void) | undefined;
  private closeReason: Error | undefined;

  /** `reader`: where the socket's reads go when it was made with one (tcpConnect); else its 'data' events. */
  constructor(private readonly socket: net.Socket, private readonly log: Logger, reader?: ChunkReader) {
    super();
    this.framer = new PduFramer({
      maxDataSegmentLength: DEFAULT_MAX_RECV_DSL,
      onFrame: (f) => this.onFrame(f),
      transientChunks: reader !== undefined,
    });
    const onChunk = (chunk: Buffer): void => {
      if (this.st === 'closed') return;
      try {
        this.framer.push(chunk);
      } catch (e) {
        this.close(e instanceof Error ? e : new Error(String(e)));
      }
    };
    if (reader) reader.onChunk = onChunk;
    else socket.on('data', onChunk);
    socket.on('error', (e) => {
      this.close(new TransportError('ECONNLOST', `iSCSI connection error: ${e.message}`, { cause: e }));
    });
    socket.on('close', () => {
      this.close(new TransportError('ECONNLOST', 'the target closed the iSCSI connection'));
    });
    socket.on('end', () => {
      // Half-close from the target: the session is over for this connection.
      this.close(new TransportError('ECONNLOST', 'the target closed the iSCSI connection'));
    });
  }

  get state(): ConnectionState {
    return this.st;
  }

  /** Why the connection closed (undefined while open). */
  get reason(): Error | undefined {
    return this.closeReason;
  }

  get remote(): string {
    return `${this.socket.remoteAddress}:${this.socket.remotePort}`;
  }

  /** Bytes queued in the socket (for flow control by the owner). */
  get writableLength(): number {
    return this.socket.writableLength;
  }

  private setState(to: ConnectionState): void {
    if (to === this.st) return;
    this.log.debug({ from: this.st, to }, 'iscsi connection state');
    this.st = to;
  }

  /** Run the login phase; resolves with 'done' or 'redirect'. */
  login(opts: Omit<LoginOptions, 'logger'>, timeoutMs: number, clock: EngineClock = keepAliveClock): Promise<Exclude<LoginStep, { send: unknown }>> {
    return new Promise((resolve, reject) => {
      if (this.st !== 'login') {
        reject(this.closeReason ?? new TransportError('ECONNLOST', 'connection not in login phase'));
        return;
      }
      const timer = clock.setTimeout(() => {
        const e = new TransportError('ETIMEOUT', `iSCSI login did not complete within ${timeoutMs} ms`);
        this.close(e);
      }, timeoutMs);
      this.loginDone = (s) => {
        clock.clearTimeout(timer);
        this.loginDone = this.loginFailed = undefined;
        resolve(s);
      };
      this.loginFailed = (e) => {
        clock.clearTimeout(timer);
        this.loginDone = this.loginFailed = undefined;
        reject(e);
      };
      try {
        this.loginEngine = new LoginEngine({ ...opts, logger: this.log });
        this.write([encodePdu(this.loginEngine.start())]);
      } catch (e) {
        this.loginFailed(e as Error);
      }
    });
  }

  private onFrame(frame: Frame): void {
    const pdu = decodeFrame(frame); // ProtocolError -> push() throws -> close
    if (this.st === 'login') {
      if (pdu.opcode !== Opcode.LOGIN_RESPONSE) {
        throw new ProtocolError(`unexpected ${opcodeName(pdu.opcode)} PDU during login`);
      }
      let step: LoginStep;
      try {
        step = this.loginEngine!.receive(pdu);
      } catch (e) {
        this.loginFailed?.(e as Error);
        throw e;
      }
      if ('send' in step) {
        this.write([encodePdu(step.send)]);
        return;
      }
      if ('done' in step) {
        // Digests and our receive limit apply from the next PDU on.
        this.framer.headerDigest = step.done.headerDigest;
        this.framer.dataDigest = step.done.dataDigest;
        this.framer.maxDataSegmentLength = step.done.maxRecvDataSegmentLength;
        this.setState('full-feature');
      }
      this.loginEngine = undefined;
      this.loginDone?.(step);
      return;
    }
    if (this.st !== 'full-feature') return;
    if (this.handler) this.handler(pdu);
    else this.held.push(pdu);
  }

  /** Deliver full-feature PDUs to `handler` (PDUs held so far first). */
  attach(handler: (pdu: Pdu) => void): void {
    this.handler = handler;
    const held = this.held;
    this.held = [];
    for (const p of held) {
      if (this.st !== 'full-feature') break;
      handler(p);
    }
  }

  /** Let the engine name a destination for incoming data segments (see PduFramer.placeData). */
  setPlaceData(fn: ((bhs: Buffer, dsl: number) => Buffer | undefined) | undefined): void {
    this.framer.placeData = fn;
  }

  /** The engine gives up the buffer the framer is streaming a segment into (PduFramer.divert). */
  divertPlacement(): void {
    this.framer.divert();
  }

  /** Write PDU buffers as one batch. Returns false if the socket is closed. */
  send(buffers: Buffer[]): boolean {
    if (this.st === 'closed') return false;
    this.write(buffers);
    return true;
  }

  private readonly cork = new TickCork();

  /**
   * Every PDU sent in one tick leaves in one writev: commands issued for a
   * burst of NBD requests share a syscall instead of paying one each.
   */
  private write(buffers: Buffer[]): void {
    this.cork.write(this.socket, buffers);
  }

  /** Close now (idempotent); emits 'closed' with the first reason. */
  close(reason?: Error): void {
    if (this.st === 'closed') return;
    const r = reason ?? new TransportError('ECONNLOST', 'iSCSI connection closed locally');
    this.closeReason = r;
    this.setState('closed');
    if (r instanceof DigestError || r instanceof ProtocolError) {
      this.log.warn({ err: r, code: (r as IscsiNbdError).code }, 'dropping iSCSI connection');
    } else {
      this.log.debug({ err: r }, 'iSCSI connection closed');
    }
    this.socket.destroy();
    this.loginFailed?.(r);
    this.held = [];
    this.emit('closed', r);
  }
}
