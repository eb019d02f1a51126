import dns from 'node:dns';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import type { ErrorObject, JSONSchemaType, ValidateFunction } from 'ajv';
import { ConfigError } from './errors';
import { parseIscsiUrl, parseLunUrl } from './iscsi/url';
import { DIGEST_MODES, SESSION_TIMEOUTS_SEC, type DigestPref, type SessionTimeoutsSec } from './iscsi/defaults';
import { ifaceProblem } from './util/bind-device';

// The daemon's configuration: a YAML file validated against a JSON schema,
// then overridden by flags and environment variables. Errors name the key
// and the line so that a person can fix the file.

/** Header and data digest modes (iscsi/digest.ts maps each to what login proposes). */
export { DIGEST_MODES, type DigestPref } from './iscsi/defaults';
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

/**
 * JSONSchemaType spells an optional key `nullable: true`, but to ajv that
 * also admits null, and a YAML key left empty (`sessions:`) is null: refuse it
 * as a wrong type, as a person would expect, by compiling without `nullable`.
 */
function withoutNullable(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(withoutNullable);
  if (typeof v !== 'object' || v === null) return v;
  return Object.fromEntries(Object.entries(v).filter(([k]) => k !== 'nullable').map(([k, x]) => [k, withoutNullable(x)]));
}

// yaml and ajv (and compiling the schema) cost about 60 ms at start: loaded on
// the first config file only, so `--version`, `status` and `serve` without
// --config never pay for them.
let validator: ValidateFunction<ConfigFileValues> | undefined;
function validate(raw: unknown): raw is ConfigFileValues {
  if (!validator) {
    const { default: Ajv } = require('ajv') as typeof import('ajv');
    validator = new Ajv({ allErrors: true, strict: false }).compile<ConfigFileValues>(withoutNullable(CONFIG_SCHEMA) as JSONSchemaType<ConfigFileValues>);
  }
  return validator(raw);
}
validate.errors = (): ErrorObject[] => validator?.errors ?? [];

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

/** One thing wrong (or doubtful) in a configuration, where it is. */
export interface ConfigProblem {
  /** The config file, when the value came from it. */
  file?: string;
  /** 1-based line in the file. */
  line?: number;
  /** The key (`exports.0 (db).url`) or the flag (`--listen`). */
  key: string;
  message: string;
  severity: 'error' | 'warning';
}

export function formatProblem(p: ConfigProblem): string {
  const where = p.file ? `${p.file}${p.line ? `:${p.line}` : ''}: ` : '';
  return `${where}${p.key}: ${p.message}`;
}

/** A ConfigError listing every error among the problems (warnings left out); undefined when there is none. */
export function problemsError(problems: readonly ConfigProblem[]): ConfigError | undefined {
  const errors = problems.filter((p) => p.severity === 'error');
  if (errors.length === 0) return undefined;
  return new ConfigError('ECONFIG', [...new Set(errors.map(formatProblem))].join('\n'));
}

/** A parsed config file: the document's lines stay available for later checks. */
export interface ConfigFile {
  file: string;
  /** Schema-valid and free of errors: the configuration; else undefined. */
  config?: DaemonConfig;
  /** The file's values as read (shaped like DaemonConfig only when the schema passed). */
  raw: Record<string, unknown>;
  /** The file's values normalised as far as they go, even when the schema failed (for further checks). */
  loose: DaemonConfig;
  problems: ConfigProblem[];
  /** Not a YAML mapping at all (a syntax error, a list at the top): nothing in it was read. */
  unparsed?: boolean;
  /** Line of the value (or key) at a path, when the file has it. */
  lineOf(path: readonly (string | number)[]): number | undefined;
}

/**
 * Parse YAML text and run every check that needs nothing but the text: syntax,
 * schema, export names used twice, export URLs (a LUN is required) and
 * portals. Never throws for a bad file: it is all in `problems`.
 */
