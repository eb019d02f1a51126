import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { IscsiNbdError } from '../errors';

// The local control endpoint: a unix socket that takes one JSON request line
// per connection ({"op": "status"}, {"op": "map", ...}) and answers one JSON
// line: the result, or {"error": {"code", "message"}}. `iscsi-nbd status`,
// `map`, `unmap` and `list-mapped` talk to the daemon through it.

export interface ControlRequest {
  op: string;
  [key: string]: unknown;
}

export type ControlHandler = (req: ControlRequest) => unknown | Promise<unknown>;

/** Requests are small; anything larger is not ours. */
const MAX_REQUEST = 64 * 1024;

function inUse(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

const toJson = (v: unknown): string => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x));

async function answer(handlers: Record<string, ControlHandler>, line: string): Promise<string> {
  try {
    const req = JSON.parse(line) as ControlRequest;
    const h = typeof req?.op === 'string' ? handlers[req.op] : undefined;
    if (!h) return toJson({ error: { code: 'EINVAL', message: `unknown control request ${JSON.stringify(req?.op)}` } });
    return toJson({ result: await h(req) });
  } catch (err) {
    const code = err instanceof IscsiNbdError ? err.code : 'EIO';
    return toJson({ error: { code, message: (err as Error)?.message ?? String(err) } });
  }
}

export async function startControlServer(p: string, handlers: Record<string, ControlHandler>): Promise<net.Server> {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  if (fs.existsSync(p)) {
    if (await inUse(p)) throw new Error(`control socket ${p} belongs to another running daemon (use --control PATH)`);
    fs.unlinkSync(p); // stale, left by a daemon that died
  }
  const srv = net.createServer((sock) => {
    sock.on('error', () => undefined);
    let buf = '';
    const onData = (c: Buffer): void => {
      buf += c.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_REQUEST) sock.destroy();
        return;
      }
      sock.off('data', onData);
      void answer(handlers, buf.slice(0, nl)).then((body) => sock.end(body + '\n'));
    };
    sock.on('data', onData);
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(p, () => {
      srv.off('error', reject);
      resolve();
    });
  });
  try {
    fs.chmodSync(p, 0o660);
  } catch {
    // not fatal: the directory's permissions still apply
  }
  // Not unref'd: a daemon serving only mapped devices has no other listener to keep it alive.
  srv.on('close', () => fs.rmSync(p, { force: true }));
  return srv;
}

/** The daemon is not there (no socket, or nobody listening on it). */
export class NoDaemonError extends Error {}

/** Send one request and wait for its answer; a daemon-side error is rethrown with its code. */
export function callControl<T = unknown>(p: string, req: ControlRequest, timeoutMs = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const s = net.connect(p);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer from ${p} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('connect', () => s.write(toJson(req) + '\n'));
    s.on('data', (c) => chunks.push(c));
    s.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
          ? new NoDaemonError(`no iscsi-nbd daemon is listening on ${p} (is it running? try --control PATH)`)
          : new Error(`${p}: ${err.message}`),
      );
    });
    s.on('end', () => {
      clearTimeout(timer);
      let doc: { result?: T; error?: { code: string; message: string } };
      try {
        doc = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        reject(new Error(`bad answer from ${p}: ${(err as Error).message}`));
        return;
      }
      if (doc.error) reject(new IscsiNbdError(doc.error.code as never, doc.error.message));
      else resolve(doc.result as T);
    });
  });
}

/** The daemon's status document (`iscsi-nbd status`). */
export function readControl(p: string, timeoutMs = 5000): Promise<unknown> {
  return callControl(p, { op: 'status' }, timeoutMs);
}
