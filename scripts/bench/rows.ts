// The benchmark's rows. Data rows use the tmpfs LUN (a /dev/shm file behind tgtd's rdwr
// backing store); the "-null" rows repeat the small-block rows on tgtd's null backing
// store (no storage at all), which leaves only protocol and bridge cost.
// The "-unix" rows repeat the workloads that matter for `iscsi-nbd map` (the kernel talks
// to the daemon over a unix socketpair) with NBD over an AF_UNIX socket instead of
// loopback TCP: iscsi-nbd serve --listen unix:PATH against qemu-nbd -k PATH, fio's nbd
// engine on nbd+unix:///bench?socket=PATH. They run on both LUNs, 1M rows included.

import type { FioRw } from './fio';

export type LunKind = 'tmpfs' | 'null';

/** How fio reaches the NBD servers: loopback TCP or an AF_UNIX socket. */
export type Transport = 'tcp' | 'unix';
export const TRANSPORTS: readonly Transport[] = ['tcp', 'unix'];

export interface RowDef {
  id: string;
  title: string;
  lun: LunKind;
  transport: Transport;
  rw: FioRw;
  bs: number;
  /** Queue depth per connection. */
  iodepth: number;
  /** NBD connections (fio jobs). */
  conns: number;
  /** Stretch goal for the ratio (4 KiB random rows). */
  stretch?: number;
  /** QD1 rows: our p99 must not exceed qemu-nbd's. */
  latencyGoal?: boolean;
  /** Peak RSS limit of the bridge on this row, bytes. */
  rssLimitBytes?: number;
}

const KiB = 1024;
const MiB = 1024 * 1024;

/** Every row must reach at least this ratio to qemu-nbd. */
export const RATIO_GOAL = 1.0;
export const STRETCH_RATIO = 1.25;
export const RSS_LIMIT_BYTES = 200 * MiB;

