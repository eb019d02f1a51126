// The fixed-newstyle handshake as a socket-free state machine (doc/proto.md
// "Handshake"). Fed bytes with push(); emits bytes through callbacks and
// finally the negotiated result.
import type { Logger } from '../log';
import { rootLogger } from '../log';
import type { Export } from '../bridge/export';
import * as C from './constants';
import * as codec from './codec';
import { ExportRegistry, resolveExport, transmissionFlagsFor, effectiveBlockSizes, DEFAULT_MAX_PAYLOAD } from './common';
import { ByteQueue } from '../util/byte-queue';

export type TlsMode = 'off' | 'on' | 'require';

export interface HandshakeOptions {
  exports: ExportRegistry;
  tlsMode?: TlsMode;
  /** Options accepted before the connection is dropped (DoS bound). */
  maxOptions?: number;
  /** Largest option data buffered; bigger (up to maxDiscardLength) is skipped and refused with ERR_TOO_BIG. */
  maxOptionLength?: number;
  /** Option data beyond this is not even skipped: the connection is dropped. */
  maxDiscardLength?: number;
  /** Cap for the advertised maximum block size. */
  maxPayload?: number;
  log?: Logger;
}

export interface HandshakeResult {
  export: Export;
  /** The canonical export name. */
  exportName: string;
  structuredReplies: boolean;
  /** Selected metadata contexts: id -> name (only base:allocation exists). */
  metaContexts: Map<number, string>;
  transmissionFlags: number;
  /** Whether the client asked for NBD_INFO_BLOCK_SIZE on the final NBD_OPT_GO. */
  blockSizeRequested: boolean;
  /** Bytes that arrived after the final option; they belong to the transmission phase. */
  leftover: Buffer;
}

export interface HandshakeCallbacks {
  send(bufs: Buffer[]): void;
  /** The STARTTLS ACK was sent: upgrade the transport, then call tlsStarted(). */
  startTls(): void;
  done(result: HandshakeResult): void;
  /** Drop the connection (hard disconnect) or end it after NBD_OPT_ABORT. */
  close(reason: string, soft: boolean): void;
}

export type HandshakeState = 'greeting' | 'options' | 'option-data' | 'discard' | 'tls' | 'done' | 'closed';

export const BASE_ALLOCATION_ID = 1;

export class HandshakeEngine {
  state: HandshakeState = 'greeting';
  private readonly q = new ByteQueue();
  private readonly log: Logger;
  private readonly tlsMode: TlsMode;
  private readonly maxOptions: number;
  private readonly maxOptionLength: number;
  private readonly maxDiscardLength: number;
  private readonly maxPayload: number;
  private fixed = false;
  private noZeroes = false;
  private tls = false;
  private shuttingDown = false;
  private optionCount = 0;
  private cur: { option: number; length: number; remaining: number } | undefined;
  // Negotiation state (forgotten after STARTTLS).
  private structured = false;
  private meta: { exp: Export; ids: Map<number, string> } | undefined;

  constructor(private readonly opts: HandshakeOptions, private readonly cb: HandshakeCallbacks) {
    this.log = opts.log ?? rootLogger().child({ component: 'nbd-handshake' });
    this.tlsMode = opts.tlsMode ?? 'off';
    this.maxOptions = opts.maxOptions ?? 64;
    this.maxOptionLength = opts.maxOptionLength ?? 64 * 1024;
    this.maxDiscardLength = opts.maxDiscardLength ?? 1024 * 1024;
    this.maxPayload = opts.maxPayload ?? DEFAULT_MAX_PAYLOAD;
  }

  get tlsActive(): boolean {
    return this.tls;
  }

  /** Send the greeting. */
  start(): void {
    this.cb.send([codec.encodeGreeting(C.FLAG_FIXED_NEWSTYLE | C.FLAG_NO_ZEROES)]);
  }

  /** The server is shutting down: further options (but ABORT) get ERR_SHUTDOWN. */
  shutdown(): void {
    this.shuttingDown = true;
  }

  /** The transport is now TLS: forget everything negotiated before. */
  tlsStarted(): void {
    if (this.state !== 'tls') return;
    this.tls = true;
    this.structured = false;
    this.meta = undefined;
    this.setState('options');
    this.run();
  }

  push(chunk: Buffer): void {
    if (this.state === 'done' || this.state === 'closed') return;
    if (this.state === 'tls') {
      // The client must wait for the ACK before starting TLS; plaintext here is a violation.
      if (chunk.length) this.drop('data after STARTTLS before the TLS upgrade');
      return;
    }
    this.q.push(chunk);
    this.run();
  }

