// Sense data parsing (SPC-4 4.5) and the one table that turns a SCSI status
// plus sense into what the LUN layer does next.

import { ErrorCode, ScsiError } from '../errors';
import {
  SAM_STAT_ACA_ACTIVE, SAM_STAT_BUSY, SAM_STAT_CHECK_CONDITION, SAM_STAT_CONDITION_MET, SAM_STAT_GOOD,
  SAM_STAT_RESERVATION_CONFLICT, SAM_STAT_TASK_ABORTED, SAM_STAT_TASK_SET_FULL,
} from './transport';

export const SK = {
  NO_SENSE: 0x0,
  RECOVERED_ERROR: 0x1,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  BLANK_CHECK: 0x8,
  VENDOR_SPECIFIC: 0x9,
  COPY_ABORTED: 0xa,
  ABORTED_COMMAND: 0xb,
  VOLUME_OVERFLOW: 0xd,
  MISCOMPARE: 0xe,
} as const;

const SENSE_KEY_NAMES = [
  'NO SENSE', 'RECOVERED ERROR', 'NOT READY', 'MEDIUM ERROR', 'HARDWARE ERROR', 'ILLEGAL REQUEST',
  'UNIT ATTENTION', 'DATA PROTECT', 'BLANK CHECK', 'VENDOR SPECIFIC', 'COPY ABORTED', 'ABORTED COMMAND',
  'RESERVED (0x0C)', 'VOLUME OVERFLOW', 'MISCOMPARE', 'COMPLETED',
];

export function senseKeyName(k: number): string {
  return SENSE_KEY_NAMES[k & 0x0f];
}

const STATUS_NAMES: Record<number, string> = {
  [SAM_STAT_GOOD]: 'GOOD',
  [SAM_STAT_CHECK_CONDITION]: 'CHECK CONDITION',
  [SAM_STAT_CONDITION_MET]: 'CONDITION MET',
  [SAM_STAT_BUSY]: 'BUSY',
  [SAM_STAT_RESERVATION_CONFLICT]: 'RESERVATION CONFLICT',
  [SAM_STAT_TASK_SET_FULL]: 'TASK SET FULL',
  [SAM_STAT_ACA_ACTIVE]: 'ACA ACTIVE',
  [SAM_STAT_TASK_ABORTED]: 'TASK ABORTED',
};

export function statusName(s: number): string {
  return STATUS_NAMES[s] ?? `status 0x${s.toString(16).padStart(2, '0')}`;
}

