// Opening a connection as a session wants it: connect, log in, and the
// policy around the login engine: follow redirections (a permanent one is
// reported for later connections), and retry once with CHAP_A=5 for targets
// that refuse an algorithm list, remembered in the target quirks.

import { LoginError, TransportError } from '../errors';
import { rootLogger, type Logger } from '../log';
import { keepAliveClock, type EngineClock } from './clock';
import { DEFAULT_CONNECT_MS, IscsiConnection, tcpConnect } from './connection';
import { ChapAlgorithmRejectedError, type LoginOptions, type LoginResult, type LoginStep } from './login';
import { TARGET_QUIRKS, type TargetQuirks } from './quirks';
import { formatHostPort, type Portal } from './url';

const DEFAULT_LOGIN_MS = 15000;
const DEFAULT_MAX_REDIRECTS = 5;

export interface OpenOptions {
  portal: Portal;
  login: Omit<LoginOptions, 'logger'>;
  connectTimeoutMs?: number;
  loginTimeoutMs?: number;
  /** Login redirections followed before giving up (EREDIRECT). */
  maxRedirects?: number;
  log?: Logger;
  /** Timers of the connect and login timeouts (the session's clock; tests drive a manual one). */
  clock?: EngineClock;
  /** Aborts the connect or login in progress (the session was closed): rejects with ESHUTDOWN. */
  signal?: AbortSignal;
  /**
   * The network interface the connection leaves through (SO_BINDTODEVICE), or
   * an IP address of this host to bind to as the source address. None: the
   * routing table decides, as always.
   */
  iface?: string;
  /** What is known of targets (the CHAP-MD5 fallback, challenges); the process's by default. */
  quirks?: TargetQuirks;
}

export interface OpenResult {
  conn: IscsiConnection;
  login: LoginResult;
  /** Where we ended up logged in (after redirections). */
  portal: Portal;
  /** Set when the target moved permanently: use it for later connections. */
  permanentRedirect?: Portal;
}

/**
 * Connect and log in, following redirections, retrying once with CHAP_A=5
 * for targets that reject an algorithm list. Rejects with TransportError or
 * LoginError (or ProtocolError for a broken target).
 */
export async function openConnection(opts: OpenOptions): Promise<OpenResult> {
  const log = opts.log ?? rootLogger();
  const maxRedirects = opts.maxRedirects ?? DEFAULT_MAX_REDIRECTS;
  let portal = opts.portal;
  let permanent: Portal | undefined;
  let loginOpts = opts.quirks ? { ...opts.login, quirks: opts.quirks } : opts.login;
  let md5Retry = false;
  const quirks = opts.quirks ?? TARGET_QUIRKS;
  if (loginOpts.auth && quirks.md5OnlyFor(formatHostPort(portal.host, portal.port), loginOpts.targetName)) {
    md5Retry = true;
    loginOpts = { ...loginOpts, chapAlgorithms: [5] };
  }
  for (let redirects = 0; ;) {
    const clock = opts.clock ?? keepAliveClock;
    const { socket, reader } = await tcpConnect(portal, opts.connectTimeoutMs ?? DEFAULT_CONNECT_MS, clock, opts.signal, opts.iface);
    const conn = new IscsiConnection(socket, log.child({ portal: formatHostPort(portal.host, portal.port) }), reader);
    const onAbort = (): void => conn.close(new TransportError('ESHUTDOWN', 'login cancelled: the session was closed'));
    if (opts.signal?.aborted) onAbort(); // between the connect and here
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let step: Exclude<LoginStep, { send: unknown }>;
    try {
      step = await conn.login(loginOpts, opts.loginTimeoutMs ?? DEFAULT_LOGIN_MS, clock);
    } catch (e) {
      conn.close(e as Error);
      if (e instanceof ChapAlgorithmRejectedError && !md5Retry) {
        md5Retry = true;
        loginOpts = { ...loginOpts, chapAlgorithms: [5] };
        if (quirks.rememberMd5Only(formatHostPort(portal.host, portal.port), loginOpts.targetName)) {
          log.info('target rejected our CHAP_A list; retrying with MD5 only (remembered for this portal)');
        }
        continue;
      }
      throw e;
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
    if ('done' in step) {
      const r: OpenResult = { conn, login: step.done, portal };
      if (permanent) r.permanentRedirect = permanent;
      return r;
    }
    conn.close();
    const next: Portal = { host: step.redirect.address, port: step.redirect.port };
    if (++redirects > maxRedirects) {
      throw new LoginError('EREDIRECT', `iSCSI login redirected more than ${maxRedirects} times (last to ${formatHostPort(next.host, next.port)})`, 1, step.redirect.permanent ? 2 : 1);
    }
    log.info({ to: formatHostPort(next.host, next.port), permanent: step.redirect.permanent }, 'iSCSI login redirected');
    if (step.redirect.permanent) permanent = next;
    portal = next;
  }
}

