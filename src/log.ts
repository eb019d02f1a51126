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

export function createLogger(opts: LogOptions = {}): Logger {
  const level = opts.level ?? process.env.ISCSI_NBD_LOG_LEVEL ?? 'info';
  const dest = opts.destination ?? 2;
  const pretty = opts.pretty ?? (typeof dest === 'number' && process.stderr.isTTY === true && dest === 2);
  const base: pino.LoggerOptions = {
    level,
    redact: { paths: [...REDACT, ...REDACT_URLS], censor },
    base: { pid: process.pid },
    formatters: { log: scrub, bindings: scrub },
    hooks: {
      // The message text itself (and printf-style arguments) may quote a URL.
      logMethod(args, method) {
        for (let i = 0; i < args.length; i++) if (typeof args[i] === 'string') args[i] = redactText(args[i] as string);
        return method.apply(this, args as Parameters<typeof method>);
      },
    },
  };
  if (pretty) {
    // pino-pretty as a synchronous stream keeps ordering with process exit.
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const pinoPretty = require('pino-pretty');
    return pino(base, pinoPretty({ destination: dest, sync: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
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

/** Remove the password part of an iscsi:// URL (user%password@ or user:password@). */
export function redactUrl(url: string): string {
  return redactText(url);
}