// Readable names of the ASC/ASCQ pairs a disk initiator commonly meets (SPC-4 Annex D).
// Key: asc << 8 | ascq; an entry with ascq 0xff names the whole ASC family.
const ASC_NAMES = new Map<number, string>([
  [0x0000, 'no additional sense information'],
  [0x0401, 'logical unit is in process of becoming ready'],
  [0x0402, 'logical unit not ready, initializing command required'],
  [0x0403, 'logical unit not ready, manual intervention required'],
  [0x0404, 'logical unit not ready, format in progress'],
  [0x0407, 'logical unit not ready, operation in progress'],
  [0x040a, 'logical unit not accessible, asymmetric access state transition'],
  [0x040b, 'logical unit not accessible, target port in standby state'],
  [0x040c, 'logical unit not accessible, target port in unavailable state'],
  [0x04ff, 'logical unit not ready'],
  [0x0c00, 'write error'],
  [0x0c02, 'write error - auto reallocation failed'],
  [0x1000, 'id CRC or ECC error'],
  [0x1001, 'logical block guard check failed'],
  [0x1002, 'logical block application tag check failed'],
  [0x1003, 'logical block reference tag check failed'],
  [0x1100, 'unrecovered read error'],
  [0x1104, 'unrecovered read error - auto reallocate failed'],
  [0x1400, 'recorded entity not found'],
  [0x1a00, 'parameter list length error'],
  [0x1d00, 'miscompare during verify operation'],
  [0x2000, 'invalid command operation code'],
  [0x2100, 'logical block address out of range'],
  [0x24ff, 'invalid field in CDB'],
  [0x2500, 'logical unit not supported'],
  [0x2600, 'invalid field in parameter list'],
  [0x26ff, 'invalid field in parameter list'],
  [0x2700, 'write protected'],
  [0x2701, 'hardware write protected'],
  [0x2702, 'logical unit software write protected'],
  [0x2707, 'space allocation failed write protect'],
  [0x27ff, 'write protected'],
  [0x2800, 'not ready to ready change, medium may have changed'],
  [0x2900, 'power on, reset, or bus device reset occurred'],
  [0x2901, 'power on occurred'],
  [0x2902, 'SCSI bus reset occurred'],
  [0x2903, 'bus device reset function occurred'],
  [0x2904, 'device internal reset'],
  [0x2907, 'I_T nexus loss occurred'],
  [0x29ff, 'reset occurred'],
  [0x2a01, 'mode parameters changed'],
  [0x2a03, 'reservations preempted'],
  [0x2a06, 'asymmetric access state changed'],
  [0x2a09, 'capacity data has changed'],
  [0x2aff, 'parameters changed'],
  [0x2c00, 'command sequence error'],
  [0x2f00, 'commands cleared by another initiator'],
  [0x3100, 'medium format corrupted'],
  [0x3800, 'event status notification'],
  [0x3807, 'thin provisioning soft threshold reached'],
  [0x3a00, 'medium not present'],
  [0x3aff, 'medium not present'],
  [0x3e03, 'logical unit failed self-test'],
  [0x3f01, 'microcode has been changed'],
  [0x3f03, 'inquiry data has changed'],
  [0x3f0e, 'reported LUNs data has changed'],
  [0x3fff, 'target operating conditions have changed'],
  [0x4400, 'internal target failure'],
  [0x4700, 'SCSI parity error'],
  [0x4703, 'information unit iuCRC error detected'],
  [0x4800, 'initiator detected error message received'],
  [0x4900, 'invalid message error'],
  [0x4b00, 'data phase error'],
  [0x4bff, 'data phase error'],
  [0x5500, 'system resource failure'],
  [0x5503, 'insufficient resources'],
  [0x5d00, 'failure prediction threshold exceeded'],
  [0x7471, 'logical unit access not authorized'],
]);

export function ascName(asc: number, ascq: number): string | undefined {
  return ASC_NAMES.get((asc << 8) | ascq) ?? ASC_NAMES.get((asc << 8) | 0xff);
}

function hex2(n: number): string {
  return n.toString(16).toUpperCase().padStart(2, '0');
}

export interface SenseData {
  responseCode: number;
  /** Descriptor format (0x72/0x73). */
  descriptor: boolean;
  /** The error belongs to an earlier command (0x71/0x73). */
  deferred: boolean;
  senseKey: number;
  asc: number;
  ascq: number;
  /** INFORMATION field when VALID (for media errors: the failing LBA). */
  information?: bigint;
  /** Sense-key specific bytes when SKSV is set (3 bytes, as a number). */
  senseKeySpecific?: number;
  filemark: boolean;
  eom: boolean;
  ili: boolean;
}

/**
 * Parse sense data; undefined if it is not a sense format we know.
 *
 * Fixed (0x70/0x71): 0: VALID 7, RESPONSE CODE 6-0 | 2: FILEMARK 7, EOM 6, ILI 5, SENSE KEY 3-0
 *   3-6: INFORMATION | 7: ADDITIONAL SENSE LENGTH | 8-11: COMMAND-SPECIFIC | 12: ASC | 13: ASCQ
 *   14: FRU | 15-17: SKSV 7 + SENSE KEY SPECIFIC.
 * Descriptor (0x72/0x73): 0: RESPONSE CODE | 1: SENSE KEY 3-0 | 2: ASC | 3: ASCQ
 *   7: ADDITIONAL SENSE LENGTH | 8..: descriptors (0: TYPE, 1: ADDITIONAL LENGTH); type 0x00
 *   information: 2: VALID 7, 4-11: INFORMATION; type 0x02 sense key specific: 4: SKSV 7, 4-6;
 *   type 0x04 stream commands: 3: FILEMARK 7, EOM 6, ILI 5.
 * Fields cut short by the buffer read as 0.
 */
