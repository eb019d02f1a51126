// Helpers for the metrics tests: a fake daemon (Metrics + an instrumented
// in-memory export + a session source), a scrape over the real HTTP server,
// and a parser for the Prometheus text format.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import pino from 'pino';
import { Metrics, startMetricsServer, type ExportSample } from '../../src/metrics';
import { InstrumentedExport } from '../../src/bridge/instrumented';
import { MemoryExport } from '../helpers/memory-export';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
export interface Scrape {
  text: string;
  samples: Sample[];
  /** family name -> type, from the # TYPE lines */
  types: Map<string, string>;
}

function unescape(v: string): string {
  return v.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
}

export function parseText(text: string): Scrape {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const t = /^# TYPE (\S+) (\S+)$/.exec(line);
      if (t) types.set(t[1], t[2]);
      continue;
    }
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const kv of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = unescape(kv[2]);
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return { text, samples, types };
}

/** The samples of `name` whose labels include `labels`. */
export function find(s: Scrape, name: string, labels: Record<string, string> = {}): Sample[] {
  return s.samples.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
}

export function httpGet(port: number, path: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body }));
      })
      .on('error', reject);
  });
}

/** Metrics served on a free 127.0.0.1 port (the OS picks it). */
export async function serve(metrics: Metrics): Promise<{ port: number; scrape(): Promise<Scrape>; close(): Promise<void> }> {
  const srv = await startMetricsServer({ host: '127.0.0.1', port: 0, metrics, ready: () => true });
  const port = (srv.address() as AddressInfo).port;
  return {
    port,
    async scrape() {
      const r = await httpGet(port, '/metrics');
      if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
      return parseText(r.body);
    },
    close: () => new Promise<void>((resolve) => srv.close(() => resolve())),
  };
}

export const silent = pino({ level: 'silent' });

/** An export as the daemon builds it: a MemoryExport behind InstrumentedExport. */
export function addExport(metrics: Metrics, name: string): { mem: MemoryExport; exp: InstrumentedExport } {
  const mem = new MemoryExport({ name, size: 1024 * 1024 });
  return { mem, exp: new InstrumentedExport(mem, metrics, silent) };
}

/** A session source like the daemon's, over a mutable list. */
export function fakeSource(metrics: Metrics): ExportSample[] {
  const list: ExportSample[] = [];
  metrics.setSource(() => list);
  return list;
}

export function sessionsOf(name: string, n = 2): ExportSample {
  return {
    name,
    queued: 1,
    sessions: Array.from({ length: n }, (_, index) => ({
      index,
      state: index === 0 ? 'logged-in' : 'recovering',
      portal: `127.0.0.${index + 1}:3260`,
      target: 'iqn.2003-01.org.example:disk1',
      window: 32,
      cmdSn: 10,
      maxCmdSn: 41,
      digestErrors: index,
      inFlight: 3,
      alua: index === 0 ? 'active/optimized' : 'standby',
    })),
  };
}

/** Fixed-format sense data with this sense key (ASC/ASCQ 29/00 for a UNIT ATTENTION-like reply). */
export function senseData(key: number): Buffer {
  const b = Buffer.alloc(18);
  b[0] = 0x70;
  b[2] = key;
  b[7] = 10;
  b[12] = 0x29;
  return b;
}
