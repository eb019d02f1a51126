import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ConfigError, IscsiNbdError } from '../errors';
import { rootLogger, type Logger } from '../log';
import { peerCred } from './peer-cred';

// The local control endpoint: a unix socket that takes one JSON request line
// per connection ({"op": "status"}, {"op": "map", ...}) and answers one JSON
// line: the result, or {"error": {"code", "message"}}. `iscsi-nbd status`,
// `map`, `unmap` and `list-mapped` talk to the daemon through it.

export interface ControlRequest {
  op: string;
  [key: string]: unknown;
}

export type ControlHandler = (req: ControlRequest) => unknown | Promise<unknown>;

/** Requests are small; anything larger is not ours. */
const MAX_REQUEST = 64 * 1024;

/**
 * The control socket refused by where it is or who made it: a directory
 * another user can write to or owns, a socket file of another user. Either
 * could let that user answer `status` in the daemon's name, or catch a `map`
 * request with its CHAP secret.
 */
export class ControlSocketError extends ConfigError {
  constructor(message: string) {
    super('ECONFIG', message);
  }
}

const myUid = (): number => process.geteuid?.() ?? process.getuid?.() ?? 0;

/** The control socket, its directory and its peer may be this user's or root's, nobody else's. */
function trusted(uid: number): boolean {
  return uid === myUid() || uid === 0;
}

/** "uid 65534 (nobody)", from /etc/passwd when it has the uid. */
export function whoIs(uid: number): string {
  try {
    for (const line of fs.readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f.length > 2 && Number(f[2]) === uid && f[2] !== '') return `uid ${uid} (${f[0]})`;
    }
  } catch {
    // no passwd file: the number alone
  }
  return `uid ${uid}`;
}

const mode = (m: number): string => `0${(m & 0o7777).toString(8)}`;

/** Why the directory of a control socket cannot be trusted, or undefined when it can. */
export function socketDirProblem(dir: string): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    return `cannot use the directory ${dir}: ${(err as Error).message}`;
  }
  if (!st.isDirectory()) return `${dir} is not a directory`;
  if (!trusted(st.uid)) {
    return `the directory ${dir} belongs to ${whoIs(st.uid)}, not to you or root: another user may have made it to answer in the daemon's name. ` +
      'Remove it, or give --control PATH (or set XDG_RUNTIME_DIR) for a directory of your own';
  }
  // A sticky directory (/tmp) is shared, but nobody can replace a file there that is not theirs: the socket's owner is checked.
  if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
    return `the directory ${dir} is writable by other users (mode ${mode(st.mode)}): anyone could put their own socket there. ` +
      'Run chmod go-w on it, or give --control PATH in a directory of your own';
  }
  return undefined;
}

/** Why an existing socket file is not the daemon's to trust, or undefined when it may be. */
function socketFileProblem(p: string, st: fs.Stats): string | undefined {
  if (!st.isSocket()) return `${p} exists and is not a socket`;
  if (!trusted(st.uid)) {
    return `the control socket ${p} belongs to ${whoIs(st.uid)}, not to you or root: another user made it, perhaps to answer in the daemon's name. ` +
      'Remove it (or give --control PATH)';
  }
  return undefined;
}

function inUse(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/**
 * Make the control socket's place ready for a daemon, or say why it cannot
 * be: its directory made (0700) if missing, owned by this user or root and
 * writable by nobody else; a socket already there removed only when it is
 * ours and nobody listens on it.
 */
export async function prepareControlPath(p: string): Promise<void> {
  const dir = path.dirname(p);
  if (!fs.existsSync(dir)) {
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new ControlSocketError(`cannot make the directory of the control socket ${p}: ${(err as Error).message}`);
    }
  }
  const why = socketDirProblem(dir);
  if (why) throw new ControlSocketError(why);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return; // not there: free
  }
  const bad = socketFileProblem(p, st);
  if (bad) throw new ControlSocketError(bad);
  if (await inUse(p)) throw new ControlSocketError(`control socket ${p} belongs to another running daemon (use --control PATH)`);
  fs.unlinkSync(p); // stale, left by a daemon that died
}

const toJson = (v: unknown): string => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x));

const errorLine = (code: string, message: string): string => toJson({ error: { code, message } });