export function parseSense(b: Buffer | undefined): SenseData | undefined {
  if (!b || b.length < 1) return undefined;
  const rc = b[0] & 0x7f;
  const at = (o: number): number => (o < b.length ? b[o] : 0);
  if (rc === 0x70 || rc === 0x71) {
    const end = Math.min(b.length, 8 + at(7));
    const sense: SenseData = {
      responseCode: rc,
      descriptor: false,
      deferred: rc === 0x71,
      senseKey: at(2) & 0x0f,
      asc: end > 12 ? at(12) : 0,
      ascq: end > 13 ? at(13) : 0,
      filemark: (at(2) & 0x80) !== 0,
      eom: (at(2) & 0x40) !== 0,
      ili: (at(2) & 0x20) !== 0,
    };
    if ((b[0] & 0x80) !== 0 && b.length >= 7) sense.information = BigInt(b.readUInt32BE(3));
    if (end >= 18 && (b[15] & 0x80) !== 0) sense.senseKeySpecific = ((b[15] & 0x7f) << 16) | (b[16] << 8) | b[17];
    return sense;
  }
  if (rc === 0x72 || rc === 0x73) {
    const sense: SenseData = {
      responseCode: rc,
      descriptor: true,
      deferred: rc === 0x73,
      senseKey: at(1) & 0x0f,
      asc: at(2),
      ascq: at(3),
      filemark: false,
      eom: false,
      ili: false,
    };
    const end = Math.min(b.length, 8 + at(7));
    let o = 8;
    while (o + 2 <= end) {
      const type = b[o];
      const dEnd = o + 2 + b[o + 1];
      if (dEnd > end) break;
      if (type === 0x00 && dEnd - o >= 12 && (b[o + 2] & 0x80) !== 0) sense.information = b.readBigUInt64BE(o + 4);
      else if (type === 0x02 && dEnd - o >= 7 && (b[o + 4] & 0x80) !== 0) {
        sense.senseKeySpecific = ((b[o + 4] & 0x7f) << 16) | (b[o + 5] << 8) | b[o + 6];
      } else if (type === 0x04 && dEnd - o >= 4) {
        sense.filemark = (b[o + 3] & 0x80) !== 0;
        sense.eom = (b[o + 3] & 0x40) !== 0;
        sense.ili = (b[o + 3] & 0x20) !== 0;
      }
      o = dEnd;
    }
    return sense;
  }
  return undefined;
}

// ------------------------------------------------------------ the table

/**
 * What to do with a command's outcome:
 * - 'success': the command did its work (GOOD, CONDITION MET, or RECOVERED ERROR: SPC says the
 *   command completed, the device merely had to recover, so its data is good - like Linux sd,
 *   unlike qemu which retries);
 * - 'retry': re-issue at once (unit attentions, which the first re-issue clears);
 * - 'retry-backoff': re-issue after a capped exponential delay (the device is busy);
 * - 'fail': give up with `code`.
 * `code` is also the error reported when retries run out.
 */
export type SenseAction = 'success' | 'retry' | 'retry-backoff' | 'fail';

export interface SenseOutcome {
  action: SenseAction;
  code: ErrorCode;
  /** At most this many retries for this outcome (further capped by the LUN's maxRetries). */
  maxRetries?: number;
  /** Short reason from the table, for logs. */
  why: string;
}

interface Rule {
  status: number;
  key?: number;
  asc?: number;
  ascq?: number;
  action: SenseAction;
  code: ErrorCode;
  maxRetries?: number;
  why: string;
}

