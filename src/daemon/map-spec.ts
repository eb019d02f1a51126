import { DIGEST_MODES, type DeviceConfig, type DigestPref } from '../config';
import { isDigestMode } from '../iscsi/digest';
import { ConfigError } from '../errors';
import { parseDevice } from '../nbd/netlink/kernel';
import { ifaceProblem } from '../util/bind-device';

// What `map` asks for, checked once where it comes in (the control socket or
// config `devices:`), so the device manager only ever sees a well-formed spec.

/** Where a mapped LUN comes from: an iscsi:// URL, or an export of the config by name. */
export type MapSource = { kind: 'url'; url: string } | { kind: 'export'; name: string };

export interface MapSpec {
  source: MapSource;
  device?: number;
  connections?: number;
  readOnly?: boolean;
  /** Header/data digests of the LUN's sessions (else the config export's, else the daemon's). */
  digest?: DigestPref;
  /** Interfaces (or source addresses) the LUN's sessions leave through (else the config export's, else the daemon's). */
  ifaces?: string[];
  ioTimeout?: number;
  reattachTimeout?: number;
}

export function mapSource(urlOrName: string): MapSource {
  return /^iscsi:\/\//i.test(urlOrName) ? { kind: 'url', url: urlOrName } : { kind: 'export', name: urlOrName };
}

/** The text a user gave for the source (for messages). */
export function sourceText(s: MapSource): string {
  return s.kind === 'url' ? s.url : s.name;
}

export const MAX_CONNECTIONS = 16;
const MAX_TIMEOUT_S = 86400;

function optional<T>(req: Record<string, unknown>, key: string, ok: (v: unknown) => v is T, what: string): T | undefined {
  const v = req[key];
  if (v === undefined || v === null) return undefined;
  if (!ok(v)) throw new ConfigError('ECONFIG', what.replace('%s', JSON.stringify(v)));
  return v;
}

const isSeconds = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= MAX_TIMEOUT_S;
const isConnections = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= MAX_CONNECTIONS;
const isIndex = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0x7fffffff;
const isBool = (v: unknown): v is boolean => typeof v === 'boolean';

/** `--iface` values off the control socket: a non-empty list of interface names or addresses, none twice. */
function ifacesOf(req: Record<string, unknown>): string[] | undefined {
  const v = req.ifaces;
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.length === 0) throw new ConfigError('ECONFIG', `--iface wants interface names (got ${JSON.stringify(v)})`);
  for (const n of v) {
    const why = ifaceProblem(n);
    if (why) throw new ConfigError('ECONFIG', `--iface: ${why}`);
  }
  if (new Set(v).size !== v.length) throw new ConfigError('ECONFIG', '--iface: an interface is given twice');
  return v as string[];
}

/** A `map` request off the control socket (untrusted JSON). */
export function parseMapRequest(req: Record<string, unknown>): MapSpec {
  if (typeof req.url !== 'string' || req.url === '') throw new ConfigError('ECONFIG', 'map needs a URL or an export name');
  return {
    source: mapSource(req.url),
    device: optional(req, 'device', isIndex, 'bad device %s: want /dev/nbdN'),
    connections: optional(req, 'connections', isConnections, `--connections must be 1..${MAX_CONNECTIONS} (got %s)`),
    readOnly: optional(req, 'readOnly', isBool, '--read-only must be true or false (got %s)'),
    digest: optional(req, 'digest', isDigestMode, `bad digest %s: want one of ${DIGEST_MODES.join(', ')}`),
    ifaces: ifacesOf(req),
    ioTimeout: optional(req, 'ioTimeout', isSeconds, `--io-timeout must be 0..${MAX_TIMEOUT_S} seconds (got %s)`),
    reattachTimeout: optional(req, 'reattachTimeout', isSeconds, `--reattach-timeout must be 0..${MAX_TIMEOUT_S} seconds (got %s)`),
  };
}

/** A config `devices:` entry (the schema checked its shape already). */
export function mapSpecOfDevice(d: DeviceConfig): MapSpec {
  return {
    source: mapSource(d.url),
    device: d.device === undefined ? undefined : parseDevice(d.device),
    connections: d.connections,
    readOnly: d.readOnly,
    digest: d.digest,
    ifaces: d.ifaces,
  };
}
