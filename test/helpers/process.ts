// Child processes for tests: run the real CLI (bin/iscsi-nbd.js) or any
// program in its own process group, capture its output, and always stop it.

import { userText } from './cli-text';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

/** The repository root (the directory holding bin/iscsi-nbd.js). */
export function repoRoot(): string {
  let d = __dirname;
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(d, 'bin', 'iscsi-nbd.js'))) return d;
    d = path.dirname(d);
  }
  throw new Error(`bin/iscsi-nbd.js not found above ${__dirname}`);
}

// dist/test/helpers/ -> repository root
export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
export const CLI = path.join(REPO_ROOT, 'bin', 'iscsi-nbd.js');

/** Our environment without the test runner's marker (it would silence the child's logger). */
export function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, ...extra };
  delete e.NODE_TEST_CONTEXT;
  return e;
}

export interface Proc {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolve when stderr (or stdout) matches re; reject after timeoutMs or on exit. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export function startCli(args: string[], env: Record<string, string> = {}, o: { netns?: string } = {}): Proc {
  // In a network namespace: `ip netns exec` execs node itself, so the pid (and group) is still node's.
  const argv = [CLI, ...args];
  const child = spawn(o.netns ? 'ip' : process.execPath, o.netns ? ['netns', 'exec', o.netns, process.execPath, ...argv] : argv, {
    cwd: REPO_ROOT,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: childEnv(env),
  });
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  const poke = () => { for (const w of [...waiters]) w(); };
  child.stdout!.on('data', (b: Buffer) => { out += b.toString(); if (out.length > 4 << 20) out = out.slice(-(2 << 20)); poke(); });
  child.stderr!.on('data', (b: Buffer) => { err += b.toString(); if (err.length > 8 << 20) err = err.slice(-(4 << 20)); poke(); });
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('close', (code, signal) => { done = true; poke(); resolve({ code, signal }); });
  });
  const p: Proc = {
    child,
    out: () => out,
    err: () => err,
    exited,
    waitFor(re, timeoutMs = 20000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`timed out waiting for ${re}:\n${err.slice(-4000)}`)); }, timeoutMs);
        const check = () => {
          if (re.test(err) || re.test(out)) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve();
          } else if (done) {
            clearTimeout(timer);
            waiters.delete(check);
            reject(new Error(`process exited before ${re}:\n${err.slice(-4000)}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (done) return;
      try { process.kill(-child.pid!, 'SIGTERM'); } catch { /* gone */ }
      const t = setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } }, 8000);
      await exited;
      clearTimeout(t);
    },
  };
  return p;
}

/** Run the CLI to completion (bounded). */
export function runCli(args: string[], timeoutMs = 60000, env: Record<string, string> = {}): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: REPO_ROOT,
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    env: childEnv(env),
  });
  return { code: r.status, out: r.stdout ?? '', err: userText(r.stderr ?? '') };
}

/** The CLI's stderr exactly as written (JSON log lines and all), for tests about the log format. */
export function runCliRaw(args: string[], timeoutMs = 60000, env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  return runTool(process.execPath, [CLI, ...args], timeoutMs, env);
}

/** Same as runCli, without blocking the event loop (so daemons in this process keep running). */
export async function runCliAsync(args: string[], timeoutMs = 60000, env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  const r = await runTool(process.execPath, [CLI, ...args], timeoutMs, env);
  return { ...r, err: userText(r.err) };
}

export function runTool(cmd: string, args: string[], timeoutMs = 60000, env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: REPO_ROOT, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(env) });
    let out = '';
    let err = '';
    child.stdout!.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
    const timer = setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } }, timeoutMs);
    child.once('close', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

export function httpGet(port: number, p: string, timeoutMs = 5000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${p} timed out`)));
    req.on('error', reject);
  });
}

/** The value of one series in Prometheus text, or undefined. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  let sum: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const ls: Record<string, string> = {};
    for (const kv of (m[3] ?? '').match(/\w+="(?:[^"\\]|\\.)*"/g) ?? []) {
      const eq = kv.indexOf('=');
      ls[kv.slice(0, eq)] = kv.slice(eq + 2, -1);
    }
    if (Object.entries(labels).every(([k, v]) => ls[k] === v)) sum = (sum ?? 0) + Number(m[4]);
  }
  return sum;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll fn until it returns truthy or timeoutMs passes. */
export async function until<T>(fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 15000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as T;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await sleep(200);
  }
}

export interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; timedOut: boolean }

export interface RunOptions {
  timeoutMs?: number;
  input?: string;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Kill the process group when this test ends, if it still runs. */
  t?: { after: (f: () => unknown) => void };
}

/**
 * Run a program in its own process group; kill the group after timeoutMs (or
 * when the test `t` ends). The promise carries the pid, for a caller that
 * stops the run itself.
 */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> & { pid?: number } {
  const child = spawn(cmd, args, { detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
  const kill = (): void => { try { if (child.pid) process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ } };
  opts.t?.after(kill);
  const p = new Promise<RunResult>((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => { timedOut = true; kill(); }, opts.timeoutMs ?? 30_000);
    child.on('error', (err) => { stderr += String(err); });
    child.on('close', (code, signal) => { clearTimeout(t); kill(); resolve({ code, signal, stdout, stderr, timedOut }); });
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  }) as Promise<RunResult> & { pid?: number };
  p.pid = child.pid;
  return p;
}

/** A temp dir removed after the test. */
export function tmpdir(t: { after: (f: () => void) => void }, prefix = 'bridge-data-'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** A message for assert when a process did not succeed. */
export function describeRun(r: { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; timedOut: boolean }, what: string): string {
  return `${what}: exit ${r.code}${r.signal ? ` signal ${r.signal}` : ''}${r.timedOut ? ' (timed out)' : ''}\n${r.stderr}${r.stdout}`.slice(0, 8000);
}
