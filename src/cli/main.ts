import yargs from 'yargs';
import { applyEnvOptions, EXIT_USAGE, fail } from './common';
import { serveCommand } from './serve';
import { discoverCommand } from './discover';
import { demoCommand } from './demo';
import { targetCommand } from './target';
import { statusCommand } from './status';
import { copyCommand } from './copy';
import { checkConfigCommand } from './check-config';
import { mapCommand, unmapCommand, listMappedCommand } from './map';

// The command line: each command is a yargs CommandModule in its own file;
// this file only lists them and turns a failure into an exit code.

/** yargs calls middleware with the parsed arguments and itself (for the current command's options). */
function envMiddleware(argv: Record<string, unknown>, y: { getOptions(): { key: Record<string, unknown> } }): void {
  const known = y.getOptions().key;
  applyEnvOptions(argv, (k) => k in known);
}

export async function main(args: string[]): Promise<void> {
  const cli = yargs(args)
    .scriptName('iscsi-nbd')
    .usage('$0 <command> [options]\n\nServe iSCSI LUNs as NBD block devices.')
    .command(discoverCommand)
    .command(serveCommand)
    .command(demoCommand)
    .command(targetCommand)
    .command(statusCommand)
    .command(copyCommand)
    .command(checkConfigCommand)
    .command(mapCommand)
    .command(unmapCommand)
    .command(listMappedCommand)
    .middleware(envMiddleware as never, true)
    .demandCommand(1, 'name a command: discover, serve, map, unmap, list-mapped, demo, target, status, copy, check-config')
    .strict()
    .recommendCommands()
    .help()
    .version()
    .fail((msg, err) => {
      if (err) fail(err);
      process.stderr.write(`iscsi-nbd: ${msg}\n(see iscsi-nbd --help)\n`);
      process.exit(EXIT_USAGE);
    });
  try {
    await cli.parseAsync();
  } catch (err) {
    fail(err);
  }
}
