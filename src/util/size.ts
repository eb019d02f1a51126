// Byte counts for people: binary units, one decimal.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/**
 * `n` bytes in binary units: "512 B", "1.5 MiB". Whole numbers keep their
 * ".0" ("8.0 MiB", steady width for progress lines) unless `trim` is set
 * ("8 MiB", for listings).
 */
export function humanBytes(n: number | bigint, opts: { trim?: boolean } = {}): string {
  let v = Number(n);
  let i = 0;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0 || (opts.trim && v % 1 === 0)) return `${i === 0 ? v.toFixed(0) : v} ${UNITS[i]}`;
  return `${v.toFixed(1)} ${UNITS[i]}`;
}
