import fs from 'node:fs';
import type { KernelNbd } from './devices';

// The real kernel behind the device manager: generic netlink for the
// commands, sysfs for the backend identifier, a read of block 0 as the probe.

const PROBE_TIMEOUT_MS = 60_000;

export async function openKernel(): Promise<KernelNbd> {
  const k = await import('../nbd/netlink/kernel');
  const nk = await k.NbdKernel.open();
  return {
    connect: (c) => nk.connect(c),
    reconfigure: (c) => nk.reconfigure(c),
    resize: (c) => nk.reconfigure({ index: c.index, fds: [], sizeBytes: c.sizeBytes, blockSize: c.blockSize, backendId: c.backendId }),
    disconnect: (i) => nk.disconnect(i),
    configured: async (i) => (await nk.status(i)).some((s) => s.index === i && s.connected),
    backend: (i) => k.readSysfsBackend(i),
    probe: async (i, blockSize) => {
      // Served by this very process, so the read must not block the event loop (fs.promises uses the thread pool).
      const fh = await fs.promises.open(k.devicePath(i), 'r');
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          fh.read(Buffer.alloc(blockSize), 0, blockSize, 0),
          new Promise((_r, reject) => { timer = setTimeout(() => reject(new Error(`${k.devicePath(i)} did not answer a read within ${PROBE_TIMEOUT_MS / 1000} s`)), PROBE_TIMEOUT_MS); }),
        ]);
      } finally {
        clearTimeout(timer);
        await fh.close();
      }
    },
    socketPair: () => k.createSocketPair(),
    closeFd: (fd) => k.closeFd(fd),
    close: () => nk.close(),
  };
}
