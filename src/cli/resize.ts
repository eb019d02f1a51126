import type { Argv, CommandModule } from 'yargs';
import { callControl } from '../daemon/control';
import type { ResizeResult } from '../daemon/status';
import { IscsiNbdError } from '../errors';
import { controlOf, deviceOptions, explicitStateDir, stateDirOf, type DeviceArgs } from './map';
import { withLogOptions } from './common';

// `iscsi-nbd resize [/dev/nbdN | EXPORT]`: after the LUN was grown on the
// array, read its capacity again and grow the device (online: then grow the
// filesystem) and the export, as `iscsiadm -m session -R` rescans. With no
// argument, every mapped device and export. A LUN that shrank is refused.

interface ResizeArgs extends DeviceArgs {
  target?: string;
  json?: boolean;
}

/** One line per device or export, for a person. */
export function renderResize(results: readonly ResizeResult[]): string {
  if (results.length === 0) return 'nothing to resize: no device is mapped and no export is served\n';
  return results.map((r) => {
    const who = r.device ?? r.export;
    if (r.refused) return `${who}: refused: ${r.refused}`;
    if (!r.changed) return `${who}: unchanged (${r.now} bytes)`;
    return `${who}: grown from ${r.was} to ${r.now} bytes` + (r.device ? `; grow its filesystem now (resize2fs ${r.device}, xfs_growfs MOUNTPOINT)` : '; new NBD clients see the new size, connected ones keep the old one');
  }).join('\n') + '\n';
}

async function run(argv: ResizeArgs): Promise<void> {
  const stateDir = stateDirOf(argv);
  const { results } = await callControl<{ results: ResizeResult[] }>(controlOf(argv, stateDir), {
    op: 'resize', stateDir: explicitStateDir(argv), ...(argv.target ? { target: argv.target } : {}),
  }, 120_000);
  process.stdout.write(argv.json ? JSON.stringify(results, null, 2) + '\n' : renderResize(results));
  const refused = results.filter((r) => r.refused);
  if (refused.length) throw new IscsiNbdError('EIO', `resize: ${refused.map((r) => r.device ?? r.export).join(', ')} not resized (see above)`);
}

export const resizeCommand: CommandModule<object, ResizeArgs> = {
  command: 'resize [target]',
  describe: 'after the LUN grew on the array: read its size again, grow the mapped /dev/nbdN online (or an export); no target: all',
  builder: (y) =>
    deviceOptions(withLogOptions(y))
      .positional('target', { type: 'string', describe: '/dev/nbdN or an export name (default: every mapped device and export)' })
      .option('json', { type: 'boolean', default: false, describe: 'print the results as JSON' }) as unknown as Argv<ResizeArgs>,
  handler: (argv) => run(argv),
};
