// Header/data digest modes: the one type (DigestPref, in defaults.ts with the
// list the configuration's schema uses) and the one map from a mode to the
// HeaderDigest/DataDigest value we propose at login.

import type { DigestPref } from './defaults';
import type { DigestPreference } from './negotiation';

/** defaults.ts DIGEST_MODES. */
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