/** One request line to its answer line; ops are the handlers' own keys only (never `__proto__` or `toString`). */
export async function answer(handlers: Record<string, ControlHandler>, line: string, log?: Logger): Promise<string> {
  let req: unknown;
  try {
    req = JSON.parse(line);
  } catch {
    return errorLine('EINVAL', 'the control request is not JSON (want one line like {"op": "status"})');
  }
  const op = typeof req === 'object' && req !== null && !Array.isArray(req) ? (req as { op?: unknown }).op : undefined;
  if (typeof op !== 'string') return errorLine('EINVAL', 'the control request names no op (want one line like {"op": "status"})');
  if (!Object.hasOwn(handlers, op)) return errorLine('EINVAL', `unknown control request ${JSON.stringify(op)} (known: ${Object.keys(handlers).join(', ')})`);
  try {
    return toJson({ result: await handlers[op](req as ControlRequest) });
  } catch (err) {
    const code = err instanceof IscsiNbdError ? err.code : 'EIO';
    const message = (err as Error)?.message ?? String(err);
    // The daemon's log keeps what was refused (a `map` that failed, for one), not only the client that asked.
    log?.warn({ op, code, err: message }, 'control request failed');
    return errorLine(code, message);
  }
}

export interface ControlServerOptions {
  log?: Logger;
}

export async function startControlServer(p: string, handlers: Record<string, ControlHandler>, opts: ControlServerOptions = {}): Promise<net.Server> {
  const log = opts.log ?? rootLogger().child({ component: 'control' });
  await prepareControlPath(p);
  const srv = net.createServer((sock) => {
    sock.on('error', () => undefined);
    // The socket file is 0600 in a directory of ours; SO_PEERCRED says who connected all the same.
    const peer = peerCred(sock);
    if (peer && !trusted(peer.uid)) {
      log.warn({ peerUid: peer.uid, peerPid: peer.pid }, 'control request from another user refused');
      const whom = myUid() === 0 ? 'root only' : `${whoIs(myUid())} and root only`;
      sock.resume(); // read on, so that the peer's end closes this socket
      sock.end(errorLine('EPERM', `this daemon answers ${whom}, not ${whoIs(peer.uid)}`) + '\n');
      return;
    }
    let buf = '';
    const onData = (c: Buffer): void => {
      buf += c.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) {
        if (buf.length > MAX_REQUEST) sock.destroy();
        return;
      }
      sock.off('data', onData);
      void answer(handlers, buf.slice(0, nl), log).then((body) => sock.end(body + '\n'));
    };
    sock.on('data', onData);
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', (err) => reject(new ControlSocketError(`cannot listen on the control socket ${p}: ${err.message}`)));
    srv.listen(p, () => {
      srv.removeAllListeners('error');
      resolve();
    });
  });
  try {
    fs.chmodSync(p, 0o600);
  } catch {
    // not fatal: the directory's permissions and the peer check still apply
  }
  // Not unref'd: a daemon serving only mapped devices has no other listener to keep it alive.
  srv.on('close', () => fs.rmSync(p, { force: true }));
  return srv;
}

/** The daemon is not there (no socket, or nobody listening on it). */
export class NoDaemonError extends Error {}

/**
 * Before a request leaves: the socket is this user's or root's, in a
 * directory nobody else can write to; else it may be another user's,
 * waiting for our requests (and a `map` request's CHAP secret).
 */
export function checkControlPeer(p: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' || e.code === 'ENOTDIR') throw noDaemon(p);
    if (e.code === 'EACCES') throw permissionError(p);
    throw new Error(`${p}: ${e.message}`);
  }
  const why = socketDirProblem(path.dirname(p)) ?? socketFileProblem(p, st);
  if (why) throw new ControlSocketError(why);
}

const noDaemon = (p: string): NoDaemonError => new NoDaemonError(`no iscsi-nbd daemon is listening on ${p} (is it running? try --control PATH)`);

/** EACCES on the socket: for a user other than root, the daemon is root's. */
function permissionError(p: string): IscsiNbdError {
  const hint = myUid() === 0 ? '' : ': the daemon runs as root, so run this command with sudo (or give --control PATH for a daemon of your own)';
  return new IscsiNbdError('EPERM', `permission denied on the control socket ${p}${hint}`);
}

/** Send one request and wait for its answer; a daemon-side error is rethrown with its code. */
export function callControl<T = unknown>(p: string, req: ControlRequest, timeoutMs = 5000): Promise<T> {
  try {
    checkControlPeer(p);
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise((resolve, reject) => {
    const s = net.connect(p);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer from ${p} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('connect', () => s.write(toJson(req) + '\n'));
    s.on('data', (c) => chunks.push(c));
    s.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
          ? noDaemon(p)
          : err.code === 'EACCES' ? permissionError(p) : new Error(`${p}: ${err.message}`),
      );
    });
    s.on('end', () => {
      clearTimeout(timer);
      let doc: { result?: T; error?: { code: string; message: string } };
      try {
        doc = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        reject(new Error(`bad answer from ${p}: ${(err as Error).message}`));
        return;
      }
      if (doc.error) reject(new IscsiNbdError(doc.error.code as never, doc.error.message));
      else resolve(doc.result as T);
    });
  });
}

/** The daemon's status document (`iscsi-nbd status`). */
export function readControl(p: string, timeoutMs = 5000): Promise<unknown> {
  return callControl(p, { op: 'status' }, timeoutMs);
}
