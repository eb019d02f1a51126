// The configuration's types and its JSON schema (checked against the types
// by the compiler), with the defaults; ajv compiles it on first use.

import type { JSONSchemaType } from 'ajv';
import { DIGEST_MODES, SESSION_TIMEOUTS_SEC, type DigestPref, type SessionTimeoutsSec } from '../iscsi/defaults';

/** Header and data digest modes (iscsi/digest.ts maps each to what login proposes). */
export { DIGEST_MODES, type DigestPref } from '../iscsi/defaults';
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
  /**
   * Network interfaces (eth1) or source addresses of this host the sessions
   * leave through: one session per interface per portal, as open-iscsi's
   * iface binding (else the top-level `ifaces`).
   */
  ifaces?: string[];
  digest?: DigestPref;
  chap?: ChapConfig;
  /**
   * Sessions of its own instead of the pool its target's other LUNs share
   * (the default: one pool per target, as open-iscsi).
   */
  ownSessions?: boolean;
}

export interface TlsConfig {
  mode: TlsMode;
  cert?: string;
  key?: string;
  ca?: string;
  verifyClient?: boolean;
}

/** Every timeout, in seconds: the initiator's own (SessionTimeoutsSec), and the NBD and kernel ones. */
export interface TimeoutsConfig extends SessionTimeoutsSec {
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
  /** Header/data digests of the LUN's sessions (else the config export's, else the daemon's). */
  digest?: DigestPref;
  /** Interfaces the LUN's sessions leave through (else the config export's, else the top-level `ifaces`). */
  ifaces?: string[];
}

export interface DaemonConfig {
  listen: string[];
  initiatorName?: string;
  sessions: number;
  digest: DigestPref;
  /** Interfaces every export's sessions leave through unless it names its own (none: the routing table decides). */
  ifaces?: string[];
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
  ...SESSION_TIMEOUTS_SEC,
  handshake: 10,
  io: 15,
  reattach: 120,
};

/** What a config file may hold, as written (before defaults). CONFIG_SCHEMA is checked against it by the compiler. */
export interface ConfigFileValues {
  /** host:port, unix:PATH, or a bare port (a YAML number); one or a list. */
  listen?: string | number | Array<string | number>;
  initiatorName?: string;
  sessions?: number;
  digest?: DigestPref;
  ifaces?: string[];
  readOnly?: boolean;
  logLevel?: LogLevel;
  metrics?: string | number;
  control?: string;
  stateDir?: string;
  connections?: number;
  devices?: DeviceConfig[];
  tls?: Partial<TlsConfig>;
  timeouts?: Partial<TimeoutsConfig>;
  exports?: ExportConfig[];
}

/** pino's levels: the config's `logLevel` and the `--log-level` choices. */
/** iSCSI sessions per export: the schema's range, and ISCSI_NBD_SESSIONS'. */
export const MAX_SESSIONS = 64;

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

// The schema and the types above are one fact written twice; the compiler
// holds them together. JSONSchemaType<T> refuses a schema that misses a key of
// T or gives a key another type; objectSchema<T>() also refuses a key T does
// not have, so neither side can drift.
type NoUnknownKeys<S, T> = S extends { properties: infer P }
  ? (Exclude<keyof P, keyof T> extends never ? unknown : { keysNotInTheType: Exclude<keyof P, keyof T> })
  : unknown;
function objectSchema<T>() {
  return <S extends JSONSchemaType<T>>(schema: S & NoUnknownKeys<S, T>): JSONSchemaType<T> => schema;
}

const optString = { type: 'string', nullable: true } as const;
const optName = { type: 'string', minLength: 1, nullable: true } as const;
const optBool = { type: 'boolean', nullable: true } as const;
const seconds = { type: 'number', minimum: 0, maximum: 86400, nullable: true } as const;
const port = { type: 'integer', minimum: 0, maximum: 65535 } as const;
const address = { type: 'string', minLength: 1 } as const;
/** An interface name (at most IFNAMSIZ-1 bytes) or an IP address; textChecks says which is wrong. */
const ifaceList = { type: 'array', items: { type: 'string', minLength: 1, maxLength: 64 }, minItems: 1, uniqueItems: true, nullable: true } as const;

