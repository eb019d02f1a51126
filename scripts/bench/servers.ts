// The two NBD servers under test, each a child process serving one iSCSI LUN as export "bench"
// (the many-LUN section gives iscsi-nbd several exports, and runs one qemu-nbd per LUN):
//   A: node bin/iscsi-nbd.js serve --listen 127.0.0.1:PORT --export bench=URL [--sessions N] --log-level warn
//   B: qemu-nbd -f raw --cache=none -e 32 -t -p PORT -b 127.0.0.1 -x bench URL
// or, for the AF_UNIX rows, the same with the listen address swapped:
//   A: ... serve --listen unix:PATH ...        B: qemu-nbd ... -t -k PATH -x bench URL
// and clients use nbd+unix:///bench?socket=PATH. The socket files live in the bench's
// private temp dir; a stale one is removed before a server starts and after it stops.
// qemu-nbd notes: -t keeps it running after the last client leaves; -e 32 allows 32
// clients at once (fio's 4-connection rows need 8 briefly, see fio.ts). Its NBD server
// works on at most 16 requests per connection (MAX_NBD_REQUESTS in nbd/server.c), so
// deeper queues wait in the socket; that is what a qemu-nbd user gets.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { freePort, waitForPort } from '../../test/helpers/ports';
import { describeFailure, killGroup, runProcess, sleep, track } from './exec';
import type { Transport } from './rows';

export const QEMU_NBD_BIN = process.env.QEMU_NBD_BIN ?? 'qemu-nbd';
export const NBDINFO_BIN = process.env.NBDINFO_BIN ?? 'nbdinfo';
export const EXPORT_NAME = 'bench';

const START_TIMEOUT_MS = 20000;
const LOG_LIMIT = 64 * 1024;
/** sun_path is 108 bytes on Linux, NUL included. */
export const MAX_SOCKET_PATH = 107;

export type SideName = 'iscsi-nbd' | 'qemu-nbd';

export interface ServerSpec {
  side: SideName;
  /** iscsi:// URL of the LUN to serve. */
  iscsiUrl: string;
  /** Repository root (for bin/iscsi-nbd.js). */
  repoRoot: string;
  /** iscsi-nbd --sessions N. */
  sessions?: number;
  /** iscsi-nbd's control socket (ISCSI_NBD_CONTROL), so the bench never touches /run/iscsi-nbd. */
  controlPath?: string;
  /** NBD over loopback TCP (default) or an AF_UNIX socket at socketPath. */
  transport?: Transport;
  /** The NBD socket for transport 'unix'. */
  socketPath?: string;
  /**
   * iscsi-nbd only: serve these exports (one `--export NAME=URL` each) instead of
   * iscsiUrl as "bench". qemu-nbd serves one LUN per process.
   */
  exports?: ServedExport[];
}

export interface ServedExport {
  name: string;
  iscsiUrl: string;
}

/** The exports a server serves: spec.exports, or spec.iscsiUrl as "bench". */
export function servedExports(spec: ServerSpec): ServedExport[] {
  const list = spec.exports ?? [{ name: EXPORT_NAME, iscsiUrl: spec.iscsiUrl }];
  if (spec.side === 'qemu-nbd' && list.length !== 1) throw new Error(`qemu-nbd serves one LUN per process, not ${list.length}`);
  return list;
}

function unixPath(spec: ServerSpec): string {
  if (!spec.socketPath) throw new Error(`${spec.side}: transport unix needs a socketPath`);
  return spec.socketPath;
}

/** The NBD URI (libnbd syntax, as fio's nbd engine and nbdinfo take it) of a server's export (its first one by default). */
export function nbdUri(spec: ServerSpec, port: number | string, name = servedExports(spec)[0].name): string {
  if ((spec.transport ?? 'tcp') === 'unix') {
    // libnbd unescapes query values; keep '/' readable.
    return `nbd+unix:///${name}?socket=${encodeURIComponent(unixPath(spec)).replace(/%2F/g, '/')}`;
  }
  return `nbd://127.0.0.1:${port}/${name}`;
}

