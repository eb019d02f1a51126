// Child processes for the benchmark: every child runs in its own process group
// (detached) so a timeout or Ctrl-C can kill it with everything it started.
// Children still running when the bench exits are SIGKILLed from an 'exit' hook.

import { spawn, type ChildProcess } from 'node:child_process';

const OUTPUT_LIMIT = 1 << 20;

const live = new Set<ChildProcess>();
let hookInstalled = false;

function installExitHook(): void {
  if (hookInstalled) return;
  hookInstalled = true;
  process.on('exit', () => {
    for (const c of live) killGroup(c);
  });
}

/** SIGKILL a detached child's process group (falls back to the child alone). */
export function killGroup(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      /* already gone */
    }
  }
}

/** Register a long-lived child (a server) for the exit hook; returns it. */
export function track(child: ChildProcess): ChildProcess {
  installExitHook();
  live.add(child);
  child.once('exit', () => live.delete(child));
  return child;
}

/** Kill every tracked child now (used by the SIGINT handler). */
export function killAll(): void {
  for (const c of live) killGroup(c);
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** Spawn error (for example ENOENT), if any. */
  error?: string;
  ms: number;
}

export interface RunOptions {
  timeoutMs: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

function appendCapped(acc: string, b: Buffer): string {
  const s = acc + b.toString();
  return s.length > OUTPUT_LIMIT ? s.slice(-OUTPUT_LIMIT) : s;
}

/** Run a command to completion (or SIGKILL it at timeoutMs) and collect its output. Never rejects. */
export function runProcess(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    let spawnError: string | undefined;
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: opts.env, cwd: opts.cwd });
    track(child);
    child.stdout!.on('data', (b: Buffer) => { stdout = appendCapped(stdout, b); });
    child.stderr!.on('data', (b: Buffer) => { stderr = appendCapped(stderr, b); });
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child);
    }, opts.timeoutMs);
    child.once('error', (err) => {
      spawnError = err.message;
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut, error: spawnError, ms: Date.now() - started });
    });
  });
}

/** Short human description of a failed RunResult. */
export function describeFailure(cmd: string, r: RunResult): string {
  if (r.error) return `${cmd}: ${r.error}`;
  if (r.timedOut) return `${cmd}: timed out after ${r.ms} ms`;
  const tail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-5).join(' | ');
  return `${cmd}: exit ${r.code ?? r.signal}${tail ? `: ${tail}` : ''}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
