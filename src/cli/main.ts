import yargs from 'yargs';
import type { Argv, CommandModule } from 'yargs';
import { applyEnvOptions, checkNumberOptions, envHelp, EXIT_USAGE, fail, seeHelp, UsageError } from './common';
import { serveCommand } from './serve';
import { discoverCommand } from './discover';
import { demoCommand } from './demo';
import { targetCommand } from './target';
import { statusCommand } from './status';
import { reloadCommand } from './reload';
import { copyCommand } from './copy';
import { checkConfigCommand } from './check-config';
import { mapCommand, unmapCommand, listMappedCommand } from './map';
import { resizeCommand } from './resize';
import { parseLunUrl } from '../iscsi/url';

// The command line: each command is a yargs CommandModule in its own file;
// this file only lists them and turns a failure into an exit code.

/**
 * yargs calls middleware with the parsed arguments and itself (for the
 * current command's options): environment variables fill options left out,
 * and a number option given a non-number is refused before the command runs.
 */
function envMiddleware(args: readonly string[]) {
  return (argv: Record<string, unknown>, y: { getOptions(): { key: Record<string, unknown>; number: string[] } }): void => {
    const o = y.getOptions();
    try {
      checkNumberOptions(argv, o.number, args);
      applyEnvOptions(argv, (k) => k in o.key);
    } catch (err) {
      // Point a usage error at the command's --help.
      throw err instanceof UsageError && !err.command ? new UsageError(err.message, commandOf(args)) : err;
    }
  };
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
  resizeCommand,
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

interface KnownOptions {
  key: Record<string, unknown>;
  alias: Record<string, string[]>;
}

/** The options a command knows (its builder run on a yargs of its own), plus the global ones. */
function optionsOf(command: string | undefined): KnownOptions {
  const y = yargs([]);
  const c = COMMANDS.find((m) => String(m.command).split(/\s+/)[0] === command);
  if (typeof c?.builder === 'function') (c.builder as (y: unknown) => unknown)(y);
  const o = (y as unknown as { getOptions(): KnownOptions }).getOptions();
  return { key: { ...o.key, help: true, h: true, version: true, V: true }, alias: o.alias ?? {} };
}

/**
 * `discover --bogus 127.0.0.1:3299`: an unknown option takes the word after
 * it as its value, and yargs then says only that an argument is missing. Name
 * the unknown option and the word it took instead.
 */
export function swallowedArgument(args: readonly string[], o: KnownOptions): string | undefined {
  const known = new Set<string>(Object.keys(o.key));
  for (const names of Object.values(o.alias ?? {})) for (const n of names) known.add(n);
  const camel = (k: string): string => k.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
  for (let i = 0; i < args.length - 1; i++) {
    const a = args[i];
    if (a === '--') break;
    const m = /^--?(?:no-)?([^=]+)$/.exec(a);
    if (!m || known.has(m[1]) || known.has(camel(m[1]))) continue;
    const next = args[i + 1];
    if (next.startsWith('-')) continue;
    return `unknown option ${a}: it took "${next}" as its value, which left no room for the command's own argument`;
  }
  return undefined;
}

/** A command whose --help ends with the ISCSI_NBD_* variables that stand for its options. */
function withEnvHelp(c: CommandModule<object, never>): CommandModule<object, never> {
  if (typeof c.builder !== 'function') return c;
  const builder = c.builder as (y: Argv) => Argv;
  return {
    ...c,
    builder: ((y: Argv) => {
      const b = builder(y);
      const text = envHelp((k) => k in (b as unknown as { getOptions(): KnownOptions }).getOptions().key);
      return text ? b.epilogue(text) : b;
    }) as never,
  };
}

const COMPLETION_HELP = `iscsi-nbd completion

Print a bash/zsh completion script for iscsi-nbd:
  source <(iscsi-nbd completion)                              # this shell
  iscsi-nbd completion > /etc/bash_completion.d/iscsi-nbd     # every bash
`;

export async function main(args: string[]): Promise<void> {
  // yargs answers `completion --help` with the script itself.
  if (args[0] === 'completion' && args.slice(1).some((a) => a === '--help' || a === '-h')) {
    process.stdout.write(COMPLETION_HELP);
    return;
  }
  let cli = yargs(args)
    .scriptName('iscsi-nbd')
    .usage('$0 <command> [options]\n\nServe iSCSI LUNs as NBD block devices.');
  for (const c of COMMANDS) cli = cli.command(withEnvHelp(c));
  cli = cli
    .completion('completion', 'print a bash/zsh completion script: source <(iscsi-nbd completion)')
    .middleware(envMiddleware(args) as never, true)
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
      const swallowed = /^Not enough non-option arguments/.test(msg) ? swallowedArgument(args, optionsOf(commandOf(args))) : undefined;
      if (swallowed) msg = swallowed;
      process.stderr.write(`iscsi-nbd: ${msg}\n${seeHelp(commandOf(args))}\n`);
      process.exit(EXIT_USAGE);
    });
  try {
    await cli.parseAsync();
  } catch (err) {
    fail(err);
  }
}
