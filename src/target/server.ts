// Thin socket adapter around TargetConnectionEngine: one engine per TCP
// connection, writes corked per tick, reads paused while the socket's write
// buffer is over a high-water mark.

import net from 'node:net';
import { ConfigError } from '../errors';
import type { Logger } from '../log';
import { rootLogger } from '../log';
import { normalizeIscsiName } from '../iscsi/names';
import type { LunBackend } from './backend';
import { ChapConfig, EngineOptions, SessionInfo, TargetConnectionEngine, TargetEntry, TargetLimits } from './engine';
import { FaultController, FaultSpec } from './faults';
import { LogicalUnits, ScsiDevice } from './scsi-device';
import type { AluaPort } from './alua';

export interface LunConfig {
  lun: number;
  backend: LunBackend;
  /** Overrides the backend's identity seed (serial number / NAA designator source). */
  identitySeed?: string;
  /** Implicit ALUA: this server is one port of a group in a shared topology. */
  alua?: AluaPort;
}

export interface TargetConfig {
  name: string;
  alias?: string;
  luns: LunConfig[];
  chap?: ChapConfig;
}

export interface TargetServerOptions {
  targets: TargetConfig[];
  log?: Logger;
  /** A shared controller, or faults to start with. */
  faults?: FaultController | FaultSpec;
  limits?: Partial<TargetLimits>;
  /** NOP-In ping interval in full feature phase (0 = off, the default). */
  nopInIntervalMs?: number;
  nopInTimeoutMs?: number;
  /** CHAP account required of discovery sessions (default: none required). */
  discoveryChap?: ChapConfig;
  /** close() also closes the LUN backends (default true). */
  closeBackends?: boolean;
}

const HIGH_WATER = 16 * 1024 * 1024;

function plainHost(h: string | undefined): string {
  if (!h) return '127.0.0.1';
  return h.startsWith('::ffff:') && h.includes('.') ? h.slice(7) : h;
}

export class TargetServer {
  readonly faults: FaultController;
  readonly log: Logger;
  private readonly targets = new Map<string, TargetEntry>();
  private readonly devicesByTarget = new Map<string, ScsiDevice[]>();
  private readonly engines = new Set<TargetConnectionEngine>();
  private readonly sockets = new Set<net.Socket>();
  private server: net.Server | undefined;
  private addr: { host: string; port: number } | undefined;
  private nextTsih = 1;

  constructor(private readonly opts: TargetServerOptions) {
    this.log = (opts.log ?? rootLogger()).child({ component: 'target' });
    this.faults = opts.faults instanceof FaultController ? opts.faults : new FaultController();
    if (opts.faults && !(opts.faults instanceof FaultController)) this.faults.set(opts.faults);
    if (opts.targets.length === 0) throw new ConfigError('ECONFIG', 'a target server needs at least one target');
    for (const t of opts.targets) {
      const name = normalizeIscsiName(t.name, 'target name');
      if (this.targets.has(name)) throw new ConfigError('ECONFIG', `target ${name} configured twice`);
      if (t.luns.length === 0) throw new ConfigError('ECONFIG', `target ${name} has no LUN`);
      const devices = new Map<number, ScsiDevice>();
      for (const l of t.luns) {
        if (!Number.isInteger(l.lun) || l.lun < 0 || l.lun > 16383) throw new ConfigError('ECONFIG', `bad LUN number ${l.lun}`);
        if (devices.has(l.lun)) throw new ConfigError('ECONFIG', `LUN ${l.lun} of ${name} configured twice`);
        devices.set(l.lun, new ScsiDevice({
          backend: l.backend,
          identitySeed: l.identitySeed,
          alua: l.alua,
          mediumError: (lba, blocks) => this.faults.mediumError(lba, blocks),
        }));
      }
      if (t.chap && (!t.chap.user || !t.chap.secret)) throw new ConfigError('ECONFIG', `CHAP for ${name} needs a user and a secret`);
      if (t.chap && (t.chap.mutualSecret === undefined) !== (t.chap.mutualUser === undefined) && t.chap.mutualSecret === undefined) {
        throw new ConfigError('ECONFIG', `mutual CHAP for ${name} needs a secret`);
      }
      this.targets.set(name, { name, alias: t.alias, units: new LogicalUnits(devices), chap: t.chap });
      this.devicesByTarget.set(name, [...devices.values()]);
    }
  }

