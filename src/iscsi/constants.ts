// iSCSI protocol constants (RFC 7143). Values are from the RFC; names follow
// its wording so a grep of the RFC finds them.

export const BHS_LENGTH = 48;
export const DIGEST_LENGTH = 4;
export const ISCSI_PORT = 3260;
/** The reserved tag value (ITT of unsolicited PDUs, TTT "none"). */
export const RESERVED_TAG = 0xffffffff;
/** MaxRecvDataSegmentLength in force until it has been negotiated (RFC 7143 13.12). */
export const DEFAULT_MAX_RECV_DSL = 8192;
export const ISCSI_VERSION = 0x00;

/** Every opcode, as plain numbers (usable at runtime, unlike const enums). */
export const Opcode = {
  NOP_OUT: 0x00,
  SCSI_COMMAND: 0x01,
  TASK_MGMT_REQUEST: 0x02,
  LOGIN_REQUEST: 0x03,
  TEXT_REQUEST: 0x04,
  DATA_OUT: 0x05,
  LOGOUT_REQUEST: 0x06,
  SNACK_REQUEST: 0x10,
  NOP_IN: 0x20,
  SCSI_RESPONSE: 0x21,
  TASK_MGMT_RESPONSE: 0x22,
  LOGIN_RESPONSE: 0x23,
  TEXT_RESPONSE: 0x24,
  DATA_IN: 0x25,
  LOGOUT_RESPONSE: 0x26,
  R2T: 0x31,
  ASYNC_MESSAGE: 0x32,
  REJECT: 0x3f,
} as const;
export type OpcodeValue = (typeof Opcode)[keyof typeof Opcode];

export const OPCODE_NAMES: Readonly<Record<number, string>> = Object.freeze(
  Object.fromEntries(Object.entries(Opcode).map(([k, v]) => [v, k])),
);

export function opcodeName(op: number): string {
  return OPCODE_NAMES[op] ?? `0x${op.toString(16).padStart(2, '0')}`;
}

// Byte 0 and byte 1 flag bits.
export const FLAG_IMMEDIATE = 0x40; // byte 0, initiator PDUs
export const OPCODE_MASK = 0x3f;
export const FLAG_FINAL = 0x80; // byte 1
export const FLAG_READ = 0x40; // SCSI Command R
export const FLAG_WRITE = 0x20; // SCSI Command W
export const ATTR_MASK = 0x07; // SCSI Command ATTR
export const FLAG_CONTINUE = 0x40; // Text/Login C
export const FLAG_TRANSIT = 0x80; // Login T
export const FLAG_ACK = 0x40; // Data-In A
export const FLAG_BIDI_OVERFLOW = 0x10; // SCSI Response o
export const FLAG_BIDI_UNDERFLOW = 0x08; // SCSI Response u
export const FLAG_OVERFLOW = 0x04; // O (SCSI Response, Data-In)
export const FLAG_UNDERFLOW = 0x02; // U (SCSI Response, Data-In)
export const FLAG_STATUS = 0x01; // Data-In S

/** SCSI Command task attributes (ATTR field). */
export const TaskAttr = {
  UNTAGGED: 0,
  SIMPLE: 1,
  ORDERED: 2,
  HEAD_OF_QUEUE: 3,
  ACA: 4,
} as const;

/** AHS types (RFC 7143 11.2.2). */
export const AhsType = {
  EXTENDED_CDB: 1,
  BIDI_READ_LENGTH: 2,
} as const;

/** SCSI Response "Response" byte. */
export const ScsiResponseCode = {
  COMMAND_COMPLETED: 0x00,
  TARGET_FAILURE: 0x01,
} as const;

/** Login stages (CSG/NSG). */
export const LoginStage = {
  SECURITY_NEGOTIATION: 0,
  OPERATIONAL_NEGOTIATION: 1,
  FULL_FEATURE_PHASE: 3,
} as const;