/** Extra environment a server runs with. */
export function serverEnv(spec: ServerSpec): Record<string, string> {
  return spec.side === 'iscsi-nbd' && spec.controlPath ? { ISCSI_NBD_CONTROL: spec.controlPath } : {};
}

/** argv (program first) that starts a server on port (TCP) or on spec.socketPath (unix; port unused). */
export function serverArgv(spec: ServerSpec, port: number | string): string[] {
  const unix = (spec.transport ?? 'tcp') === 'unix';
  const served = servedExports(spec);
  if (spec.side === 'iscsi-nbd') {
    const argv = [process.execPath, path.join(spec.repoRoot, 'bin', 'iscsi-nbd.js'), 'serve',
      '--listen', unix ? `unix:${unixPath(spec)}` : `127.0.0.1:${port}`, ...served.flatMap((e) => ['--export', `${e.name}=${e.iscsiUrl}`]), '--log-level', 'warn'];
    if (spec.sessions !== undefined) argv.push('--sessions', String(spec.sessions));
    return argv;
  }
  const where = unix ? ['-k', unixPath(spec)] : ['-p', String(port), '-b', '127.0.0.1'];
  return [QEMU_NBD_BIN, '-f', 'raw', '--cache=none', '-e', '32', '-t', ...where, '-x', served[0].name, served[0].iscsiUrl];
}

/** Whether our serve command exists in the build (dist/src/cli/serve.js); reason when not. */
export function bridgeAvailability(repoRoot: string): { ok: boolean; reason?: string } {
  const bin = path.join(repoRoot, 'bin', 'iscsi-nbd.js');
  const serve = path.join(repoRoot, 'dist', 'src', 'cli', 'serve.js');
  if (!fs.existsSync(bin)) return { ok: false, reason: `${bin} is missing` };
  if (!fs.existsSync(serve)) return { ok: false, reason: 'the serve command is not built yet (dist/src/cli/serve.js is missing)' };
  return { ok: true };
}

/**
 * When a started server counts as ready (after it listens): resolves, or rejects
 * with why not, before `deadline` (a Date.now() value).
 */
export type ReadyCheck = (srv: NbdServer, deadline: number) => Promise<void>;

export class NbdServer {
  readonly uri: string;
  /** performance.now() once it was ready (see start()). */
  readyAt: number | null = null;
  private exitInfo: string | null = null;
  private logText = '';

  /** @param port the TCP port, 0 for a unix-socket server */
  private constructor(
    readonly spec: ServerSpec,
    readonly port: number,
    readonly argv: string[],
    private readonly child: ChildProcess,
    /** performance.now() just before the spawn. */
    readonly spawnedAt: number,
  ) {
    this.uri = nbdUri(spec, port);
    const append = (b: Buffer): void => {
      this.logText += b.toString();
      if (this.logText.length > LOG_LIMIT) this.logText = this.logText.slice(-LOG_LIMIT);
    };
    child.stdout!.on('data', append);
    child.stderr!.on('data', append);
    child.once('exit', (code, sig) => { this.exitInfo = `exited (code ${code}, signal ${sig})`; });
    child.once('error', (err) => { this.exitInfo = `spawn error: ${err.message}`; });
  }

  get side(): SideName {
    return this.spec.side;
  }

  get transport(): Transport {
    return this.spec.transport ?? 'tcp';
  }

  /** The unix socket path, or null for TCP. */
  get socketPath(): string | null {
    return this.transport === 'unix' ? unixPath(this.spec) : null;
  }

