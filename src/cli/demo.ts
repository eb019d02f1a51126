import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Argv, CommandModule } from 'yargs';
import { FileBackend, parseSize } from '../target/backend';
import { TargetServer } from '../target/server';
import { rootLogger, tell } from '../log';
import { DEFAULT_TIMEOUTS, DaemonConfig, parseListen } from '../config';
import { ConfigError } from '../errors';
import { setupLogging, withCommonOptions } from './common';
import { nameProcess, type ServeArgs } from './serve';
import { startDaemon, installSignals } from '../daemon/daemon';
import { notifySystemd } from '../daemon/notify';

export const DEMO_TARGET = 'iqn.2026-11.io.iscsi-nbd:demo';

export function options<T>(y: Argv<T>) {
  return y
    .option('data-dir', { type: 'string', default: process.env.ISCSI_NBD_DEMO_DIR ?? '.data', describe: 'where the demo LUN file lives (kept between runs)' })
    .option('size', { type: 'string', default: '1G', describe: 'size of the demo LUN when it is created' })
    .option('block-size', { type: 'number', choices: [512, 4096], default: 512 })
    .option('listen', { type: 'string', default: '127.0.0.1:10809', describe: 'where to serve NBD' })
    .option('control', { type: 'string', describe: 'control socket for `iscsi-nbd status`' })
    .option('metrics', { type: 'string', describe: 'HOST:PORT for /metrics' });
}

export interface DemoArgs extends ServeArgs {
  'data-dir': string;
  size: string;
  'block-size': number;
}

async function ensurePortFree(where: string): Promise<void> {
  const addr = parseListen(where);
  if ('path' in addr) return;
  await new Promise<void>((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', (err: NodeJS.ErrnoException) => {
      reject(
        new ConfigError(
          'ECONFIG',
          err.code === 'EADDRINUSE'
            ? `port ${addr.port} on ${addr.host} is already in use (another iscsi-nbd demo, nbd-server or qemu-nbd?).\nStop it, or serve the demo elsewhere: npm start -- --listen 127.0.0.1:10810`
            : `cannot listen on ${where}: ${err.message}`,
        ),
      );
    });
    srv.listen(addr.port, addr.host, () => srv.close(() => resolve()));
  });
}

/**
 * The one-command demo: an embedded target on a free loopback port with a
 * sparse LUN file that persists in the data directory, bridged to NBD export
 * "demo". Nothing outside this process is needed.
 */
export async function run(argv: DemoArgs): Promise<void> {
  // Quiet unless asked: what to do next is printed on stdout; --log-level brings the log lines back.
  nameProcess();
  setupLogging(argv, 'warn');
  const log = rootLogger();
  const listen = argv.listen?.length ? (Array.isArray(argv.listen) ? argv.listen : [argv.listen as unknown as string]) : ['127.0.0.1:10809'];
  // Before touching the LUN file: a second demo on the same data would be bad.
  await ensurePortFree(listen[0]);
  const dir = path.resolve(argv['data-dir']);
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `demo-${argv['block-size']}.img`);
  const existed = fs.existsSync(file);
  const backend = await FileBackend.open({ path: file, size: parseSize(argv.size), blockSize: argv['block-size'] });
  const target = new TargetServer({ targets: [{ name: DEMO_TARGET, luns: [{ lun: 0, backend }] }], log: log.child({ component: 'target' }) });
  const portal = await target.listen({ host: '127.0.0.1', port: 0 });
  log.info({ portal: `${portal.host}:${portal.port}`, file, reused: existed }, 'embedded iSCSI target running');

  const cfg: DaemonConfig = {
    listen,
    sessions: argv.sessions ?? 2,
    digest: argv.digest ?? 'prefer-none',
    readOnly: false,
    tls: { mode: 'off' },
    metrics: argv.metrics,
    control: argv.control,
    initiatorName: argv['initiator-name'],
    timeouts: { ...DEFAULT_TIMEOUTS },
    devices: [],
    exports: [{ name: 'demo', url: `iscsi://${portal.host}:${portal.port}/${DEMO_TARGET}/0`, description: `iscsi-nbd demo LUN (${file})` }],
  };
  let daemon;
  try {
    daemon = await startDaemon(cfg, { secrets: argv });
  } catch (err) {
    await target.close();
    if (err instanceof ConfigError && /in use/.test(err.message)) {
      throw new ConfigError('ECONFIG', `${err.message}\nThe demo serves NBD on ${listen[0]}; stop whatever holds that port, or run: npm start -- --listen 127.0.0.1:10810`);
    }
    throw err;
  }
  const stopDaemon = daemon.stop.bind(daemon);
  daemon.stop = async (reason?: string) => {
    await stopDaemon(reason);
    await target.close();
  };
  const where = listen[0];
  const addr = parseListen(where);
  const [host, port] = 'path' in addr ? ['127.0.0.1', '10809'] : [addr.host, String(addr.port)];
  const portSuffix = port === '10809' ? '' : `:${port}`;
  // Before the instructions: "Stop with Ctrl-C" must hold from the moment it is shown.
  installSignals(daemon);
  // At the default level (warn) the stop itself logs nothing: say that Ctrl-C was heard and what it does.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const msg = `demo: ${sig === 'SIGINT' ? 'Ctrl-C' : sig}: stopping (NBD clients drain, the LUN file is flushed and closed)`;
    process.once(sig, () => tell('warn', msg, { signal: sig }, `\niscsi-nbd ${msg}...`));
  }
  process.stdout.write(
    [
      '',
      `iscsi-nbd demo is serving export "demo" (${argv.size}, ${argv['block-size']}-byte blocks${existed ? ', data from the previous run' : ', new'}) on ${where}.`,
      `The LUN lives in ${file}; the embedded iSCSI target is at ${portal.host}:${portal.port} (${DEMO_TARGET}).`,
      '',
      'Next steps, in another terminal:',
      `  nbdinfo nbd://${host}${portSuffix}/demo`,
      `  sudo modprobe nbd && sudo nbd-client ${host} ${port} /dev/nbd0 -N demo -b ${argv['block-size']}`,
      '  sudo mkfs.ext4 /dev/nbd0 && sudo mount /dev/nbd0 /mnt',
      '',
      'Stop with Ctrl-C (it flushes and logs out).',
      '',
    ].join('\n'),
  );
  notifySystemd('READY=1');
}

export const demoCommand: CommandModule<object, DemoArgs> = {
  command: 'demo',
  describe: 'run an embedded iSCSI target with a 1 GiB LUN and serve it as NBD export "demo"',
  builder: (y) => options(withCommonOptions(y)) as unknown as Argv<DemoArgs>,
  handler: (argv) => run(argv),
};