  private setState(s: HandshakeState): void {
    if (s === this.state) return;
    this.log.debug({ from: this.state, to: s }, 'handshake state');
    this.state = s;
  }

  private drop(reason: string): void {
    if (this.state === 'closed') return;
    this.log.debug({ reason }, 'handshake: dropping connection');
    this.setState('closed');
    this.q.clear();
    this.cb.close(reason, false);
  }

  private run(): void {
    for (;;) {
      switch (this.state) {
        case 'greeting': {
          if (this.q.length < 4) return;
          const flags = this.q.take(4).readUInt32BE(0);
          if (flags & ~(C.FLAG_C_FIXED_NEWSTYLE | C.FLAG_C_NO_ZEROES)) return this.drop(`unknown client flags 0x${flags.toString(16)}`);
          this.fixed = (flags & C.FLAG_C_FIXED_NEWSTYLE) !== 0;
          this.noZeroes = (flags & C.FLAG_C_NO_ZEROES) !== 0;
          // TLS needs fixed newstyle; a FORCEDTLS server cannot serve a non-fixed client at all.
          if (!this.fixed && this.tlsMode === 'require') return this.drop('client without fixed newstyle while TLS is required');
          this.setState('options');
          break;
        }
        case 'options': {
          if (this.q.length < C.OPTION_HEADER_SIZE) return;
          const h = codec.parseOptionHeader(this.q.take(C.OPTION_HEADER_SIZE));
          if (!h.magicOk) return this.drop('bad option magic');
          if (++this.optionCount > this.maxOptions) return this.drop('too many options');
          this.cur = { option: h.option, length: h.length, remaining: h.length };
          if (h.length > this.maxDiscardLength) return this.drop(`option ${h.option} data length ${h.length} is absurd`);
          if (h.length > this.maxOptionLength) {
            this.setState('discard');
          } else {
            this.setState('option-data');
          }
          break;
        }
        case 'discard': {
          const cur = this.cur!;
          cur.remaining -= this.q.skip(cur.remaining);
          if (cur.remaining > 0) return;
          this.setState('options');
          if (cur.option === C.OPT_EXPORT_NAME) return this.drop('export name too long');
          this.reply([codec.encodeOptionError(cur.option, C.REP_ERR_TOO_BIG, 'option data too large')]);
          break;
        }
        case 'option-data': {
          const cur = this.cur!;
          if (this.q.length < cur.length) return;
          const data = this.q.take(cur.length);
          this.setState('options');
          this.handleOption(cur.option, data);
          break;
        }
        default:
          return;
      }
    }
  }

  private reply(bufs: Buffer[]): void {
    this.cb.send(bufs);
  }

  private err(option: number, type: number, msg: string): void {
    this.log.debug({ option: C.OPT_NAMES[option] ?? option, type: type - 0x80000000, msg }, 'option refused');
    this.reply([codec.encodeOptionError(option, type, msg)]);
  }

