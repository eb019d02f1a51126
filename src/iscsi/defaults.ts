// The initiator's own defaults, in the units a person configures (seconds),
// and the header/data digest modes. The daemon's configuration (src/config/)
// builds on these; the protocol layer never reads the configuration.

/** A session's timeouts in seconds (config `timeouts.*` keys of the same names). */
export interface SessionTimeoutsSec {
  /** Seconds an outage may last before requests fail with EIO (open-iscsi's replacement_timeout). */
  replacement: number;
  /** Seconds before a SCSI command is aborted. */
  command: number;
  login: number;
  connect: number;
  /** Seconds between NOP-Out pings; 0 disables them. */
  nopInterval: number;
  nopTimeout: number;
}

/** open-iscsi's iscsid.conf values where it has them (replacement 120, noop 5/10, login 15). */
export const SESSION_TIMEOUTS_SEC: SessionTimeoutsSec = {
  replacement: 120,
  command: 30,
  login: 15,
  connect: 10,
  nopInterval: 5,
  nopTimeout: 10,
};

/** Header/data digest preferences a session can be given. */
export const DIGEST_MODES = ['none', 'crc32c', 'prefer-crc32c', 'prefer-none'] as const;
export type DigestPref = (typeof DIGEST_MODES)[number];
