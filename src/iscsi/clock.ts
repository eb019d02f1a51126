// The timer source of the initiator: the session engine (command deadlines,
// NOP keepalive, control-operation timeouts), IscsiSession (reconnect
// backoff, replacement timeout, LUN check, logout waits) and the connect and
// login timeouts of the connections it opens take every timer
// and every "now" from one EngineClock, so tests drive recovery with a
// manual clock (test/iscsi/fake-target.ts ManualClock). The export state
// machine above it (bridge/manager.ts: open retry, identity recheck, ALUA
// reads) takes one too.

export type TimerHandle = unknown;

/** Timers the engine and the session use; tests inject a manual one. */
export interface EngineClock {
  now(): number;
  setTimeout(fn: () => void, ms: number): TimerHandle;
  clearTimeout(h: TimerHandle): void;
}

/** Wall-clock timers; they do not keep the process alive (unref). */
export const systemClock: EngineClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/**
 * Wall-clock timers that keep the process alive: IscsiSession's own timers
 * (a reconnect in progress is work to finish), as they were before the
 * session took its timers from a clock.
 */
export const keepAliveClock: EngineClock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};
