// Test helpers for the NBD layer: byte builders (written from the spec
// layouts, independent of src/nbd/codec.ts), a reply parser, and a process runner.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const hex = (s: string): Buffer => Buffer.from(s.replace(/[\s_]/g, ''), 'hex');

export function u16(n: number): Buffer { const b = Buffer.alloc(2); b.writeUInt16BE(n); return b; }
export function u32(n: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; }
export function u64(n: bigint | number): Buffer { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; }

/** C: IHAVEOPT, option, length, data */
export function opt(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([hex('49484156454f5054'), u32(option), u32(data.length), data]);
}

export function infoData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  return Buffer.concat([u32(n.length), n, u16(infos.length), ...infos.map(u16)]);
}

export function metaData(name: string, queries: string[]): Buffer {
  const n = Buffer.from(name);
  return Buffer.concat([u32(n.length), n, u32(queries.length), ...queries.flatMap((q) => [u32(Buffer.byteLength(q)), Buffer.from(q)])]);
}

/** C: 0x25609513, flags, type, cookie, offset, length [, payload] */
export function req(type: number, cookie: number | bigint, offset: number | bigint, length: number, flags = 0, payload?: Buffer): Buffer {
  const parts = [u32(0x25609513), u16(flags), u16(type), u64(cookie), u64(offset), u32(length)];
  if (payload) parts.push(payload);
  return Buffer.concat(parts);
}

export interface OptReply { option: number; type: number; data: Buffer }

/** Parse fixed-newstyle option replies from a byte stream; returns replies and the rest. */
export function parseOptReplies(b: Buffer): { replies: OptReply[]; rest: Buffer } {
  const replies: OptReply[] = [];
  let p = 0;
  while (b.length - p >= 20) {
    if (b.readBigUInt64BE(p) !== 0x3e889045565a9n) break;
    const len = b.readUInt32BE(p + 16);
    if (b.length - p < 20 + len) break;
    replies.push({ option: b.readUInt32BE(p + 8), type: b.readUInt32BE(p + 12), data: b.subarray(p + 20, p + 20 + len) });
    p += 20 + len;
  }
  return { replies, rest: b.subarray(p) };
}

export type Reply =
  | { kind: 'simple'; cookie: bigint; error: number; data: Buffer }
  | { kind: 'chunk'; cookie: bigint; flags: number; type: number; payload: Buffer };

/** Parse transmission replies; readLengths tells how much data a successful simple reply carries per cookie. */
export function parseReplies(b: Buffer, readLengths: Map<bigint, number> = new Map()): Reply[] {
  const out: Reply[] = [];
  let p = 0;
  while (p < b.length) {
    const magic = b.readUInt32BE(p);
    if (magic === 0x67446698) {
      const error = b.readUInt32BE(p + 4);
      const cookie = b.readBigUInt64BE(p + 8);
      const n = error === 0 ? readLengths.get(cookie) ?? 0 : 0;
      out.push({ kind: 'simple', cookie, error, data: b.subarray(p + 16, p + 16 + n) });
      p += 16 + n;
    } else if (magic === 0x668e33ef) {
      const len = b.readUInt32BE(p + 16);
      out.push({ kind: 'chunk', flags: b.readUInt16BE(p + 4), type: b.readUInt16BE(p + 6), cookie: b.readBigUInt64BE(p + 8), payload: b.subarray(p + 20, p + 20 + len) });
      p += 20 + len;
    } else {
      throw new Error(`bad reply magic 0x${magic.toString(16)} at ${p}`);
    }
  }
  return out;
}

export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
export async function settle(n = 20): Promise<void> { for (let i = 0; i < n; i++) await tick(); }

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; timedOut: boolean }

/** Run a program in its own process group; kill the group after timeoutMs. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const kill = (): void => { try { if (child.pid) process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } };
    const t = setTimeout(() => { timedOut = true; kill(); }, opts.timeoutMs ?? 30_000);
    child.on('error', (err) => { stderr += String(err); });
    child.on('close', (code, signal) => { clearTimeout(t); kill(); resolve({ code, signal, stdout, stderr, timedOut }); });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

/** Splits of a buffer: whole, byte by byte, and at every boundary (two pieces). */
export function splits(b: Buffer): Buffer[][] {
  const out: Buffer[][] = [[b], [...b].map((x) => Buffer.from([x]))];
  for (let i = 1; i < b.length; i++) out.push([b.subarray(0, i), b.subarray(i)]);
  return out;
}

/** A throwaway CA, server cert (localhost/127.0.0.1), client cert, and an untrusted self-signed client cert. */
export function makePki(dir: string): void {
  const o = (args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore', timeout: 30000 });
  fs.writeFileSync(path.join(dir, 'srv.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  fs.writeFileSync(path.join(dir, 'cli.ext'), 'extendedKeyUsage=clientAuth\n');
  o(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', '/CN=nbd test CA']);
  o(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server-key.pem', '-out', 'server.csr', '-subj', '/CN=localhost']);
  o(['x509', '-req', '-in', 'server.csr', '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', 'server-cert.pem', '-days', '2', '-extfile', 'srv.ext']);
  o(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'client-key.pem', '-out', 'client.csr', '-subj', '/CN=client']);
  o(['x509', '-req', '-in', 'client.csr', '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', 'client-cert.pem', '-days', '2', '-extfile', 'cli.ext']);
  // A client certificate from nobody we trust.
  o(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'rogue-key.pem', '-out', 'rogue-cert.pem', '-days', '2', '-subj', '/CN=rogue', '-addext', 'extendedKeyUsage=clientAuth']);
  // libnbd's tls-certificates directory layouts.
  for (const [sub, cert, key] of [['good', 'client-cert.pem', 'client-key.pem'], ['rogue', 'rogue-cert.pem', 'rogue-key.pem']]) {
    fs.mkdirSync(path.join(dir, sub));
    fs.copyFileSync(path.join(dir, 'ca-cert.pem'), path.join(dir, sub, 'ca-cert.pem'));
    fs.copyFileSync(path.join(dir, cert), path.join(dir, sub, 'client-cert.pem'));
    fs.copyFileSync(path.join(dir, key), path.join(dir, sub, 'client-key.pem'));
  }
}