export function analyseConfig(text: string, file = 'config'): ConfigFile {
  const { LineCounter, parseDocument, isMap, isNode, isScalar } = require('yaml') as typeof import('yaml');
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: true });
  const problems: ConfigProblem[] = [];
  const lineAt = (offset: number | undefined): number | undefined => (offset === undefined ? undefined : lc.linePos(offset).line);
  const lineOf = (path: readonly (string | number)[]): number | undefined => {
    // A key in a map: the line of the key (a list or map value starts on a later line).
    const last = path[path.length - 1];
    if (typeof last === 'string') {
      const parent = path.length > 1 ? doc.getIn(path.slice(0, -1), true) : doc.contents;
      if (isMap(parent)) {
        const pair = parent.items.find((p) => isScalar(p.key) && p.key.value === last);
        if (pair && isNode(pair.key)) return lineAt(pair.key.range?.[0]);
      }
    }
    const node = path.length ? doc.getIn(path, true) : doc.contents;
    return isNode(node) ? lineAt(node.range?.[0]) : undefined;
  };
  if (doc.errors.length > 0) {
    for (const e of doc.errors) {
      problems.push({ file, line: e.linePos?.[0]?.line, key: 'YAML syntax error', message: e.message.split('\n')[0], severity: 'error' });
    }
    return { file, raw: {}, loose: normalise({}), problems, lineOf, unparsed: true };
  }
  const js = doc.toJS();
  const raw = (js && typeof js === 'object' && !Array.isArray(js) ? js : {}) as Record<string, unknown>;
  if (js !== null && js !== undefined && raw !== js) {
    problems.push({ file, line: 1, key: '(top level)', message: 'must be a mapping of keys (listen:, exports:, ...)', severity: 'error' });
    return { file, raw: {}, loose: normalise({}), problems, lineOf, unparsed: true };
  }
  const schemaOk = validate(raw);
  if (!schemaOk) {
    for (const e of validate.errors()) {
      if (e.keyword === 'oneOf' || e.keyword === 'if') continue;
      const path = pathOf(e);
      problems.push({ file, line: lineOf(path), key: path.length ? path.join('.') : '(top level)', message: describe(e), severity: 'error' });
    }
  }
  problems.push(...textChecks(raw, file, lineOf));
  const config = schemaOk && !problems.some((p) => p.severity === 'error') ? normalise(raw) : undefined;
  return { file, config, raw, loose: config ?? normalise(raw), problems: dedupe(problems), lineOf };
}

function dedupe(problems: ConfigProblem[]): ConfigProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const k = formatProblem(p);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

const isStr = (v: unknown): v is string => typeof v === 'string';
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The key of an export in messages: `exports.0 (db)`. */
export function exportKey(i: number, name: unknown): string {
  return isStr(name) ? `exports.${i} (${name})` : `exports.${i}`;
}

