import type { Argv, CommandModule } from 'yargs';
import { readControl } from '../daemon/control';
import { defaultControlPath } from '../daemon/paths';
import type { DaemonStatus, SessionStatus, TargetStatus } from '../daemon/status';
import { renderMappings } from './map';

export function options<T>(y: Argv<T>) {
  return y
    .option('control', { type: 'string', describe: 'the daemon\'s control socket (default: the one `serve` uses)' })
    .option('json', { type: 'boolean', default: false, describe: 'print the raw JSON document' });
}

/** Each session's login details, like `iscsiadm -m session -P 3`. */
function renderSessions(out: string[], sessions: SessionStatus[]): void {
  for (const ss of sessions) {
    out.push(`\t\tSession #${ss.index}: ${ss.state}`);
    if (ss.refused) out.push(`\t\t\tREFUSED: ${ss.refused}`);
    out.push(`\t\t\tPortal: ${ss.portal ?? '?'}${ss.negotiated?.targetPortalGroupTag !== undefined ? `,${ss.negotiated.targetPortalGroupTag}` : ''}`);
    if (ss.iface !== undefined) out.push(`\t\t\tInterface: ${ss.iface}`);
    if (ss.isid !== undefined) out.push(`\t\t\tISID: ${ss.isid}  TSIH: ${ss.tsih ?? '-'}`);
    out.push(`\t\t\tCommands in flight: ${ss.inFlight}` +
      (ss.window !== undefined ? `  CmdSN ${ss.cmdSn}  MaxCmdSN ${ss.maxCmdSn}  window ${ss.window}` : ''));
    out.push(`\t\t\tReconnects: ${ss.reconnects ?? 0}  Digest errors: ${ss.digestErrors ?? 0}`);
    const n = ss.negotiated;
    if (n) {
      out.push(`\t\t\tNegotiated: HeaderDigest ${n.headerDigest}  DataDigest ${n.dataDigest}  CHAP ${n.chap}`);
      out.push(`\t\t\t\tMaxRecvDataSegmentLength ${n.maxRecvDataSegmentLength}  MaxXmitDataSegmentLength ${n.maxXmitDataSegmentLength}`);
      out.push(`\t\t\t\tFirstBurstLength ${n.firstBurstLength}  MaxBurstLength ${n.maxBurstLength}  MaxOutstandingR2T ${n.maxOutstandingR2T}`);
      out.push(`\t\t\t\tImmediateData ${n.immediateData ? 'Yes' : 'No'}  InitialR2T ${n.initialR2T ? 'Yes' : 'No'}`);
    }
  }
}

/**
 * A LUN's paths over its pool's sessions: their state, and this LUN's ALUA
 * state on each (the sessions themselves are shown once, under their target).
 */
function renderPaths(out: string[], indent: string, pool: string, sessions: SessionStatus[]): void {
  out.push(`${indent}Pool: ${pool} (sessions under Targets)`);
  for (const ss of sessions) {
    const alua = ss.alua ? `  ALUA ${ss.alua.state}${ss.alua.group !== undefined ? ` (group ${ss.alua.group})` : ''}` : '';
    out.push(`${indent}\tPath #${ss.index}: ${ss.state}  ${ss.portal ?? '?'}${ss.iface !== undefined ? ` via ${ss.iface}` : ''}${alua}`);
    if (ss.refused) out.push(`${indent}\t\tREFUSED: ${ss.refused}`);
  }
}

function renderTargets(out: string[], targets: TargetStatus[]): void {
  out.push('', 'Targets:');
  for (const t of targets) {
    out.push(`\tTarget: ${t.target}`, `\t\tPool: ${t.id}`, `\t\tPortals: ${t.portals.join(', ')}${t.ifaces ? `  Interfaces: ${t.ifaces.join(', ')}` : ''}`);
    out.push(`\t\tLUNs: ${t.luns.length ? t.luns.join(', ') : 'none'}`);
    out.push(`\t\tiSCSI sessions: ${t.sessions.length}`);
    const lines: string[] = [];
    renderSessions(lines, t.sessions);
    for (const l of lines) out.push(`\t${l}`);
  }
}

