import type { BridgedExport, ExportManager, ResizeOutcome } from '../bridge/manager';
import type { NbdConnectionInfo } from '../nbd/server';
import type { ExportStatus, SessionStatus } from '../bridge/status';

export type { ExportStatus, SessionStatus, NegotiatedStatus } from '../bridge/status';

// The daemon's status document: what `iscsi-nbd status` prints, what the
// control socket answers and what /readyz details. One typed shape.

export interface ClientStatus {
  id: number;
  remote: string;
  state: string;
  exportName?: string;
  tls: boolean;
  structuredReplies?: boolean;
  inFlight: number;
  requests: number;
  errors: number;
  bytesRead: number;
  bytesWritten: number;
}

/** A kernel NBD device this daemon serves (`iscsi-nbd map`). */
export interface MappingStatus {
  device: string;
  index: number;
  url: string;
  export: string;
  identity: string;
  blockSize: number;
  size: string;
  connections: number;
  readOnly: boolean;
  state: string;
  /**
   * How its kernel sockets came: `new` (made when it was mapped), `reattached`
   * (fresh ones with NBD_CMD_RECONFIGURE after the old ones died or a stop),
   * `adopted` (the last daemon's, kept in systemd's fd store across a restart).
   */
  attach?: 'new' | 'reattached' | 'adopted';
  /** Why it is not attached, when it is not. */
  error?: string;
  /** The LUN's iSCSI sessions (login details, negotiated digests), while it is open. */
  sessions?: SessionStatus[];
}

export interface DaemonStatus {
  /** iscsi-nbd's version (package.json). */
  version?: string;
  /** When the daemon's process started (ISO 8601). */
  startedAt?: string;
  pid: number;
  initiatorName: string;
  stateDir?: string;
  listen: string[];
  exports: ExportStatus[];
  clients: ClientStatus[];
  mappings?: MappingStatus[];
}

/** One export, with each session's login details (like iscsiadm -m session -P 3). */
export function exportStatus(e: BridgedExport): ExportStatus {
  const st = e.status();
  const sessions = st.sessions.map((ss, i): SessionStatus => {
    const s = e.sessions[i];
    const n = s?.negotiated;
    if (!s) return ss;
    return {
      ...ss,
      isid: s.isid.toString(16).padStart(12, '0'),
      tsih: n?.tsih,
      negotiated: n && {
        headerDigest: n.headerDigest ? 'CRC32C' : 'None',
        dataDigest: n.dataDigest ? 'CRC32C' : 'None',
        maxRecvDataSegmentLength: n.maxRecvDataSegmentLength,
        maxXmitDataSegmentLength: n.maxXmitDataSegmentLength,
        firstBurstLength: n.firstBurstLength,
        maxBurstLength: n.maxBurstLength,
        immediateData: n.immediateData,
        initialR2T: n.initialR2T,
        maxOutstandingR2T: n.maxOutstandingR2T,
        targetPortalGroupTag: n.targetPortalGroupTag,
        chap: n.chapAlgorithm ? (n.mutualAuthenticated ? 'mutual' : 'one-way') : 'none',
      },
    };
  });
  return { ...st, sessions };
}

export function exportsStatus(manager: ExportManager): ExportStatus[] {
  return [...manager.exports.values()].map(exportStatus);
}

export function clientStatus(c: NbdConnectionInfo): ClientStatus {
  return {
    id: c.id, remote: c.remote, state: c.state, exportName: c.exportName, tls: c.tls, structuredReplies: c.structuredReplies,
    inFlight: c.inFlight, requests: c.requests, errors: c.errors, bytesRead: c.bytesRead, bytesWritten: c.bytesWritten,
  };
}

/** One device's or export's rescan (`iscsi-nbd resize`): sizes in bytes, as strings. */
export type ResizeResult = ResizeOutcome & { device?: string };