const chapSchema = objectSchema<ChapConfig>()({
  type: 'object',
  additionalProperties: false,
  required: [],
  properties: {
    user: optName,
    secret: optName,
    secretFile: optName,
    secretEnv: optName,
    targetUser: optName,
    targetSecret: optName,
    targetSecretFile: optName,
    targetSecretEnv: optName,
  },
});

const exportSchema = objectSchema<ExportConfig>()({
  type: 'object',
  additionalProperties: false,
  required: ['name', 'url'],
  properties: {
    name: { type: 'string', maxLength: 4096 },
    url: { type: 'string', pattern: '^iscsi://' },
    description: { type: 'string', maxLength: 1024, nullable: true },
    sessions: { type: 'integer', minimum: 1, maximum: MAX_SESSIONS, nullable: true },
    readOnly: optBool,
    portals: { type: 'array', items: { type: 'string', minLength: 1 }, nullable: true },
    discoverPortals: optBool,
    ifaces: ifaceList,
    digest: { type: 'string', enum: DIGEST_MODES, nullable: true },
    chap: { ...chapSchema, nullable: true },
    ownSessions: optBool,
  },
});

const deviceSchema = objectSchema<DeviceConfig>()({
  type: 'object',
  additionalProperties: false,
  required: ['url'],
  properties: {
    url: { type: 'string', minLength: 1 },
    device: { type: 'string', pattern: '^(/dev/nbd|nbd)?[0-9]+$', nullable: true },
    connections: { type: 'integer', minimum: 1, maximum: 16, nullable: true },
    readOnly: optBool,
    digest: { type: 'string', enum: DIGEST_MODES, nullable: true },
    ifaces: ifaceList,
  },
});

const tlsSchema = objectSchema<Partial<TlsConfig>>()({
  type: 'object',
  additionalProperties: false,
  required: [],
  properties: {
    mode: { type: 'string', enum: ['off', 'on', 'require'], nullable: true },
    cert: optString,
    key: optString,
    ca: optString,
    verifyClient: optBool,
  },
});

const timeoutsSchema = objectSchema<Partial<TimeoutsConfig>>()({
  type: 'object',
  additionalProperties: false,
  required: [],
  properties: {
    replacement: seconds,
    command: seconds,
    login: seconds,
    connect: seconds,
    nopInterval: seconds,
    nopTimeout: seconds,
    handshake: seconds,
    io: seconds,
    reattach: seconds,
  },
});

export const CONFIG_SCHEMA = objectSchema<ConfigFileValues>()({
  type: 'object',
  additionalProperties: false,
  required: [],
  properties: {
    listen: {
      // JSONSchemaType has no form for a list of a union: the one key the
      // compiler takes on trust (test/config.test.ts covers every shape).
      type: ['string', 'integer', 'array'],
      nullable: true,
      oneOf: [address, port, { type: 'array', items: { oneOf: [address, port] }, minItems: 1 }],
    } as never,
    initiatorName: { type: 'string', minLength: 1, maxLength: 223, nullable: true },
    sessions: { type: 'integer', minimum: 1, maximum: MAX_SESSIONS, nullable: true },
    digest: { type: 'string', enum: DIGEST_MODES, nullable: true },
    ifaces: ifaceList,
    readOnly: optBool,
    logLevel: { type: 'string', enum: LOG_LEVELS, nullable: true },
    metrics: { type: ['string', 'integer'], nullable: true, oneOf: [address, port] },
    control: optName,
    stateDir: optName,
    connections: { type: 'integer', minimum: 1, maximum: 16, nullable: true },
    devices: { type: 'array', items: deviceSchema, nullable: true },
    tls: { ...tlsSchema, nullable: true },
    timeouts: { ...timeoutsSchema, nullable: true },
    exports: { type: 'array', items: exportSchema, nullable: true },
  },
});
