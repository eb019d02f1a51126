// Resource use of a server process from /proc (Linux only).
//   /proc/PID/stat: "pid (comm) state ..." - utime and stime are fields 14 and 15
//   (1-based), in clock ticks, and include every thread of the process. comm may
//   hold spaces and parentheses, so fields are counted after the LAST ')'.
//   /proc/PID/status: VmHWM (peak resident set) and VmRSS, in kB.
//   Writing "5" to /proc/PID/clear_refs resets VmHWM to the current RSS (Linux >= 4.0),
//   which gives a per-run peak in a long-lived process.
//   /proc/PID/net/tcp and tcp6 (the TCP sockets of the process's network namespace):
//   "sl local_address rem_address st ... inode", addresses as HEXIP:HEXPORT, st 01 =
//   ESTABLISHED; /proc/PID/fd/* link to "socket:[INODE]" for the sockets it holds.

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
  /** utime and stime apart, in seconds. */
  userSec: number;
  sysSec: number;
  /** VmHWM in bytes. */
  peakRssBytes: number;
  /** VmRSS in bytes. */
  rssBytes: number;
}

/** Parse the text of /proc/PID/stat; returns utime and stime in ticks. */
export function parseStatUserSys(text: string): { user: number; sys: number } | null {
  const close = text.lastIndexOf(')');
  if (close < 0) return null;
  // After ") " come field 3 (state) onwards; utime is field 14, stime field 15.
  const rest = text.slice(close + 2).trim().split(/\s+/);
  const user = Number(rest[14 - 3]);
  const sys = Number(rest[15 - 3]);
  if (!Number.isFinite(user) || !Number.isFinite(sys)) return null;
  return { user, sys };
}

/** Parse the text of /proc/PID/stat; returns utime+stime in ticks. */
export function parseStatTicks(text: string): number | null {
  const t = parseStatUserSys(text);
  return t === null ? null : t.user + t.sys;
}

/** Parse a "Key:   1234 kB" line of /proc/PID/status; bytes, or null. */
export function parseStatusKiB(text: string, key: string): number | null {
  const m = new RegExp(`^${key}:\\s+(\\d+)\\s+kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : null;
}

/** Sample a process; null when it is gone or /proc is unreadable. */
export function sampleProc(pid: number): ProcSample | null {
  try {
    const ticks = parseStatUserSys(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const hwm = parseStatusKiB(status, 'VmHWM');
    const rss = parseStatusKiB(status, 'VmRSS');
    if (ticks === null || hwm === null || rss === null) return null;
    const hz = clockTicks();
    return { cpuSec: (ticks.user + ticks.sys) / hz, userSec: ticks.user / hz, sysSec: ticks.sys / hz, peakRssBytes: hwm, rssBytes: rss };
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

export interface TcpSocket {
  remotePort: number;
  /** The kernel's TCP state number (1 = ESTABLISHED). */
  state: number;
  inode: number;
}

const TCP_ESTABLISHED = 1;

/** Parse /proc/net/tcp or tcp6 (the header line is skipped). */
export function parseProcNetTcp(text: string): TcpSocket[] {
  const out: TcpSocket[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const rem = f[2].split(':');
    const remotePort = parseInt(rem[rem.length - 1], 16);
    const state = parseInt(f[3], 16);
    const inode = Number(f[9]);
    if (Number.isFinite(remotePort) && Number.isFinite(state) && Number.isFinite(inode)) out.push({ remotePort, state, inode });
  }
  return out;
}

/**
 * TCP connections established to `port` (any address) that process `pid` holds
 * open; null when its /proc entries cannot be read.
 */
export function tcpConnectionsTo(pid: number, port: number): number | null {
  try {
    const inodes = new Set<number>();
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      let link: string;
      try {
        link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue; // closed meanwhile
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m) inodes.add(Number(m[1]));
    }
    let n = 0;
    for (const table of ['tcp', 'tcp6']) {
      let text: string;
      try {
        text = fs.readFileSync(`/proc/${pid}/net/${table}`, 'utf8');
      } catch {
        continue; // no IPv6
      }
      n += parseProcNetTcp(text).filter((s) => s.state === TCP_ESTABLISHED && s.remotePort === port && inodes.has(s.inode)).length;
    }
    return n;
  } catch {
    return null;
  }
}
