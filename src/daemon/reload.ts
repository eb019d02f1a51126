import { isDeepStrictEqual } from 'node:util';
import type { ExportConfig } from '../config';

// What a reload does to the running exports, decided without touching any:
// an export whose spec changed in any way is closed and opened again (its
// clients drain first), because a new URL, portal list or CHAP secret can
// mean another LUN; unchanged exports keep their clients.

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
