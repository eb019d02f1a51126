// The transmission phase as a socket-free engine (doc/proto.md "Transmission").
// Fed bytes with push(); validates each request apart from running it; calls
// the Export; emits reply buffers through callbacks. Replies go out as each
// request completes (out of order), matched by the client's cookie.
import type { Logger } from '../log';
import { rootLogger } from '../log';
import type { Export, Extent } from '../bridge/export';
import {
  nbdErrnoOf, errorCodeOf, RequestError, NBD_EINVAL, NBD_ENOSPC, NBD_EPERM, NBD_ESHUTDOWN,
} from '../errors';
import { TagTable } from '../tag-table';
import { ReplyBufferPool } from './reply-pool';
import * as C from './constants';
import * as codec from './codec';
import { effectiveBlockSizes, EffectiveBlockSizes, DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_BUFFERED } from './common';
import { ByteQueue } from '../util/byte-queue';

export interface TransmissionOptions {
  export: Export;
  structuredReplies: boolean;
  /** Selected metadata contexts (id -> name); BLOCK_STATUS needs at least one. */
  metaContexts: Map<number, string>;
  transmissionFlags: number;
  /** Largest READ/WRITE accepted (also capped by the export's maximum block size). Default 32 MiB. */
  maxPayload?: number;
  /** A WRITE whose payload exceeds this is not skipped: the connection is dropped. Default 64 MiB. */
  maxDiscard?: number;
  /** Requests executing at once before input is paused. Default 128. */
  maxInFlight?: number;
  /** Payload and reply bytes held before input is paused. Default 16 MiB (DEFAULT_MAX_BUFFERED). */
  maxBufferedBytes?: number;
  log?: Logger;
}

export interface TransmissionCallbacks {
  /**
   * Write these buffers, in order, as one batch. When `sent` is given, call it
   * once the transport is done with them (written or failed): the buffers
   * may then be reused.
   */
  send(bufs: Buffer[], sent?: () => void): void;
  /** Stop / restart reading from the transport (backpressure). */
  pause(): void;
  resume(): void;
  /** End the connection: soft after NBD_CMD_DISC or drain (flush pending writes), hard on loss of sync. */
  close(reason: string, soft: boolean): void;
}

export type TransmissionState = 'transmission' | 'draining' | 'disconnecting' | 'closed';

export interface RequestRefusal {
  errno: number;
  message: string;
}

export interface ValidationContext {
  exp: Export;
  structured: boolean;
  hasMeta: boolean;
  transmissionFlags: number;
  blockSizes: EffectiveBlockSizes;
  draining: boolean;
}

/** Check a request against negotiation and the export; null means it may run. */
export function validateRequest(h: codec.RequestHeader, ctx: ValidationContext): RequestRefusal | null {
  const { exp, blockSizes: bs } = ctx;
  if (ctx.draining) return { errno: NBD_ESHUTDOWN, message: 'server is shutting down' };
  if (h.type > C.CMD_BLOCK_STATUS || h.type === C.CMD_DISC) return { errno: NBD_EINVAL, message: 'unknown command' };
  let allowed = C.CMD_FLAG_FUA;
  if (h.type === C.CMD_READ && ctx.structured) allowed |= C.CMD_FLAG_DF;
  if (h.type === C.CMD_WRITE_ZEROES) {
    allowed |= C.CMD_FLAG_NO_HOLE;
    if (ctx.transmissionFlags & C.FLAG_SEND_FAST_ZERO) allowed |= C.CMD_FLAG_FAST_ZERO;
  }
  if (h.type === C.CMD_BLOCK_STATUS) allowed |= C.CMD_FLAG_REQ_ONE;
  if (h.flags & ~allowed) return { errno: NBD_EINVAL, message: 'invalid command flags' };

  switch (h.type) {
    case C.CMD_FLUSH:
      if (!exp.flags.flush) return { errno: NBD_EINVAL, message: 'flush not supported' };
      return null; // offset and length are reserved
    case C.CMD_WRITE:
    case C.CMD_TRIM:
    case C.CMD_WRITE_ZEROES:
      if (exp.flags.readOnly) return { errno: NBD_EPERM, message: 'export is read-only' };
      if (h.type === C.CMD_TRIM && !exp.flags.trim) return { errno: NBD_EINVAL, message: 'trim not supported' };
      if (h.type === C.CMD_WRITE_ZEROES && !exp.flags.writeZeroes) return { errno: NBD_EINVAL, message: 'write zeroes not supported' };
      break;
    case C.CMD_CACHE:
      if (!exp.flags.cache) return { errno: NBD_EINVAL, message: 'cache not supported' };
      break;
    case C.CMD_BLOCK_STATUS:
      if (!ctx.structured || !ctx.hasMeta) return { errno: NBD_EINVAL, message: 'no metadata context negotiated' };
      if (h.length === 0) return { errno: NBD_EINVAL, message: 'zero-length block status' };
      break;
    default:
      break;
  }
  if (bs.align > 1 && (h.offset % BigInt(bs.align) !== 0n || h.length % bs.align !== 0)) {
    return { errno: NBD_EINVAL, message: `request not aligned to ${bs.align} bytes` };
  }
  // TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS carry no payload and are not capped.
  if ((h.type === C.CMD_READ || h.type === C.CMD_WRITE) && h.length > bs.maximum) {
    return { errno: NBD_EINVAL, message: `request larger than ${bs.maximum} bytes` };
  }
  if (h.offset + BigInt(h.length) > exp.size || h.offset > exp.size) {
    const w = h.type === C.CMD_WRITE || h.type === C.CMD_WRITE_ZEROES;
    return { errno: w ? NBD_ENOSPC : NBD_EINVAL, message: 'request beyond the end of the export' };
  }
  return null;
}

