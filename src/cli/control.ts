import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

// The local control endpoint: a unix socket that answers one JSON document
// (the daemon's live status) per connection. `iscsi-nbd status` reads it.

export function defaultControlPath(): string {
  if (process.env.ISCSI_NBD_CONTROL) return process.env.ISCSI_NBD_CONTROL;
  if (process.getuid?.() === 0) return '/run/iscsi-nbd/control.sock';
  const dir = process.env.XDG_RUNTIME_DIR ?? os.tmpdir();
  return path.join(dir, `iscsi-nbd-${process.getuid?.() ?? 'user'}.sock`);
}

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

export async function startControlServer(p: string, snapshot: () => unknown): Promise<net.Server> {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  if (fs.existsSync(p)) {
    if (await inUse(p)) throw new Error(`control socket ${p} belongs to another running daemon (use --control PATH)`);
    fs.unlinkSync(p); // stale, left by a daemon that died
  }
  const srv = net.createServer((sock) => {
    sock.on('error', () => undefined);
    let body: string;
    try {
      body = JSON.stringify(snapshot(), (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
    } catch (err) {
      body = JSON.stringify({ error: (err as Error).message });
    }
    sock.end(body + '\n');
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
  srv.on('close', () => fs.rmSync(p, { force: true }));
  srv.unref();
  return srv;
}

export function readControl(p: string, timeoutMs = 5000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const s = net.connect(p);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer from ${p} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('data', (c) => chunks.push(c));
    s.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new Error(err.code === 'ENOENT' || err.code === 'ECONNREFUSED' ? `no iscsi-nbd daemon is listening on ${p} (is it running? try --control PATH)` : `${p}: ${err.message}`));
    });
    s.on('end', () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        reject(new Error(`bad answer from ${p}: ${(err as Error).message}`));
      }
    });
  });
}
