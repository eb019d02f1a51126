// Command line for the real-kernel VM (the test is test/e2e/kernel.test.ts):
//   node dist/scripts/vm-e2e.js build
//       build (or find in the cache) the kernel + base initramfs; prints the manifest
//   node dist/scripts/vm-e2e.js run --port PORT --export NAME --bs 512|4096 [--iscsi URL] [--verbose]
//       boot the VM against the NBD server on 127.0.0.1:PORT and run the scenario;
//       with --iscsi, step 6 reads that LUN straight from the target. Exit 0 only if every step passed.
// Environment: ISCSI_NBD_VM_CACHE (cache dir, default /var/tmp/iscsi-nbd-vm),
// ISCSI_NBD_VM_ACCEL (qemu -accel, default tcg).

import { buildVmImage } from './vm/build';
import { runKernelScenario, iscsiHostCheck, formatSteps } from './vm/run';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<number> {
  const cmd = process.argv[2];
  if (cmd === 'build') {
    const img = await buildVmImage({ log: (s) => process.stderr.write(`${s}\n`) });
    process.stdout.write(`${JSON.stringify(img, null, 2)}\n`);
    return 0;
  }
  if (cmd === 'run') {
    const port = Number(arg('port'));
    const exportName = arg('export') ?? '';
    const bs = Number(arg('bs') ?? 512);
    if (!Number.isInteger(port) || port <= 0 || !exportName || ![512, 1024, 2048, 4096].includes(bs)) {
      process.stderr.write('usage: vm-e2e run --port PORT --export NAME --bs 512|4096 [--iscsi URL] [--verbose]\n');
      return 2;
    }
    const url = arg('iscsi');
    const verbose = process.argv.includes('--verbose');
    const r = await runKernelScenario({
      nbdPort: port,
      exportName,
      blockSize: bs as 512 | 4096,
      hostCheck: url ? iscsiHostCheck(url) : undefined,
      onLine: verbose ? (l) => process.stderr.write(`| ${l}\n`) : undefined,
    });
    process.stdout.write(`${formatSteps(r)}\n`);
    process.stdout.write(`image ${r.image.key} ${r.image.cached ? 'cached' : `built in ${r.image.buildMs} ms`}; VM ${r.vmMs} ms; ${r.connections} NBD connections\n`);
    return r.ok ? 0 : 1;
  }
  process.stderr.write('usage: vm-e2e build | vm-e2e run --port PORT --export NAME --bs BS [--iscsi URL]\n');
  return 2;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