/** Large READ replies of every connection (see ReplyBufferPool). */
const replyPool = new ReplyBufferPool();

interface Req {
  id: number;
  h: codec.RequestHeader;
  bytes: number; // buffered bytes this request holds
}

type ParseState =
  | { kind: 'header' }
  | { kind: 'payload'; h: codec.RequestHeader; raw: Buffer }
  | { kind: 'discard'; h: codec.RequestHeader; remaining: number; error: RequestRefusal };

export class TransmissionEngine {
  state: TransmissionState = 'transmission';
  private readonly q = new ByteQueue();
  private parse: ParseState = { kind: 'header' };
  private readonly exp: Export;
  private readonly log: Logger;
  private readonly ctx: ValidationContext;
  private readonly contextIds: number[];
  private readonly maxDiscard: number;
  private readonly maxInFlight: number;
  private readonly maxBuffered: number;
  private readonly inflight = new TagTable<Req>();
  private nextId = 1;
  private buffered = 0;
  private paused = false;
  private outputBlocked = false;
  private idleWaiters: Array<() => void> = [];
  /** Counters for stats. */
  readonly counters = { requests: 0, errors: 0, bytesReadFromExport: 0, bytesWrittenToExport: 0 };

  constructor(opts: TransmissionOptions, private readonly cb: TransmissionCallbacks) {
    this.exp = opts.export;
    this.log = opts.log ?? rootLogger().child({ component: 'nbd-transmission' });
    this.maxDiscard = opts.maxDiscard ?? 64 * 1024 * 1024;
    this.maxInFlight = opts.maxInFlight ?? 128;
    this.maxBuffered = opts.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED;
    this.contextIds = [...opts.metaContexts.keys()];
    this.ctx = {
      exp: this.exp,
      structured: opts.structuredReplies,
      hasMeta: opts.metaContexts.size > 0,
      transmissionFlags: opts.transmissionFlags,
      blockSizes: effectiveBlockSizes(this.exp, opts.maxPayload ?? DEFAULT_MAX_PAYLOAD),
      draining: false,
    };
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  get bufferedBytes(): number {
    return this.buffered + this.q.length;
  }

  push(chunk: Buffer): void {
    if (this.state === 'closed' || this.state === 'disconnecting') return;
    this.q.push(chunk);
    this.pump();
  }

  /** Stop accepting work: new requests fail with ESHUTDOWN; resolves when nothing is in flight. */
  drain(): Promise<void> {
    if (this.state === 'transmission') this.setState('draining');
    this.ctx.draining = true;
    this.pump();
    return this.whenIdle();
  }

  /**
   * For a hand-over to the next process: every byte received and not yet
   * started, from a request boundary on (a WRITE whose payload is still
   * coming gives back its header too). Undefined when there is no boundary
   * to hand over from (a refused WRITE's payload is being skipped). The
   * engine reads nothing after this.
   */
  takeUnparsed(): Buffer | undefined {
    const p = this.parse;
    if (p.kind === 'discard' || this.state === 'closed' || this.state === 'disconnecting') return undefined;
    const rest = this.q.drainAll();
    this.setState('closed');
    return p.kind === 'payload' ? Buffer.concat([p.raw, rest]) : rest;
  }

  /** The transport went away: replies are dropped; in-flight export calls still finish. */
  closed(): void {
    this.setState('closed');
    this.q.clear();
  }

  /** The transport's write buffer is over its limit (true) or drained (false). */
  setOutputBlocked(blocked: boolean): void {
    if (this.outputBlocked === blocked) return;
    this.outputBlocked = blocked;
    if (!blocked) this.maybeResume();
    else this.maybePause();
  }

  whenIdle(): Promise<void> {
    if (this.inflight.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private setState(s: TransmissionState): void {
    if (this.state === s) return;
    this.log.debug({ from: this.state, to: s }, 'transmission state');
    this.state = s;
  }

  private overLimits(): boolean {
    return this.outputBlocked || this.inflight.size >= this.maxInFlight || this.buffered >= this.maxBuffered;
  }

  private maybePause(): void {
    if (!this.paused && this.overLimits()) {
      this.paused = true;
      this.cb.pause();
    }
  }

  private maybeResume(): void {
    if (this.paused && !this.overLimits() && this.state !== 'closed' && this.state !== 'disconnecting') {
      this.paused = false;
      this.cb.resume();
      this.pump();
    }
  }

  private drop(reason: string): void {
    this.log.warn({ reason }, 'dropping NBD connection');
    this.setState('closed');
    this.q.clear();
    this.cb.close(reason, false);
  }

  private pump(): void {
    while (this.state === 'transmission' || this.state === 'draining') {
      const p = this.parse;
      if (p.kind === 'discard') {
        p.remaining -= this.q.skip(p.remaining);
        if (p.remaining > 0) return;
        this.parse = { kind: 'header' };
        this.replyError(p.h, p.error);
        continue;
      }
      if (p.kind === 'payload') {
        if (this.q.length < p.h.length) return;
        const data = this.q.take(p.h.length); // a view when contiguous
        this.parse = { kind: 'header' };
        this.start(p.h, data);
        continue;
      }
      // Header: only start new work while under the limits.
      if (this.overLimits()) {
        this.maybePause();
        return;
      }
      if (this.q.length < C.REQUEST_HEADER_SIZE) return;
      const raw = this.q.take(C.REQUEST_HEADER_SIZE);
      const h = codec.parseRequestHeader(raw);
      if (!h) return this.drop('bad request magic');
      this.counters.requests++;
      if (h.type === C.CMD_DISC) {
        this.log.debug({ inFlight: this.inflight.size }, 'NBD_CMD_DISC');
        this.setState('disconnecting');
        this.q.clear();
        this.cb.pause();
        void this.whenIdle().then(() => {
          if (this.state !== 'closed') {
            this.setState('closed');
            this.cb.close('client sent NBD_CMD_DISC', true);
          }
        });
        return;
      }
      const error = validateRequest(h, this.ctx);
      if (h.type === C.CMD_WRITE) {
        // The payload follows whatever we decide: skip it (without buffering) if refused.
        const bad = error;
        if (bad) {
          if (h.length > this.maxDiscard) return this.drop(`WRITE payload of ${h.length} bytes is too large to skip`);
          this.logRefused(h, bad);
          this.parse = { kind: 'discard', h, remaining: h.length, error: bad };
        } else {
          this.parse = { kind: 'payload', h, raw };
        }
        continue;
      }
      if (error) {
        this.logRefused(h, error);
        this.replyError(h, error);
        continue;
      }
      this.start(h);
    }
  }

  private logRefused(h: codec.RequestHeader, e: RequestRefusal): void {
    this.counters.errors++;
    this.log.debug({ cmd: C.CMD_NAMES[h.type] ?? h.type, flags: h.flags, offset: h.offset.toString(), length: h.length, errno: e.errno, msg: e.message }, 'request refused');
  }

  private start(h: codec.RequestHeader, payload?: Buffer): void {
    const bytes = h.type === C.CMD_READ || h.type === C.CMD_WRITE ? h.length : 0;
    const req: Req = { id: this.nextId++, h, bytes };
    this.inflight.set(req.id, req);
    this.buffered += bytes;
    void this.execute(req, payload);
  }

  private finish(req: Req, bufs: Buffer[], sent?: () => void): void {
    if (!this.inflight.delete(req.id)) {
      // Our own bookkeeping lost a request: nothing sane can follow.
      this.drop('internal: unknown request id');
      return;
    }
    this.buffered -= req.bytes;
    if (this.state !== 'closed') this.cb.send(bufs, sent);
    if (this.inflight.size === 0 && this.idleWaiters.length) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const f of w) f();
    }
    this.maybeResume();
  }

  private replyError(h: codec.RequestHeader, e: RequestRefusal): void {
    if (this.state === 'closed') return;
    this.cb.send([this.errorReply(h, e.errno, e.message, false)]);
  }

  private errorReply(h: codec.RequestHeader, errno: number, message: string, withOffset: boolean): Buffer {
    if (!this.ctx.structured) return codec.encodeSimpleReply(errno, h.cookie);
    if (withOffset) return codec.encodeStructuredErrorOffset(h.cookie, C.REPLY_FLAG_DONE, errno, message, h.offset);
    return codec.encodeStructuredError(h.cookie, C.REPLY_FLAG_DONE, errno, message);
  }

  private async execute(req: Req, payload?: Buffer): Promise<void> {
    const { h } = req;
    const exp = this.exp;
    const fua = (h.flags & C.CMD_FLAG_FUA) !== 0;
    try {
      switch (h.type) {
        case C.CMD_READ:
          return await this.read(req);
        case C.CMD_WRITE:
          if (h.length > 0) await exp.write(h.offset, payload!, fua);
          this.counters.bytesWrittenToExport += h.length;
          break;
        case C.CMD_FLUSH:
          await exp.flush();
          break;
        case C.CMD_TRIM:
          if (h.length > 0) await exp.trim(h.offset, h.length, fua);
          break;
        case C.CMD_WRITE_ZEROES:
          if (h.length > 0) {
            await exp.zero(h.offset, h.length, {
              noHole: (h.flags & C.CMD_FLAG_NO_HOLE) !== 0,
              fastZero: (h.flags & C.CMD_FLAG_FAST_ZERO) !== 0,
              fua,
            });
          }
          break;
        case C.CMD_CACHE:
          if (h.length > 0) await exp.cache(h.offset, h.length);
          break;
        case C.CMD_BLOCK_STATUS:
          return this.finish(req, await this.blockStatus(h));
        default:
          throw new Error(`unreachable command ${h.type}`);
      }
      this.finish(req, [codec.encodeSimpleReply(0, h.cookie)]);
    } catch (err) {
      const errno = nbdErrnoOf(err);
      this.counters.errors++;
      const msg = err instanceof Error ? err.message : String(err);
      this.log.warn(
        { cmd: C.CMD_NAMES[h.type], offset: h.offset.toString(), length: h.length, code: errorCodeOf(err), errno, err: msg },
        'export operation failed',
      );
      const withOffset = h.type !== C.CMD_FLUSH && h.type !== C.CMD_BLOCK_STATUS;
      this.finish(req, [this.errorReply(h, errno, `${errorCodeOf(err)}: ${msg}`, withOffset)]);
    }
  }

  private async read(req: Req): Promise<void> {
    const { h } = req;
    const structured = this.ctx.structured;
    if (h.length === 0) {
      this.finish(req, [structured ? codec.encodeStructuredNone(h.cookie) : codec.encodeSimpleReply(0, h.cookie)]);
      return;
    }
    // One buffer for header and data; the export reads straight into its data part.
    const prefix = structured ? codec.OFFSET_DATA_PREFIX : C.SIMPLE_REPLY_HEADER_SIZE;
    // A failed read leaves the buffer to the GC, never to the pool: something
    // below may still hold it.
    const { buf, pooled } = replyPool.take(prefix + h.length);
    const into = buf.subarray(prefix);
    await this.exp.read(h.offset, h.length, into);
    // Data is complete before anything is sent, so the data chunk can carry DONE.
    if (structured) codec.writeOffsetDataHeader(buf, 0, C.REPLY_FLAG_DONE, h.cookie, h.offset, h.length);
    else codec.writeSimpleReplyHeader(buf, 0, 0, h.cookie);
    this.counters.bytesReadFromExport += h.length;
    this.finish(req, [buf], pooled ? () => replyPool.give(buf) : undefined);
  }

  private async blockStatus(h: codec.RequestHeader): Promise<Buffer[]> {
    const reqOne = (h.flags & C.CMD_FLAG_REQ_ONE) !== 0;
    let extents: Extent[] = [];
    if (this.exp.flags.blockStatus) {
      const got = await this.exp.blockStatus(h.offset, h.length);
      let sum = 0;
      for (const e of got) {
        if (!(e.length > 0)) continue;
        const len = Math.min(e.length, h.length - sum);
        if (len <= 0) break;
        const fl = e.flags & (C.STATE_HOLE | C.STATE_ZERO);
        const last = extents[extents.length - 1];
        if (last && last.flags === fl) last.length += len; // merge equal neighbours
        else extents.push({ length: len, flags: fl });
        sum += len;
        if (sum >= h.length) break;
      }
    }
    // "Allocated, contents unknown" is always a truthful answer.
    if (extents.length === 0) extents = [{ length: h.length, flags: 0 }];
    if (reqOne) extents = extents.slice(0, 1);
    const out: Buffer[] = [];
    this.contextIds.forEach((id, i) => {
      const last = i === this.contextIds.length - 1;
      out.push(codec.encodeBlockStatus(h.cookie, last ? C.REPLY_FLAG_DONE : 0, id, extents));
    });
    return out;
  }
}
