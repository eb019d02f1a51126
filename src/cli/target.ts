// `iscsi-nbd target`: run the embedded iSCSI target alone.

import type { Argv, CommandModule } from 'yargs';
import { ConfigError } from '../errors';
import { parseListen } from '../config';
import { ISCSI_PORT } from '../iscsi/constants';
import { rootLogger } from '../log';
import { FileBackend, LunBackend, MemoryBackend, parseSize, SIZE_FORMS } from '../target/backend';
import type { ChapConfig } from '../target/engine';
import { TargetServer } from '../target/server';
import { setupLogging, withLogOptions } from './common';

export const DEFAULT_TARGET_NAME = 'iqn.2026-11.io.iscsi-nbd:target';

export function options<T>(y: Argv<T>) {
  return y
    .option('listen', { type: 'string', default: '127.0.0.1:3260', describe: 'HOST:PORT of the iSCSI portal' })
    .option('lun', { type: 'string', array: true, describe: 'FILE (sparse file, created with --size if missing) or SIZE like 1G (memory LUN); repeatable, numbered from 0' })
    .option('size', { type: 'string', default: '1G', describe: 'size of LUN files that do not exist yet' })
    .option('block-size', { type: 'number', choices: [512, 4096], default: 512, describe: 'logical block size' })
    .option('target-name', { type: 'string', default: DEFAULT_TARGET_NAME, describe: 'iSCSI name of the target' })
    .option('chap', { type: 'string', describe: 'USER:SECRET the initiator must authenticate with' })
    .option('mutual-chap', { type: 'string', describe: 'USER:SECRET the target answers mutual CHAP with' })
    .option('read-only', { type: 'boolean', default: false, describe: 'serve every LUN write-protected' })
    .option('nop-interval', { type: 'number', default: 0, describe: 'seconds between NOP-In pings (0: none)' });
}

export interface TargetArgs {
  listen: string;
  lun?: string[];
  size: string;
  'block-size': number;
  'target-name': string;
  chap?: string;
  'mutual-chap'?: string;
  'read-only'?: boolean;
  'nop-interval'?: number;
  'log-level'?: string;
  'log-format'?: string;
}

/** "host:port", "[v6]:port", ":port", "port" (on 127.0.0.1) or "host" (port 3260). */
export function parseListenAddress(s: string): { host: string; port: number } {
  let a: ReturnType<typeof parseListen>;
  try {
    a = parseListen(s.trim(), ISCSI_PORT);
  } catch (e) {
    throw new ConfigError('ECONFIG', `bad --listen "${s}": ${(e as Error).message}`, { cause: e });
  }
  if ('path' in a) throw new ConfigError('ECONFIG', `bad --listen "${s}": an iSCSI portal is HOST:PORT, not a unix socket`);
  return a;
}

function splitCred(s: string, what: string): { user: string; secret: string } {
  const i = s.indexOf(':');
  if (i <= 0 || i === s.length - 1) throw new ConfigError('ECONFIG', `${what} must be USER:SECRET`);
  const secret = s.slice(i + 1);
  // RFC 7143 12.1.3: secrets of at least 12 bytes; libiscsi and open-iscsi accept shorter ones, so only warn.
  if (secret.length < 12) rootLogger().warn(`${what} secret is shorter than the 12 bytes RFC 7143 asks for`);
  return { user: s.slice(0, i), secret };
}

/**
 * A --lun argument: a size (a memory LUN), a mistyped size, or a file. Anything
 * shaped like a number with a unit ("12Q", "10Gb" is fine, "3X" is not) is a
 * size: a typo must not become a new 1 GiB file named "12Q".
 */
export function lunSpecKind(spec: string): 'size' | 'file' {
  if (/^\d+(?:\.\d+)?\s*[A-Za-z]*$/.test(spec.trim())) return 'size';
  return 'file';
}

function lunSize(spec: string, i: number): number {
  try {
    return parseSize(spec);
  } catch (e) {
    throw new ConfigError(
      'ECONFIG',
      `bad size "${spec}" in --lun (LUN ${i}): use ${SIZE_FORMS} for a memory LUN, or a path for a file LUN (./${spec} for a file named like that)`,
      { cause: e },
    );
  }
}

export async function openLuns(a: Pick<TargetArgs, 'lun' | 'size' | 'block-size' | 'read-only'>): Promise<LunBackend[]> {
  const specs = a.lun && a.lun.length > 0 ? a.lun : ['1G'];
  const bs = a['block-size'];
  // --size is checked even when no file LUN needs it: a typo is a typo.
  let fileSize: number;
  try {
    fileSize = parseSize(a.size);
  } catch (e) {
    throw new ConfigError('ECONFIG', `bad --size "${a.size}": use ${SIZE_FORMS}`, { cause: e });
  }
  const out: LunBackend[] = [];
  try {
    for (const [i, spec] of specs.entries()) {
      if (lunSpecKind(spec) === 'size') {
        out.push(new MemoryBackend({ size: roundDown(lunSize(spec, i), bs), blockSize: bs, readOnly: a['read-only'], identitySeed: `memory-lun:${i}` }));
      } else {
        out.push(await FileBackend.open({ path: spec, size: roundDown(fileSize, bs), blockSize: bs, readOnly: a['read-only'] }));
      }
    }
  } catch (e) {
    for (const b of out) await b.close().catch(() => undefined);
    throw e;
  }
  return out;
}

function roundDown(n: number, bs: number): number {
  const r = Math.floor(n / bs) * bs;
  if (r <= 0) throw new ConfigError('ECONFIG', `size ${n} is smaller than one block`);
  return r;
}

export async function run(argv: TargetArgs): Promise<void> {
  setupLogging(argv);
  const log = rootLogger();
  const listen = parseListenAddress(argv.listen);
  let chap: ChapConfig | undefined;
  if (argv.chap) chap = splitCred(argv.chap, '--chap');
  if (argv['mutual-chap']) {
    if (!chap) throw new ConfigError('ECONFIG', '--mutual-chap needs --chap');
    const m = splitCred(argv['mutual-chap'], '--mutual-chap');
    chap = { ...chap, mutualUser: m.user, mutualSecret: m.secret };
  }
  const backends = await openLuns(argv);
  const server = new TargetServer({
    targets: [{ name: argv['target-name'], luns: backends.map((backend, lun) => ({ lun, backend })), chap }],
    log,
    nopInIntervalMs: (argv['nop-interval'] ?? 0) * 1000,
  });
  try {
    await server.listen(listen);
  } catch (e) {
    await server.close();
    throw new ConfigError('ECONFIG', `cannot listen on ${argv.listen}: ${(e as Error).message}`, { cause: e });
  }
  const name = server.targetNames[0];
  log.info({ portal: server.portal, target: name, luns: backends.map((b) => ({ kind: b.kind, size: b.size, blockSize: b.blockSize })) }, 'target ready');
  process.stdout.write(`iSCSI target ${name} on ${server.portal}\n  url: iscsi://${server.portal}/${name}/0\n`);
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info({ signal: sig }, 'stopping the target');
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      resolve();
    };
    const onInt = (): void => stop('SIGINT');
    const onTerm = (): void => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
  await server.close();
}

export const targetCommand: CommandModule<object, TargetArgs> = {
  command: 'target',
  describe: 'run the embedded iSCSI target alone',
  builder: (y) => options(withLogOptions(y)) as unknown as Argv<TargetArgs>,
  handler: (argv) => run(argv),
};
