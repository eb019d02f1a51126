// iscsi:// URLs in the libiscsi/qemu form:
//   iscsi://[user[%password]@]host[:port]/<target-iqn>/<lun>
//   iscsi://[user[%password]@]host[:port][/]          (discovery)
//   ?target_user=..&target_password=..                 (mutual CHAP, libiscsi)
// IPv6 hosts in brackets. user:password@ (RFC 3986) is accepted too: the
// user ends at the first "%" or ":". Path parts, user and password are percent-decoded
// (write a literal "%" in a password as %25).

import { ConfigError } from '../errors';
import { ISCSI_PORT } from './constants';
import { normalizeIscsiName } from './names';

export interface IscsiUrlAuth {
  user: string;
  password: string;
  /** Mutual CHAP: the name/secret the target must prove. */
  targetUser?: string;
  targetPassword?: string;
}

export interface IscsiUrl {
  host: string;
  port: number;
  /** Normalised target name; absent for a discovery URL. */
  target?: string;
  /** Absent for discovery URLs and for target URLs without a LUN. */
  lun?: number;
  auth?: IscsiUrlAuth;
  /** The URL without any password. */
  toString(): string;
  /** The URL with passwords replaced by [redacted]. */
  redacted(): string;
}

const MAX_LUN = 0xffffff;

function bad(url: string, why: string): never {
  throw new ConfigError('EBADURL', `invalid iSCSI URL ${redact(url)}: ${why}`);
}

/** Best-effort scrubbing of a raw (maybe unparsable) URL for messages. */
function redact(url: string): string {
  return JSON.stringify(
    url
      .replace(/^(iscsi:\/\/[^@/%:]*)[%:][^@/]*@/i, '$1%[redacted]@')
      .replace(/(target_password=)[^&]*/gi, '$1[redacted]'),
  );
}

function decode(url: string, s: string, what: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return bad(url, `bad percent-encoding in ${what}`);
  }
}

