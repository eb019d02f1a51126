// One exponential backoff for every retry loop: a session's reconnect, an
// export's open retry, a mapped device's reattach.

export interface ReconnectBackoff {
  /** First delay (default 100 ms). */
  initialMs: number;
  /** Largest delay (default 30000 ms). */
  maxMs: number;
  /** Relative jitter, +/- (default 0.2). */
  jitter: number;
}

/** Backoff delay for attempt n (0-based): initial * 2^n capped at max, +/- jitter. */
export function backoffDelay(n: number, b: ReconnectBackoff, random: () => number = Math.random): number {
  const base = Math.min(b.maxMs, b.initialMs * 2 ** Math.min(n, 30));
  return Math.max(0, Math.round(base * (1 + (random() * 2 - 1) * b.jitter)));
}
