import type { Argv } from 'yargs';
import { ConfigError, IscsiNbdError } from '../errors';
import { createLogger, setRootLogger, tell } from '../log';
import { DIGEST_MODES, LOG_LEVELS, MAX_SESSIONS } from '../config';
import { ifaceProblem } from '../util/bind-device';

// What every command shares: exit codes, the common options, logging setup
// and the one place an error becomes a message and an exit code.

// Exit codes a script can act on.
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_UNREACHABLE = 3;
export const EXIT_AUTH = 4;
export const EXIT_NOT_FOUND = 5;
export const EXIT_CONFIG = 6;

/**
 * A command line that does not make sense (exit 2), found after yargs parsed
 * it; `command` names the sub-command whose --help to point at.
 */
export class UsageError extends Error {
  constructor(message: string, readonly command?: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof UsageError) return EXIT_USAGE;
  if (!(err instanceof IscsiNbdError)) return EXIT_FAILURE;
  switch (err.code) {
    case 'ECONNECT':
    case 'ETIMEOUT':
    case 'ECONNLOST':
      return EXIT_UNREACHABLE;
    case 'EAUTH':
      return EXIT_AUTH;
    case 'ENOTARGET':
    case 'ENOLUN':
      return EXIT_NOT_FOUND;
    case 'EBADURL':
    case 'EBADNAME':
    case 'ECONFIG':
    case 'ENODEV': // an interface (--iface, ifaces:) this host does not have
      return EXIT_CONFIG;
    default:
      return EXIT_FAILURE;
  }
}

export interface LogArgs {
  'log-level'?: string;
  'log-format'?: string;
}


/** The log options, for every command that logs. */
export function withLogOptions<T>(y: Argv<T>) {
  return y
    .option('log-level', { choices: LOG_LEVELS, describe: 'default info (warn for one-shot commands)' })
    .option('log-format', { choices: ['json', 'pretty', 'auto'] as const, default: 'auto', describe: 'auto: text, except JSON lines when serve or target run off a terminal' });
}

/** Options shared by every command that logs in somewhere (an initiator: its name, CHAP, digests). */
export function withCommonOptions<T>(y: Argv<T>) {
  return withLogOptions(y)
    .option('initiator-name', { type: 'string', describe: 'our iSCSI initiator name (else /etc/iscsi/initiatorname.iscsi, else a generated, persisted one)' })
    .option('chap-secret-file', { type: 'string', describe: 'read the CHAP secret from this file (instead of the URL)' })
    .option('chap-secret-env', { type: 'string', describe: 'read the CHAP secret from this environment variable', default: 'ISCSI_NBD_CHAP_SECRET' })
    .option('target-secret-file', { type: 'string', describe: 'mutual CHAP: the secret the target proves, from this file' })
    .option('target-secret-env', { type: 'string', describe: 'mutual CHAP: the target secret from this environment variable', default: 'ISCSI_NBD_TARGET_SECRET' })
    .option('digest', { choices: DIGEST_MODES, describe: 'header and data digests (default prefer-none)' });
}

/** --iface NAME (repeatable): the interfaces the iSCSI sessions leave through (`map`, `serve`, `discover`). */
export function withIfaceOption<T>(y: Argv<T>) {
  return y
    .option('iface', {
      type: 'string',
      array: true,
      describe: 'network interface (eth1) or IP address of this host the iSCSI sessions leave through (repeatable: one session per interface per portal, as open-iscsi\'s iface binding; binding to an interface needs CAP_NET_RAW)',
    })
    .check((argv) => {
      const list = (argv as { iface?: unknown[] }).iface;
      for (const v of list ?? []) {
        const why = ifaceProblem(typeof v === 'string' ? v : String(v));
        if (why) return `--iface: ${why}`;
      }
      if (list && new Set(list).size !== list.length) return '--iface: an interface is given twice';
      return true;
    });
}

/**
 * Environment variables that stand for options: a flag on the command line
 * wins over the variable, and both win over the config file. Applied as
 * yargs middleware before validation, so choices and types are checked.
 * (Not yargs' .env(): it turns every ISCSI_NBD_* variable into an option,
 * which strict mode then rejects, ISCSI_NBD_CHAP_SECRET among them.)
 */
const ENV_OPTIONS: Record<string, { key: string; kind: 'string' | 'list' | 'number' | 'boolean'; range?: [number, number] }> = {
  ISCSI_NBD_LOG_LEVEL: { key: 'log-level', kind: 'string' },
  ISCSI_NBD_LISTEN: { key: 'listen', kind: 'list' },
  ISCSI_NBD_METRICS: { key: 'metrics', kind: 'string' },
  ISCSI_NBD_INITIATOR_NAME: { key: 'initiator-name', kind: 'string' },
  ISCSI_NBD_CONTROL: { key: 'control', kind: 'string' },
  ISCSI_NBD_SESSIONS: { key: 'sessions', kind: 'number', range: [1, MAX_SESSIONS] },
  ISCSI_NBD_DIGEST: { key: 'digest', kind: 'string' },
  ISCSI_NBD_READ_ONLY: { key: 'read-only', kind: 'boolean' },
  ISCSI_NBD_STATE_DIR: { key: 'state-dir', kind: 'string' },
  ISCSI_NBD_DISCOVERY_CHAP: { key: 'discovery-chap', kind: 'string' },
};

