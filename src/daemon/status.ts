import type { BridgedExport, ExportManager, ResizeOutcome } from '../bridge/manager';
import type { NbdConnectionInfo } from '../nbd/server';
import type { ExportStatus, SessionStatus, TargetStatus } from '../bridge/status';
import type { TargetRegistry } from '../bridge/targets';

export type { ExportStatus, SessionStatus, NegotiatedStatus, TargetStatus } from '../bridge/status';

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
  /** The target pool whose sessions the LUN uses (see DaemonStatus.targets). */
  pool?: string;
  /** The LUN's paths over that pool's sessions (login details, negotiated digests, ALUA), while it is open. */
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
  /** The session pools, one per target: every export and device of a target uses its pool. */
  targets?: TargetStatus[];
}

/** A session's login details (like iscsiadm -m session -P 3) on top of what its pool says of it. */
function sessionDetail(ss: SessionStatus, s: BridgedExport['sessions'][number] | undefined): SessionStatus {
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
}

/** One export; its sessions are its paths over its target's pool (with this LUN's ALUA state). */
export function exportStatus(e: BridgedExport): ExportStatus {
  const st = e.status();
  return { ...st, sessions: st.sessions.map((ss, i) => sessionDetail(ss, e.sessions[i])) };
}

/** Every target pool, with its sessions and the LUNs that use it. */
export function targetsStatus(reg: TargetRegistry): TargetStatus[] {
  return reg.list().map((t) => ({
    id: t.id,
    target: t.target,
    portals: t.portals.map((p) => (p.host.includes(':') ? `[${p.host}]:${p.port}` : `${p.host}:${p.port}`)),
    ...(t.ifaces ? { ifaces: t.ifaces } : {}),
    luns: t.luns,
    sessions: t.sessionStatus().map((ss, i) => sessionDetail(ss, t.sessions[i])),
  }));
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
