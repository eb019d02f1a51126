// Logging: pino, JSON lines on stderr (or pino-pretty, one coloured line per
// event, on a terminal). Every module logs through a child of the root logger;
// this file owns the rules for the keys of a line.
//
// Keys: every line has each key at most once (JSON with a repeated key is
// read differently by different tools). A child logger never repeats a key
// its ancestors bound:
//   - `component` is bound once, by the outermost part that names itself:
//     `exports` (the NBD exports `serve`/`demo` offer), `devices` (the kernel
//     /dev/nbdN mappings), `target` (the embedded iSCSI target). A component
//     a deeper child names (iscsi-initiator, iscsi-session, iscsi-login,
//     iscsi-discovery, nbd-server, ...) becomes `layer`, the most specific
//     one winning. Where nothing above names itself (one-shot commands such
//     as `copy` and `discover`, library use), the module's own name is the
//     `component` and there is no `layer`.
//   - Any other key bound again by a child (`portal`, `target`, `export`,
//     `session`, ...) keeps one value: the child's, which is the more
//     specific (the portal a connection really reached after a redirect, not
//     the one configured). The same value bound twice is simply not repeated.
//   - A field given to one log call with a key its logger already binds: the
//     same value is dropped; a different value replaces the binding for that
//     line (same rule as a child). A field named like pino's own keys is
//     renamed: `msg` -> `detail` when the call also gives a message; `level`,
//     `time`, `pid` -> `levelField`, `timeField`, `pidField`.
// Meanings: `export` = NBD export name; `pool` = a target's pool of sessions,
// shared by its LUNs (target@portals); `session` = index of the iSCSI session
// in that pool (0 = the first); `portal` = host:port of the iSCSI
// portal; `target` = target IQN; `lun`; `conn` + `remote` = one NBD client
// connection and its address; `cid` = iSCSI connection id; `device`.
//
// One event, one line: an event is logged where it happens, once (a caller
// that is told of it, e.g. LunOptions.onUnitAttention, does not log it again).
//
// Text for a person on stderr (a one-shot command's error, warning, progress)
// goes through tell(): plain text while stderr carries no JSON log lines, a
// JSON line otherwise, so a stream is never a mix of both.
//
// Secrets: URL passwords and target_password are replaced by `[redacted]` in
// messages, fields, errors and child bindings; fields named `password`,
// `secret`, ... are censored.

import tty from 'node:tty';
import pino, { Logger } from 'pino';

export type { Logger };

// Keys whose values must never reach a log line. URLs are scrubbed by
// redactUrl() before they are logged; these catch structured fields.
const REDACT = [
  'password', 'secret', 'chapSecret', 'chapPassword', 'mutualSecret', 'targetSecret', 'targetPassword',
  '*.password', '*.secret', '*.chapSecret', '*.chapPassword', '*.mutualSecret', '*.targetSecret', '*.targetPassword',
  'auth.password', 'auth.secret', 'chap.secret', 'chap.mutualSecret', 'chap.targetSecret',
  '*.auth.password', '*.auth.secret', '*.auth.targetPassword', '*.auth.targetSecret', '*.chap.secret', '*.chap.targetSecret',
];
// Fields that hold URLs: kept, with the password part scrubbed. Redaction also
// covers child bindings, which pino's log formatter never sees.
const URL_KEYS = new Set(['url', 'src', 'dst', 'portalUrl']);
const REDACT_URLS = ['url', 'src', 'dst', 'portalUrl', '*.url', '*.src', '*.dst'];

function censor(value: unknown, path: string[]): unknown {
  const k = path[path.length - 1];
  if (URL_KEYS.has(k)) return typeof value === 'string' ? redactText(value) : value;
  return '[redacted]';
}

/**
 * Passwords inside any text: iscsi://user%pass@ / user:pass@ (anywhere in the
 * string) and target_password=... query values.
 */