/** Checks on the file's own exports (raw values, each guarded: the schema may have failed). */
function textChecks(raw: Record<string, unknown>, file: string, lineOf: ConfigFile['lineOf']): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const add = (path: (string | number)[], key: string, message: string, severity: 'error' | 'warning' = 'error'): void => {
    out.push({ file, line: lineOf(path), key, message, severity });
  };
  const ifaceChecks = (list: unknown, path: (string | number)[], key: string): void => {
    if (!Array.isArray(list)) return;
    list.forEach((n, j) => {
      if (typeof n !== 'string') return;
      const why = ifaceProblem(n);
      if (why) add([...path, j], `${key}.${j}`, why);
    });
  };
  ifaceChecks(raw.ifaces, ['ifaces'], 'ifaces');
  (Array.isArray(raw.devices) ? raw.devices : []).forEach((d, i) => {
    if (isObj(d)) ifaceChecks(d.ifaces, ['devices', i, 'ifaces'], `devices.${i}.ifaces`);
  });
  const exportsList = Array.isArray(raw.exports) ? raw.exports : [];
  const firstLine = new Map<string, number | undefined>();
  exportsList.forEach((e, i) => {
    if (!isObj(e)) return;
    const key = exportKey(i, e.name);
    if (isStr(e.name)) {
      if (firstLine.has(e.name)) {
        const first = firstLine.get(e.name);
        add([`exports`, i, 'name'], `exports.${i}.name`, `the name "${e.name}" is used twice${first ? ` (first at line ${first})` : ''}`);
      } else {
        firstLine.set(e.name, lineOf(['exports', i, 'name']));
      }
      if (e.name === '') add(['exports', i, 'name'], `exports.${i}.name`, 'must not be empty');
    }
    let urlUser: string | undefined;
    let urlOk = false;
    if (isStr(e.url) && /^iscsi:\/\//i.test(e.url)) {
      try {
        urlUser = parseIscsiUrl(e.url).auth?.user;
        parseLunUrl(e.url);
      } catch (err) {
        add(['exports', i, 'url'], `${key}.url`, (err as Error).message);
      }
      urlOk = urlUser !== undefined || !/@/.test(e.url.split('/')[2] ?? '');
    }
    ifaceChecks(e.ifaces, ['exports', i, 'ifaces'], `${key}.ifaces`);
    if (Array.isArray(e.portals)) {
      e.portals.forEach((p, j) => {
        if (!isStr(p)) return;
        try {
          const u = parseIscsiUrl(`iscsi://${p}`);
          if (u.target !== undefined) throw new Error('a portal is host[:port] only');
        } catch {
          add(['exports', i, 'portals', j], `${key}.portals`, `bad portal "${p}" (want host[:port])`);
        }
      });
    }
    if (isObj(e.chap)) {
      const user = e.chap.user;
      if (isStr(user) && urlUser !== undefined && user !== urlUser) add(['exports', i, 'chap', 'user'], `${key}.chap.user`, `differs from the user in the URL; "${user}" is used`, 'warning');
      if (!isStr(user) && urlUser === undefined && urlOk) {
        add(['exports', i, 'chap'], `${key}.chap`, 'needs user (chap.user, or user@ in the URL)');
      }
    }
  });
  return out;
}

/** Parse and validate YAML text; `file` is only used in messages. Throws one ConfigError listing every error. */
export function parseConfig(text: string, file = 'config'): DaemonConfig {
  const a = analyseConfig(text, file);
  const err = problemsError(a.problems);
  if (err) throw err;
  return a.config!;
}

/** Read and analyse a config file (see analyseConfig); a file that cannot be read throws. */
export function readConfigFile(file: string): ConfigFile {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('ECONFIG', `cannot read config file ${file}: ${(err as Error).message}`);
  }
  return analyseConfig(text, file);
}

function normalise(raw: Record<string, unknown>): DaemonConfig {
  // `listen: 10810` (a YAML number) is a port, like --listen 10810.
  const listen = (raw.listen === undefined ? [] : Array.isArray(raw.listen) ? raw.listen : [raw.listen])
    .filter((l): l is string | number => typeof l === 'string' || typeof l === 'number')
    .map(String);
  const exportsList = Array.isArray(raw.exports) ? (raw.exports as unknown[]).filter(isObj) as unknown as ExportConfig[] : [];
  const tls = (isObj(raw.tls) ? raw.tls : {}) as Partial<TlsConfig>;
  return {
    listen,
    initiatorName: raw.initiatorName as string | undefined,
    sessions: (raw.sessions as number | undefined) ?? 2,
    digest: (raw.digest as DigestPref | undefined) ?? 'prefer-none',
    ...(Array.isArray(raw.ifaces) ? { ifaces: raw.ifaces as string[] } : {}),
    readOnly: (raw.readOnly as boolean | undefined) ?? false,
    tls: { mode: tls.mode ?? 'off', cert: tls.cert, key: tls.key, ca: tls.ca, verifyClient: tls.verifyClient ?? false },
    metrics: raw.metrics === undefined ? undefined : String(raw.metrics),
    control: raw.control as string | undefined,
    logLevel: raw.logLevel as string | undefined,
    timeouts: { ...DEFAULT_TIMEOUTS, ...(isObj(raw.timeouts) ? (raw.timeouts as Partial<TimeoutsConfig>) : {}) },
    exports: exportsList,
    stateDir: raw.stateDir as string | undefined,
    connections: raw.connections as number | undefined,
    devices: Array.isArray(raw.devices) ? (raw.devices as unknown[]).filter(isObj) as unknown as DeviceConfig[] : [],
  };
}

