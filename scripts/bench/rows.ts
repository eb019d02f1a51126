// The benchmark's rows. Data rows use the tmpfs LUN (a /dev/shm file behind tgtd's rdwr
// backing store); the "-null" rows repeat the small-block rows on tgtd's null backing
// store (no storage at all), which leaves only protocol and bridge cost.

import type { FioRw } from './fio';

export type LunKind = 'tmpfs' | 'null';

export interface RowDef {
  id: string;
  title: string;
  lun: LunKind;
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
  { id: 'seqread-1m-qd8', title: 'seq read 1M QD8', lun: 'tmpfs', rw: 'read', bs: MiB, iodepth: 8, conns: 1 },
  { id: 'seqwrite-1m-qd8', title: 'seq write 1M QD8', lun: 'tmpfs', rw: 'write', bs: MiB, iodepth: 8, conns: 1 },
  { id: 'randread-4k-qd32', title: 'rand read 4K QD32', lun: 'tmpfs', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randread-4k-qd32-null', title: 'rand read 4K QD32', lun: 'null', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randwrite-4k-qd32', title: 'rand write 4K QD32', lun: 'tmpfs', rw: 'randwrite', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randwrite-4k-qd32-null', title: 'rand write 4K QD32', lun: 'null', rw: 'randwrite', bs: 4 * KiB, iodepth: 32, conns: 1, stretch: STRETCH_RATIO },
  { id: 'randread-4k-qd1', title: 'rand read 4K QD1', lun: 'tmpfs', rw: 'randread', bs: 4 * KiB, iodepth: 1, conns: 1, stretch: STRETCH_RATIO, latencyGoal: true },
  { id: 'randread-4k-qd1-null', title: 'rand read 4K QD1', lun: 'null', rw: 'randread', bs: 4 * KiB, iodepth: 1, conns: 1, stretch: STRETCH_RATIO, latencyGoal: true },
  { id: 'randread-4k-4x32', title: 'rand read 4K 4 conns x QD32', lun: 'tmpfs', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 4, stretch: STRETCH_RATIO },
  { id: 'randread-4k-4x32-null', title: 'rand read 4K 4 conns x QD32', lun: 'null', rw: 'randread', bs: 4 * KiB, iodepth: 32, conns: 4, stretch: STRETCH_RATIO },
  { id: 'seqwrite-1m-qd128', title: 'seq write 1M QD128 (RSS)', lun: 'tmpfs', rw: 'write', bs: MiB, iodepth: 128, conns: 1, rssLimitBytes: RSS_LIMIT_BYTES },
];

/** Rows whose id matches one of the comma-separated filters (exact id, else substring). */
export function selectRows(filter: string | undefined): RowDef[] {
  if (!filter) return ROWS;
  const parts = filter.split(',').map((s) => s.trim()).filter(Boolean);
  const picked = ROWS.filter((r) => parts.some((p) => r.id === p || r.id.includes(p)));
  if (picked.length === 0) throw new Error(`--rows ${filter} matches no row; rows are: ${ROWS.map((r) => r.id).join(', ')}`);
  return picked;
}

/** iscsi-perf only reads, so only read rows have a ceiling. */
export function hasCeiling(row: RowDef): boolean {
  return row.rw === 'read' || row.rw === 'randread';
}
