// Resource use of a server process from /proc (Linux only).
//   /proc/PID/stat: "pid (comm) state ..." - utime and stime are fields 14 and 15
//   (1-based), in clock ticks, and include every thread of the process. comm may
//   hold spaces and parentheses, so fields are counted after the LAST ')'.
//   /proc/PID/status: VmHWM (peak resident set) and VmRSS, in kB.
//   Writing "5" to /proc/PID/clear_refs resets VmHWM to the current RSS (Linux >= 4.0),
//   which gives a per-run peak in a long-lived process.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

let clkTck: number | undefined;

/** Clock ticks per second (getconf CLK_TCK; 100 on every Linux we know of). */
export function clockTicks(): number {
  if (clkTck === undefined) {
    try {
      const v = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 }).trim());
      clkTck = Number.isFinite(v) && v > 0 ? v : 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

export interface ProcSample {
  /** utime + stime in seconds. */
  cpuSec: number;
  /** VmHWM in bytes. */
  peakRssBytes: number;
  /** VmRSS in bytes. */
  rssBytes: number;
}

/** Parse the text of /proc/PID/stat; returns utime+stime in ticks. */
export function parseStatTicks(text: string): number | null {
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  // After ") " come field 3 (state) onwards; utime is field 14, stime field 15.
  const rest = text.slice(close + 2).trim().split(/\s+/);
  const utime = Number(rest[14 - 3]);
  const stime = Number(rest[15 - 3]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return utime + stime;
}

/** Parse a "Key:   1234 kB" line of /proc/PID/status; bytes, or null. */
export function parseStatusKiB(text: string, key: string): number | null {
  const m = new RegExp(`^${key}:\\s+(\\d+)\\s+kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : null;
}

/** Sample a process; null when it is gone or /proc is unreadable. */
export function sampleProc(pid: number): ProcSample | null {
  try {
    const ticks = parseStatTicks(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const hwm = parseStatusKiB(status, 'VmHWM');
    const rss = parseStatusKiB(status, 'VmRSS');
    if (ticks === null || hwm === null || rss === null) return null;
    return { cpuSec: ticks / clockTicks(), peakRssBytes: hwm, rssBytes: rss };
  } catch {
    return null;
  }
}

/** Reset the peak RSS (VmHWM) of a process; false if the kernel refused. */
export function resetPeakRss(pid: number): boolean {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}
