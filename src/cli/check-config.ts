import fs from 'node:fs';
import type { CommandModule } from 'yargs';
import { loadConfig, parseListen } from '../config';
import { parseIscsiUrl } from '../iscsi/url';
import { ConfigError } from '../errors';

/**
 * Validate a config file without starting anything or connecting anywhere:
 * the schema (errors name key and line), then what the schema cannot say -
 * URLs, listen addresses, files that must be readable. Exit 0 when it is
 * good, 6 (EXIT_CONFIG) with every problem listed otherwise.
 */
export async function run(argv: { file: string }): Promise<void> {
  const cfg = loadConfig(argv.file);
  const problems: string[] = [];
  const f = argv.file;
  for (const l of cfg.listen) {
    try {
      parseListen(l);
    } catch (err) {
      problems.push(`${f}: listen: ${(err as Error).message}`);
    }
  }
  if (cfg.metrics) {
    try {
      const m = parseListen(cfg.metrics, 9810);
      if ('path' in m) problems.push(`${f}: metrics: wants HOST:PORT, not a unix socket`);
    } catch (err) {
      problems.push(`${f}: metrics: ${(err as Error).message}`);
    }
  }
  const readable = (key: string, file: string | undefined) => {
    if (!file) return;
    try {
      fs.accessSync(file, fs.constants.R_OK);
    } catch {
      problems.push(`${f}: ${key}: cannot read ${file}`);
    }
  };
  if (cfg.tls.mode !== 'off' && (!cfg.tls.cert || !cfg.tls.key)) problems.push(`${f}: tls: mode ${cfg.tls.mode} needs cert and key`);
  if (cfg.tls.verifyClient && !cfg.tls.ca) problems.push(`${f}: tls.verifyClient needs tls.ca`);
  readable('tls.cert', cfg.tls.cert);
  readable('tls.key', cfg.tls.key);
  readable('tls.ca', cfg.tls.ca);
  cfg.exports.forEach((e, i) => {
    const key = `exports.${i} (${e.name})`;
    try {
      const u = parseIscsiUrl(e.url);
      if (!u.target) throw new ConfigError('EBADURL', 'the URL names no target (want iscsi://host/<iqn>/<lun>)');
      if (e.chap?.user && u.auth?.user && e.chap.user !== u.auth.user) problems.push(`${f}: ${key}.chap.user: differs from the user in the URL`);
    } catch (err) {
      problems.push(`${f}: ${key}.url: ${(err as Error).message}`);
    }
    for (const p of e.portals ?? []) {
      try {
        parseIscsiUrl(`iscsi://${p}`);
      } catch {
        problems.push(`${f}: ${key}.portals: bad portal "${p}" (want host[:port])`);
      }
    }
    readable(`${key}.chap.secretFile`, e.chap?.secretFile);
    readable(`${key}.chap.targetSecretFile`, e.chap?.targetSecretFile);
    if (e.chap && !e.chap.user) problems.push(`${f}: ${key}.chap: needs user`);
  });
  if (problems.length > 0) throw new ConfigError('ECONFIG', problems.join('\n'));
  const n = cfg.exports.length;
  process.stdout.write(`${f}: OK (${n} export${n === 1 ? '' : 's'}${n ? ': ' + cfg.exports.map((e) => e.name).join(', ') : ''})\n`);
}

export const checkConfigCommand: CommandModule<object, { file: string }> = {
  command: 'check-config <file>',
  describe: 'validate a YAML config file',
  builder: (y) => y.positional('file', { type: 'string', demandOption: true }) as never,
  handler: (argv) => run(argv),
};
