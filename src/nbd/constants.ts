// NBD protocol constants (NetworkBlockDevice/nbd doc/proto.md).

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server, 16 bits) and client flags (32 bits).
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags (16 bits).
export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;
export const FLAG_ROTATIONAL = 1 << 4;
export const FLAG_SEND_TRIM = 1 << 5;
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const FLAG_SEND_DF = 1 << 7;
export const FLAG_CAN_MULTI_CONN = 1 << 8;
export const FLAG_SEND_RESIZE = 1 << 9;
export const FLAG_SEND_CACHE = 1 << 10;
export const FLAG_SEND_FAST_ZERO = 1 << 11;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_PEEK_EXPORT = 4;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;
export const OPT_EXTENDED_HEADERS = 11;

export const OPT_NAMES: Record<number, string> = {
  1: 'EXPORT_NAME', 2: 'ABORT', 3: 'LIST', 4: 'PEEK_EXPORT', 5: 'STARTTLS', 6: 'INFO', 7: 'GO',
  8: 'STRUCTURED_REPLY', 9: 'LIST_META_CONTEXT', 10: 'SET_META_CONTEXT', 11: 'EXTENDED_HEADERS',
};

// Option reply types.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
const ERR = 0x80000000;
export const REP_ERR_UNSUP = ERR + 1;
export const REP_ERR_POLICY = ERR + 2;
export const REP_ERR_INVALID = ERR + 3;
export const REP_ERR_PLATFORM = ERR + 4;
export const REP_ERR_TLS_REQD = ERR + 5;
export const REP_ERR_UNKNOWN = ERR + 6;
export const REP_ERR_SHUTDOWN = ERR + 7;
export const REP_ERR_BLOCK_SIZE_REQD = ERR + 8;
export const REP_ERR_TOO_BIG = ERR + 9;

// NBD_REP_INFO types.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// Commands.
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

export const CMD_NAMES: Record<number, string> = {
  0: 'READ', 1: 'WRITE', 2: 'DISC', 3: 'FLUSH', 4: 'TRIM', 5: 'CACHE', 6: 'WRITE_ZEROES', 7: 'BLOCK_STATUS',
};

// Command flags.
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types.
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = (1 << 15) + 1;
export const REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// base:allocation state flags: the Export interface's extent flags.
export { EXTENT_HOLE as STATE_HOLE, EXTENT_ZERO as STATE_ZERO } from '../bridge/export';

export const META_BASE_ALLOCATION = 'base:allocation';

export const NBD_DEFAULT_PORT = 10809;

// Fixed sizes.
export const OPTION_HEADER_SIZE = 16;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_HEADER_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
/** Longest string the spec allows (export names, error messages). */
export const MAX_STRING = 4096;
