import { readControl } from '../daemon/control';
import type { DaemonStatus } from '../daemon/status';
import { parseIscsiUrl } from '../iscsi/url';

// Is the LUN a copy is about to touch also served by a running iscsi-nbd
// daemon on this host? Asked of the daemon's control socket; a daemon that
// does not answer (none running, a stale socket, a hang) counts as none.

export interface ServedBy {
  control: string;
  pid?: number;
  /** What serves it: `export "db" (iscsi://…)` or `/dev/nbd0 (iscsi://…)`, URLs redacted. */
  uses: string[];
}

const sameName = (a: string, b: string): boolean => a.trim().toLowerCase() === b.trim().toLowerCase();

/** Target IQN and LUN number of an iscsi:// URL (LUN 0 when it names none), or undefined. */
function targetLun(url: string): { target: string; lun: number } | undefined {
  try {
    const u = parseIscsiUrl(url);
    return u.target ? { target: u.target, lun: u.lun ?? 0 } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The daemon's exports (and kernel NBD mappings) with the same target IQN
 * and LUN number as `lunUrl`, whatever the portal; undefined when no daemon
 * answers or none match.
 */
export async function servedByDaemon(controlPath: string, lunUrl: string, timeoutMs = 3000): Promise<ServedBy | undefined> {
  const want = targetLun(lunUrl);
  if (!want) return undefined;
  let st: Partial<DaemonStatus>;
  try {
    st = (await readControl(controlPath, timeoutMs)) as Partial<DaemonStatus>;
  } catch {
    return undefined;
  }
  if (!st || typeof st !== 'object') return undefined;
  const uses: string[] = [];
  for (const e of Array.isArray(st.exports) ? st.exports : []) {
    if (typeof e?.target === 'string' && sameName(e.target, want.target) && Number(e.lun) === want.lun) {
      uses.push(`export "${e.name}"${e.url ? ` (${e.url})` : ''}`);
    }
  }
  for (const m of Array.isArray(st.mappings) ? st.mappings : []) {
    const t = typeof m?.url === 'string' ? targetLun(m.url) : undefined;
    if (t && sameName(t.target, want.target) && t.lun === want.lun) uses.push(`${m.device} (${m.url})`);
  }
  if (uses.length === 0) return undefined;
  return { control: controlPath, pid: typeof st.pid === 'number' ? st.pid : undefined, uses };
}