/** `NAME=iscsi://host[:port]/<iqn>/<lun>` from --export. */
export function parseExportFlag(s: string): ExportConfig {
  const eq = s.indexOf('=');
  if (eq < 0 || !/^iscsi:\/\//i.test(s.slice(eq + 1))) {
    throw new ConfigError('ECONFIG', `--export wants NAME=iscsi://host[:port]/<iqn>/<lun>, got "${s.replace(/%[^@]*@/, '%…@')}"`);
  }
  const name = s.slice(0, eq);
  if (name === '') throw new ConfigError('ECONFIG', '--export wants NAME=iscsi://...: the name is empty');
  const url = s.slice(eq + 1);
  try {
    parseLunUrl(url);
  } catch (err) {
    throw new ConfigError('EBADURL', `--export ${name}: ${(err as Error).message}`);
  }
  return { name, url };
}

/** What checkConfig looks at beyond the file: where each value came from. */
export interface CheckOptions {
  /** The config file the values came from (values equal to the file's are located in it). */
  file?: ConfigFile;
  /**
   * No exports: `check-config` (an error, a warning when devices: exist),
   * `serve` (a warning when nothing at all is configured), or not checked.
   */
  emptyExports?: 'check-config' | 'serve' | 'ignore';
  /** Names of the flags that set things, for messages about values that came from them. */
  flagOf?: Partial<Record<'listen' | 'metrics' | 'tls.cert' | 'tls.key' | 'tls.ca', string>>;
}

const PEM_KINDS = {
  cert: { re: /-----BEGIN CERTIFICATE-----/, what: 'a certificate' },
  key: { re: /-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----/, what: 'a private key' },
} as const;

/** Why a PEM file is unusable (unreadable, not PEM, the wrong kind), or undefined when it looks right. */
export function pemProblem(file: string, kind: 'cert' | 'key'): string | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'latin1');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return `cannot read ${file}: ${e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.message}`;
  }
  if (!/-----BEGIN [A-Z0-9 ]+-----/.test(text)) return `${file} is not a PEM file (no "-----BEGIN ...-----" line)`;
  if (!PEM_KINDS[kind].re.test(text)) {
    const other = kind === 'cert' ? 'key' : 'cert';
    const swapped = PEM_KINDS[other].re.test(text) ? ` but ${PEM_KINDS[other].what} (swapped with the ${kind === 'cert' ? 'key' : 'certificate'}?)` : '';
    return `${file} holds no ${kind === 'cert' ? 'certificate' : 'private key'}${swapped ? swapped.replace(/^ but/, ': it holds') : ''}`;
  }
  return undefined;
}

function readableProblem(file: string): string | undefined {
  try {
    fs.accessSync(file, fs.constants.R_OK);
    return undefined;
  } catch {
    return `cannot read ${file}`;
  }
}

/**
 * Every check `serve` makes before it logs in anywhere, on the configuration
 * it is about to run (file, environment and flags merged): listen and metrics
 * addresses, TLS settings and files, secret files, devices, the export list.
 * Values that came from the file are reported with its name and line.
 */