export function parseIscsiUrl(url: string): IscsiUrl {
  if (!/^iscsi:\/\//i.test(url)) bad(url, 'must start with iscsi://');
  let rest = url.slice('iscsi://'.length);
  let query = '';
  const q = rest.indexOf('?');
  if (q >= 0) {
    query = rest.slice(q + 1);
    rest = rest.slice(0, q);
  }
  const slash = rest.indexOf('/');
  let authority = slash >= 0 ? rest.slice(0, slash) : rest;
  const pathPart = slash >= 0 ? rest.slice(slash + 1) : '';

  let auth: IscsiUrlAuth | undefined;
  const at = authority.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = authority.slice(0, at);
    authority = authority.slice(at + 1);
    // Split at whichever of "%" (libiscsi) and ":" (RFC 3986) comes first.
    const pct = userinfo.indexOf('%');
    const col = userinfo.indexOf(':');
    const sep = pct < 0 ? col : col < 0 ? pct : Math.min(pct, col);
    const user = decode(url, sep >= 0 ? userinfo.slice(0, sep) : userinfo, 'user');
    const password = sep >= 0 ? decode(url, userinfo.slice(sep + 1), 'password') : '';
    if (user === '') bad(url, 'empty user name');
    auth = { user, password };
  }

  // host[:port], [v6][:port]
  let host: string;
  let portStr: string | undefined;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close < 0) bad(url, 'unterminated [IPv6 address]');
    host = authority.slice(1, close);
    const after = authority.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) bad(url, 'unexpected text after ]');
    portStr = after === '' ? undefined : after.slice(1);
    if (!/^[0-9a-fA-F:.]+(%[\w.-]+)?$/.test(host) || !host.includes(':')) bad(url, `bad IPv6 address ${host}`);
  } else {
    const colon = authority.lastIndexOf(':');
    host = colon >= 0 ? authority.slice(0, colon) : authority;
    portStr = colon >= 0 ? authority.slice(colon + 1) : undefined;
    if (!/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host)) bad(url, `bad host "${host}"`);
  }
  let port = ISCSI_PORT;
  if (portStr !== undefined) {
    if (!/^\d{1,5}$/.test(portStr) || +portStr < 1 || +portStr > 65535) bad(url, `bad port "${portStr}"`);
    port = +portStr;
  }

  // /<target>/<lun>
  const segs = pathPart === '' ? [] : pathPart.split('/');
  if (segs.length > 0 && segs[segs.length - 1] === '') segs.pop(); // trailing slash
  if (segs.length > 2) bad(url, 'expected /<target-iqn>/<lun>');
  let target: string | undefined;
  let lun: number | undefined;
  if (segs.length >= 1) {
    const t = decode(url, segs[0], 'target name');
    try {
      target = normalizeIscsiName(t, 'target name');
    } catch (e) {
      bad(url, (e as Error).message);
    }
  }
  if (segs.length === 2) {
    if (!/^\d+$/.test(segs[1]) || +segs[1] > MAX_LUN) bad(url, `bad LUN "${segs[1]}"`);
    lun = +segs[1];
  }

  if (query !== '') {
    for (const kv of query.split('&')) {
      if (kv === '') continue;
      const eq = kv.indexOf('=');
      const k = eq >= 0 ? kv.slice(0, eq) : kv;
      const v = decode(url, eq >= 0 ? kv.slice(eq + 1) : '', k);
      if (k === 'target_user' || k === 'target_password') {
        if (!auth) bad(url, `${k} needs a user%password@ part too (mutual CHAP)`);
        if (k === 'target_user') auth!.targetUser = v;
        else auth!.targetPassword = v;
      } else {
        bad(url, `unsupported option "${k}" (supported: target_user, target_password)`);
      }
    }
    if (auth && (auth.targetUser === undefined) !== (auth.targetPassword === undefined)) {
      bad(url, 'target_user and target_password go together');
    }
  }

  const hostPart = host.includes(':') ? `[${host}]` : host;
  const format = (pw: (a: IscsiUrlAuth) => string): string => {
    const userinfo = auth ? `${encodeURIComponent(auth.user)}${pw(auth)}@` : '';
    let s = `iscsi://${userinfo}${hostPart}:${port}/`;
    if (target !== undefined) s += encodeURIComponent(target).replace(/%3A/gi, ':');
    if (lun !== undefined) s += `/${lun}`;
    if (auth?.targetUser !== undefined) {
      s += `?target_user=${encodeURIComponent(auth.targetUser)}`;
      if (pw(auth) !== '') s += '&target_password=[redacted]';
    }
    return s;
  };
  const result: IscsiUrl = {
    host,
    port,
    toString: () => format(() => ''),
    redacted: () => format((a) => (a.password !== '' || a.targetPassword ? '%[redacted]' : '')),
  };
  if (target !== undefined) result.target = target;
  if (lun !== undefined) result.lun = lun;
  if (auth) result.auth = auth;
  return result;
}

/**
 * A URL that must name one LUN (serve --export, config exports and devices,
 * map, copy). Like libiscsi, a URL without /<lun> is refused rather than
 * taken to mean LUN 0.
 */
export function parseLunUrl(url: string): IscsiUrl & { target: string; lun: number } {
  const u = parseIscsiUrl(url);
  if (u.target === undefined) bad(url, 'names no target and no LUN (want iscsi://host[:port]/<target-iqn>/<lun>)');
  if (u.lun === undefined) bad(url, `names no LUN (want iscsi://host[:port]/${u.target}/<lun>; LUN 0 is not assumed)`);
  return u as IscsiUrl & { target: string; lun: number };
}

/**
 * What `discover` takes: an iscsi:// URL (portal, or portal and target), or a
 * bare host[:port] as iscsiadm users type it.
 */
export function parsePortalUrl(s: string): IscsiUrl {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) return parseIscsiUrl(s);
  return parseIscsiUrl(`iscsi://${s}`);
}

/** "host:port" / "[v6]:port" for logs and connect(). */
/** A target portal: where an iSCSI target listens. */
export interface Portal {
  host: string;
  port: number;
}

/** "host:port", with IPv6 hosts in brackets (the one formatter for portals and listen addresses). */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
