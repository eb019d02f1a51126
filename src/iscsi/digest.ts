// Header/data digest modes: the one type (DigestPref, declared with the
// daemon's configuration in config.ts and used by name here) and the one map
// from a mode to the HeaderDigest/DataDigest value we propose at login.

import type { DigestPref } from '../config';
import type { DigestPreference } from './negotiation';

/** config.ts DIGEST_MODES. */
export type DigestMode = DigestPref;

/** What each mode proposes for HeaderDigest and DataDigest, most preferred first. */
export const DIGEST_PROPOSAL: Readonly<Record<DigestMode, DigestPreference>> = {
  none: 'None',
  crc32c: 'CRC32C',
  'prefer-crc32c': 'CRC32C,None',
  'prefer-none': 'None,CRC32C',
};

export function isDigestMode(v: unknown): v is DigestMode {
  return typeof v === 'string' && Object.prototype.hasOwnProperty.call(DIGEST_PROPOSAL, v);
}
