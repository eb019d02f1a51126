// A link: one logged-in connection and the session engine that runs its full
// feature phase, wired together in one place (discovery and IscsiSession
// both use it). PDUs go from the connection to the engine (data segments of
// Data-In straight into the caller's buffer), encoded PDUs from the engine to
// the connection, and an engine 'fatal' closes the connection.
//
// The owner's listeners (connection 'closed', engine 'timeout'/'async'...)
// are registered through listen() and all removed by detach(): a replaced
// link cannot report anything to its owner any more, so owners need no
// generation counters or "is this still my connection" checks. A link is
// `live` until it is detached or its connection closes.

import type { EventEmitter } from 'node:events';
import type { IscsiConnection } from './connection';
import type { LoginResult } from './login';
import { SessionEngine, type SessionEngineOptions } from './session-engine';

/** Engine options a link owner chooses; the rest comes from the login. */
export type LinkEngineOptions = Omit<SessionEngineOptions, 'params' | 'cmdSN' | 'expStatSN' | 'expCmdSN' | 'maxCmdSN' | 'onSend'> & {
  params?: SessionEngineOptions['params'];
};

export class ConnectionLink {
  readonly engine: SessionEngine;
  private detached = false;
  private readonly offs: Array<() => void> = [];

  constructor(readonly conn: IscsiConnection, login: LoginResult, opts: LinkEngineOptions = {}) {
    this.engine = new SessionEngine({
      ...opts,
      params: opts.params ?? login,
      cmdSN: login.cmdSN,
      expStatSN: login.expStatSN,
      expCmdSN: login.expCmdSN,
      maxCmdSN: login.maxCmdSN,
      onSend: (bufs) => conn.send(bufs),
    });
    this.engine.on('fatal', (err: Error) => conn.close(err));
  }

  /** Attached to its owner, and its connection is open. */
  get live(): boolean {
    return !this.detached && this.conn.state !== 'closed';
  }

  /** Why the connection closed, if it did. */
  get reason(): Error | undefined {
    return this.conn.reason;
  }

  /** Register an owner listener on the connection or the engine; detach() removes it. */
  listen(on: 'conn' | 'engine', event: string, fn: (...args: any[]) => void): this {
    const em: EventEmitter = on === 'conn' ? this.conn : this.engine;
    em.on(event, fn);
    this.offs.push(() => em.off(event, fn));
    return this;
  }

  /**
   * Start delivering PDUs (those held since login first). Returns false if
   * the connection is already closed (it may close during the delivery too:
   * the owner's 'closed' listener has run then).
   */
  start(): boolean {
    this.conn.setPlaceData((bhs, dsl) => this.engine.placeDataIn(bhs, dsl));
    this.engine.setDivert(() => this.conn.divertPlacement());
    this.conn.attach((pdu) => this.engine.receive(pdu));
    return this.conn.state !== 'closed';
  }

  /** Remove every owner listener; the link reports nothing any more. Idempotent. */
  detach(): void {
    this.detached = true;
    for (const off of this.offs.splice(0)) off();
  }

  /** Detach, stop the engine and close the connection. */
  dispose(err?: Error): void {
    this.detach();
    this.engine.shutdown();
    this.conn.close(err);
  }
}
