import pino, { Logger } from 'pino';

export type { Logger };

// Keys whose values must never reach a log line. URLs are scrubbed by
// redactUrl() before they are logged; these catch structured fields.
const REDACT = [
  'password', 'secret', 'chapSecret', 'chapPassword', 'mutualSecret', 'targetSecret',
  '*.password', '*.secret', '*.chapSecret', '*.mutualSecret', '*.targetSecret',
  'auth.password', 'auth.secret', 'chap.secret', 'chap.mutualSecret',
];

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
  const base = { level, redact: { paths: REDACT, censor: '[redacted]' }, base: { pid: process.pid } };
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
  return url.replace(/^(iscsi:\/\/[^@/%:]*)[%:][^@/]*@/i, '$1%[redacted]@');
}
