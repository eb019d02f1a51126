// A private istgt (Debian `istgt`, 0.4 20111008) instance for tests.
//
// istgt reads everything from one config file and runs in the foreground with
//   istgt -c CONF -D
// in its own process group; SIGTERM stops it ("SIGTERM catch"). The config is
// written to a temp dir with the shipped example's [Global] values
// (/usr/share/doc/istgt/examples/istgt.conf: MaxSessions 16, MaxConnections 4,
// ...), an empty auth file (no CHAP), a [UnitControl] section with no portal
// (istgt refuses to start without the section), one portal on 127.0.0.1 and
// one [LogicalUnitN] section per target, its LUNs LUN0, LUN1, ... each a
// sparse file.
//
// What istgt does that a test has to know:
// - A LogicalUnit section (a target) has at most 16 LUNs: the parser reads
//   LUN0..LUN15 (MAX_LU_LUN 16 in istgt_lu.h) and ignores LUN16 and up without
//   a word, so start() refuses more than 16 and checks that istgt announced
//   every LUN ("LU1: LUN3 file=...").
// - MaxSessions is not a limit on sessions: istgt sizes its connection table
//   with it (4096 * MaxSessions * MaxConnections slots) and a LUN's command
//   queue (QueueDepth * MaxSessions); the only session limit is 255 per target
//   (MAX_LU_TSIH 256, "tsih is maximum").
// - Every login of a new session (TSIH 0) waits 1 s in
//   istgt_iscsi_drop_old_conns (sleep(1) while holding the global connection
//   mutex), so new sessions log in one per second, for all targets together.
// - A portal that does not bind makes istgt exit 1 ("listen error
//   127.0.0.1:PORT"); start() then tries another port.
// - Its stdout (login and logout lines) is block-buffered into a pipe; it runs
//   under `stdbuf -oL` so the log reads in order.

import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitForPort } from './ports';
import { forgetAtExit, killAtExit, killGroup, withTimeout } from './tgtd';
import { onPath } from './tools';

export const ISTGT_BIN = process.env.ISTGT_BIN ?? 'istgt';
/** What one target of istgt 20111008 can hold (MAX_LU_LUN). */
export const ISTGT_MAX_LUNS = 16;
const NODE_BASE = 'iqn.2026-12.test.iscsi-nbd.istgt';
const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 3_000;
const LOG_LIMIT = 256 * 1024;

export interface IstgtTargetSpec {
  /** Short target name; the IQN is NODE_BASE:name. */
  name: string;
  /** Number of LUNs (LUN0..LUN<n-1>), at most 16. */
  luns: number;
  /** Size of each LUN's sparse backing file (default 8 MiB). */
  size?: number;
}

export interface StartIstgtOptions {
  targets: IstgtTargetSpec[];
  /** [Global] MaxSessions; default 16, as the shipped example has it. */
  maxSessions?: number;
  /** Attempts at finding a free port. */
  attempts?: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class PortBusyError extends Error {}

/** The config file, in the shipped example's syntax and with its [Global] values. */
function configText(dir: string, port: number, o: StartIstgtOptions): string {
  const lines = [
    '[Global]',
    `  NodeBase "${NODE_BASE}"`,
    `  PidFile ${path.join(dir, 'istgt.pid')}`,
    `  AuthFile ${path.join(dir, 'auth.conf')}`,
    `  MediaDirectory ${dir}`,
    '  LogFacility "local7"',
    '  Timeout 30',
    '  NopInInterval 20',
    '  DiscoveryAuthMethod None',
    `  MaxSessions ${o.maxSessions ?? 16}`,
    '  MaxConnections 4',
    '  MaxR2T 32',
    '  MaxOutstandingR2T 16',
    '  DefaultTime2Wait 2',
    '  DefaultTime2Retain 60',
    '  FirstBurstLength 262144',
    '  MaxBurstLength 1048576',
    '  MaxRecvDataSegmentLength 262144',
    '  InitialR2T Yes',
    '  ImmediateData Yes',
    '  DataPDUInOrder Yes',
    '  DataSequenceInOrder Yes',
    '  ErrorRecoveryLevel 0',
    '[UnitControl]',
    '  AuthMethod None',
    '[PortalGroup1]',
    `  Portal DA1 127.0.0.1:${port}`,
    '[InitiatorGroup1]',
    '  InitiatorName "ALL"',
    '  Netmask 127.0.0.1',
  ];
  o.targets.forEach((t, i) => {
    lines.push(`[LogicalUnit${i + 1}]`, `  TargetName ${t.name}`, '  Mapping PortalGroup1 InitiatorGroup1',
      '  AuthMethod None', '  UseDigest Auto', '  UnitType Disk');
    for (let l = 0; l < t.luns; l++) lines.push(`  LUN${l} Storage ${lunFile(dir, t.name, l)} Auto`);
  });
  return lines.join('\n') + '\n';
}

function lunFile(dir: string, target: string, lun: number): string {
  return path.join(dir, `${target}-lun${lun}.img`);
}

export class Istgt {
  readonly dir: string;
  readonly targets: IstgtTargetSpec[];
  port = 0;
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private readonly logBox = { text: '' };
  private stopped = false;

  private constructor(dir: string, targets: IstgtTargetSpec[]) {
    this.dir = dir;
    this.targets = targets;
  }

