// Implicit ALUA for the embedded target: target port groups with an
// asymmetric access state each, shared by the TargetServers (ports) of one
// test array, as LIO's tg_pt_gp does. A port answers what its group's state
// allows (SPC-4 5.15.2: standby takes INQUIRY, MODE SENSE, REPORT LUNS,
// READ CAPACITY, REPORT TARGET PORT GROUPS and REQUEST SENSE only, the way
// LIO's core_alua_state_standby decides); a change of state raises
// ASYMMETRIC ACCESS STATE CHANGED (UA 2A/06).

/** SPC-4 asymmetric access state codes. */
export const ALUA = { OPTIMIZED: 0x0, NON_OPTIMIZED: 0x1, STANDBY: 0x2, UNAVAILABLE: 0x3, TRANSITIONING: 0xf } as const;

export class AluaTopology {
  private readonly groups = new Map<number, { state: number; ports: number[] }>();
  /** Bumped by every change of state (each connection gets one UA 2A/06 for it). */
  generation = 0;

  /** Add a group, or change its state. */
  set(group: number, state: number, ports?: number[]): void {
    const g = this.groups.get(group);
    if (g) {
      if (g.state !== state) this.generation++;
      g.state = state;
      if (ports) g.ports = ports;
    } else {
      this.groups.set(group, { state, ports: ports ?? [] });
    }
  }

  stateOf(group: number): number {
    return this.groups.get(group)?.state ?? ALUA.UNAVAILABLE;
  }

  /** REPORT TARGET PORT GROUPS parameter data (SPC-4 6.36), extended header when asked. */
  report(extended: boolean): Buffer {
    const descs: Buffer[] = [];
    for (const [id, g] of [...this.groups].sort((a, b) => a[0] - b[0])) {
      const d = Buffer.alloc(8 + 4 * g.ports.length);
      d[0] = g.state & 0x0f;
      d[1] = 0x80 | 0x08 | 0x04 | 0x02 | 0x01; // T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP
      d.writeUInt16BE(id, 2);
      d[5] = 0x02; // altered by implicit ALUA
      d[7] = g.ports.length;
      g.ports.forEach((p, i) => d.writeUInt16BE(p, 8 + 4 * i + 2));
      descs.push(d);
    }
    const head = Buffer.alloc(extended ? 8 : 4);
    if (extended) {
      head[4] = 0x10; // FORMAT TYPE 1
      head[5] = 10; // IMPLICIT TRANSITION TIME, s
    }
    const b = Buffer.concat([head, ...descs]);
    b.writeUInt32BE(b.length - 4, 0);
    return b;
  }
}

/** Where one port (TargetServer) sits in a topology. */
export interface AluaPort {
  topology: AluaTopology;
  group: number;
  relativePort: number;
}

const INQUIRY = 0x12;
const REQUEST_SENSE = 0x03;
const MODE_SENSE_6 = 0x1a;
const MODE_SENSE_10 = 0x5a;
const READ_CAPACITY_10 = 0x25;
const SERVICE_ACTION_IN_16 = 0x9e;
const REPORT_LUNS = 0xa0;
const MAINTENANCE_IN = 0xa3;

/** The ASCQ of NOT READY 04/xx a command gets on this port now, or undefined when it may run. */
export function aluaRefusal(port: AluaPort, cdb: Buffer): number | undefined {
  const state = port.topology.stateOf(port.group);
  if (state === ALUA.OPTIMIZED || state === ALUA.NON_OPTIMIZED) return undefined;
  const op = cdb[0];
  const always = op === INQUIRY || op === REQUEST_SENSE || op === REPORT_LUNS || (op === MAINTENANCE_IN && (cdb[1] & 0x1f) === 0x0a);
  if (always) return undefined;
  if (state === ALUA.STANDBY) {
    const readCapacity = op === READ_CAPACITY_10 || (op === SERVICE_ACTION_IN_16 && (cdb[1] & 0x1f) === 0x10);
    if (op === MODE_SENSE_6 || op === MODE_SENSE_10 || readCapacity) return undefined;
    return 0x0b;
  }
  return state === ALUA.TRANSITIONING ? 0x0a : 0x0c;
}
