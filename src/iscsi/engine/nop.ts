// NOP-In/NOP-Out (RFC 7143 11.18, 11.19): our pings and their answers, the
// target's pings, and the keepalive that pings after a silence.

import { ProtocolError } from '../../errors';
import type { EngineClock, TimerHandle } from '../clock';
import { Opcode, RESERVED_TAG } from '../constants';
import { EMPTY, encodePduVectors, type NopInPdu } from '../pdu';
import { type EngineCore, hex32 } from './core';

/** Send a NOP-Out (immediate: it carries the current CmdSN without advancing it). */
export function sendNopOut(c: EngineCore, lun: bigint, itt: number, ttt: number, data: Buffer): void {
  c.send(encodePduVectors({
    opcode: Opcode.NOP_OUT, immediate: true, lun, itt, ttt, cmdSN: c.cmdSN, expStatSN: c.expStatSN, data,
  }, c.digests));
}

export function onNopIn(c: EngineCore, pdu: NopInPdu): void {
  c.updateWindow(pdu.expCmdSN, pdu.maxCmdSN);
  if (pdu.itt !== RESERVED_TAG) {
    const op = c.ctl.get(pdu.itt);
    if (!op || op.kind !== 'ping') throw new ProtocolError(`NOP-In for unknown ITT ${hex32(pdu.itt)} (loss of sync)`);
    c.updateStatSN(pdu.statSN);
    op.resolve(undefined);
    return;
  }
  // Unsolicited: StatSN is the next one, not advanced.
  if (pdu.ttt !== RESERVED_TAG) {
    // The target pings us: answer with its LUN and TTT (and its data).
    const data = pdu.data.length > 0 ? Buffer.from(pdu.data.subarray(0, c.params.maxXmitDataSegmentLength)) : EMPTY;
    sendNopOut(c, pdu.lun, RESERVED_TAG, pdu.ttt, data);
  }
}

/**
 * Ping the target after `intervalMs` without a PDU from it (`lastRx`, set by
 * the engine on every PDU), one ping at a time; `ping` is SessionEngine.ping,
 * whose unanswered ping kills the engine.
 */
export class Keepalive {
  lastRx: number;
  private timer: TimerHandle | undefined;

  constructor(
    private readonly c: EngineCore,
    private readonly clock: EngineClock,
    private readonly intervalMs: number,
    private readonly timeoutMs: number,
    private readonly ping: (timeoutMs: number) => Promise<void>,
  ) {
    this.lastRx = clock.now();
    if (intervalMs > 0) this.arm();
  }

  stop(): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(): void {
    this.timer = this.clock.setTimeout(() => this.tick(), this.intervalMs);
  }

  private tick(): void {
    this.timer = undefined;
    // While a logout is out, no ping; but a rejected logout leaves the
    // session in full feature phase, which must still be watched.
    if (this.c.state === 'logging-out') {
      this.arm();
      return;
    }
    if (this.c.state !== 'full-feature') return;
    const idle = this.clock.now() - this.lastRx;
    let pinging = false;
    for (const op of this.c.ctl.values()) if (op.kind === 'ping') pinging = true;
    if (idle >= this.intervalMs && !pinging) {
      this.ping(this.timeoutMs).catch(() => undefined);
    }
    this.arm();
  }
}