  /** Start istgt; see startIstgt(). */
  static async start(o: StartIstgtOptions): Promise<Istgt> {
    for (const t of o.targets) {
      if (t.luns < 1 || t.luns > ISTGT_MAX_LUNS) throw new Error(`istgt target ${t.name}: ${t.luns} LUNs; istgt serves 1 to ${ISTGT_MAX_LUNS} per target and ignores LUN16 and up`);
    }
    if (!onPath('stdbuf')) throw new Error('stdbuf (coreutils) is missing');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'istgt-test-'));
    const ist = new Istgt(dir, o.targets);
    fs.writeFileSync(path.join(dir, 'auth.conf'), '');
    for (const t of o.targets) {
      for (let l = 0; l < t.luns; l++) {
        fs.writeFileSync(lunFile(dir, t.name, l), '');
        fs.truncateSync(lunFile(dir, t.name, l), t.size ?? 8 * 1024 * 1024);
      }
    }
    let lastErr: unknown;
    for (let i = 0; i < (o.attempts ?? 8); i++) {
      try {
        await ist.trySpawn(await freePort(), o);
        killAtExit(ist);
        return ist;
      } catch (err) {
        lastErr = err;
        if (!(err instanceof PortBusyError)) break;
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`could not start istgt: ${(lastErr as Error)?.message ?? String(lastErr)}`);
  }

  get portal(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Everything istgt printed (last 256 KiB). */
  get log(): string {
    return this.logBox.text;
  }

  /** Process id of istgt (also its process group id), or undefined when not running. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  iqn(target: string): string {
    return `${NODE_BASE}:${target}`;
  }

  /** iscsi:// URL of a LUN. */
  url(target: string, lun: number): string {
    return `iscsi://${this.portal}/${this.iqn(target)}/${lun}`;
  }

  /** The backing file of a LUN. */
  lunPath(target: string, lun: number): string {
    return lunFile(this.dir, target, lun);
  }

  private async trySpawn(port: number, o: StartIstgtOptions): Promise<void> {
    const conf = path.join(this.dir, 'istgt.conf');
    fs.writeFileSync(conf, configText(this.dir, port, o));
    this.logBox.text = '';
    const child = spawn('stdbuf', ['-oL', '-eL', ISTGT_BIN, '-c', conf, '-D'], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const append = (b: Buffer): void => {
      this.logBox.text += b.toString();
      if (this.logBox.text.length > LOG_LIMIT) this.logBox.text = this.logBox.text.slice(-LOG_LIMIT);
    };
    child.stdout!.on('data', append);
    child.stderr!.on('data', append);
    let hasExited = false;
    this.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, sig) => {
        hasExited = true;
        append(Buffer.from(`[istgt exited: code ${code}, signal ${sig}]\n`));
        resolve();
      });
      child.once('error', (err) => {
        hasExited = true;
        append(Buffer.from(`spawn error: ${err.message}\n`));
        resolve();
      });
    });
    child.unref();
    (child.stdout as unknown as { unref?: () => void }).unref?.();
    (child.stderr as unknown as { unref?: () => void }).unref?.();
    this.child = child;
    this.port = port;

    const fail = async (err: Error): Promise<never> => {
      killGroup(child);
      await withTimeout(this.exited, STOP_TIMEOUT_MS);
      this.child = null;
      throw err;
    };
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (hasExited) {
        await fail(/listen error/.test(this.log)
          ? new PortBusyError(`istgt could not listen on ${this.portal}: ${this.log.trim()}`)
          : new Error(`istgt exited while starting: ${this.log.trim()}`));
      }
      if (await waitForPort(port, '127.0.0.1', 0).then(() => true, () => false)) break;
      if (Date.now() > deadline) await fail(new Error(`istgt did not listen on ${this.portal} within ${START_TIMEOUT_MS} ms: ${this.log.trim()}`));
      await sleep(50);
    }
    // Someone else may have taken the port first: then istgt exits at once.
    await sleep(200);
    if (hasExited) await fail(new PortBusyError(`istgt could not listen on ${this.portal}: ${this.log.trim()}`));
    // istgt announces each LUN it took before it listens: none may be missing.
    const missing: string[] = [];
    o.targets.forEach((t, i) => {
      for (let l = 0; l < t.luns; l++) {
        if (!this.log.includes(`LU${i + 1}: LUN${l} file=${lunFile(this.dir, t.name, l)}`)) missing.push(`${t.name} LUN${l}`);
      }
    });
    if (missing.length > 0) await fail(new Error(`istgt did not take ${missing.join(', ')}: ${this.log.trim()}`));
  }

  /** SIGTERM the process group, SIGKILL it if it is still there, remove the temp dir. Safe to call twice. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    forgetAtExit(this);
    const child = this.child;
    this.child = null;
    if (child) {
      killGroup(child, 'SIGTERM');
      await withTimeout(this.exited, STOP_TIMEOUT_MS);
      killGroup(child);
      await withTimeout(this.exited, STOP_TIMEOUT_MS);
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** Synchronous SIGKILL, for process 'exit' handlers. */
  killSync(): void {
    if (this.child) killGroup(this.child);
    this.child = null;
    try {
      fs.rmSync(this.dir, { recursive: true, force: true });
    } catch {
      /* best effort at exit */
    }
  }
}

/** Start a private istgt on a free 127.0.0.1 port. Always call stop() (t.after). */
export function startIstgt(o: StartIstgtOptions): Promise<Istgt> {
  return Istgt.start(o);
}