export function render(s: DaemonStatus): string {
  const out: string[] = [];
  out.push(`iscsi-nbd ${s.version ? `${s.version}, ` : ''}pid ${s.pid}${s.startedAt ? `, started ${s.startedAt}` : ''}, initiator ${s.initiatorName}`);
  out.push(`Listening: ${s.listen.length ? s.listen.join(', ') : 'none (no NBD listener: the daemon serves mapped devices only)'}`);
  for (const e of s.exports) {
    out.push('');
    out.push(`Export: ${e.name} (${e.state})`);
    if (e.error) out.push(`\tError: ${e.error}`);
    if (e.nextRetryInMs !== undefined) {
      out.push(`\tRetrying: attempt ${(e.failedAttempts ?? 0) + 1} ${e.retryingNow ? 'now' : `in ${Math.ceil(e.nextRetryInMs / 1000)} s`}`);
    }
    out.push(`\tTarget: ${e.target}, LUN ${e.lun}`);
    out.push(`\tURL: ${e.url}`);
    if (e.size) out.push(`\tSize: ${e.size} bytes, block size ${e.blockSize}, ${e.vendor ?? ''} ${e.product ?? ''}`.trimEnd());
    if (e.flags) out.push(`\tFlags: ${Object.entries(e.flags).filter(([, v]) => v).map(([k]) => k).join(' ')}`);
    if (e.counters) out.push(`\tRequests: ${e.counters.requests} (${e.counters.errors} failed), read ${e.counters.bytesRead} B, written ${e.counters.bytesWritten} B, in flight ${e.inFlight}, queued ${e.queued}`);
    if (e.movedCommands) out.push(`\tCommands moved to another path: ${e.movedCommands}`);
    if (e.pool && s.targets) renderPaths(out, '\t', e.pool, e.sessions);
    else {
      out.push(`\tiSCSI sessions: ${e.sessions.length}`);
      renderSessions(out, e.sessions);
    }
    const clients = s.clients.filter((c) => c.exportName === e.name);
    out.push(`\tNBD clients: ${clients.length}`);
    for (const c of clients) {
      out.push(`\t\tClient #${c.id}: ${c.remote} ${c.state}${c.tls ? ' tls' : ''}${c.structuredReplies ? ' structured' : ''}`);
      out.push(`\t\t\tRequests ${c.requests} (${c.errors} failed), in flight ${c.inFlight}, read ${c.bytesRead} B, written ${c.bytesWritten} B`);
    }
  }
  if (s.mappings?.length) {
    out.push('', `Mapped devices (state dir ${s.stateDir ?? '?'}):`);
    for (const line of renderMappings(s.mappings).trimEnd().split('\n')) out.push(`\t${line}`);
    for (const m of s.mappings) {
      if (m.error) out.push(`\t${m.device}: ${m.error}`);
      if (!m.sessions) continue;
      if (m.pool && s.targets) {
        out.push(`\t${m.device}:`);
        renderPaths(out, '\t\t', m.pool, m.sessions);
        continue;
      }
      out.push(`\t${m.device}: iSCSI sessions: ${m.sessions.length}`);
      renderSessions(out, m.sessions);
    }
  }
  if (s.targets?.length) renderTargets(out, s.targets);
  const negotiating = s.clients.filter((c) => !c.exportName);
  if (negotiating.length) out.push('', `Clients still negotiating: ${negotiating.length}`);
  return out.join('\n') + '\n';
}

export async function run(argv: { control?: string; json: boolean }): Promise<void> {
  const s = (await readControl(argv.control ?? defaultControlPath())) as DaemonStatus;
  process.stdout.write(argv.json ? JSON.stringify(s, null, 2) + '\n' : render(s));
}

export const statusCommand: CommandModule<object, { control?: string; json: boolean }> = {
  command: 'status',
  describe: "show the running daemon's exports, NBD clients and iSCSI sessions",
  builder: (y) => options(y) as unknown as Argv<{ control?: string; json: boolean }>,
  handler: (argv) => run(argv),
};
