import type { CommandModule } from 'yargs';
import { checkConfig, checkListenHosts, ConfigProblem, formatProblem, problemsError, readConfigFile } from '../config';

/**
 * Validate a config file without starting anything or logging in anywhere,
 * in one pass: YAML syntax and the schema (key and line), then every check
 * `serve` makes before it logs in (checkConfig: listen and metrics addresses,
 * names used twice, URLs without a LUN, TLS and secret files, devices, one
 * LUN under several names, plaintext NBD off loopback, an empty export list:
 * a warning, as in serve), each with its line. Warnings go to stderr; exit 0 when
 * there is no error, 6 (EXIT_CONFIG) with every error listed otherwise.
 */
export async function run(argv: { file: string }): Promise<void> {
  const file = readConfigFile(argv.file);
  const problems: ConfigProblem[] = [...file.problems];
  const cfg = file.loose;
  problems.push(...checkConfig(cfg, { file, emptyExports: 'check-config' }));
  problems.push(...(await checkListenHosts(cfg, { file })));
  // In file order, so that a person can walk down the file.
  const sorted = problems
    .map((p, i) => ({ p, i }))
    .sort((a, b) => (a.p.line ?? Infinity) - (b.p.line ?? Infinity) || a.i - b.i)
    .map((x) => x.p);
  for (const p of sorted) if (p.severity === 'warning') process.stderr.write(`iscsi-nbd: warning: ${formatProblem(p)}\n`);
  const err = problemsError(sorted);
  if (err) throw err;
  const n = cfg.exports.length;
  const warnings = sorted.length;
  process.stdout.write(
    `${argv.file}: OK (${n} export${n === 1 ? '' : 's'}${n ? ': ' + cfg.exports.map((e) => e.name).join(', ') : ''}` +
      `${cfg.devices.length ? `; ${cfg.devices.length} device${cfg.devices.length === 1 ? '' : 's'}` : ''}` +
      `${warnings ? `; ${warnings} warning${warnings === 1 ? '' : 's'}` : ''})\n`,
  );
}

export const checkConfigCommand: CommandModule<object, { file: string }> = {
  command: 'check-config <file>',
  describe: 'validate a YAML config file (every check serve makes before logging in)',
  builder: (y) => y.positional('file', { type: 'string', demandOption: true }) as never,
  handler: (argv) => run(argv),
};
