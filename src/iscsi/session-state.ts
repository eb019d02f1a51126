// The states of an IscsiSession (its 'state' events carry them) and the
// questions other modules ask about them, answered here once instead of by
// comparing strings at each use (the session pool, the session itself).

/**
 *  idle        constructed, connect() not called yet
 *  connecting  first login under way (connect())
 *  logged-in   a connection is in full feature phase
 *  recovering  the connection was lost; logging in again, commands parked
 *  failed      login failed, outage longer than replacementMs, or the LUN
 *              behind the address changed; commands fail, retries may go on
 *  closing     logout()/close() under way
 *  closed      done
 */
export type SessionState = 'idle' | 'connecting' | 'logged-in' | 'recovering' | 'failed' | 'closing' | 'closed';

/** Commands can be sent (or are parked only for the moment a link is replaced). */
export function isLoggedIn(st: SessionState): boolean {
  return st === 'logged-in';
}

/** New commands are parked for the next connection rather than failed. */
export function parksCommands(st: SessionState): boolean {
  return st === 'logged-in' || st === 'connecting' || st === 'recovering';
}

/** Logging in (first time or again) without having given up on outstanding commands. */
export function isReconnecting(st: SessionState): boolean {
  return st === 'connecting' || st === 'recovering';
}

/** The path is down (recovering or failed): its parked commands may move to another path. */
export function isPathDown(st: SessionState): boolean {
  return st === 'recovering' || st === 'failed';
}

/** Not logged in but still trying or refusing: may hold parked commands another path could run. */
export function mayHoldParked(st: SessionState): boolean {
  return st === 'connecting' || st === 'recovering' || st === 'failed';
}

/** logout()/close() has begun or finished. */
export function isShutDown(st: SessionState): boolean {
  return st === 'closing' || st === 'closed';
}