export function checkConfig(cfg: DaemonConfig, opts: CheckOptions = {}): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const f = opts.file;
  const fc = f?.loose;
  const at = (key: string, path: (string | number)[] | undefined, message: string, severity: 'error' | 'warning' = 'error', flag?: string): void => {
    if (path && f) out.push({ file: f.file, line: f.lineOf(path), key, message, severity });
    else out.push({ key: flag ?? key, message, severity });
  };
  const listenPath = (l: string): (string | number)[] | undefined => {
    if (!fc || !fc.listen.includes(l)) return undefined;
    return Array.isArray(f!.raw.listen) ? ['listen', fc.listen.indexOf(l)] : ['listen'];
  };
  for (const l of cfg.listen) {
    if (!isStr(l)) continue;
    try {
      parseListen(l);
    } catch (err) {
      at('listen', listenPath(l), (err as Error).message, 'error', opts.flagOf?.listen ?? '--listen');
    }
  }
  const plain = plaintextProblem(cfg);
  if (plain) at('listen', listenPath(plain.address), plain.message, 'warning', opts.flagOf?.listen ?? '--listen');
  if (isStr(cfg.metrics)) {
    const path = fc?.metrics === cfg.metrics ? ['metrics'] : undefined;
    try {
      const m = parseListen(cfg.metrics, 9810);
      if ('path' in m) at('metrics', path, 'wants HOST:PORT (or a port), not a unix socket', 'error', opts.flagOf?.metrics ?? '--metrics');
    } catch (err) {
      at('metrics', path, (err as Error).message, 'error', opts.flagOf?.metrics ?? '--metrics');
    }
  }

  // TLS: what the mode needs, and files that are there and look like what they should be.
  const tls = cfg.tls ?? { mode: 'off' };
  const tlsPath = (k: 'cert' | 'key' | 'ca' | 'mode' | 'verifyClient'): (string | number)[] | undefined =>
    fc && fc.tls[k] !== undefined && fc.tls[k] === tls[k] ? ['tls', k] : undefined;
  const tlsFlag = (k: 'cert' | 'key' | 'ca'): string => opts.flagOf?.[`tls.${k}`] ?? `--tls-${k}`;
  if (tls.mode !== 'off') {
    if (!tls.cert || !tls.key) {
      const path = tlsPath('mode');
      at('tls.mode', path, path ? `${tls.mode} needs tls.cert and tls.key (or --tls-cert and --tls-key)` : 'needs --tls-cert and --tls-key', 'error', `--tls ${tls.mode}`);
    }
    if (tls.verifyClient && !tls.ca) {
      const path = tlsPath('verifyClient');
      at('tls.verifyClient', path, path ? 'needs tls.ca (or --tls-ca)' : 'needs --tls-ca', 'error', '--tls-verify-client');
    }
    for (const [k, kind] of [['cert', 'cert'], ['key', 'key'], ['ca', 'cert']] as const) {
      const file = tls[k];
      if (!isStr(file)) continue;
      const why = pemProblem(file, kind);
      if (why) at(`tls.${k}`, tlsPath(k), why, 'error', tlsFlag(k));
    }
  } else {
    for (const k of ['cert', 'key', 'ca'] as const) {
      if (!tls[k]) continue;
      const path = tlsPath(k);
      at(`tls.${k}`, path, path ? 'not used: tls.mode is off' : 'ignored without --tls on or --tls require (TLS is off)', 'warning', tlsFlag(k));
    }
  }

  // Exports: secret files must be readable (read at login otherwise, export by export).
  const exportsList = Array.isArray(cfg.exports) ? cfg.exports : [];
  exportsList.forEach((e, i) => {
    const inFile = fc?.exports.findIndex((x) => x === e || (x.name === e.name && x.url === e.url)) ?? -1;
    for (const k of ['secretFile', 'targetSecretFile'] as const) {
      const file = e.chap?.[k];
      if (!isStr(file)) continue;
      const why = readableProblem(file);
      if (why) at(`${exportKey(inFile >= 0 ? inFile : i, e.name)}.chap.${k}`, inFile >= 0 ? ['exports', inFile, 'chap', k] : undefined, why);
    }
  });

  // Devices: an iscsi:// URL naming a LUN, or the name of an export.
  const devices = Array.isArray(cfg.devices) ? cfg.devices : [];
  devices.forEach((d, i) => {
    if (!isObj(d) || !isStr(d.url)) return;
    const path = fc ? ['devices', i, 'url'] : undefined;
    if (/^iscsi:\/\//i.test(d.url)) {
      try {
        parseLunUrl(d.url);
      } catch (err) {
        at(`devices.${i}.url`, path, (err as Error).message);
      }
    } else if (!exportsList.some((e) => e.name === d.url)) {
      at(`devices.${i}.url`, path, `"${d.url.replace(/[%:][^@/]*@/, '%[redacted]@')}" is neither an iscsi:// URL nor the name of an export`);
    }
  });

  out.push(...sharedLunProblems(cfg, f));
  out.push(...ifaceHostProblems(cfg, f));

  const mode = opts.emptyExports ?? 'ignore';
  // (An `exports:` that is not a list at all is the schema's to report; a file that is not YAML has no exports to count.)
  const malformed = f !== undefined && ((f.raw.exports !== undefined && !Array.isArray(f.raw.exports)) || f.unparsed === true);
  if (mode !== 'ignore' && exportsList.length === 0 && !malformed) {
    // The line of `exports:`, else (for the warning) of `devices:`.
    const path = f && f.raw.exports !== undefined ? ['exports'] : f && devices.length > 0 ? ['devices'] : undefined;
    const where = f ? { file: f.file, line: path ? f.lineOf(path) : undefined } : {};
    if (devices.length > 0) {
      if (mode === 'check-config') out.push({ ...where, key: 'exports', message: 'none: NBD clients get nothing here; only the devices: are mapped', severity: 'warning' });
    } else {
      // A map-only config (the daemon that `map` talks to): serve runs it, so it is valid.
      out.push({ ...where, key: 'exports', message: 'none, and no devices: nothing to serve until `iscsi-nbd map` asks for a device', severity: 'warning' });
    }
  }
  return out;
}

