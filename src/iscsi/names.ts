// iSCSI names (RFC 7143 4.2.7, RFC 3720 3.2.6, RFC 3722 stringprep) and the
// resolution of our own initiator name.
//
//   iqn.yyyy-mm.reversed.domain[:anything]   (normalised to lower case)
//   eui.<16 hex digits>
//   naa.<16 or 32 hex digits>
// At most 223 bytes of UTF-8.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ConfigError } from '../errors';

export const MAX_NAME_BYTES = 223;
export const GENERATED_NAME_PREFIX = 'iqn.2026-11.io.iscsi-nbd';
export const SYSTEM_INITIATOR_NAME_FILE = '/etc/iscsi/initiatorname.iscsi';

const IQN_RE = /^iqn\.(\d{4})-(\d{2})\.([^:]+)(?::(.*))?$/s;
const LABEL_RE = /^[\p{Ll}\p{Lo}\p{Nd}](?:[\p{Ll}\p{Lo}\p{Nd}_-]*[\p{Ll}\p{Lo}\p{Nd}])?$/u;
// After case folding, RFC 3722 leaves letters, digits and only "-", ".", ":" of
// ASCII punctuation. "_" is tolerated too: it is common in the field.
const ALLOWED_CHARS_RE = /^[\p{Ll}\p{Lo}\p{Lm}\p{Nd}\p{Mn}\p{Mc}.:_-]*$/u;

export type NameType = 'iqn' | 'eui' | 'naa';

/**
 * Validate an iSCSI name and return its normalised form (NFKC, iqn lowered,
 * type prefix lowered, hex of eui/naa upper-cased as in the RFC examples).
 * Throws ConfigError (EBADNAME) with the reason.
 */
export function normalizeIscsiName(input: string, what = 'iSCSI name'): string {
  const name = input.normalize('NFKC').trim();
  const bad = (why: string): never => {
    throw new ConfigError('EBADNAME', `invalid ${what} ${JSON.stringify(input)}: ${why}`);
  };
  if (name.length === 0) bad('empty');
  const prefix = name.slice(0, 4).toLowerCase();
  let out: string;
  if (prefix === 'iqn.') {
    out = name.toLowerCase();
    const m = IQN_RE.exec(out);
    if (!m) bad('expected iqn.yyyy-mm.reversed.domain[:identifier]');
    const [, year, month, domain, rest] = m!;
    if (+year < 1970 || +month < 1 || +month > 12) bad(`bad date ${year}-${month}`);
    for (const label of domain.split('.')) if (!LABEL_RE.test(label)) bad(`bad naming authority "${domain}"`);
    if (rest !== undefined && !ALLOWED_CHARS_RE.test(rest)) bad('only letters, digits, ".", "-", ":" and "_" allowed');
  } else if (prefix === 'eui.') {
    const hex = name.slice(4);
    if (!/^[0-9a-fA-F]{16}$/.test(hex)) bad('eui. must be followed by 16 hex digits');
    out = `eui.${hex.toUpperCase()}`;
  } else if (prefix === 'naa.') {
    const hex = name.slice(4);
    if (!/^([0-9a-fA-F]{16}|[0-9a-fA-F]{32})$/.test(hex)) bad('naa. must be followed by 16 or 32 hex digits');
    out = `naa.${hex.toUpperCase()}`;
  } else {
    return bad('must start with iqn., eui. or naa.');
  }
  if (Buffer.byteLength(out!, 'utf8') > MAX_NAME_BYTES) bad(`longer than ${MAX_NAME_BYTES} bytes`);
  return out!;
}

export function isValidIscsiName(name: string): boolean {
  try {
    normalizeIscsiName(name);
    return true;
  } catch {
    return false;
  }
}

/** Parse an open-iscsi style initiatorname file: `InitiatorName=...`, # comments. */
export function parseInitiatorNameFile(text: string): string | undefined {
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith('#')) continue;
    const m = /^InitiatorName\s*=\s*(\S+)\s*$/.exec(line);
    if (m) return m[1];
  }
  return undefined;
}

export interface ResolveInitiatorNameOptions {
  /** From the command line or config: wins when set. */
  explicit?: string;
  /** open-iscsi's file; default /etc/iscsi/initiatorname.iscsi. Pass null to skip. */
  systemFile?: string | null;
  /** Our own persisted name, e.g. ~/.config/iscsi-nbd/initiatorname. */
  stateFile: string;
  /** Injected for tests. */
  random?: (n: number) => Buffer;
}

export interface ResolvedInitiatorName {
  name: string;
  source: 'option' | 'system' | 'state' | 'generated';
}

/**
 * Our initiator name: the explicit option, else open-iscsi's system name,
 * else the one persisted in stateFile, else a new
 * iqn.2026-11.io.iscsi-nbd:<hex> written to stateFile (so ACLs on targets
 * keep working across restarts).
 */
export function resolveInitiatorName(opts: ResolveInitiatorNameOptions): ResolvedInitiatorName {
  if (opts.explicit !== undefined && opts.explicit !== '') {
    return { name: normalizeIscsiName(opts.explicit, 'initiator name'), source: 'option' };
  }
  const sys = opts.systemFile === undefined ? SYSTEM_INITIATOR_NAME_FILE : opts.systemFile;
  if (sys) {
    let text: string | undefined;
    try {
      text = fs.readFileSync(sys, 'utf8');
    } catch {
      text = undefined; // absent or unreadable (it is often mode 0600 root): fall through
    }
    const n = text === undefined ? undefined : parseInitiatorNameFile(text);
    if (n !== undefined && isValidIscsiName(n)) return { name: normalizeIscsiName(n), source: 'system' };
  }
  const state = readIfExists(opts.stateFile);
  if (state !== undefined) {
    const n = parseInitiatorNameFile(state) ?? state.trim();
    if (n) return { name: normalizeIscsiName(n, `initiator name in ${opts.stateFile}`), source: 'state' };
  }
  const rnd = (opts.random ?? randomBytes)(6).toString('hex');
  const name = `${GENERATED_NAME_PREFIX}:${rnd}`;
  try {
    fs.mkdirSync(path.dirname(opts.stateFile), { recursive: true, mode: 0o755 });
    const tmp = `${opts.stateFile}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, `InitiatorName=${name}\n`, { mode: 0o644 });
    fs.renameSync(tmp, opts.stateFile);
  } catch (e) {
    throw new ConfigError('ECONFIG', `cannot save the generated initiator name to ${opts.stateFile}: ${(e as Error).message}`, { cause: e });
  }
  return { name, source: 'generated' };
}

function readIfExists(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigError('ECONFIG', `cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
}
