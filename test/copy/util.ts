// Shared by the copy tests: an embedded iSCSI target with memory LUNs in this
// process, and the CLI as a child process with stdin/stdout on files.

import { userText } from '../helpers/cli-text';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { MemoryBackend } from '../../src/target/backend';
import { TargetServer } from '../../src/target/server';
import { CLI, REPO_ROOT, childEnv } from '../helpers/process';

export const TGT = 'iqn.2026-11.io.test:copy';
export const INITIATOR = 'iqn.2026-11.io.test:copy-initiator';
export const MiB = 1024 * 1024;

export interface Target {
  server: TargetServer;
  backends: MemoryBackend[];
  url(lun: number): string;
  close(): Promise<void>;
}

/** A target with one memory LUN per size (LUN 0, 1, ...), listening on a free port. */
export async function startTarget(sizes: number[], blockSize = 512): Promise<Target> {
  const backends = sizes.map((size, i) => new MemoryBackend({ size, blockSize, identitySeed: `copy-test:${i}` }));
  const server = new TargetServer({ targets: [{ name: TGT, luns: backends.map((backend, lun) => ({ lun, backend })) }] });
  await server.listen({ host: '127.0.0.1', port: 0 });
  return {
    server,
    backends,
    url: (lun) => `iscsi://${server.portal}/${TGT}/${lun}`,
    close: () => server.close(),
  };
}

export const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

export interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

export interface RunOptions {
  /** A file to give the child as its stdin (else nothing: /dev/null). */
  stdinFile?: string;
  /** A file to give the child as its stdout (else a pipe, returned in `out`). */
  stdoutFile?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Called with the child once it runs and with a view of stderr so far (to signal it mid-way). */
  during?: (child: import('node:child_process').ChildProcess, stderr: () => string) => void;
}

/** `iscsi-nbd ARGS` as a child process, bounded in time (SIGKILL after timeoutMs). */
export function runCli(args: string[], o: RunOptions = {}): Promise<Run> {
  const inFd = o.stdinFile ? fs.openSync(o.stdinFile, 'r') : 'ignore';
  const outFd = o.stdoutFile ? fs.openSync(o.stdoutFile, 'w') : 'pipe';
  const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, stdio: [inFd, outFd, 'pipe'], env: childEnv(o.env ?? {}) });
  if (typeof inFd === 'number') fs.closeSync(inFd);
  if (typeof outFd === 'number') fs.closeSync(outFd);
  let out = '';
  let err = '';
  child.stdout?.on('data', (b: Buffer) => { out += b.toString(); });
  child.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
  o.during?.(child, () => userText(err));
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 60000);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, out, err: userText(err) });
    });
  });
}