/**
 * Interfaces (ifaces:, --iface) this host does not have now: a warning, not
 * an error (an interface may come later; the sessions through it keep retrying).
 */
function ifaceHostProblems(cfg: DaemonConfig, f: ConfigFile | undefined): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const check = (list: unknown, path: (string | number)[], key: string): void => {
    if (!Array.isArray(list)) return;
    list.forEach((n, j) => {
      if (!isStr(n) || ifaceProblem(n)) return; // not a name or address: an error reported with the file's text checks
      const why = ifaceMissing(n);
      if (!why) return;
      const inFile = f !== undefined && f.lineOf([...path, j]) !== undefined;
      out.push(inFile ? { file: f!.file, line: f!.lineOf([...path, j]), key: `${key}.${j}`, message: why, severity: 'warning' } : { key: key === 'ifaces' ? '--iface' : key, message: why, severity: 'warning' });
    });
  };
  check(cfg.ifaces, ['ifaces'], 'ifaces');
  (Array.isArray(cfg.exports) ? cfg.exports : []).forEach((e, i) => isObj(e) && check(e.ifaces, ['exports', i, 'ifaces'], `${exportKey(i, e.name)}.ifaces`));
  (Array.isArray(cfg.devices) ? cfg.devices : []).forEach((d, i) => isObj(d) && check(d.ifaces, ['devices', i, 'ifaces'], `devices.${i}.ifaces`));
  return out;
}

/** Why this host has no such interface (or address) now, or undefined when it has. */
export function ifaceMissing(iface: string): string | undefined {
  const all = os.networkInterfaces();
  if (net.isIP(iface) !== 0) {
    const ours = Object.values(all).flatMap((l) => l ?? []).some((a) => a.address.toLowerCase() === iface.toLowerCase());
    return ours ? undefined : `no interface of this host has the address ${iface} now (sessions through it fail until one does)`;
  }
  if (all[iface] || fs.existsSync(`/sys/class/net/${iface}`)) return undefined;
  return `this host has no network interface "${iface}" now (sessions through it fail with ENODEV until it appears)`;
}

/** 127.0.0.0/8, ::1 (also as ::ffff:127.x) and localhost: reachable from this host only. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^::ffff:/, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * NBD has no authentication of its own: an export on an address other hosts
 * reach, with plaintext allowed, is open to whoever reaches it. The first
 * such listen address, and what to say about it.
 */
