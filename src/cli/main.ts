import yargs from 'yargs';
import type { CommandModule } from 'yargs';
import { applyEnvOptions, EXIT_USAGE, fail, seeHelp } from './common';
import { serveCommand } from './serve';
import { discoverCommand } from './discover';
import { demoCommand } from './demo';
import { targetCommand } from './target';
import { statusCommand } from './status';
import { reloadCommand } from './reload';
import { copyCommand } from './copy';
import { checkConfigCommand } from './check-config';
import { mapCommand, unmapCommand, listMappedCommand } from './map';
import { parseLunUrl } from '../iscsi/url';

// The command line: each command is a yargs CommandModule in its own file;
// this file only lists them and turns a failure into an exit code.

/** yargs calls middleware with the parsed arguments and itself (for the current command's options). */
function envMiddleware(argv: Record<string, unknown>, y: { getOptions(): { key: Record<string, unknown> } }): void {
  const known = y.getOptions().key;
  applyEnvOptions(argv, (k) => k in known);
}

/**
 * A command whose named arguments are iscsi:// URLs of one LUN: such a URL
 * without /<lun> is refused before the command runs (libiscsi does too),
 * instead of meaning LUN 0. Arguments that are not iscsi:// URLs (export
 * names, files, `-`) are the command's business.
 */
function needsLun<T>(cmd: CommandModule<object, T>, keys: readonly (keyof T & string)[]): CommandModule<object, T> {
  return {
    ...cmd,
    handler: (argv) => {
      for (const k of keys) {
        const v = (argv as Record<string, unknown>)[k];
        if (typeof v === 'string' && /^iscsi:\/\//i.test(v)) parseLunUrl(v);
      }
      return cmd.handler(argv);
    },
  };
}

export const COMMANDS: readonly CommandModule<object, never>[] = [
  discoverCommand,
  serveCommand,
  demoCommand,
  targetCommand,
  statusCommand,
  needsLun(copyCommand, ['src', 'dst']),
  checkConfigCommand,
  needsLun(mapCommand, ['url']),
  unmapCommand,
  listMappedCommand,
  reloadCommand,
] as unknown as CommandModule<object, never>[];

/** The names of the commands (`map <url>` -> `map`). */
export function commandNames(): string[] {
  return COMMANDS.map((c) => String(c.command).split(/\s+/)[0]);
}

/** The sub-command a command line is for: its first word that names one. */
export function commandOf(args: readonly string[]): string | undefined {
  const names = new Set(commandNames());
  for (const a of args) {
    if (a === '--') break;
    if (a.startsWith('-')) continue;
    return names.has(a) ? a : undefined;
  }
  return undefined;
}

export async function main(args: string[]): Promise<void> {
  let cli = yargs(args)
    .scriptName('iscsi-nbd')
    .usage('$0 <command> [options]\n\nServe iSCSI LUNs as NBD block devices.');
  for (const c of COMMANDS) cli = cli.command(c);
  cli = cli
    .completion('completion', 'print a bash/zsh completion script: source <(iscsi-nbd completion)')
    .middleware(envMiddleware as never, true)
    .demandCommand(1, `name a command: ${commandNames().join(', ')}`)
    .strict()
    .recommendCommands()
    .help('help')
    .alias('help', 'h')
    .version()
    .alias('version', 'V')
    .fail((msg, err) => {
      // A check() that returns a message passes it as `err` too: that is a usage error.
      if (err instanceof Error) fail(err);
      process.stderr.write(`iscsi-nbd: ${msg}\n${seeHelp(commandOf(args))}\n`);
      process.exit(EXIT_USAGE);
    });
  try {
    await cli.parseAsync();
  } catch (err) {
    fail(err);
  }
}
