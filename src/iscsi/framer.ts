// Incremental PDU framer: bytes in (any chunking), whole frames out.
//
// Wire order of one PDU (RFC 7143 11.2):
//   BHS (48) | AHS (TotalAHSLength*4) | [HeaderDigest 4] |
//   data (DataSegmentLength) | pad to 4 | [DataDigest 4, only if DSL > 0]
//
// Chunks wait in a ByteQueue (a list read with a cursor): a segment lying in
// one chunk is returned as a view, one spanning chunks is copied once.
// DataSegmentLength is checked against the limit as soon as the BHS is
// complete, before anything of the data is awaited. Digest settings are
// sampled when a BHS starts, so a callback may switch them on (end of login)
// between PDUs.

import { ProtocolError } from '../errors';
import { BHS_LENGTH, DEFAULT_MAX_RECV_DSL, opcodeName, OPCODE_MASK } from './constants';
import { ByteQueue } from '../util/byte-queue';
import { crc32c, DigestError, readDigest } from './crc32c';
import { EMPTY, Frame } from './pdu';

export interface FramerOptions {
  headerDigest?: boolean;
  dataDigest?: boolean;
  /** Largest DataSegmentLength accepted (our MaxRecvDataSegmentLength); 8192 by default (login). */
  maxDataSegmentLength?: number;
  /** Called for each complete PDU, synchronously from push(). */
  onFrame: (frame: Frame) => void;
  /**
   * Called when a data digest does not match; the frame is discarded and
   * framing goes on. Without this handler the DigestError is thrown (fatal).
   */
  onDataDigestError?: (err: DigestError, frame: Frame) => void;
  /** See PduFramer.placeData. */
  placeData?: (bhs: Buffer, dataSegmentLength: number) => Buffer | undefined;
  /**
   * Pushed chunks are reused by the caller after push() returns (a socket
   * read buffer): frames then carry copies, and what is left over is copied.
   */
  transientChunks?: boolean;
}

const enum Stage {
  BHS,
  AHS,
  DATA,
}

export class PduFramer {
  headerDigest: boolean;
  dataDigest: boolean;
  maxDataSegmentLength: number;
  private readonly onFrame: (frame: Frame) => void;
  private readonly onDataDigestError?: (err: DigestError, frame: Frame) => void;

  private readonly q = new ByteQueue();
  private stage: Stage = Stage.BHS;
  private err: Error | undefined;
  private inCallback = false;
  // current PDU
  private bhs: Buffer = EMPTY;
  private ahs: Buffer = EMPTY;
  private ahsLen = 0;
  private dsl = 0;
  private hd = false;
  private dd = false;

  /**
   * Asked once per PDU header with a data segment: a buffer to receive the
   * segment directly (e.g. the reader's destination for a Data-In). The bytes
   * are then copied there as they arrive and never buffered here, and the
   * frame says so (`placed`). Until the frame is delivered the buffer is
   * the framer's to write: its owner takes it back with divert().
   */
  placeData?: (bhs: Buffer, dataSegmentLength: number) => Buffer | undefined;
  private dest: Buffer | undefined;
  /** The destination was taken back (divert): the segment goes to a buffer of our own. */
  private diverted = false;
  private destFilled = 0;
  private destCrc = 0;

  constructor(opts: FramerOptions) {
    this.headerDigest = opts.headerDigest ?? false;
    this.dataDigest = opts.dataDigest ?? false;
    this.maxDataSegmentLength = opts.maxDataSegmentLength ?? DEFAULT_MAX_RECV_DSL;
    this.onFrame = opts.onFrame;
    this.onDataDigestError = opts.onDataDigestError;
    this.placeData = opts.placeData;
    this.transient = opts.transientChunks ?? false;
  }

  private readonly transient: boolean;

  /** Bytes received and not yet emitted as part of a frame. */
  get buffered(): number {
    return this.q.length;
  }

  /** True between PDUs (nothing partial buffered). */
  get idle(): boolean {
    return this.stage === Stage.BHS && this.q.length === 0;
  }

  /** The fatal error that stopped this framer, if any. */
  get error(): Error | undefined {
    return this.err;
  }

  /**
   * Feed bytes. Emits every complete frame. Throws ProtocolError (oversized
   * data segment) or DigestError (header digest, or data digest without an
   * onDataDigestError handler); after that the framer is dead and every push
   * throws the same error. An exception from onFrame propagates as is and
   * leaves the remaining bytes buffered.
   */
  push(chunk: Buffer): void {
    if (this.err) throw this.err;
    this.q.push(chunk);
    try {
      this.drain();
      if (this.transient) this.q.ownRemainder();
    } catch (e) {
      // Errors thrown by our own callbacks are the caller's business.
      if (this.inCallback) {
        this.inCallback = false;
        throw e;
      }
      if (e instanceof ProtocolError || e instanceof DigestError) {
        this.err = e;
        this.q.clear();
      }
      throw e;
    }
  }

