import { ConfigError } from '../errors';
import { parseDevice } from '../nbd/netlink/kernel';
import type { ControlHandler, ControlRequest } from './control';
import type { DeviceManager } from './devices';
import { parseMapRequest } from './map-spec';
import type { ReloadOutcome } from './reload';
import type { ResizeResult } from './status';
import type { DaemonStatus } from './status';
import { packageVersion } from '../metrics';

/** When this process started (status: how long the daemon has run). */
const STARTED_AT = new Date(Date.now() - process.uptime() * 1000).toISOString();

// The ops of the control socket. Each request is checked here, where it comes
// in off the socket, and reaches the daemon's parts as a typed value.

export interface ControlPorts {
  status(): DaemonStatus;
  devices: Pick<DeviceManager, 'map' | 'unmap' | 'list' | 'storeProblems'>;
  /** Where this daemon keeps its mappings (a client naming another one is refused). */
  stateDir: string;
  /** The control socket's path (for messages). */
  control: string;
  /** Take ownership of the state dir before the first mapping. */
  own(): void;
  reload(): Promise<ReloadOutcome>;
  /** Rescan one mapped device or export (or all) and grow what grew. */
  resize(what?: string): Promise<ResizeResult[]>;
}

export function controlHandlers(p: ControlPorts): Record<string, ControlHandler> {
  const sameStateDir = (req: ControlRequest): void => {
    if (typeof req.stateDir === 'string' && req.stateDir !== p.stateDir) {
      throw new ConfigError('ECONFIG', `the daemon at ${p.control} keeps its mappings in ${p.stateDir}, not ${req.stateDir} (give --control for the other daemon)`);
    }
  };
  return {
    status: (): DaemonStatus => ({ version: packageVersion(), startedAt: STARTED_AT, ...p.status() }),
    map: async (req) => {
      sameStateDir(req);
      const spec = parseMapRequest(req);
      p.own();
      return p.devices.map(spec);
    },
    unmap: async (req) => {
      sameStateDir(req);
      const index = parseDevice(String(req.device));
      await p.devices.unmap(index, req.force === true);
      return { device: `/dev/nbd${index}` };
    },
    reload: async () => {
      const o = await p.reload();
      if (o.refused) throw new ConfigError('ECONFIG', `reload refused, the running exports are kept: ${o.refused}`);
      return o;
    },
    resize: async (req) => {
      sameStateDir(req);
      if (req.target !== undefined && (typeof req.target !== 'string' || req.target === '')) throw new ConfigError('ECONFIG', 'resize wants a /dev/nbdN or an export name, or nothing for all');
      return { results: await p.resize(req.target as string | undefined) };
    },
    'list-mapped': (req) => {
      sameStateDir(req);
      return { mappings: p.devices.list(), problems: p.devices.storeProblems.map((x) => x.message) };
    },
  };
}