export function plaintextProblem(cfg: Pick<DaemonConfig, 'listen' | 'tls' | 'exports' | 'readOnly'>): { address: string; message: string } | undefined {
  if (cfg.tls?.mode === 'require' || !Array.isArray(cfg.exports) || cfg.exports.length === 0) return undefined;
  for (const l of cfg.listen) {
    let a: ReturnType<typeof parseListen>;
    try {
      a = parseListen(l);
    } catch {
      continue; // reported as an error elsewhere
    }
    if ('path' in a || isLoopbackHost(a.host)) continue;
    const writable = cfg.exports.filter((e) => !(e.readOnly ?? cfg.readOnly)).map((e) => e.name);
    const what = writable.length
      ? `read and write ${writable.length === 1 ? 'export' : 'exports'} ${writable.join(', ')}`
      : `read ${cfg.exports.length === 1 ? 'export' : 'exports'} ${cfg.exports.map((e) => e.name).join(', ')}`;
    const tls = cfg.tls?.mode === 'on' ? 'TLS is only offered (tls.mode on), so a client that does not ask for it is served in plaintext' : 'TLS is off';
    return {
      address: l,
      message: `NBD on ${l} is not loopback, and NBD has no password: anyone who can reach it can ${what} (${tls}). ` +
        'Use tls.mode require (--tls require) with tls.verifyClient for client certificates, or listen on 127.0.0.1',
    };
  }
  return undefined;
}

/** The LUN a URL names, as one key: host:port (3260 by default), target IQN (names are case-insensitive), LUN. */
function lunKey(url: string): string | undefined {
  try {
    const u = parseLunUrl(url);
    return `${u.host.toLowerCase()}:${u.port}/${u.target.toLowerCase()}/${u.lun}`;
  } catch {
    return undefined; // reported where the URL is checked
  }
}

/**
 * One LUN reached through more than one name (exports, devices:) with more
 * than one of them writable: two writers that know nothing of each other
 * (an NBD client's filesystem and the kernel's, say) corrupt the LUN. A
 * warning, as a cluster filesystem may want it.
 */
function sharedLunProblems(cfg: DaemonConfig, f: ConfigFile | undefined): ConfigProblem[] {
  const users = new Map<string, Array<{ what: string; writable: boolean; path?: (string | number)[] }>>();
  const add = (key: string | undefined, u: { what: string; writable: boolean; path?: (string | number)[] }): void => {
    if (!key) return;
    users.set(key, [...(users.get(key) ?? []), u]);
  };
  const exportsList = Array.isArray(cfg.exports) ? cfg.exports : [];
  const inFile = (e: ExportConfig): number => f?.loose.exports.findIndex((x) => x.name === e.name && x.url === e.url) ?? -1;
  for (const e of exportsList) {
    if (!isObj(e) || !isStr(e.url)) continue;
    const i = inFile(e);
    add(lunKey(e.url), { what: `export "${e.name}"`, writable: !(e.readOnly ?? cfg.readOnly), path: i >= 0 ? ['exports', i, 'url'] : undefined });
  }
  (Array.isArray(cfg.devices) ? cfg.devices : []).forEach((d, i) => {
    if (!isObj(d) || !isStr(d.url)) return;
    const named = exportsList.find((e) => e.name === d.url);
    const url = /^iscsi:\/\//i.test(d.url) ? d.url : named?.url;
    if (!isStr(url)) return;
    add(lunKey(url), { what: `devices.${i}${named ? ` (export "${named.name}")` : ''}`, writable: d.readOnly !== true, path: f ? ['devices', i, 'url'] : undefined });
  });
  const out: ConfigProblem[] = [];
  for (const [lun, list] of users) {
    if (list.length < 2 || list.filter((u) => u.writable).length < 2) continue;
    const last = list[list.length - 1];
    const message = `the same LUN (${lun.replace(/^[^/]*\//, '')} on ${lun.split('/')[0]}) is used by ${list.map((u) => u.what).join(', ')}, ` +
      'more than one of them writable: two writers that do not know of each other corrupt it (make all but one readOnly, unless a cluster filesystem coordinates them)';
    const key = last.path ? last.path.slice(0, 2).join('.') : 'exports';
    out.push(last.path && f ? { file: f.file, line: f.lineOf(last.path), key, message, severity: 'warning' } : { key: '--export', message, severity: 'warning' });
  }
  return out;
}