export const ROWS: RowDef[] = [
  { id: 'seqread-1m-qd8', title: 'seq read 1M QD8', lun: 'tmpfs', transport: 'tcp', rw: 'read', bs: MiB, iodepth: 8, conns: 1 },
  { id: 'seqwrite-1m-qd8', title: 'seq write 1M QD8', lun: 'tmpfs', transport: 'tcp', rw: 'write', bs: MiB, iodepth: 8, conns: 1 },
  { id: 'randread-4k-qd32', title: 'rand read 4K QD32', lun: 'tmpfs', transport: 'tcp', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randread-4k-qd32-null', title: 'rand read 4K QD32', lun: 'null', transport: 'tcp', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randwrite-4k-qd32', title: 'rand write 4K QD32', lun: 'tmpfs', transport: 'tcp', rw: 'randwrite', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randwrite-4k-qd32-null', title: 'rand write 4K QD32', lun: 'null', transport: 'tcp', rw: 'randwrite', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randread-4k-qd1', title: 'rand read 4K QD1', lun: 'tmpfs', transport: 'tcp', rw: 'randread', bs: 4 * KiB, iodepth: 1, conns: 1, stretch: STRETCH_RATIO, latencyGoal: true },
  { id: 'randread-4k-qd1-null', title: 'rand read 4K QD1', lun: 'null', transport: 'tcp', rw: 'randread', bs: 4 * KiB, iodepth: 1, conns: 1, stretch: STRETCH_RATIO, latencyGoal: true },
  { id: 'randread-4k-4x32', title: 'rand read 4K 4 conns x QD32', lun: 'tmpfs', transport: 'tcp', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 4, stretch: STRETCH_RATIO },
  { id: 'randread-4k-4x32-null', title: 'rand read 4K 4 conns x QD32', lun: 'null', transport: 'tcp', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 4, stretch: STRETCH_RATIO },
  { id: 'seqwrite-1m-qd128', title: 'seq write 1M QD128 (RSS)', lun: 'tmpfs', transport: 'tcp', rw: 'write', bs: MiB, iodepth: 128, conns: 1, rssLimitBytes: RSS_LIMIT_BYTES },
  // NBD over AF_UNIX (the transport of iscsi-nbd map).
  { id: 'seqread-1m-qd8-unix', title: 'seq read 1M QD8', lun: 'tmpfs', transport: 'unix', rw: 'read', bs: MiB, iodepth: 8, conns: 1 },
  { id: 'seqread-1m-qd8-null-unix', title: 'seq read 1M QD8', lun: 'null', transport: 'unix', rw: 'read', bs: MiB, iodepth: 8, conns: 1 },
  { id: 'seqwrite-1m-qd8-unix', title: 'seq write 1M QD8', lun: 'tmpfs', transport: 'unix', rw: 'write', bs: MiB, iodepth: 8, conns: 1 },
  { id: 'seqwrite-1m-qd8-null-unix', title: 'seq write 1M QD8', lun: 'null', transport: 'unix', rw: 'write', bs: MiB, iodepth: 8, conns: 1 },
  { id: 'randread-4k-qd32-unix', title: 'rand read 4K QD32', lun: 'tmpfs', transport: 'unix', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randread-4k-qd32-null-unix', title: 'rand read 4K QD32', lun: 'null', transport: 'unix', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randwrite-4k-qd32-unix', title: 'rand write 4K QD32', lun: 'tmpfs', transport: 'unix', rw: 'randwrite', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randwrite-4k-qd32-null-unix', title: 'rand write 4K QD32', lun: 'null', transport: 'unix', rw: 'randwrite', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randread-4k-qd1-unix', title: 'rand read 4K QD1', lun: 'tmpfs', transport: 'unix', rw: 'randread', bs: 4 * KiB, iodepth: 1, conns: 1, stretch: STRETCH_RATIO, latencyGoal: true },
  { id: 'randread-4k-qd1-null-unix', title: 'rand read 4K QD1', lun: 'null', transport: 'unix', rw: 'randread', bs: 4 * KiB, iodepth: 1, conns: 1, stretch: STRETCH_RATIO, latencyGoal: true },
  { id: 'randwrite-4k-qd1-unix', title: 'rand write 4K QD1', lun: 'tmpfs', transport: 'unix', rw: 'randwrite', bs: 4 * KiB, iodepth: 1, conns: 1, stretch: STRETCH_RATIO, latencyGoal: true },
  { id: 'randwrite-4k-qd1-null-unix', title: 'rand write 4K QD1', lun: 'null', transport: 'unix', rw: 'randwrite', bs: 4 * KiB, iodepth: 1, conns: 1, stretch: STRETCH_RATIO, latencyGoal: true },
];

/**
 * Rows whose id matches one of the comma-separated filters (exact id or substring),
 * optionally only those over one transport (--transport).
 */
export function selectRows(filter: string | undefined, transport?: Transport | null): RowDef[] {
  const pool = transport ? ROWS.filter((r) => r.transport === transport) : ROWS;
  if (!filter) return pool;
  const parts = filter.split(',').map((s) => s.trim()).filter(Boolean);
  const picked = pool.filter((r) => parts.some((p) => r.id === p || r.id.includes(p)));
  if (picked.length === 0) {
    throw new Error(`--rows ${filter}${transport ? ` --transport ${transport}` : ''} matches no row; rows are: ${pool.map((r) => r.id).join(', ')}`);
  }
  return picked;
}

/** The row's label in tables: its title, plus " (unix)" for NBD over AF_UNIX. */
export function rowLabel(row: { title: string; transport?: Transport }): string {
  return row.transport === 'unix' ? `${row.title} (unix)` : row.title;
}

/** iscsi-perf only reads, so only read rows have a ceiling. */
export function hasCeiling(row: RowDef): boolean {
  return row.rw === 'read' || row.rw === 'randread';
}