  private drain(): void {
    for (;;) {
      if (this.stage === Stage.BHS) {
        if (this.q.length < BHS_LENGTH) return;
        const bhs = this.take(BHS_LENGTH);
        const dsl = (bhs[5] << 16) | (bhs[6] << 8) | bhs[7];
        if (dsl > this.maxDataSegmentLength) {
          throw new ProtocolError(
            `${opcodeName(bhs[0] & OPCODE_MASK)} PDU with DataSegmentLength ${dsl} exceeds ` +
              `MaxRecvDataSegmentLength ${this.maxDataSegmentLength}`,
          );
        }
        this.bhs = bhs;
        this.ahsLen = bhs[4] * 4;
        this.dsl = dsl;
        this.hd = this.headerDigest;
        this.dd = this.dataDigest;
        this.stage = Stage.AHS;
      }
      if (this.stage === Stage.AHS) {
        if (this.q.length < this.ahsLen + (this.hd ? 4 : 0)) return;
        this.ahs = this.take(this.ahsLen);
        if (this.hd) {
          const expected = readDigest(this.take(4));
          const actual = crc32c(this.ahs, crc32c(this.bhs));
          if (actual !== expected) {
            throw new DigestError(
              'header', undefined, undefined,
              `header digest mismatch (got 0x${expected.toString(16)}, computed 0x${actual.toString(16)})`,
            );
          }
        }
        this.stage = Stage.DATA;
        this.dest = undefined;
        if (this.dsl > 0 && this.placeData) {
          this.inCallback = true;
          const d = this.placeData(this.bhs, this.dsl);
          this.inCallback = false;
          if (d && d.length >= this.dsl) {
            this.dest = d.subarray(0, this.dsl);
            this.diverted = false;
            this.destFilled = 0;
            this.destCrc = 0;
          }
        }
      }
      // Stage.DATA
      const padded = (this.dsl + 3) & ~3;
      const withDigest = this.dd && this.dsl > 0;
      let seg: Buffer;
      let data: Buffer;
      let placed = false;
      if (this.dest) {
        // Stream what has arrived straight into the destination.
        this.destFilled += this.q.copyTo(this.dest, this.destFilled, this.dsl - this.destFilled);
        const rest = padded - this.dsl;
        if (this.destFilled < this.dsl || this.q.length < rest + (withDigest ? 4 : 0)) return;
        const pad = this.take(rest);
        data = this.dest;
        seg = data;
        if (withDigest) this.destCrc = crc32c(pad, crc32c(data));
        placed = !this.diverted;
        this.dest = undefined;
        this.diverted = false;
      } else {
        if (this.q.length < padded + (withDigest ? 4 : 0)) return;
        seg = this.take(padded);
        data = seg.subarray(0, this.dsl);
        if (withDigest) this.destCrc = crc32c(seg);
      }
      const frame: Frame = placed ? { bhs: this.bhs, ahs: this.ahs, data, placed: true } : { bhs: this.bhs, ahs: this.ahs, data };
      this.stage = Stage.BHS;
      this.bhs = this.ahs = EMPTY;
      if (withDigest) {
        const expected = readDigest(this.take(4));
        if (this.destCrc !== expected) {
          const itt = frame.bhs.readUInt32BE(16);
          const op = frame.bhs[0] & OPCODE_MASK;
          const e = new DigestError('data', itt, op, `data digest mismatch on ${opcodeName(op)} ITT 0x${itt.toString(16)}`);
          if (!this.onDataDigestError) throw e;
          this.inCallback = true;
          this.onDataDigestError(e, frame);
          this.inCallback = false;
          continue;
        }
      }
      this.inCallback = true;
      this.onFrame(frame);
      this.inCallback = false;
    }
  }

  /**
   * Stop writing into the buffer placeData named (its owner gives it up, e.g.
   * the command failed and the reader's buffer goes back to its pool): what
   * arrived so far and the rest of the segment go to a buffer of our own,
   * and the frame is delivered unplaced.
   */
  divert(): void {
    if (!this.dest || this.diverted) return;
    const own = Buffer.allocUnsafe(this.dest.length);
    this.dest.copy(own, 0, 0, this.destFilled);
    this.dest = own;
    this.diverted = true;
  }

  /** Remove n bytes (n <= buffered): a view, or a copy when they span chunks or the chunks are transient. */
  private take(n: number): Buffer {
    return this.q.take(n, this.transient);
  }
}
