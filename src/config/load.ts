// Reading a configuration: YAML with the line of every key, the schema, the
// checks that need only the text, normalisation into a DaemonConfig; and the
// small parsers the flags share (listen addresses, --export, secrets).

import fs from 'node:fs';
import net from 'node:net';
import { ConfigError } from '../errors';
import { parseIscsiUrl, parseLunUrl } from '../iscsi/url';
import type { ErrorObject, JSONSchemaType, ValidateFunction } from 'ajv';
import { ifaceProblem } from '../util/bind-device';
import { CONFIG_SCHEMA, DEFAULT_TIMEOUTS, type ConfigFileValues, type DaemonConfig, type DeviceConfig, type DigestPref, type ExportConfig, type TimeoutsConfig, type TlsConfig, type TlsMode } from './schema';
import { isObj, isStr } from './guards';

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

