// `iscsi-nbd serve` as a child process for integration tests.
//
// startBridge() picks a free 127.0.0.1 port, gives the daemon its own
// --control socket and state dir in a temp dir, and waits until
// `nbdinfo --size` answers for the first export (or the process exits, in
// which case it throws with the daemon's output). stop() sends SIGTERM and
// waits; kill() and a process 'exit' hook SIGKILL the process group, so no
// daemon outlives a test.
import { userText } from './cli-text';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports';
import { repoRoot, tmpdir, describeRun } from './process';

export { repoRoot, tmpdir, describeRun };

const LOG_LIMIT = 512 * 1024;
export const TEST_INITIATOR = 'iqn.2026-11.test.iscsi-nbd:bridge';

export const CLI = (): string => path.join(repoRoot(), 'bin', 'iscsi-nbd.js');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Run `node bin/iscsi-nbd.js ARGS` in its own process group, killed after timeoutMs. */
export function runCli(args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI(), ...args], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...opts.env },
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const t = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, opts.timeoutMs ?? 30_000);
    child.on('error', (err) => (stderr += String(err)));
    child.on('close', (code, signal) => {
      clearTimeout(t);
      killGroup(child);
      resolve({ code, signal, stdout, stderr: userText(stderr), timedOut });
    });
  });
}

export interface BridgeOptions {
  /** NAME -> iscsi:// URL, in order (the first one is probed for readiness). */
  exports: Array<[string, string]>;
  sessions?: number;
  readOnly?: boolean;
  /** Extra `serve` arguments (TLS, timeouts...). */
  args?: string[];
  logLevel?: string;
  /**
   * How readiness is checked: `nbdinfo` (default) runs `nbdinfo --size` on the
   * first export; pass extra nbdinfo args / a URI for TLS with readyUri.
   */
  readyUri?: (port: number) => string;
  startTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

export interface Bridge {
  readonly port: number;
  readonly pid: number;
  readonly control: string;
  readonly dir: string;
  /** nbd://127.0.0.1:PORT/NAME */
  uri(name: string): string;
  /** Everything the daemon printed (stdout and stderr). */
  output(): string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly hasExited: boolean;
  /** SIGTERM, wait up to timeoutMs, then SIGKILL. Resolves with the exit status. Safe to call twice. */
  stop(timeoutMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>;
  /** SIGKILL the process group. */
  kill(): void;
}

const live = new Set<ChildProcess>();
let hook = false;
function installHook(): void {
  if (hook) return;
  hook = true;
  process.on('exit', () => {
    for (const c of live) killGroup(c);
  });
}

function killGroup(child: ChildProcess, sig: NodeJS.Signals = 'SIGKILL'): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    try {
      child.kill(sig);
    } catch {
      /* gone */
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function probe(cmd: string, args: string[], timeoutMs: number): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout!.on('data', (d) => (out += d));
    c.stderr!.on('data', (d) => (out += d));
    const t = setTimeout(() => killGroup(c), timeoutMs);
    c.on('error', (e) => (out += String(e)));
    c.on('close', (code) => {
      clearTimeout(t);
      resolve({ ok: code === 0, out });
    });
  });
}

/** Start `iscsi-nbd serve`; always pair with `t.after(() => b.stop())`. */
export async function startBridge(o: BridgeOptions): Promise<Bridge> {
  let last: Error | undefined;
  for (let attempt = 0; attempt < 4; attempt++) {
    try {
      return await startOnce(o);
    } catch (err) {
      last = err as Error;
      // Someone took the free port between our check and the daemon's bind: try another.
      if (!/address is in use/.test(last.message)) throw last;
    }
  }
  throw last!;
}

async function startOnce(o: BridgeOptions): Promise<Bridge> {
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bridge-test-'));
  const control = path.join(dir, 'control.sock');
  const args = [CLI(), 'serve', '--listen', `127.0.0.1:${port}`, '--control', control,
    '--initiator-name', TEST_INITIATOR, '--log-level', o.logLevel ?? 'warn', '--log-format', 'json'];
  for (const [name, url] of o.exports) args.push('--export', `${name}=${url}`);
  if (o.sessions !== undefined) args.push('--sessions', String(o.sessions));
  if (o.readOnly) args.push('--read-only');
  args.push(...(o.args ?? []));
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ISCSI_NBD_STATE_DIR: dir, ...o.env },
  });
  live.add(child);
  installHook();
  let log = '';
  const append = (d: Buffer): void => {
    log += d.toString();
    if (log.length > LOG_LIMIT) log = log.slice(-LOG_LIMIT);
  };
  child.stdout!.on('data', append);
  child.stderr!.on('data', append);
  let hasExited = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      hasExited = true;
      live.delete(child);
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      append(Buffer.from(`spawn error: ${err.message}\n`));
      hasExited = true;
      live.delete(child);
      resolve({ code: null, signal: null });
    });
  });
  const cleanup = (): void => {
    fs.rmSync(dir, { recursive: true, force: true });
  };
  let stopping: Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }> | undefined;
  const b: Bridge = {
    port,
    pid: child.pid!,
    control,
    dir,
    uri: (name) => `nbd://127.0.0.1:${port}/${name}`,
    output: () => log,
    exited,
    get hasExited() {
      return hasExited;
    },
    stop(timeoutMs = 15_000) {
      if (!stopping) {
        stopping = (async () => {
          const t0 = Date.now();
          if (!hasExited) {
            killGroup(child, 'SIGTERM');
            let timer: NodeJS.Timeout | undefined;
            await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
            clearTimeout(timer);
            if (!hasExited) {
              killGroup(child);
              await Promise.race([exited, sleep(5000)]);
            }
          }
          const st = await Promise.race([exited, sleep(100).then(() => ({ code: null, signal: null }))]);
          // Anything left in the group (nothing should be) goes too.
          killGroup(child);
          cleanup();
          return { ...st, ms: Date.now() - t0 };
        })();
      }
      return stopping;
    },
    kill() {
      killGroup(child);
    },
  };

  const deadline = Date.now() + (o.startTimeoutMs ?? 30_000);
  const readyUri = o.readyUri ? o.readyUri(port) : b.uri(o.exports[0][0]);
  for (;;) {
    if (hasExited) {
      await sleep(50); // let the last output arrive
      const st = await exited;
      cleanup();
      throw new Error(`iscsi-nbd serve exited (code ${st.code}, signal ${st.signal}) before it was ready: ${log.trim()}`);
    }
    if (Date.now() > deadline) {
      killGroup(child);
      await Promise.race([exited, sleep(5000)]);
      cleanup();
      throw new Error(`iscsi-nbd serve was not ready within ${o.startTimeoutMs ?? 30_000} ms: ${log.trim()}`);
    }
    const r = await probe('nbdinfo', ['--size', readyUri], 5000);
    if (r.ok && !hasExited) break;
    await sleep(100);
  }
  return b;
}
