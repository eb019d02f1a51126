import fs from 'node:fs';
import YAML, { LineCounter, isNode } from 'yaml';
import Ajv, { ErrorObject } from 'ajv';
import { ConfigError } from './errors';

// The daemon's configuration: a YAML file validated against a JSON schema,
// then overridden by flags and environment variables. Errors name the key
// and the line so that a person can fix the file.

export type DigestPref = 'none' | 'crc32c' | 'prefer-crc32c' | 'prefer-none';
export type TlsMode = 'off' | 'on' | 'require';

export interface ChapConfig {
  user?: string;
  secret?: string;
  secretFile?: string;
  secretEnv?: string;
  targetUser?: string;
  targetSecret?: string;
  targetSecretFile?: string;
  targetSecretEnv?: string;
}

export interface ExportConfig {
  name: string;
  url: string;
  description?: string;
  sessions?: number;
  readOnly?: boolean;
  /** Extra portals for the same target (multipath), host[:port]. */
  portals?: string[];
  /** Add every portal that SendTargets returns for this target. */
  discoverPortals?: boolean;
  digest?: DigestPref;
  chap?: ChapConfig;
}

export interface TlsConfig {
  mode: TlsMode;
  cert?: string;
  key?: string;
  ca?: string;
  verifyClient?: boolean;
}

export interface TimeoutsConfig {
  /** Seconds an outage may last before requests fail with EIO (open-iscsi's replacement_timeout). */
  replacement: number;
  /** Seconds before a SCSI command is aborted. */
  command: number;
  login: number;
  connect: number;
  /** Seconds between NOP-Out pings; 0 disables them. */
  nopInterval: number;
  nopTimeout: number;
  /** Seconds an NBD client has to finish its handshake. */
  handshake: number;
  /** Mapped devices: the kernel's request timeout (a request unanswered this long is re-sent on a new socket). */
  io: number;
  /** Mapped devices: how long the kernel holds I/O while no socket is alive (a daemon restart must fit in it). */
  reattach: number;
}

/** A kernel device the daemon maps at start (config `devices:`). */
export interface DeviceConfig {
  /** iscsi:// URL, or the name of an export in this config. */
  url: string;
  /** /dev/nbdN to use; else the kernel picks one. */
  device?: string;
  connections?: number;
  readOnly?: boolean;
}

export interface DaemonConfig {
  listen: string[];
  initiatorName?: string;
  sessions: number;
  digest: DigestPref;
  readOnly: boolean;
  tls: TlsConfig;
  metrics?: string;
  control?: string;
  logLevel?: string;
  timeouts: TimeoutsConfig;
  exports: ExportConfig[];
  /** Where mappings (and the generated initiator name) are kept. */
  stateDir?: string;
  /** Kernel connections per mapped device (default 1). */
  connections?: number;
  devices: DeviceConfig[];
}

export const DEFAULT_TIMEOUTS: TimeoutsConfig = {
  replacement: 120,
  command: 30,
  login: 15,
  connect: 10,
  nopInterval: 5,
  nopTimeout: 10,
  handshake: 10,
  io: 30,
  reattach: 120,
};

const digestEnum = ['none', 'crc32c', 'prefer-crc32c', 'prefer-none'];

const chapSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    user: { type: 'string', minLength: 1 },
    secret: { type: 'string', minLength: 1 },
    secretFile: { type: 'string', minLength: 1 },
    secretEnv: { type: 'string', minLength: 1 },
    targetUser: { type: 'string', minLength: 1 },
    targetSecret: { type: 'string', minLength: 1 },
    targetSecretFile: { type: 'string', minLength: 1 },
    targetSecretEnv: { type: 'string', minLength: 1 },
  },
};

