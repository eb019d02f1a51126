import assert from 'node:assert/strict';
import type net from 'node:net';
import { req } from '../nbd/util';

export type Answer = { error: number; data: Buffer };

/**
 * The client side of NBD transmission with simple replies (what the kernel
 * speaks): sends requests on a socket, matches replies by cookie, and fails
 * loudly on a reply for a cookie it never sent.
 */
export class SimpleRequester {
  private buf = Buffer.alloc(0);
  private next = 1n;
  private readonly waiting = new Map<bigint, { len: number; resolve: (r: Answer) => void }>();

  constructor(readonly sock: net.Socket) {}

  /** Feed bytes from the server (transmission phase). */
  onData(c: Buffer): void {
    this.buf = Buffer.concat([this.buf, c]);
    while (this.buf.length >= 16) {
      assert.equal(this.buf.readUInt32BE(0), 0x67446698, 'simple reply magic');
      const error = this.buf.readUInt32BE(4);
      const cookie = this.buf.readBigUInt64BE(8);
      const w = this.waiting.get(cookie);
      assert.ok(w, `reply for unknown cookie ${cookie}`);
      const len = error ? 0 : w.len;
      if (this.buf.length < 16 + len) return;
      const data = Buffer.from(this.buf.subarray(16, 16 + len));
      this.buf = this.buf.subarray(16 + len);
      this.waiting.delete(cookie);
      w.resolve({ error, data });
    }
  }

  /** The socket closed: what was not answered stays unanswered (error -1). */
  abandon(): void {
    for (const w of this.waiting.values()) w.resolve({ error: -1, data: Buffer.alloc(0) });
    this.waiting.clear();
  }

  io(type: number, offset: number, length: number, payload?: Buffer): Promise<Answer> {
    return this.ioSplit(type, offset, length, payload).reply;
  }

  /** A request of which only the first `first` bytes are sent now; `rest()` sends the others. */
  ioSplit(type: number, offset: number, length: number, payload?: Buffer, first = Infinity): { reply: Promise<Answer>; rest: () => void } {
    const cookie = this.next++;
    const bytes = req(type, cookie, offset, length, 0, payload);
    const reply = new Promise<Answer>((resolve) => {
      this.waiting.set(cookie, { len: type === 0 /* READ */ ? length : 0, resolve });
      this.sock.write(bytes.subarray(0, Math.min(first, bytes.length)));
    });
    return { reply, rest: () => void (first < bytes.length && this.sock.write(bytes.subarray(first))) };
  }
}
