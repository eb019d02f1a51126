// What the SCSI layer needs from a transport (an iSCSI session, a pool of
// them, or a test double). Nothing iSCSI-specific crosses this line.

export const SAM_STAT_GOOD = 0x00;
export const SAM_STAT_CHECK_CONDITION = 0x02;
export const SAM_STAT_CONDITION_MET = 0x04;
export const SAM_STAT_BUSY = 0x08;
export const SAM_STAT_RESERVATION_CONFLICT = 0x18;
export const SAM_STAT_TASK_SET_FULL = 0x28;
export const SAM_STAT_ACA_ACTIVE = 0x30;
export const SAM_STAT_TASK_ABORTED = 0x40;

export type TaskAttribute = 'simple' | 'ordered' | 'head' | 'aca';

export interface ScsiRequest {
  lun: number;
  cdb: Buffer;
  /** Data to send to the device (WRITE, UNMAP parameter list, ...). */
  dataOut?: Buffer;
  /** Bytes expected from the device. */
  dataInLength?: number;
  /**
   * Destination for Data-In (length >= dataInLength). The read contract:
   * when given, the transport writes the data here and nowhere else, and the
   * response's `data` is `dataIn.subarray(0, received)`; the caller never
   * copies and may rely on the bytes being in place once the promise resolves.
   */
  dataIn?: Buffer;
  attr?: TaskAttribute;
  /** Per-command timeout in ms; the transport's default otherwise. */
  timeoutMs?: number;
}

export interface ScsiResponse {
  status: number;
  /** Sense data (without the 2-byte SenseLength prefix iSCSI puts before it). */
  sense?: Buffer;
  /** Data-In received: a view of length (dataInLength - underflow residual). */
  data?: Buffer;
  /** Residual count: positive for underflow, negative for overflow. */
  residual: number;
}

export interface ScsiTransport {
  /** Resolves with whatever status the device returned; rejects only on transport failure. */
  execute(req: ScsiRequest): Promise<ScsiResponse>;
  /** Largest data transfer in one command the transport accepts (e.g. MaxBurstLength-based), in bytes. */
  readonly maxTransferBytes: number;
}