  /** Where it listens, for messages. */
  get address(): string {
    return this.socketPath ?? `127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Null while running, else how it ended. */
  get exited(): string | null {
    return this.exitInfo;
  }

  /** Last 64 KiB of the server's stdout+stderr. */
  get log(): string {
    return this.logText;
  }

  /** The NBD URI of one of its exports. */
  uriOf(name: string): string {
    return nbdUri(this.spec, this.port, name);
  }

  /** Milliseconds from its spawn until it was ready, or null. */
  get readyMs(): number | null {
    return this.readyAt === null ? null : this.readyAt - this.spawnedAt;
  }

  /**
   * Start a server on a free port and wait until it listens and `ready` says so
   * (by default: its first export answers an NBD handshake).
   */
  static async start(spec: ServerSpec, ready: ReadyCheck = answersHandshake): Promise<NbdServer> {
    const unix = (spec.transport ?? 'tcp') === 'unix';
    if (unix) {
      const p = unixPath(spec);
      if (!path.isAbsolute(p)) throw new Error(`${spec.side}: socket path ${p} is not absolute`);
      if (Buffer.byteLength(p) > MAX_SOCKET_PATH) throw new Error(`${spec.side}: socket path ${p} is longer than ${MAX_SOCKET_PATH} bytes (set TMPDIR to a shorter dir)`);
    }
    let lastErr: Error | undefined;
    for (let attempt = 0; attempt < 3; attempt++) {
      // A stale socket file would make iscsi-nbd fail with EADDRINUSE and could pass for "ready".
      if (unix) fs.rmSync(unixPath(spec), { force: true });
      const port = unix ? 0 : await freePort();
      const argv = serverArgv(spec, port);
      const spawnedAt = performance.now();
      const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...serverEnv(spec) } });
      track(child);
      const srv = new NbdServer(spec, port, argv, child, spawnedAt);
      try {
        await srv.waitReady(ready);
        srv.readyAt = performance.now();
        return srv;
      } catch (err) {
        lastErr = err as Error;
        await srv.stop();
        if (!unix && /EADDRINUSE|Address already in use|bind/i.test(srv.log)) continue;
        break;
      }
    }
    throw lastErr ?? new Error(`${spec.side} did not start`);
  }

  /** Why it is not running (an Error to throw), or null while it runs. */
  died(): Error | null {
    return this.exitInfo ? new Error(`${this.side} ${this.exitInfo}: ${this.logText.trim().split('\n').slice(-5).join(' | ')}`) : null;
  }

  private async waitReady(ready: ReadyCheck): Promise<void> {
    const deadline = Date.now() + START_TIMEOUT_MS;
    const sock = this.socketPath;
    while (Date.now() < deadline) {
      const died = this.died();
      if (died) throw died;
      const up = sock !== null
        ? await waitForUnixSocket(sock, 200).then(() => true, () => false)
        : await waitForPort(this.port, '127.0.0.1', 200).then(() => true, () => false);
      if (up) break;
    }
    const died = this.died();
    if (died) throw died;
    if (Date.now() >= deadline) throw new Error(`${this.side} did not listen on ${this.address} within ${START_TIMEOUT_MS} ms: ${this.logText.trim()}`);
    await ready(this, deadline);
  }

  /** Stop the server (SIGTERM, then SIGKILL of its group after 3 s) and remove its socket file. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.exitInfo === null) {
      const gone = new Promise<void>((r) => {
        if (this.exitInfo !== null) r();
        this.child.once('exit', () => r());
      });
      killGroup(this.child, 'SIGTERM');
      const t = setTimeout(() => killGroup(this.child), 3000);
      await Promise.race([gone, sleep(6000)]);
      clearTimeout(t);
      killGroup(this.child);
    }
    const sock = this.socketPath;
    if (sock !== null) fs.rmSync(sock, { force: true });
  }
}

/** Listening is not enough: the export must finish a handshake (the server logs in behind it). */
async function answersHandshake(srv: NbdServer, deadline: number): Promise<void> {
  let last = '';
  while (Date.now() < deadline) {
    const died = srv.died();
    if (died) throw died;
    const r = await runProcess(NBDINFO_BIN, ['--size', srv.uri], { timeoutMs: Math.max(1000, deadline - Date.now()) });
    if (r.error && /ENOENT/.test(r.error)) return; // no nbdinfo: fio will find out
    if (r.code === 0 && /^\d+\s*$/.test(r.stdout.trim())) return;
    last = describeFailure('nbdinfo', r);
    await sleep(200);
  }
  throw new Error(`${srv.side} export never answered: ${last}`);
}

/** Resolve once something accepts connections on the unix socket, or reject after timeoutMs. */
export async function waitForUnixSocket(socketPath: string, timeoutMs = 10000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ path: socketPath });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => { s.destroy(); resolve(false); });
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on ${socketPath} after ${timeoutMs} ms`);
    await sleep(50);
  }
}