  /** Start listening; port 0 picks a free port. Resolves with the bound address. */
  async listen(o: { host?: string; port?: number } = {}): Promise<{ host: string; port: number }> {
    if (this.server) throw new Error('already listening');
    const host = o.host ?? '127.0.0.1';
    const srv = net.createServer({ noDelay: true }, (s) => this.onConnection(s));
    this.server = srv;
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(o.port ?? 3260, host, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    srv.on('error', (e) => this.log.error({ err: e }, 'listener error'));
    const a = srv.address() as net.AddressInfo;
    this.addr = { host: plainHost(a.address), port: a.port };
    this.log.info({ portal: this.portal, targets: [...this.targets.keys()] }, 'iSCSI target listening');
    return this.addr;
  }

  address(): { host: string; port: number } {
    if (!this.addr) throw new Error('not listening');
    return this.addr;
  }

  /** "host:port" ([v6]:port). */
  get portal(): string {
    const a = this.address();
    return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
  }

  /** One LUN's device (to resize it, swap its identity, ...). */
  device(target: string, lun: number): ScsiDevice | undefined {
    return this.targets.get(target)?.units.get(lun);
  }

  get targetNames(): string[] {
    return [...this.targets.keys()];
  }

  /** Live connections (any state). */
  get connections(): TargetConnectionEngine[] {
    return [...this.engines];
  }

  /** The devices of one target (all targets when omitted), in LUN order. */
  devices(targetName?: string): ScsiDevice[] {
    if (targetName) return this.devicesByTarget.get(normalizeIscsiName(targetName)) ?? [];
    return [...this.devicesByTarget.values()].flat();
  }

  /** Every LUN gets a new serial number and designator (a "different device behind the same address"). */
  swapIdentity(): void {
    for (const d of this.devices()) d.swapIdentity();
  }

  /** Send an Async Message logout request to every logged-in connection; returns how many. */
  requestLogout(seconds = 5): number {
    let n = 0;
    for (const e of this.engines) if (e.requestLogout(seconds)) n++;
    return n;
  }

  /** Drop every connection at once (no logout). */
  dropConnections(): void {
    for (const e of [...this.engines]) e.close('dropped by the server');
  }

  private onConnection(sock: net.Socket): void {
    this.sockets.add(sock);
    sock.setNoDelay(true);
    let corked = false;
    const engineOpts: EngineOptions = {
      targets: this.targets,
      localAddress: { host: plainHost(sock.localAddress), port: sock.localPort ?? this.addr?.port ?? 3260 },
      faults: this.faults,
      log: this.log,
      limits: this.opts.limits,
      nopInIntervalMs: this.opts.nopInIntervalMs,
      nopInTimeoutMs: this.opts.nopInTimeoutMs,
      discoveryChap: this.opts.discoveryChap,
      allocateTsih: () => {
        const t = this.nextTsih;
        this.nextTsih = this.nextTsih >= 0xffff ? 1 : this.nextTsih + 1;
        return t;
      },
      onLoggedIn: (s) => this.reinstate(engine, s),
      onClosed: () => {
        this.engines.delete(engine);
      },
      io: {
        write: (bufs) => {
          if (sock.destroyed) return;
          if (!corked) {
            corked = true;
            sock.cork();
            process.nextTick(() => {
              corked = false;
              sock.uncork();
            });
          }
          for (const b of bufs) if (b.length > 0) sock.write(b);
          if (sock.writableLength > HIGH_WATER && !sock.isPaused()) {
            sock.pause();
            sock.once('drain', () => sock.resume());
          }
        },
        end: () => {
          sock.end();
          setTimeout(() => sock.destroy(), 2000).unref();
        },
        destroy: (flushFirst) => {
          if (!flushFirst) {
            sock.destroy();
            return;
          }
          if (corked) {
            corked = false;
            sock.uncork();
          }
          sock.end(() => sock.destroy());
          setTimeout(() => sock.destroy(), 2000).unref();
        },
      },
    };
    const engine = new TargetConnectionEngine(engineOpts);
    this.engines.add(engine);
    engine.log.debug({ peer: `${sock.remoteAddress}:${sock.remotePort}` }, 'connection accepted');
    sock.on('data', (chunk: Buffer) => engine.receive(chunk));
    sock.on('error', (e) => engine.log.debug({ err: e }, 'socket error'));
    sock.on('close', () => {
      this.sockets.delete(sock);
      engine.close('socket closed');
    });
  }

  /** A new session with the ISID of an existing one from the same initiator replaces it (RFC 7143 6.3.5). */
  private reinstate(engine: TargetConnectionEngine, s: SessionInfo): void {
    if (s.sessionType !== 'Normal') return;
    for (const e of this.engines) {
      if (e === engine || e.state === 'login' || e.closed) continue;
      const o = e.session;
      if (o.sessionType === 'Normal' && o.initiatorName === s.initiatorName && o.isid === s.isid && o.targetName === s.targetName) {
        e.log.info('session reinstated by a new login: closing the old connection');
        e.close('session reinstatement');
      }
    }
  }

  /** Stop listening, drop every connection, close the backends (unless closeBackends is false). */
  async close(): Promise<void> {
    const srv = this.server;
    this.server = undefined;
    for (const e of [...this.engines]) e.close('server shutting down');
    for (const s of this.sockets) s.destroy();
    if (srv) await new Promise<void>((r) => srv.close(() => r()));
    if (this.opts.closeBackends !== false) {
      const seen = new Set<LunBackend>();
      for (const d of this.devices()) {
        if (seen.has(d.backend)) continue;
        seen.add(d.backend);
        await d.backend.close().catch((e) => this.log.warn({ err: e }, 'closing a LUN backend failed'));
      }
    }
  }
}