/**
 * The --help epilogue: the ISCSI_NBD_* variables that stand for options this
 * command has (`known`), and the secret variables when it reads secrets.
 */
export function envHelp(known: (key: string) => boolean): string {
  const lines = Object.entries(ENV_OPTIONS).filter(([, o]) => known(o.key)).map(([name, o]) => `  ${name.padEnd(26)} --${o.key}`);
  if (known('chap-secret-env')) lines.push(`  ${'ISCSI_NBD_CHAP_SECRET'.padEnd(26)} the CHAP secret`);
  if (known('target-secret-env')) lines.push(`  ${'ISCSI_NBD_TARGET_SECRET'.padEnd(26)} the mutual CHAP secret`);
  if (lines.length === 0) return '';
  return ['Environment (a flag on the command line wins; both win over the config file):', ...lines].join('\n');
}

const TRUE_WORDS = /^(1|true|yes|on)$/i;
const FALSE_WORDS = /^(0|false|no|off)$/i;

/**
 * Fill the options of this command that the command line left out (these
 * have no yargs default) from the environment. A value not of the option's
 * kind (a boolean that is neither yes nor no, a number that is not one) is a
 * UsageError, and an out-of-range number a ConfigError, naming the variable:
 * the same rule as for the flag (exit 2 for the form, exit 6 for the value).
 */
export function applyEnvOptions(argv: Record<string, unknown>, known: (key: string) => boolean, env: NodeJS.ProcessEnv = process.env): void {
  for (const [name, { key, kind, range }] of Object.entries(ENV_OPTIONS)) {
    const raw = env[name];
    if (raw === undefined || raw === '' || !known(key) || argv[key] !== undefined) continue;
    let value: unknown = raw;
    if (kind === 'list') value = raw.split(',').map((s) => s.trim()).filter(Boolean);
    else if (kind === 'boolean') {
      if (TRUE_WORDS.test(raw.trim())) value = true;
      else if (FALSE_WORDS.test(raw.trim())) value = false;
      else throw new UsageError(`${name}=${raw} is not a yes or no: use 1/0, true/false, yes/no or on/off (it stands for --${key})`);
    } else if (kind === 'number') {
      const n = raw.trim() === '' ? NaN : Number(raw);
      if (!Number.isFinite(n)) throw new UsageError(`${name}=${raw} is not a number (it stands for --${key})`);
      if (range && (!Number.isInteger(n) || n < range[0] || n > range[1])) {
        throw new ConfigError('ECONFIG', `${name}=${raw}: must be a whole number ${range[0]}..${range[1]} (it stands for --${key})`);
      }
      value = n;
    }
    argv[key] = value;
    argv[key.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase())] = value;
  }
}

/**
 * Number options given something that is not a number (yargs makes it NaN):
 * a usage error that quotes what was typed, before any command runs.
 */
export function checkNumberOptions(argv: Record<string, unknown>, numberKeys: readonly string[], args: readonly string[]): void {
  for (const key of numberKeys) {
    const v = argv[key];
    const values = Array.isArray(v) ? v : [v];
    if (!values.some((x) => typeof x === 'number' && Number.isNaN(x))) continue;
    throw new UsageError(`--${key} wants a number, got ${JSON.stringify(typedValue(args, key) ?? String(v))}`);
  }
}

/** What followed --key (or --key=) on the command line. */
function typedValue(args: readonly string[], key: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${key}`) return args[i + 1];
    if (args[i].startsWith(`--${key}=`)) return args[i].slice(key.length + 3);
  }
  return undefined;
}

/**
 * The root logger for a command. `--log-format auto` is JSON off a terminal
 * for a service (serve, target: journald and log collectors read it), but
 * text for a one-shot command (discover, copy): a person or a script reads
 * its stderr, so errors, warnings and progress stay plain text unless
 * `--log-format json` asks for JSON lines.
 */
export function setupLogging(argv: LogArgs, fallbackLevel = 'info', oneShot = false): void {
  const fmt = argv['log-format'] ?? 'auto';
  const pretty = fmt === 'auto' ? (oneShot ? true : undefined) : fmt === 'pretty';
  setRootLogger(createLogger({ level: argv['log-level'] ?? fallbackLevel, pretty }));
}

/** The line that sends a person with a usage error to the right --help. */
export function seeHelp(command?: string): string {
  return `(see iscsi-nbd ${command ? `${command} ` : ''}--help)`;
}

export function fail(err: unknown): never {
  const msg = err instanceof Error ? err.message : String(err);
  const code = err instanceof IscsiNbdError ? ` [${err.code}]` : '';
  const help = err instanceof UsageError ? `\n${seeHelp(err.command)}` : '';
  // Plain text unless stderr carries JSON log lines: then one JSON line (level error).
  tell('error', msg, {
    code: err instanceof IscsiNbdError ? err.code : undefined,
    help: err instanceof UsageError ? seeHelp(err.command) : undefined,
  }, `iscsi-nbd: ${msg}${code}${help}`);
  process.exit(exitCodeFor(err));
}

/** A warning the operator should see whatever the log settings: on stderr, before logging starts. */
export function warn(message: string): void {
  tell('warn', message, {}, `iscsi-nbd: warning: ${message}`);
}