const CC = SAM_STAT_CHECK_CONDITION;

// First match wins. A rule without key/asc/ascq matches any value of it.
const RULES: readonly Rule[] = [
  { status: SAM_STAT_GOOD, action: 'success', code: 'ESCSI_IO', why: 'good' },
  { status: SAM_STAT_CONDITION_MET, action: 'success', code: 'ESCSI_IO', why: 'condition met' },
  { status: SAM_STAT_BUSY, action: 'retry-backoff', code: 'ESCSI_RETRY', why: 'device busy' },
  { status: SAM_STAT_TASK_SET_FULL, action: 'retry-backoff', code: 'ESCSI_RETRY', why: 'task set full' },
  { status: SAM_STAT_TASK_ABORTED, action: 'retry', code: 'ESCSI_ABORTED', maxRetries: 3, why: 'task aborted' },
  { status: SAM_STAT_RESERVATION_CONFLICT, action: 'fail', code: 'ESCSI_IO', why: 'reservation conflict' },
  { status: SAM_STAT_ACA_ACTIVE, action: 'fail', code: 'ESCSI_IO', why: 'ACA active' },

  { status: CC, key: SK.RECOVERED_ERROR, action: 'success', code: 'ESCSI_IO', why: 'recovered error' },
  { status: CC, key: SK.NO_SENSE, action: 'retry', code: 'ESCSI_RETRY', why: 'no sense' },
  { status: CC, key: SK.UNIT_ATTENTION, action: 'retry', code: 'ESCSI_RETRY', why: 'unit attention' },

  { status: CC, key: SK.NOT_READY, asc: 0x3a, action: 'fail', code: 'ESCSI_NOMEDIUM', why: 'medium not present' },
  { status: CC, key: SK.NOT_READY, asc: 0x04, ascq: 0x01, action: 'retry-backoff', code: 'ESCSI_IO', why: 'becoming ready' },
  { status: CC, key: SK.NOT_READY, asc: 0x04, ascq: 0x07, action: 'retry-backoff', code: 'ESCSI_IO', why: 'operation in progress' },
  { status: CC, key: SK.NOT_READY, asc: 0x04, ascq: 0x0a, action: 'retry-backoff', code: 'ESCSI_IO', why: 'ALUA transition' },
  // This path's port went standby or unavailable: the pool stops using it, so a retry goes to another path.
  { status: CC, key: SK.NOT_READY, asc: 0x04, ascq: 0x0b, action: 'retry', code: 'ESCSI_IO', maxRetries: 5, why: 'ALUA standby port' },
  { status: CC, key: SK.NOT_READY, asc: 0x04, ascq: 0x0c, action: 'retry', code: 'ESCSI_IO', maxRetries: 5, why: 'ALUA unavailable port' },
  { status: CC, key: SK.NOT_READY, action: 'fail', code: 'ESCSI_IO', why: 'not ready' },

  { status: CC, key: SK.ABORTED_COMMAND, action: 'retry', code: 'ESCSI_ABORTED', maxRetries: 3, why: 'aborted command' },

  { status: CC, key: SK.DATA_PROTECT, asc: 0x27, ascq: 0x07, action: 'fail', code: 'ESCSI_NOSPACE', why: 'space allocation failed' },
  { status: CC, key: SK.DATA_PROTECT, asc: 0x27, action: 'fail', code: 'ESCSI_WRITE_PROTECT', why: 'write protected' },

  { status: CC, key: SK.ILLEGAL_REQUEST, asc: 0x20, ascq: 0x00, action: 'fail', code: 'ESCSI_UNSUPPORTED', why: 'invalid opcode' },
  { status: CC, key: SK.ILLEGAL_REQUEST, asc: 0x21, ascq: 0x00, action: 'fail', code: 'ESCSI_NOSPACE', why: 'LBA out of range' },
  { status: CC, key: SK.ILLEGAL_REQUEST, asc: 0x24, action: 'fail', code: 'ESCSI_INVALID', why: 'invalid field in CDB' },
  { status: CC, key: SK.ILLEGAL_REQUEST, asc: 0x26, action: 'fail', code: 'ESCSI_INVALID', why: 'invalid parameter list' },
  { status: CC, key: SK.ILLEGAL_REQUEST, asc: 0x1a, ascq: 0x00, action: 'fail', code: 'ESCSI_INVALID', why: 'parameter list length' },
  // EqualLogic says this around volume moves; a real missing LUN still fails after a few tries.
  { status: CC, key: SK.ILLEGAL_REQUEST, asc: 0x25, ascq: 0x00, action: 'retry-backoff', code: 'ESCSI_IO', maxRetries: 3, why: 'LU not supported' },

  { status: CC, key: SK.MEDIUM_ERROR, action: 'fail', code: 'ESCSI_MEDIUM', why: 'medium error' },
  { status: CC, key: SK.HARDWARE_ERROR, action: 'fail', code: 'ESCSI_MEDIUM', why: 'hardware error' },

  // Any space allocation failure, whatever key the target chose.
  { status: CC, asc: 0x27, ascq: 0x07, action: 'fail', code: 'ESCSI_NOSPACE', why: 'space allocation failed' },
];

