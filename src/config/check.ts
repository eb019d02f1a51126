// The checks a config gets before anything logs in, beyond its text: files
// (PEM, readable), interfaces, addresses that resolve, plaintext NBD off
// loopback, one LUN with two writers.

import dns from 'node:dns';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { parseLunUrl } from '../iscsi/url';
import { ifaceProblem } from '../util/bind-device';
import type { DaemonConfig, ExportConfig } from './schema';
import { exportKey, parseListen, type ConfigFile, type ConfigProblem } from './load';
import { isObj, isStr } from './guards';

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