export const CONFIG_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    listen: {
      oneOf: [
        { type: 'string', minLength: 1 },
        { type: 'array', items: { type: 'string', minLength: 1 }, minItems: 1 },
      ],
    },
    initiatorName: { type: 'string', minLength: 1, maxLength: 223 },
    sessions: { type: 'integer', minimum: 1, maximum: 64 },
    digest: { enum: digestEnum },
    readOnly: { type: 'boolean' },
    logLevel: { enum: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] },
    metrics: { type: 'string', minLength: 1 },
    control: { type: 'string', minLength: 1 },
    stateDir: { type: 'string', minLength: 1 },
    connections: { type: 'integer', minimum: 1, maximum: 16 },
    devices: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['url'],
        properties: {
          url: { type: 'string', minLength: 1 },
          device: { type: 'string', pattern: '^(/dev/nbd|nbd)?[0-9]+$' },
          connections: { type: 'integer', minimum: 1, maximum: 16 },
          readOnly: { type: 'boolean' },
        },
      },
    },
    tls: {
      type: 'object',
      additionalProperties: false,
      properties: {
        mode: { enum: ['off', 'on', 'require'] },
        cert: { type: 'string' },
        key: { type: 'string' },
        ca: { type: 'string' },
        verifyClient: { type: 'boolean' },
      },
    },
    timeouts: {
      type: 'object',
      additionalProperties: false,
      properties: Object.fromEntries(
        Object.keys(DEFAULT_TIMEOUTS).map((k) => [k, { type: 'number', minimum: 0, maximum: 86400 }]),
      ),
    },
    exports: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'url'],
        properties: {
          name: { type: 'string', maxLength: 4096 },
          url: { type: 'string', pattern: '^iscsi://' },
          description: { type: 'string', maxLength: 1024 },
          sessions: { type: 'integer', minimum: 1, maximum: 64 },
          readOnly: { type: 'boolean' },
          portals: { type: 'array', items: { type: 'string', minLength: 1 } },
          discoverPortals: { type: 'boolean' },
          digest: { enum: digestEnum },
          chap: chapSchema,
        },
      },
    },
  },
} as const;

const ajv = new Ajv({ allErrors: true, strict: false });
const validate = ajv.compile(CONFIG_SCHEMA);

function describe(e: ErrorObject): string {
  switch (e.keyword) {
    case 'additionalProperties':
      return `unknown key "${(e.params as { additionalProperty: string }).additionalProperty}"`;
    case 'required':
      return `missing key "${(e.params as { missingProperty: string }).missingProperty}"`;
    case 'enum':
      return `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}`;
    default:
      return e.message ?? e.keyword;
  }
}

function pathOf(e: ErrorObject): (string | number)[] {
  const parts = e.instancePath.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  const path: (string | number)[] = parts.map((p) => (/^\d+$/.test(p) ? Number(p) : p));
  if (e.keyword === 'additionalProperties') path.push((e.params as { additionalProperty: string }).additionalProperty);
  return path;
}

/** Parse and validate YAML text; `file` is only used in messages. */
export function parseConfig(text: string, file = 'config'): DaemonConfig {
  const lc = new LineCounter();
  const doc = YAML.parseDocument(text, { lineCounter: lc, prettyErrors: true });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const pos = e.linePos?.[0];
    throw new ConfigError('ECONFIG', `${file}${pos ? `:${pos.line}` : ''}: YAML syntax error: ${e.message.split('\n')[0]}`);
  }
  const raw = (doc.toJS() ?? {}) as Record<string, unknown>;
  if (!validate(raw)) {
    const msgs = (validate.errors ?? [])
      .filter((e) => e.keyword !== 'oneOf' && e.keyword !== 'if')
      .map((e) => {
        const path = pathOf(e);
        let node = doc.getIn(path, true);
        if (!isNode(node) && e.keyword === 'additionalProperties') {
          // The key itself: find the pair in the parent map.
          const parent = doc.getIn(path.slice(0, -1), true) as { items?: Array<{ key: unknown }> } | undefined;
          const pair = parent?.items?.find((p) => isNode(p.key) && (p.key as { value?: unknown }).value === path[path.length - 1]);
          node = pair?.key as typeof node;
        }
        const range = isNode(node) ? node.range : undefined;
        const line = range ? lc.linePos(range[0]).line : undefined;
        const key = path.length ? path.join('.') : '(top level)';
        return `${file}${line ? `:${line}` : ''}: ${key}: ${describe(e)}`;
      });
    throw new ConfigError('ECONFIG', [...new Set(msgs)].join('\n'));
  }
  return normalise(raw);
}

