import yargs, { Argv } from 'yargs';
import { IscsiNbdError } from '../errors';
import { createLogger, setRootLogger } from '../log';

// Exit codes a script can act on.
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_UNREACHABLE = 3;
export const EXIT_AUTH = 4;
export const EXIT_NOT_FOUND = 5;
export const EXIT_CONFIG = 6;

export function exitCodeFor(err: unknown): number {
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
      return EXIT_CONFIG;
    default:
      return EXIT_FAILURE;
  }
}

/** Options shared by every command that logs in somewhere. */
export function withCommonOptions<T>(y: Argv<T>) {
  return y
    .option('log-level', { type: 'string', default: process.env.ISCSI_NBD_LOG_LEVEL ?? 'info', describe: 'trace|debug|info|warn|error|silent' })
    .option('log-format', { choices: ['json', 'pretty', 'auto'] as const, default: 'auto', describe: 'pretty on a terminal by default' })
    .option('initiator-name', { type: 'string', describe: 'our iSCSI initiator name (else /etc/iscsi/initiatorname.iscsi, else a generated, persisted one)' })
    .option('chap-secret-file', { type: 'string', describe: 'read the CHAP secret from this file (instead of the URL)' })
    .option('chap-secret-env', { type: 'string', describe: 'read the CHAP secret from this environment variable', default: 'ISCSI_NBD_CHAP_SECRET' })
    .option('target-secret-file', { type: 'string', describe: 'mutual CHAP: the secret the target proves, from this file' })
    .option('target-secret-env', { type: 'string', describe: 'mutual CHAP: the target secret from this environment variable', default: 'ISCSI_NBD_TARGET_SECRET' })
    .option('digest', { choices: ['none', 'crc32c', 'prefer-crc32c', 'prefer-none'] as const, default: 'prefer-none', describe: 'header and data digests' });
}

export function setupLogging(argv: { 'log-level'?: string; 'log-format'?: string }): void {
  const fmt = argv['log-format'] ?? 'auto';
  setRootLogger(createLogger({ level: argv['log-level'], pretty: fmt === 'auto' ? undefined : fmt === 'pretty' }));
}

export function fail(err: unknown): never {
  const msg = err instanceof Error ? err.message : String(err);
  const code = err instanceof IscsiNbdError ? ` [${err.code}]` : '';
  process.stderr.write(`iscsi-nbd: ${msg}${code}\n`);
  process.exit(exitCodeFor(err));
}

export async function main(args: string[]): Promise<void> {
  const cli = yargs(args)
    .scriptName('iscsi-nbd')
    .usage('$0 <command> [options]\n\nServe iSCSI LUNs as NBD block devices.')
    .command('discover <url>', 'list the targets, portals and LUNs behind an iSCSI portal', (y) =>
      withCommonOptions(y)
        .positional('url', { type: 'string', demandOption: true, describe: 'iscsi://[user[%password]@]host[:port]' })
        .option('json', { type: 'boolean', default: false }),
      async (argv) => (await import('./discover')).run(argv as never))
    .command('serve', 'serve iSCSI LUNs to NBD clients', (y) => (require('./serve') as typeof import('./serve')).options(withCommonOptions(y)),
      async (argv) => (await import('./serve')).run(argv as never))
    .command('demo', 'run an embedded iSCSI target with a 1 GiB LUN and serve it as NBD export "demo"', (y) => (require('./demo') as typeof import('./demo')).options(withCommonOptions(y)),
      async (argv) => (await import('./demo')).run(argv as never))
    .command('target', 'run the embedded iSCSI target alone', (y) => (require('./target') as typeof import('./target')).options(withCommonOptions(y)),
      async (argv) => (await import('./target')).run(argv as never))
    .command('status', 'show the running daemon\'s exports, NBD clients and iSCSI sessions', (y) => (require('./status') as typeof import('./status')).options(y),
      async (argv) => (await import('./status')).run(argv as never))
    .command('copy <src> <dst>', 'copy an image file to a LUN or a LUN to an image file over iSCSI (sparse-aware)', (y) => (require('./copy') as typeof import('./copy')).options(withCommonOptions(y)),
      async (argv) => (await import('./copy')).run(argv as never))
    .command('check-config <file>', 'validate a YAML config file', (y) => y.positional('file', { type: 'string', demandOption: true }),
      async (argv) => (await import('./check-config')).run(argv as never))
    .demandCommand(1, 'name a command: discover, serve, demo, target, status, copy, check-config')
    .strict()
    .recommendCommands()
    .help()
    .version()
    .fail((msg, err, y) => {
      if (err) fail(err);
      void y;
      process.stderr.write(`iscsi-nbd: ${msg}\n(see iscsi-nbd --help)\n`);
      process.exit(EXIT_USAGE);
    });
  try {
    await cli.parseAsync();
  } catch (err) {
    fail(err);
  }
}