  private handleOption(option: number, data: Buffer): void {
    const name = C.OPT_NAMES[option] ?? `unknown(${option})`;
    this.log.debug({ option: name, length: data.length }, 'option');

    if (option === C.OPT_ABORT) {
      // Data is ignored; ACK then close.
      this.reply([codec.encodeAck(option)]);
      this.setState('closed');
      this.cb.close('client sent NBD_OPT_ABORT', true);
      return;
    }
    if (option === C.OPT_EXPORT_NAME) {
      if (this.tlsMode === 'require' && !this.tls) return this.drop('NBD_OPT_EXPORT_NAME before TLS');
      if (this.shuttingDown) return this.drop('server shutting down');
      const exportName = data.includes(0) ? undefined : data.toString('utf8');
      const exp = exportName === undefined || data.length > C.MAX_STRING ? undefined : resolveExport(this.opts.exports, exportName);
      if (!exp) return this.drop(`unknown export ${JSON.stringify(exportName ?? '')}`);
      const flags = transmissionFlagsFor(exp, this.structured);
      this.reply([codec.encodeExportNameReply(exp.size, flags, this.noZeroes)]);
      return this.finish(exp, flags, false);
    }
    if (!this.fixed) {
      // A non-fixed client understands no option replies; only EXPORT_NAME is valid.
      return this.drop(`option ${name} from a non-fixed-newstyle client`);
    }
    if (this.shuttingDown) return this.err(option, C.REP_ERR_SHUTDOWN, 'server shutting down');
    if (option === C.OPT_STARTTLS) {
      if (data.length) return this.err(option, C.REP_ERR_INVALID, 'STARTTLS takes no data');
      if (this.tlsMode === 'off') return this.err(option, C.REP_ERR_POLICY, 'TLS not configured');
      if (this.tls) return this.err(option, C.REP_ERR_INVALID, 'TLS already active');
      this.reply([codec.encodeAck(option)]);
      this.setState('tls');
      if (this.q.length) return this.drop('data after STARTTLS before the TLS upgrade');
      this.cb.startTls();
      return;
    }
    if (this.tlsMode === 'require' && !this.tls) return this.err(option, C.REP_ERR_TLS_REQD, 'TLS required');

    switch (option) {
      case C.OPT_LIST: {
        if (data.length) return this.err(option, C.REP_ERR_INVALID, 'LIST takes no data');
        const out: Buffer[] = [];
        for (const e of this.opts.exports.list()) out.push(codec.encodeRepServer(option, e.name, e.description));
        out.push(codec.encodeAck(option));
        return this.reply(out);
      }
      case C.OPT_STRUCTURED_REPLY: {
        if (data.length) return this.err(option, C.REP_ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        this.structured = true;
        return this.reply([codec.encodeAck(option)]);
      }
      case C.OPT_INFO:
      case C.OPT_GO:
        return this.infoOrGo(option, data);
      case C.OPT_LIST_META_CONTEXT:
      case C.OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return this.err(option, C.REP_ERR_UNSUP, 'unsupported option');
    }
  }

  private infoOrGo(option: number, data: Buffer): void {
    const p = codec.parseInfoRequest(data);
    if (!p.ok) return this.err(option, C.REP_ERR_INVALID, p.error);
    const exp = resolveExport(this.opts.exports, p.value.name);
    if (!exp) return this.err(option, C.REP_ERR_UNKNOWN, 'no such export');
    const flags = transmissionFlagsFor(exp, this.structured);
    const bs = effectiveBlockSizes(exp, this.maxPayload);
    const out: Buffer[] = [codec.encodeInfoExport(option, exp.size, flags)];
    const asked = new Set(p.value.infos);
    if (asked.has(C.INFO_NAME)) out.push(codec.encodeInfoString(option, C.INFO_NAME, exp.name));
    if (asked.has(C.INFO_DESCRIPTION) && exp.description) out.push(codec.encodeInfoString(option, C.INFO_DESCRIPTION, exp.description));
    // Sent whether asked or not: clients ignore it if they did not ask, and
    // the constraints are enforced with EINVAL either way.
    out.push(codec.encodeInfoBlockSize(option, bs.minimum, bs.preferred, bs.maximum));
    out.push(codec.encodeAck(option));
    this.reply(out);
    if (option === C.OPT_GO) this.finish(exp, flags, asked.has(C.INFO_BLOCK_SIZE));
  }

  private metaContext(option: number, data: Buffer): void {
    const set = option === C.OPT_SET_META_CONTEXT;
    if (set) this.meta = undefined; // replaced even when the option fails
    if (!this.structured) return this.err(option, C.REP_ERR_INVALID, 'structured replies not negotiated');
    const p = codec.parseMetaContextRequest(data);
    if (!p.ok) return this.err(option, C.REP_ERR_INVALID, p.error);
    const exp = resolveExport(this.opts.exports, p.value.name);
    if (!exp) return this.err(option, C.REP_ERR_UNKNOWN, 'no such export');
    let selected = false;
    if (!set && p.value.queries.length === 0) selected = true;
    for (const q of p.value.queries) {
      const colon = q.indexOf(':');
      if (colon <= 0) return this.err(option, C.REP_ERR_INVALID, 'query lacks a namespace');
      if (q === C.META_BASE_ALLOCATION) selected = true;
      else if (q === 'base:' && !set) selected = true; // wildcard for LIST only
      // Unknown namespaces and leaf names are ignored.
    }
    const out: Buffer[] = [];
    if (selected) out.push(codec.encodeMetaContext(option, set ? BASE_ALLOCATION_ID : 0, C.META_BASE_ALLOCATION));
    out.push(codec.encodeAck(option));
    if (set && selected) this.meta = { exp, ids: new Map([[BASE_ALLOCATION_ID, C.META_BASE_ALLOCATION]]) };
    this.reply(out);
  }

  private finish(exp: Export, flags: number, blockSizeRequested: boolean): void {
    this.setState('done');
    const result: HandshakeResult = {
      export: exp,
      exportName: exp.name,
      structuredReplies: this.structured,
      // Contexts count only if selected for the export finally chosen.
      metaContexts: this.meta && this.meta.exp === exp ? this.meta.ids : new Map(),
      transmissionFlags: flags,
      blockSizeRequested,
      leftover: this.q.drainAll(),
    };
    this.cb.done(result);
  }
}