/** Login Response Status-Class. */
export const LoginStatusClass = {
  SUCCESS: 0x00,
  REDIRECTION: 0x01,
  INITIATOR_ERROR: 0x02,
  TARGET_ERROR: 0x03,
} as const;

/** Login Response status as (class << 8) | detail. */
export const LoginStatus = {
  SUCCESS: 0x0000,
  TARGET_MOVED_TEMPORARILY: 0x0101,
  TARGET_MOVED_PERMANENTLY: 0x0102,
  INITIATOR_ERROR: 0x0200,
  AUTHENTICATION_FAILURE: 0x0201,
  AUTHORIZATION_FAILURE: 0x0202,
  NOT_FOUND: 0x0203,
  TARGET_REMOVED: 0x0204,
  UNSUPPORTED_VERSION: 0x0205,
  TOO_MANY_CONNECTIONS: 0x0206,
  MISSING_PARAMETER: 0x0207,
  CANT_INCLUDE_IN_SESSION: 0x0208,
  SESSION_TYPE_NOT_SUPPORTED: 0x0209,
  SESSION_DOES_NOT_EXIST: 0x020a,
  INVALID_DURING_LOGIN: 0x020b,
  TARGET_ERROR: 0x0300,
  SERVICE_UNAVAILABLE: 0x0301,
  OUT_OF_RESOURCES: 0x0302,
} as const;

/** Async Message AsyncEvent codes. */
export const AsyncEvent = {
  SCSI_ASYNC_EVENT: 0,
  LOGOUT_REQUEST: 1,
  CONNECTION_DROP: 2,
  SESSION_DROP: 3,
  NEGOTIATION_REQUEST: 4,
  TASK_TERMINATION: 5,
  VENDOR_SPECIFIC: 255,
} as const;

/** Task Management function codes. */
export const TmfFunction = {
  ABORT_TASK: 1,
  ABORT_TASK_SET: 2,
  CLEAR_ACA: 3,
  CLEAR_TASK_SET: 4,
  LOGICAL_UNIT_RESET: 5,
  TARGET_WARM_RESET: 6,
  TARGET_COLD_RESET: 7,
  TASK_REASSIGN: 8,
} as const;

/** Task Management response codes. */
export const TmfResponse = {
  FUNCTION_COMPLETE: 0,
  TASK_DOES_NOT_EXIST: 1,
  LUN_DOES_NOT_EXIST: 2,
  TASK_STILL_ALLEGIANT: 3,
  TASK_ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED: 4,
  FUNCTION_NOT_SUPPORTED: 5,
  FUNCTION_AUTHORIZATION_FAILED: 6,
  FUNCTION_REJECTED: 255,
} as const;

/** Reject reason codes. */
export const RejectReason = {
  RESERVED: 0x01,
  DATA_DIGEST_ERROR: 0x02,
  SNACK_REJECT: 0x03,
  PROTOCOL_ERROR: 0x04,
  COMMAND_NOT_SUPPORTED: 0x05,
  IMMEDIATE_COMMAND_REJECT: 0x06,
  TASK_IN_PROGRESS: 0x07,
  INVALID_DATA_ACK: 0x08,
  INVALID_PDU_FIELD: 0x09,
  LONG_OPERATION_REJECT: 0x0a,
  NEGOTIATION_RESET: 0x0b,
  WAITING_FOR_LOGOUT: 0x0c,
} as const;

/** Logout Request reason codes. */
export const LogoutReason = {
  CLOSE_SESSION: 0,
  CLOSE_CONNECTION: 1,
  REMOVE_CONNECTION_FOR_RECOVERY: 2,
} as const;

/** Logout Response codes. */
export const LogoutResponseCode = {
  CLOSED_SUCCESSFULLY: 0,
  CID_NOT_FOUND: 1,
  RECOVERY_NOT_SUPPORTED: 2,
  CLEANUP_FAILED: 3,
} as const;

/** SNACK types. */
export const SnackType = {
  DATA_R2T: 0,
  STATUS: 1,
  DATA_ACK: 2,
  R_DATA: 3,
} as const;
