// Fault injection for the embedded target (tests only; a real target never
// misbehaves on purpose). One FaultController per TargetServer, shared by
// every connection: a fault set with set() applies from the next event on,
// on existing and new connections alike. One-shot faults (drop, half PDU,
// corrupt digest, malformed PDU) are consumed by the first connection that
// meets them; counted status faults decrement across connections.

export type InjectedStatus = 'busy' | 'task-set-full' | 'unit-attention';

export type MalformedKind =
  /** A PDU with a reserved opcode (0x3c). */
  | 'bad-opcode'
  /** A SCSI Response header claiming a DataSegmentLength of 16 MiB - 1 (nothing follows). */
  | 'absurd-dsl'
  /** A SCSI Response for an ITT the initiator never used. */
  | 'unknown-itt'
  /** A header announcing an AHS longer than what is sent. */
  | 'truncated-ahs'
  /** A Data-In whose BufferOffset runs past the expected transfer length. */
  | 'bad-offset';

export interface StatusFault {
  status: InjectedStatus;
  /** Answer this many commands so (decrements); unlimited when omitted with probability. */
  count?: number;
  /** Answer with this probability instead (0..1), drawn from a seeded RNG. */
  probability?: number;
  seed?: number;
  /** Only commands with these opcodes (CDB byte 0) are affected; all by default. */
  opcodes?: number[];
  /** UNIT ATTENTION ASC/ASCQ; 29/00 (power on, reset) by default. */
  asc?: number;
  ascq?: number;
}

export interface MediumErrorRange {
  lba: number | bigint;
  /** Blocks from lba; 1 by default. */
  blocks?: number;
}

export interface FaultSpec {
  /** Destroy the connection that receives the (N+1)-th SCSI command from now (the command is not run). One-shot. */
  dropAfterCommands?: number;
  /** Write the first half of the response PDU of the (N+1)-th SCSI command from now, then destroy the socket. One-shot. */
  dropMidPduAfterCommands?: number;
  /** While true, nothing is sent (held back; released when cleared) and no command completes; the socket stays open. */
  stall?: boolean;
  /** Delay every PDU sent by this many ms (order kept). */
  delayMs?: number;
  /** Answer SCSI commands with BUSY / TASK SET FULL / UNIT ATTENTION instead of running them. */
  status?: StatusFault;
  /** READs touching these LBAs fail with MEDIUM ERROR 11/00, INFORMATION = the first bad LBA. */
  mediumErrors?: MediumErrorRange[];
  /** Refuse logins with this status (class, detail), `count` times (default: while set). */
  rejectLogin?: { statusClass: number; statusDetail: number; count?: number };
  /** Corrupt the data digest of the next Data-In that carries one (DataDigest=CRC32C connections). One-shot. */
  corruptDataDigest?: boolean;
  /** Replace the response to the next SCSI command with a malformed PDU. One-shot. */
  malformed?: MalformedKind;
  /** Do not answer NOP-Out pings (NOP-In replies are dropped). */
  ignoreNopOut?: boolean;
}

/** mulberry32: a small seeded PRNG, enough for reproducible fault schedules. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type FaultListener = (event: 'set' | 'clear') => void;

export class FaultController {
  private spec: FaultSpec = {};
  private commandsSeenDrop = 0;
  private commandsSeenHalf = 0;
  private rng: (() => number) | undefined;
  private readonly listeners = new Set<FaultListener>();
  /** Counters of faults that fired, for assertions. */
  readonly fired = { drop: 0, halfPdu: 0, status: 0, mediumError: 0, rejectLogin: 0, corruptDigest: 0, malformed: 0, asyncLogout: 0 };

  /** Merge into the active faults (a key set to undefined removes that fault). */
  set(spec: FaultSpec): void {
    this.spec = { ...this.spec, ...spec };
    for (const k of Object.keys(spec) as (keyof FaultSpec)[]) if (spec[k] === undefined) delete this.spec[k];
    if ('dropAfterCommands' in spec) this.commandsSeenDrop = 0;
    if ('dropMidPduAfterCommands' in spec) this.commandsSeenHalf = 0;
    if (spec.status) this.rng = seededRandom(spec.status.seed ?? 1);
    this.emit('set');
  }

  /** Remove every fault; held (stalled) PDUs are released. */
  clear(): void {
    this.spec = {};
    this.rng = undefined;
    this.emit('clear');
  }

  get active(): Readonly<FaultSpec> {
    return this.spec;
  }

  onChange(l: FaultListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  private emit(e: 'set' | 'clear'): void {
    for (const l of [...this.listeners]) l(e);
  }

  // ---- hooks used by the engine

  /** A SCSI command arrived: what to do with the connection. */
  onCommand(): 'drop' | 'half' | undefined {
    const s = this.spec;
    if (s.dropAfterCommands !== undefined) {
      if (this.commandsSeenDrop++ >= s.dropAfterCommands) {
        delete s.dropAfterCommands;
        this.fired.drop++;
        return 'drop';
      }
    }
    if (s.dropMidPduAfterCommands !== undefined) {
      if (this.commandsSeenHalf++ >= s.dropMidPduAfterCommands) {
        delete s.dropMidPduAfterCommands;
        this.fired.halfPdu++;
        return 'half';
      }
    }
    return undefined;
  }

  /** A status to answer instead of running the command, if any. */
  takeStatus(opcode?: number): StatusFault | undefined {
    const f = this.spec.status;
    if (!f) return undefined;
    if (f.opcodes && (opcode === undefined || !f.opcodes.includes(opcode))) return undefined;
    if (f.probability !== undefined) {
      if (f.count !== undefined && f.count <= 0) return undefined;
      if ((this.rng ?? Math.random)() >= f.probability) return undefined;
    }
    if (f.count !== undefined) {
      if (f.count <= 0) {
        delete this.spec.status;
        return undefined;
      }
      f.count--;
    }
    this.fired.status++;
    return f;
  }

  /** First bad LBA in [lba, lba+blocks), if any. */
  mediumError(lba: bigint, blocks: number): bigint | undefined {
    const list = this.spec.mediumErrors;
    if (!list || blocks === 0) return undefined;
    const end = lba + BigInt(blocks);
    let first: bigint | undefined;
    for (const r of list) {
      const s = BigInt(r.lba);
      const e = s + BigInt(r.blocks ?? 1);
      if (s < end && lba < e) {
        const hit = s > lba ? s : lba;
        if (first === undefined || hit < first) first = hit;
      }
    }
    if (first !== undefined) this.fired.mediumError++;
    return first;
  }

  takeLoginReject(): { statusClass: number; statusDetail: number } | undefined {
    const r = this.spec.rejectLogin;
    if (!r) return undefined;
    if (r.count !== undefined) {
      if (r.count <= 0) {
        delete this.spec.rejectLogin;
        return undefined;
      }
      r.count--;
    }
    this.fired.rejectLogin++;
    return { statusClass: r.statusClass, statusDetail: r.statusDetail };
  }

  takeCorruptDigest(): boolean {
    if (!this.spec.corruptDataDigest) return false;
    delete this.spec.corruptDataDigest;
    this.fired.corruptDigest++;
    return true;
  }

  takeMalformed(): MalformedKind | undefined {
    const m = this.spec.malformed;
    if (!m) return undefined;
    delete this.spec.malformed;
    this.fired.malformed++;
    return m;
  }

  get stalled(): boolean {
    return this.spec.stall === true;
  }

  get delayMs(): number {
    return this.spec.delayMs ?? 0;
  }

  get ignoreNopOut(): boolean {
    return this.spec.ignoreNopOut === true;
  }
}
