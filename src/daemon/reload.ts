import { isDeepStrictEqual } from 'node:util';
import type { ExportConfig } from '../config';
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

/** Absent and undefined keys mean the same thing in a config. */
function normalize(e: ExportConfig): Record<string, unknown> {
  return JSON.parse(JSON.stringify(e)) as Record<string, unknown>;
}

/** What a reload did (the control op `reload` answers it; SIGHUP logs it). */
export interface ReloadOutcome {
  /** The new config was read and applied, and every export in the plan opened. */
  ok: boolean;
  /** Why the new config was refused (nothing changed then). */
  refused?: string;
  plan?: ReloadPlan;
  /** Added or changed exports that could not be opened (they stay `failed` and keep retrying). */
  errors: { export: string; error: string }[];
  /** Every export after the reload, with its state. */
  exports: { name: string; state: string }[];
}

/** What applying a plan touches: the served exports, their NBD clients, their metrics. */
export interface ReloadPorts {
  exports: Pick<ExportManager, 'exports' | 'remove' | 'start'>;
  server: Pick<NbdServer, 'drainExport'>;
  metrics?: Pick<Metrics, 'forgetExport' | 'recordReload'>;
  log: Logger;
}

export function exportStates(exports: ReloadPorts['exports']): ReloadOutcome['exports'] {
  return [...exports.exports.values()].map((e) => ({ name: e.name, state: e.state }));
}

/** Plan the move from the running exports to `next`, and make it. */
export async function applyReload(next: readonly ExportConfig[], ports: ReloadPorts): Promise<ReloadOutcome> {
  const { exports, server, metrics, log } = ports;
  const plan = planReload([...exports.exports.values()].map((e) => e.spec), next);
  log.info(plan, 'reload: plan');
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
  const ok = errors.length === 0;
  log.info({ exports: [...exports.exports.keys()], failed: errors.map((e) => e.export) }, 'reload: done');
  metrics?.recordReload(ok);
  return { ok, plan, errors, exports: exportStates(exports) };
}