export function redactText(s: string): string {
  if (s.indexOf('@') < 0 && !/target_password/i.test(s)) return s;
  return s
    .replace(/(iscsi:\/\/[^@/\s%:"'?]*)[%:][^@/\s"']*@/gi, '$1%[redacted]@')
    .replace(/(target_password=)[^&\s"']*/gi, '$1[redacted]');
}

/** Scrub strings one level deep (and inside err objects), cheaply: most values have no "@". */
function scrub(obj: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const k of Object.keys(obj)) {
    const v = obj[k];
    let nv: unknown = v;
    if (typeof v === 'string') nv = redactText(v);
    else if (v instanceof Error) {
      const m = redactText(v.message);
      const st = v.stack ? redactText(v.stack) : v.stack;
      if (m !== v.message || st !== v.stack) {
        const e = Object.assign(new Error(m), { code: (v as { code?: unknown }).code });
        e.name = v.name;
        e.stack = st;
        nv = e;
      }
    } else if (v && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v)) {
      const inner = v as Record<string, unknown>;
      let changed: Record<string, unknown> | undefined;
      for (const ik of Object.keys(inner)) {
        const iv = inner[ik];
        if (typeof iv === 'string') {
          const r = redactText(iv);
          if (r !== iv) (changed ??= { ...inner })[ik] = r;
        }
      }
      if (changed) nv = changed;
    }
    if (nv !== v) (out ??= { ...obj })[k] = nv;
  }
  return out ?? obj;
}

let root: Logger | undefined;

export interface LogOptions {
  level?: string;
  pretty?: boolean;
  destination?: number | string;
}

// ---------------------------------------------------------------- unique keys

const chindingsSym = pino.symbols.chindingsSym as unknown as string;
type Bound = Record<string, unknown>;
/** The bindings of each logger we built (root and every child), parsed once. */
const boundOf = new WeakMap<object, Bound>();

/** pino keeps a logger's bindings as JSON text: `,"k":v,"k2":v2`. */
function parseChindings(text: string): Bound | undefined {
  if (!text) return {};
  try {
    return JSON.parse(`{${text.slice(1)}}`) as Bound;
  } catch {
    return undefined;
  }
}

function bindingsOf(l: object): Bound {
  let b = boundOf.get(l);
  if (!b) {
    b = parseChindings(((l as Record<string, unknown>)[chindingsSym] as string | undefined) ?? '') ?? {};
    boundOf.set(l, b);
  }
  return b;
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  try {
    return JSON.stringify(a) === JSON.stringify(b);
  } catch {
    return false;
  }
}

/** Merge a child's bindings into its parent's by the rules in the header. */
function mergeBindings(parent: Bound, added: Bound): Bound {
  const out: Bound = { ...parent };
  for (const [k, v] of Object.entries(added)) {
    if (k === 'component' && out.component !== undefined && !sameValue(out.component, v)) {
      if (!sameValue(out.layer, v)) out.layer = v;
      continue;
    }
    if (typeof v === 'string') out[k] = redactText(v);
    else out[k] = v;
  }
  return out;
}

function serializeBindings(b: Bound): string {
  let s = '';
  for (const [k, v] of Object.entries(b)) {
    const j = JSON.stringify(v);
    if (j !== undefined) s += `,${JSON.stringify(k)}:${j}`;
  }
  return s;
}

/**
 * pino appends a child's bindings to its parent's as text, repeating keys;
 * rewrite them merged (pino's onChild runs for every child, grandchildren too).
 */
function onChild(child: Logger): void {
  const c = child as unknown as Record<string, unknown>;
  const parent = Object.getPrototypeOf(child) as Record<string, unknown>;
  const all = (c[chindingsSym] as string | undefined) ?? '';
  const base = (parent[chindingsSym] as string | undefined) ?? '';
  if (!all.startsWith(base)) return;
  const added = parseChindings(all.slice(base.length));
  if (!added) return;
  const merged = mergeBindings(bindingsOf(parent), added);
  c[chindingsSym] = serializeBindings(merged);
  boundOf.set(child, merged);
}

// pino writes level, time, pid (our base binding) and msg itself.
const OWN_KEYS = new Map([['level', 'levelField'], ['time', 'timeField'], ['pid', 'pidField']]);

/**
 * A log call's fields against its logger's bindings: drop a repeated
 * binding, rename a field named like one of pino's own keys, and return the
 * fields whose value differs from the binding (the line is written through a
 * child that binds those instead).
 */
function fieldsFor(l: object, obj: Record<string, unknown>, hasMsg: boolean): { obj: Record<string, unknown>; override?: Bound } {
  const bound = bindingsOf(l);
  let out: Record<string, unknown> | undefined;
  let override: Bound | undefined;
  for (const k of Object.keys(obj)) {
    const v = obj[k];
    if (v === undefined) continue;
    if (k === 'msg') {
      if (!hasMsg) continue;
      out ??= { ...obj };
      delete out.msg;
      out[out.detail === undefined ? 'detail' : 'msgField'] = v;
    } else if (OWN_KEYS.has(k)) {
      out ??= { ...obj };
      delete out[k];
      out[OWN_KEYS.get(k)!] = v;
    } else if (Object.prototype.hasOwnProperty.call(bound, k)) {
      out ??= { ...obj };
      delete out[k];
      if (!sameValue(bound[k], v)) (override ??= {})[k] = v;
    }
  }
  return { obj: out ?? obj, override };
}

const prettyLoggers = new WeakSet<Logger>();

/** A serialized error ({type, message, stack, code}) as one short line for a person. */
function errText(v: unknown): unknown {
  if (!v || typeof v !== 'object') return v;
  const e = v as { type?: unknown; message?: unknown; code?: unknown };
  if (typeof e.message !== 'string') return v;
  const type = typeof e.type === 'string' && e.type !== 'Error' ? `${e.type}: ` : '';
  const code = typeof e.code === 'string' ? ` [${e.code}]` : '';
  return `${type}${e.message}${code}`;
}

/** Whether to colour pretty output written to this destination. */
function colorsFor(dest: number | string): boolean {
  const env = process.env;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '' && env.FORCE_COLOR !== '0') return true;
  if (env.TERM === 'dumb') return false;
  return typeof dest === 'number' && tty.isatty(dest);
}

export function createLogger(opts: LogOptions = {}): Logger {
  const level = opts.level ?? process.env.ISCSI_NBD_LOG_LEVEL ?? 'info';
  const dest = opts.destination ?? 2;
  const pretty = opts.pretty ?? (typeof dest === 'number' && process.stderr.isTTY === true && dest === 2);
  const base: pino.LoggerOptions = {
    level,
    redact: { paths: [...REDACT, ...REDACT_URLS], censor },
    base: { pid: process.pid },
    formatters: { log: scrub, bindings: scrub },
    onChild,
    hooks: {
      // The message text itself (and printf-style arguments) may quote a URL.
      logMethod(args, method) {
        for (let i = 0; i < args.length; i++) if (typeof args[i] === 'string') args[i] = redactText(args[i] as string);
        const o = args[0] as unknown;
        if (o && typeof o === 'object' && !(o instanceof Error) && !Array.isArray(o) && !Buffer.isBuffer(o)) {
          const { obj, override } = fieldsFor(this, o as Record<string, unknown>, args.length > 1 && args[1] !== undefined);
          (args as unknown[])[0] = obj;
          if (override) return method.apply(this.child(override), args as Parameters<typeof method>);
        }
        return method.apply(this, args as Parameters<typeof method>);
      },
    },
  };
  if (pretty) {
    // pino-pretty's formatter in front of a synchronous destination (keeps
    // ordering with process exit). One line per event: fields inline
    // (singleLine), and `err` too: pino-pretty would put an error key on lines
    // of its own, so it is not treated as one and an error object shows as
    // "Type: message" (the JSON logs keep the stack). Coloured on a terminal.
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { prettyFactory } = require('pino-pretty') as { prettyFactory: (o: Record<string, unknown>) => (line: string) => string };
    const format = prettyFactory({
      translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', singleLine: true, colorize: colorsFor(dest),
      errorLikeObjectKeys: [], customPrettifiers: { err: errText },
    });
    const out = pino.destination({ dest, sync: true });
    const l = pino(base, { write: (s: string) => void out.write(format(s)) });
    prettyLoggers.add(l);
    return l;
  }
  return pino(base, pino.destination({ dest, sync: true }));
}

/** The process-wide logger; tests get a silent one unless ISCSI_NBD_LOG_LEVEL is set. */
export function rootLogger(): Logger {
  if (!root) {
    const inTest = process.env.NODE_TEST_CONTEXT !== undefined;
    root = inTest && !process.env.ISCSI_NBD_LOG_LEVEL ? pino({ level: 'silent' }) : createLogger();
  }
  return root;
}

export function setRootLogger(l: Logger): void {
  root = l;
}

/**
 * Whether stderr carries JSON log lines: a root logger was set up, writes
 * JSON (not pino-pretty) and is not silent. Then anything else meant for a
 * person on stderr must be a JSON line too (see tell()).
 */
export function stderrIsJson(): boolean {
  return root !== undefined && !prettyLoggers.has(root) && root.level !== 'silent';
}

export type TellLevel = 'info' | 'warn' | 'error';

/**
 * A line for a person on stderr (an error, a warning, progress) that must not
 * break a JSON log stream: plain text (`plain`, default `iscsi-nbd: <msg>`)
 * when stderr has no JSON log lines (a terminal, pretty logs, --log-level
 * silent, or before logging is set up), else a JSON log line at `level` with
 * `fields`, written whatever --log-level says (like the plain text would be).
 */
export function tell(level: TellLevel, msg: string, fields: Record<string, unknown> = {}, plain = `iscsi-nbd: ${msg}`): void {
  if (!stderrIsJson()) {
    process.stderr.write(`${redactText(plain)}\n`);
    return;
  }
  const l = root!.isLevelEnabled(level) ? root! : root!.child({}, { level });
  l[level](fields, msg);
}

/** Remove the password part of an iscsi:// URL (user%password@ or user:password@). */
export function redactUrl(url: string): string {
  return redactText(url);
}
