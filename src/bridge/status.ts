import type { ExportFlags } from './export';

// The shape of one export's status, as the daemon reports it.

export interface NegotiatedStatus {
  headerDigest: 'CRC32C' | 'None';
  dataDigest: 'CRC32C' | 'None';
  maxRecvDataSegmentLength: number;
  maxXmitDataSegmentLength: number;
  firstBurstLength: number;
  maxBurstLength: number;
  immediateData: boolean;
  initialR2T: boolean;
  maxOutstandingR2T: number;
  targetPortalGroupTag?: number;
  chap: 'none' | 'one-way' | 'mutual';
}

export interface SessionStatus {
  index: number;
  state: string;
  inFlight: number;
  portal?: string;
  /** The network interface (or source address) the session leaves through; absent: the routing table's choice. */
  iface?: string;
  reconnects?: number;
  digestErrors?: number;
  cmdSn?: number;
  expStatSn?: number;
  maxCmdSn?: number;
  window?: number;
  isid?: string;
  tsih?: number;
  negotiated?: NegotiatedStatus;
  /** Why the session refuses its target (the LUN identity changed). */
  refused?: string;
  /** The path's asymmetric access state (ALUA), when the target reports one. */
  alua?: { state: string; group?: number; relativePort?: number };
}

/** One target's pool of sessions, shared by its LUNs. */
export interface TargetStatus {
  /** How exports and devices name the pool (`pool`): target@portals. */
  id: string;
  target: string;
  portals: string[];
  ifaces?: string[];
  /** The exports and mapped devices (map:NAME) that use it. */
  luns: string[];
  sessions: SessionStatus[];
}

export interface ExportStatus {
  name: string;
  /** The target pool whose sessions it uses (see TargetStatus.id). */
  pool?: string;
  /** starting, ready, degraded, recovering, failed, draining or closed (see ExportState). */
  state: string;
  /** Why it is failed (or why the last open attempt failed). */
  error?: string;
  /** Failed open attempts in a row, while failed. */
  failedAttempts?: number;
  /** Milliseconds until the next open attempt, while failed and retrying. */
  nextRetryInMs?: number;
  /** An open attempt of the retrying is running now (nextRetryInMs is then 0). */
  retryingNow?: boolean;
  url: string;
  target: string;
  lun: number;
  size: string | null;
  blockSize: number | null;
  vendor: string | null;
  product: string | null;
  flags: ExportFlags | null;
  clients: number;
  inFlight: number;
  queued: number;
  movedCommands?: number;
  counters: { requests: number; errors: number; bytesRead: number; bytesWritten: number } | null;
  sessions: SessionStatus[];
}
