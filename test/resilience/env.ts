// Shared pieces of the resilience tests: an embedded target (or two, for
// multipath) in this process, the bridge (ExportManager + NbdServer) in this
// process, and real NBD clients (fio, python3-libnbd) as child processes with
// timeouts, killed with their process group.

import net from 'node:net';
import { NbdServer } from '../../src/nbd/server';
import { ExportManager } from '../../src/bridge/manager';
import { DEFAULT_TIMEOUTS, ExportConfig, TimeoutsConfig } from '../../src/config';
import { TargetServer } from '../../src/target/server';
import { MemoryBackend } from '../../src/target/backend';
import { FaultController } from '../../src/target/faults';
import { createLogger, type Logger } from '../../src/log';
import type { EngineClock } from '../../src/iscsi/clock';
import type { TargetRegistry } from '../../src/bridge/targets';
import { run, sleep, type RunResult } from '../helpers/process';

export const IQN = 'iqn.2026-11.io.test:resilience';
export const INITIATOR = 'iqn.2026-11.io.test:resilience-ini';
export const MiB = 1024 * 1024;

/** Quiet by default; RESILIENCE_LOG=debug|info|warn shows the product's logs. */
export function testLog(): Logger {
  return createLogger({ level: (process.env.RESILIENCE_LOG ?? 'silent') as 'info' });
}

export type After = { after: (f: () => unknown) => void };

const stacks = new WeakMap<object, Array<() => unknown>>();

/** Register cleanup that runs in reverse order (the bridge stops before its targets). */
export function onCleanup(t: After, fn: () => unknown): void {
  let st = stacks.get(t);
  if (!st) {
    const list: Array<() => unknown> = [];
    st = list;
    stacks.set(t, list);
    t.after(async () => {
      while (list.length > 0) {
        try {
          await list.pop()!();
        } catch {
          /* keep cleaning */
        }
      }
    });
  }
  st.push(fn);
}

export interface TargetSet {
  backend: MemoryBackend;
  faults: FaultController;
  servers: TargetServer[];
  ports: number[];
  /** Close server i and listen again on the same port (a path that goes and comes back). */
  bounce(i: number, downMs: number): Promise<void>;
  down(i: number): Promise<void>;
  up(i: number): Promise<void>;
}

/** `paths` TargetServers sharing one backend and one fault controller (same LUN identity). */
export async function startTargets(t: After, o: { paths?: number; size?: number; nopInIntervalMs?: number } = {}): Promise<TargetSet> {
  const backend = new MemoryBackend({ size: o.size ?? 64 * MiB, blockSize: 512, identitySeed: 'resilience-lun' });
  const faults = new FaultController();
  const log = testLog();
  const mk = () => new TargetServer({
    targets: [{ name: IQN, luns: [{ lun: 0, backend, identitySeed: 'resilience-lun' }] }],
    faults, log, closeBackends: false, nopInIntervalMs: o.nopInIntervalMs,
  });
  const servers: TargetServer[] = [];
  const ports: number[] = [];
  for (let i = 0; i < (o.paths ?? 1); i++) {
    const s = mk();
    ports.push((await s.listen({ host: '127.0.0.1', port: 0 })).port);
    servers.push(s);
  }
  const set: TargetSet = {
    backend, faults, servers, ports,
    async down(i) {
      await servers[i].close();
    },
    async up(i) {
      // A fresh server on the same port (the old one cannot listen again).
      for (let k = 0; k < 50; k++) {
        const s = mk();
        try {
          await s.listen({ host: '127.0.0.1', port: ports[i] });
          servers[i] = s;
          return;
        } catch {
          await sleep(100);
        }
      }
      throw new Error(`could not listen on ${ports[i]} again`);
    },
    async bounce(i, downMs) {
      await set.down(i);
      await sleep(downMs);
      await set.up(i);
    },
  };
  onCleanup(t, async () => {
    faults.clear();
    for (const s of servers) await s.close().catch(() => undefined);
    await backend.close().catch(() => undefined);
  });
  return set;
}

export interface Bridge {
  manager: ExportManager;
  server: NbdServer;
  port: number;
  uri(name?: string): string;
}

export interface BridgeOptions {
  exports: ExportConfig[];
  timeouts?: Partial<TimeoutsConfig>;
  sessions?: number;
  digest?: 'none' | 'crc32c' | 'prefer-crc32c' | 'prefer-none';
  /** The export state machine's timers (ManagerOptions.clock). */
  clock?: EngineClock;
  /** Share another manager's target pools, as the daemon's exports and devices do. */
  targets?: TargetRegistry;
}

/** ExportManager + NbdServer in this process, on a free port. */
export async function startBridge(t: After, o: BridgeOptions): Promise<Bridge> {
  const log = testLog();
  const manager = new ExportManager({
    initiatorName: INITIATOR,
    sessions: o.sessions ?? 1,
    digest: o.digest ?? 'none',
    readOnly: false,
    timeouts: { ...DEFAULT_TIMEOUTS, ...o.timeouts },
    authFor: () => undefined,
    log,
    clock: o.clock,
    ...(o.targets ? { targets: o.targets } : {}),
  });
  const server = new NbdServer({ exports: manager, log });
  onCleanup(t, async () => {
    await server.close({ drainMs: 500 }).catch(() => undefined);
    await manager.closeAll().catch(() => undefined);
  });
  for (const e of o.exports) await manager.add(e);
  const a = (await server.listen({ host: '127.0.0.1', port: 0 })) as net.AddressInfo;
  return { manager, server, port: a.port, uri: (name = o.exports[0].name) => `nbd://127.0.0.1:${a.port}/${name}` };
}

/**
 * fio through the NBD bridge: random writes with crc32c checksums, then
 * the verify pass. Returns fio's JSON (total_err, and whether verify failed).
 */
export async function fioVerify(uri: string, o: { size?: string; bs?: string; iodepth?: number; timeoutMs?: number; t?: After; extra?: string[] } = {}): Promise<{ errors: number; res: RunResult }> {
  const args = [
    '--name=verify', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', `--bs=${o.bs ?? '64k'}`, `--size=${o.size ?? '16M'}`,
    `--iodepth=${o.iodepth ?? 8}`, '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0',
    '--output-format=json', '--randseed=42', ...(o.extra ?? []),
  ];
  const res = await run('fio', args, { timeoutMs: o.timeoutMs ?? 120000, t: o.t });
  let errors = -1;
  try {
    const j = JSON.parse(res.stdout.slice(res.stdout.indexOf('{')));
    errors = j.jobs.reduce((n: number, job: { error: number; total_err?: number }) => n + (job.total_err ?? 0) + (job.error ? 1 : 0), 0);
  } catch {
    errors = -1;
  }
  return { errors, res };
}

export function exportUrl(port: number, lun = 0): string {
  return `iscsi://127.0.0.1:${port}/${IQN}/${lun}`;
}
