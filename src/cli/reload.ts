import type { Argv, CommandModule } from 'yargs';
import { callControl } from '../daemon/control';
import { defaultControlPath } from '../daemon/paths';
import type { ReloadOutcome } from '../daemon/daemon';

// `iscsi-nbd reload`: the same as SIGHUP, through the control socket, with
// the answer: what changed, which exports are not open, and which changed
// keys wait for a restart. A config the daemon refuses comes back as an
// ECONFIG error (exit 6); exports that are not open after it (added, changed
// or kept: they keep retrying) make the exit code 1.

export interface ReloadArgs {
  control?: string;
  json: boolean;
  timeout: number;
}

export function options<T>(y: Argv<T>) {
  return y
    .option('control', { type: 'string', describe: 'the daemon\'s control socket (default: the one `serve` uses)' })
    .option('json', { type: 'boolean', default: false, describe: 'print the daemon\'s answer as JSON' })
    .option('timeout', { type: 'number', default: 120, describe: 'seconds to wait for the reload (removed exports drain for up to 30 s)' });
}

const list = (names: readonly string[]): string => (names.length ? names.join(', ') : '-');

/** The reload's outcome, for a person. */
export function renderReload(o: ReloadOutcome): string {
  const plan = o.plan ?? { add: [], remove: [], change: [], keep: [] };
  const state = new Map(o.exports.map((e) => [e.name, e.state]));
  const out: string[] = [];
  const changes = plan.add.length + plan.remove.length + plan.change.length;
  out.push(changes === 0
    ? `reload: no change (${plan.keep.length} kept)`
    : `reload: ${plan.add.length} added, ${plan.remove.length} removed, ${plan.change.length} changed, ${plan.keep.length} kept`);
  const named = (n: string): string => `${n} (${state.get(n) ?? 'gone'})`;
  out.push(`  added:   ${list(plan.add.map(named))}`);
  out.push(`  removed: ${list(plan.remove)}`);
  out.push(`  changed: ${list(plan.change.map(named))}`);
  out.push(`  kept:    ${list(plan.keep.map(named))}`);
  for (const e of o.errors) out.push(`  ${e.export}: ${e.kept ? 'still failed' : 'could not be opened'} (retrying): ${e.error}`);
  if (o.restartNeeded?.length) {
    out.push(`  not applied: ${o.restartNeeded.join(', ')} changed in the file, but ${o.restartNeeded.length === 1 ? 'changes' : 'change'} only on a restart ` +
      '(systemctl restart iscsi-nbd; mapped devices stay attached)');
  }
  return out.join('\n') + '\n';
}

export async function run(argv: ReloadArgs): Promise<void> {
  const control = argv.control ?? defaultControlPath();
  const o = await callControl<ReloadOutcome>(control, { op: 'reload' }, Math.max(1, argv.timeout) * 1000);
  process.stdout.write(argv.json ? JSON.stringify(o, null, 2) + '\n' : renderReload(o));
  if (o.errors.length > 0) {
    const n = o.errors.length;
    throw new Error(`reload: ${n} export${n === 1 ? '' : 's'} could not be opened and keep${n === 1 ? 's' : ''} retrying: ${o.errors.map((e) => e.export).join(', ')}`);
  }
}

export const reloadCommand: CommandModule<object, ReloadArgs> = {
  command: 'reload',
  describe: 'make the running daemon re-read its --config file (like SIGHUP) and print what changed',
  builder: (y) => options(y) as unknown as Argv<ReloadArgs>,
  handler: (argv) => run(argv),
};
