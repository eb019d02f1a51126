import { isDeepStrictEqual } from 'node:util';
import type { DaemonConfig, ExportConfig } from '../config';
import type { ExportManager } from '../bridge/manager';
import type { NbdServer } from '../nbd/server';
import type { Metrics } from '../metrics';
import type { Logger } from '../log';

// What a reload does to the running exports, decided without touching any:
// an export whose spec changed in any way is closed and opened again (its
// clients drain first), because a new URL, portal list or CHAP secret can
// mean another LUN; unchanged exports keep their clients. `planReload`
// decides, `applyReload` carries the plan out through the ports it is given.

export interface ReloadPlan {
  /** In the running set, not in the new config: drained and closed. */
  remove: string[];
  /** In both, with a different spec: drained, closed and opened again. */
  change: string[];
  /** Only in the new config: opened. */
  add: string[];
  /** In both, unchanged: left alone. */
  keep: string[];
}

export function planReload(current: Iterable<ExportConfig>, next: readonly ExportConfig[]): ReloadPlan {
  const want = new Map(next.map((e) => [e.name, e]));
  const plan: ReloadPlan = { remove: [], change: [], add: [], keep: [] };
  const running = new Set<string>();
  for (const spec of current) {
    running.add(spec.name);
    const w = want.get(spec.name);
    if (!w) plan.remove.push(spec.name);
    else if (isDeepStrictEqual(normalize(w), normalize(spec))) plan.keep.push(spec.name);
    else plan.change.push(spec.name);
  }
  for (const name of want.keys()) if (!running.has(name)) plan.add.push(name);
  return plan;
}

/**
 * What a reload does not apply: everything but `exports`. The listeners, TLS,
 * metrics, the control socket and the defaults every session was made with
 * change on the next start (which keeps mapped devices); `devices:` is read
 * at the start only.
 */
export const RESTART_KEYS = [
  'listen', 'tls', 'metrics', 'control', 'stateDir', 'initiatorName', 'sessions', 'digest', 'readOnly', 'timeouts', 'logLevel', 'connections', 'devices',
  'ifaces',
] as const satisfies readonly (keyof DaemonConfig)[];

/** The keys of RESTART_KEYS whose value in `next` differs from the running daemon's. */
export function restartOnlyChanges(running: DaemonConfig, next: DaemonConfig): string[] {
  return RESTART_KEYS.filter((k) => !isDeepStrictEqual(normalize(running[k]), normalize(next[k])));
}

/** Absent and undefined keys mean the same thing in a config. */
function normalize(e: unknown): unknown {
  return e === undefined ? undefined : JSON.parse(JSON.stringify(e));
}

/** What a reload did (the control op `reload` answers it; SIGHUP logs it). */
export interface ReloadOutcome {
  /** The new config was read and applied, and every export in the plan opened. */
  ok: boolean;
  /** Why the new config was refused (nothing changed then). */
  refused?: string;
  plan?: ReloadPlan;
  /**
   * Exports that are not open after the reload: added or changed ones that
   * could not be opened, and kept ones that were failed already (`kept`).
   * They stay `failed` and keep retrying.
   */
  errors: { export: string; error: string; kept?: boolean }[];
  /** Keys of the new config that differ from the running daemon's but change only on a restart (RESTART_KEYS). */
  restartNeeded?: string[];
  /** Every export after the reload, with its state. */
  exports: { name: string; state: string }[];
}

/** What applying a plan touches: the served exports, their NBD clients, their metrics. */
export interface ReloadPorts {
  exports: Pick<ExportManager, 'exports' | 'remove' | 'start'>;
  server: Pick<NbdServer, 'drainExport'>;
  metrics?: Pick<Metrics, 'forgetExport' | 'recordReload'>;
  log: Logger;
  /** The configuration the daemon started with: what a restart-only key is compared with. */
  running?: DaemonConfig;
}

export function exportStates(exports: ReloadPorts['exports']): ReloadOutcome['exports'] {
  return [...exports.exports.values()].map((e) => ({ name: e.name, state: e.state }));
}

/** Plan the move from the running exports to those of `config`, and make it. */
export async function applyReload(config: DaemonConfig, ports: ReloadPorts): Promise<ReloadOutcome> {
  const { exports, server, metrics, log, running } = ports;
  const next = config.exports;
  const plan = planReload([...exports.exports.values()].map((e) => e.spec), next);
  const restartNeeded = running ? restartOnlyChanges(running, config) : [];
  log.info({ ...plan, restartNeeded }, 'reload: plan');
  if (restartNeeded.length) log.warn({ keys: restartNeeded }, 'reload: these keys change only on a restart (mapped devices stay across it); the daemon runs on with the old values');
  const want = new Map(next.map((e) => [e.name, e]));
  // Removed and changed exports: their clients drain, then their sessions log out.
  await Promise.all(
    [...plan.remove, ...plan.change].map(async (name) => {
      log.info({ export: name }, want.has(name) ? 'reload: export changed, re-opening' : 'reload: export removed, draining');
      await server.drainExport(name);
      await exports.remove(name);
      await metrics?.forgetExport(name);
      log.info({ export: name }, 'reload: export closed');
    }),
  );
  const errors: ReloadOutcome['errors'] = [];
  await Promise.all(
    [...plan.change, ...plan.add].map(async (name) => {
      try {
        // Like at the start: an export that cannot be opened stays, failed, and is retried.
        const { error } = await exports.start(want.get(name)!);
        if (error) {
          errors.push({ export: name, error: error.message });
          log.error({ export: name, err: error }, 'reload: export could not be opened; it keeps retrying');
        } else {
          log.info({ export: name }, 'reload: export added');
        }
      } catch (err) {
        errors.push({ export: name, error: (err as Error)?.message ?? String(err) });
        log.error({ export: name, err }, 'reload: export could not be opened');
      }
    }),
  );
  // A kept export that is failed is still not served: a reload that leaves it so is no success.
  for (const e of exports.exports.values()) {
    if (e.state === 'failed' && !errors.some((x) => x.export === e.name)) errors.push({ export: e.name, error: e.lastError?.message ?? 'could not be opened', kept: true });
  }
  const ok = errors.length === 0;
  log.info({ exports: [...exports.exports.keys()], failed: errors.map((e) => e.export), restartNeeded }, 'reload: done');
  metrics?.recordReload(ok);
  return { ok, plan, errors, exports: exportStates(exports), restartNeeded };
}