export function loadConfig(file: string): DaemonConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('ECONFIG', `cannot read config file ${file}: ${(err as Error).message}`);
  }
  return parseConfig(text, file);
}

function normalise(raw: Record<string, unknown>): DaemonConfig {
  const listen = raw.listen === undefined ? [] : Array.isArray(raw.listen) ? (raw.listen as string[]) : [raw.listen as string];
  const exportsList = (raw.exports as ExportConfig[] | undefined) ?? [];
  const names = new Set<string>();
  for (const e of exportsList) {
    if (names.has(e.name)) throw new ConfigError('ECONFIG', `exports: the name "${e.name}" is used twice`);
    names.add(e.name);
  }
  const tls = (raw.tls as Partial<TlsConfig> | undefined) ?? {};
  return {
    listen,
    initiatorName: raw.initiatorName as string | undefined,
    sessions: (raw.sessions as number | undefined) ?? 2,
    digest: (raw.digest as DigestPref | undefined) ?? 'prefer-none',
    readOnly: (raw.readOnly as boolean | undefined) ?? false,
    tls: { mode: tls.mode ?? 'off', cert: tls.cert, key: tls.key, ca: tls.ca, verifyClient: tls.verifyClient ?? false },
    metrics: raw.metrics as string | undefined,
    control: raw.control as string | undefined,
    logLevel: raw.logLevel as string | undefined,
    timeouts: { ...DEFAULT_TIMEOUTS, ...((raw.timeouts as Partial<TimeoutsConfig> | undefined) ?? {}) },
    exports: exportsList,
    stateDir: raw.stateDir as string | undefined,
    connections: raw.connections as number | undefined,
    devices: (raw.devices as DeviceConfig[] | undefined) ?? [],
  };
}

/** `NAME=iscsi://...` from --export. */
export function parseExportFlag(s: string): ExportConfig {
  const eq = s.indexOf('=');
  if (eq < 0 || !/^iscsi:\/\//i.test(s.slice(eq + 1))) {
    throw new ConfigError('ECONFIG', `--export wants NAME=iscsi://host[:port]/<iqn>/<lun>, got "${s.replace(/%[^@]*@/, '%…@')}"`);
  }
  return { name: s.slice(0, eq), url: s.slice(eq + 1) };
}

/** Read a secret from a file (first line, trimmed) or an environment variable. */
export function readSecret(opts: { value?: string; file?: string; env?: string }, what: string): string | undefined {
  if (opts.value) return opts.value;
  if (opts.file) {
    try {
      return fs.readFileSync(opts.file, 'utf8').split(/\r?\n/)[0].trim();
    } catch (err) {
      throw new ConfigError('ECONFIG', `cannot read ${what} from ${opts.file}: ${(err as Error).message}`);
    }
  }
  if (opts.env && process.env[opts.env]) return process.env[opts.env];
  return undefined;
}

/** host:port, [v6]:port or unix:/path. */
export function parseListen(s: string, defaultPort = 10809): { host: string; port: number } | { path: string } {
  if (s.startsWith('unix:')) return { path: s.slice(5) };
  if (s.startsWith('/')) return { path: s };
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]*)(?::(\d+))?$/.exec(s);
  if (!m) throw new ConfigError('ECONFIG', `cannot parse listen address "${s}" (want HOST:PORT, [V6]:PORT or unix:/path)`);
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError('ECONFIG', `bad port in "${s}"`);
  return { host: m[1] || '127.0.0.1', port };
}
