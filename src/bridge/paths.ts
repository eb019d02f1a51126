// Which portal and interface each session of a target uses (paths bound to interfaces).

export interface Portal {
  host: string;
  port: number;
}

/** Where one session goes: a portal, and the interface it leaves through (none: the routing table's). */
export interface SessionPath {
  portal: Portal;
  iface?: string;
}

/**
 * The paths of an export, as open-iscsi makes them: one per interface per
 * portal (portals × ifaces, portal by portal), or one per portal without
 * interfaces.
 */
export function sessionPaths(portals: readonly Portal[], ifaces: readonly string[] | undefined): SessionPath[] {
  if (!ifaces || ifaces.length === 0) return portals.map((portal) => ({ portal }));
  return portals.flatMap((portal) => ifaces.map((iface) => ({ portal, iface })));
}

/** Sessions to open: `sessions` is a minimum; every path gets at least one. */
export function sessionCount(paths: readonly SessionPath[], sessions: number): number {
  return Math.max(1, sessions, paths.length);
}

/** The path of session `index`: round robin over the paths. */
export function pathOfSession(paths: readonly SessionPath[], index: number): SessionPath {
  return paths[index % paths.length];
}