/**
 * Listen and metrics hosts that are names, not addresses: resolved (DNS), so
 * that `listen: foo` is refused before any login rather than when binding.
 */
export async function checkListenHosts(cfg: DaemonConfig, opts: CheckOptions = {}, timeoutMs = 5000): Promise<ConfigProblem[]> {
  const want: Array<{ key: string; value: string; host: string; path?: (string | number)[]; flag: string }> = [];
  const f = opts.file;
  const fc = f?.loose;
  for (const l of cfg.listen) {
    try {
      const a = parseListen(l);
      if ('host' in a) {
        const path = fc?.listen.includes(l) ? (Array.isArray(f!.raw.listen) ? ['listen', fc.listen.indexOf(l)] : ['listen']) : undefined;
        want.push({ key: 'listen', value: l, host: a.host, path, flag: opts.flagOf?.listen ?? '--listen' });
      }
    } catch {
      // reported by checkConfig
    }
  }
  if (cfg.metrics) {
    try {
      const a = parseListen(cfg.metrics, 9810);
      if ('host' in a) want.push({ key: 'metrics', value: cfg.metrics, host: a.host, path: fc?.metrics === cfg.metrics ? ['metrics'] : undefined, flag: opts.flagOf?.metrics ?? '--metrics' });
    } catch {
      // reported by checkConfig
    }
  }
  const out: ConfigProblem[] = [];
  await Promise.all(
    want.map(async (w) => {
      if (net.isIP(w.host) || w.host === 'localhost') return;
      const ok = await Promise.race([
        dns.promises.lookup(w.host).then(() => true, () => false),
        new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs).unref()),
      ]);
      if (ok) return;
      const message = `cannot resolve "${w.host}"${w.value === w.host ? '' : ` in "${w.value}"`} (want an IP address, e.g. 127.0.0.1:10809, [::1]:10809, 0.0.0.0:10809, or a port alone)`;
      if (w.path && f) out.push({ file: f.file, line: f.lineOf(w.path), key: w.key, message, severity: 'error' });
      else out.push({ key: w.flag, message, severity: 'error' });
    }),
  );
  return out;
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

/** host:port, [v6]:port, a port alone (on 127.0.0.1), a host alone (on defaultPort), or unix:/path. */
export function parseListen(s: string, defaultPort = 10809): { host: string; port: number } | { path: string } {
  if (typeof s !== 'string') throw new ConfigError('ECONFIG', `cannot parse listen address ${JSON.stringify(s)} (want HOST:PORT, [V6]:PORT, PORT or unix:/path)`);
  if (s.startsWith('unix:')) {
    if (s.length === 5) throw new ConfigError('ECONFIG', `"${s}" names no socket path (want unix:/path)`);
    return { path: s.slice(5) };
  }
  if (s.startsWith('/')) return { path: s };
  if (/^:?\d+$/.test(s)) {
    const port = Number(s.replace(/^:/, ''));
    if (port > 65535) throw new ConfigError('ECONFIG', `bad port in "${s}"`);
    return { host: '127.0.0.1', port };
  }
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]*)(?::(\d+))?$/.exec(s);
  if (!m) throw new ConfigError('ECONFIG', `cannot parse listen address "${s}" (want HOST:PORT, [V6]:PORT, PORT or unix:/path)`);
  const bracketed = s.startsWith('[');
  if (bracketed ? net.isIPv6(m[1]) === false : m[1] !== '' && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(m[1])) {
    throw new ConfigError('ECONFIG', `bad host in listen address "${s}" (want HOST:PORT, [V6]:PORT, PORT or unix:/path)`);
  }
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new ConfigError('ECONFIG', `bad port in "${s}"`);
  return { host: m[1] || '127.0.0.1', port };
}