const FALLBACK: SenseOutcome = { action: 'fail', code: 'ESCSI_IO', why: 'unexpected status' };

/**
 * Decide what to do with a command's status and sense. A deferred error (0x71/0x73) reports a
 * failure of an EARLIER command; the current one was not executed, so like Linux we retry it
 * (the caller logs the deferred error loudly).
 */
export function classify(status: number, sense?: SenseData): SenseOutcome {
  if (status === CC && sense?.deferred) return { action: 'retry', code: 'ESCSI_IO', maxRetries: 3, why: 'deferred error' };
  for (const r of RULES) {
    if (r.status !== status) continue;
    if (r.key !== undefined || r.asc !== undefined || r.ascq !== undefined) {
      if (!sense) continue;
      if (r.key !== undefined && r.key !== sense.senseKey) continue;
      if (r.asc !== undefined && r.asc !== sense.asc) continue;
      if (r.ascq !== undefined && r.ascq !== sense.ascq) continue;
    }
    return { action: r.action, code: r.code, maxRetries: r.maxRetries, why: r.why };
  }
  if (status === CC) return { action: 'fail', code: 'ESCSI_IO', why: sense ? senseKeyName(sense.senseKey).toLowerCase() : 'check condition without sense' };
  return FALLBACK;
}

/** "MEDIUM ERROR: unrecovered read error (11/00) at LBA 1234" (or "BUSY", ...). */
export function describeOutcome(status: number, sense?: SenseData): string {
  if (status !== SAM_STAT_CHECK_CONDITION || !sense) {
    return status === SAM_STAT_CHECK_CONDITION ? 'CHECK CONDITION (no sense data)' : statusName(status);
  }
  const name = ascName(sense.asc, sense.ascq);
  let s = `${senseKeyName(sense.senseKey)}: ${name ?? 'additional sense'} (${hex2(sense.asc)}/${hex2(sense.ascq)})`;
  if (sense.information !== undefined && sense.senseKey !== SK.ILLEGAL_REQUEST) s += ` at LBA ${sense.information}`;
  if (sense.deferred) s += ' [deferred]';
  return s;
}

/** The ScsiError for a failed command; `command` (e.g. "READ(10)") prefixes the message. */
export function scsiError(code: ErrorCode, status: number, sense?: SenseData, command?: string, extra?: string): ScsiError {
  let msg = describeOutcome(status, sense);
  if (command) msg = `${command}: ${msg}`;
  if (extra) msg += ` ${extra}`;
  return new ScsiError(code, msg, status, sense?.senseKey, sense?.asc, sense?.ascq);
}
