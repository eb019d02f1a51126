import fs from 'node:fs';
import net from 'node:net';
import type { NbdServer, AdoptedConnection } from '../nbd/server';
import { transmissionFlagsFor } from '../nbd/common';
import type { BridgedExport, ExportManager, ResizeOutcome } from '../bridge/manager';
import type { DigestPref, ExportConfig } from '../config';
import { ConfigError, IscsiNbdError } from '../errors';
import { parseIscsiUrl, parseLunUrl } from '../iscsi/url';
import type { Logger } from '../log';
import { exportStatus, type MappingStatus } from './status';
import { MappingRecord, MappingStore, MAPPING_VERSION } from './mapping-store';
import { sourceText, type MapSource, type MapSpec } from './map-spec';
import { closeStoredSocket, NO_FD_STORE, type FdKeeper } from './fd-store';
import { closeFd } from '../nbd/netlink/syscalls';
import { backoffDelay, type ReconnectBackoff } from '../util/backoff';

// Kernel NBD devices this daemon owns (`iscsi-nbd map`): each is a LUN opened
// through the export manager, served to the kernel over socketpairs handed in
// with netlink. The device outlives the daemon: on restart the records in the
// state dir are reattached with NBD_CMD_RECONFIGURE, after the LUN proves to
// be the same device; a stop hands the sockets over without failing I/O.

/** What the daemon needs of the kernel; the real one is netlink (src/nbd/netlink), tests pass a fake. */
export interface KernelNbd {
  connect(c: { index?: number; sizeBytes: bigint; blockSize: number; serverFlags: number; timeoutSec: number; deadConnTimeoutSec: number; backendId: string; fds: number[] }): Promise<number>;
  reconfigure(c: { index: number; fds: number[]; backendId: string }): Promise<void>;
  /** A new size for a configured device (RECONFIGURE with SIZE_BYTES: set_capacity_and_notify, a RESIZE uevent). */
  resize(c: { index: number; sizeBytes: bigint; blockSize: number; backendId: string }): Promise<void>;
  disconnect(index: number): Promise<void>;
  /** Whether the device has a configuration (is mapped by somebody). */
  configured(index: number): Promise<boolean>;
  /** /sys/block/nbdN/backend, when the device is configured with one. */
  backend(index: number): string | undefined;
  /** Read the first block of the device: it answers I/O. */
  probe(index: number, blockSize: number): Promise<void>;
  socketPair(): { ours: number; kernel: number };
  closeFd(fd: number): void;
  close(): void;
}

export interface DeviceDefaults {
  connections: number;
  ioTimeout: number;
  reattachTimeout: number;
}

export interface DeviceManagerOptions {
  kernel: () => Promise<KernelNbd>;
  store: MappingStore;
  /** Opens the LUNs of mapped devices (not served over TCP). */
  exports: ExportManager;
  /** Serves the kernel's sockets (no listeners). */
  server: NbdServer;
  defaults: DeviceDefaults;
  /** A config export's spec by name, for `map NAME`. */
  configExport: (name: string) => ExportConfig | undefined;
  /** A device got its sockets: fresh ones replacing dead ones (reattached), or the last daemon's (adopted). */
  onAttach?: (device: string, how: 'reattached' | 'adopted') => void;
  /** A mapped LUN was closed (metrics forget its series). */
  onExportClosed?: (name: string) => void;
  /** Where our ends of the kernel's sockets wait across a restart (systemd's fd store); default: nowhere. */
  fdStore?: FdKeeper;
  log: Logger;
}

/** How a mapping's current sockets came: made for it, replacing dead ones, or kept from the last daemon. */
export type AttachHow = 'new' | 'reattached' | 'adopted';

export type MappingState = 'attaching' | 'attached' | 'reattaching' | 'refused' | 'handing-over' | 'unmapping' | 'detached';

const HANDOVER_MS = 20_000;
/** From 100 ms, doubling to 5 s: the kernel holds I/O meanwhile, so soon matters more than spread. */
const REATTACH_BACKOFF: ReconnectBackoff = { initialMs: 100, maxMs: 5000, jitter: 0 };
/** After shutting down stored sockets, before a RECONFIGURE: time for the kernel to mark them dead. */
const STORED_SOCKET_SHUTDOWN_MS = 300;
/** How long a reattached socket must stay open to count as taken by the kernel. */
const KEPT_OLD_SOCKET_CHECK_MS = 300;

/** An opened LUN: the bridged export with its unit and NBD export, all present. */
interface OpenLun {
  exp: BridgedExport;
  lun: NonNullable<BridgedExport['lun']>;
  nbd: NonNullable<BridgedExport['export']>;
}

/** What a mapping talks to, given when it is made. */
interface MappingPorts {
  kernel: KernelNbd;
  server: NbdServer;
  fdStore: FdKeeper;
  /** Write the mapping's record again (its size changed). */
  save: (r: MappingRecord) => void;
  log: Logger;
  onAttach?: (device: string, how: 'reattached' | 'adopted') => void;
}

/** The store's names for one kernel socket of a device, and for the bytes read from it and not handled. */
export const socketName = (index: number, slot: number): string => `nbd${index}.${slot}`;
export const unreadName = (index: number, slot: number): string => `nbd${index}.${slot}.unread`;

class DeviceMapping {
  state: MappingState = 'attaching';
  error?: string;
  how: AttachHow = 'new';
  readonly conns: (AdoptedConnection | undefined)[];
  /** Our end of each slot's socket, while its connection is served. */
  private readonly fds: (number | undefined)[];
  private reattachTimer?: NodeJS.Timeout;
  /** Slots whose dead connection still has requests running at the target. */
  private readonly settling = new Set<number>();
  private deadSince = 0;
  /** Reattach attempts since the socket died (the backoff's n). */
  private attempts = 0;

  private resizing: Promise<void> = Promise.resolve();

  /** `lun` is absent for a mapping refused before its LUN could be opened. */
  constructor(public record: MappingRecord, private readonly ports: MappingPorts, public lun?: OpenLun) {
    this.conns = new Array(record.connections).fill(undefined);
    this.fds = new Array(record.connections).fill(undefined);
    // The LUN grew (a unit attention, a new login, `iscsi-nbd resize`): tell the kernel.
    lun?.exp.on('resized', () => void this.applySize());
  }

  /**
   * Give the kernel the LUN's size when it grew past the recorded one:
   * RECONFIGURE with SIZE_BYTES (same block size, same backend), then the
   * record. A smaller LUN never gets here (the export never shrinks).
   */
  applySize(): Promise<void> {
    const run = this.resizing.then(async () => {
      const lun = this.lun;
      if (!lun || this.state === 'refused' || this.state === 'unmapping' || this.state === 'detached') return;
      const was = BigInt(this.record.size);
      const now = lun.nbd.size;
      if (now <= was) return;
      const r = this.record;
      try {
        await this.ports.kernel.resize({ index: r.index, sizeBytes: now, blockSize: r.blockSize, backendId: r.backendId });
      } catch (err) {
        this.ports.log.error({ device: this.device, err, was: r.size, now: now.toString() }, 'the LUN grew but the kernel refused the new size; the device keeps its old size (try iscsi-nbd resize again)');
        throw err;
      }
      r.size = now.toString();
      this.ports.save(r);
      this.ports.log.info({ device: this.device, was: was.toString(), now: r.size }, 'device resized online; grow the filesystem now (resize2fs, xfs_growfs)');
    });
    this.resizing = run.catch(() => undefined);
    return run;
  }

  get device(): string {
    return `/dev/nbd${this.record.index}`;
  }

  setState(s: MappingState, error?: string): void {
    if (s !== this.state) this.ports.log.debug({ device: this.device, from: this.state, to: s }, 'mapping state');
    this.state = s;
    this.error = error;
  }

  /** Make socket pairs, serve our ends, return the kernel's ends (closed by the caller once the kernel has them). */
  private openSockets(lun: OpenLun, slots: number[]): number[] {
    const fds: number[] = [];
    for (const slot of slots) {
      const { ours, kernel: theirs } = this.ports.kernel.socketPair();
      fds.push(theirs);
      this.serve(lun, slot, ours, Buffer.alloc(0));
    }
    return fds;
  }

  /** Serve our end `fd` of a kernel socket in `slot`, starting with bytes already read from it. */
  private serve(lun: OpenLun, slot: number, fd: number, unread: Buffer): void {
    const sock = new net.Socket({ fd, readable: true, writable: true });
    const c = this.ports.server.adopt(sock, lun.exp.name, lun.nbd, `kernel:nbd${this.record.index}`, unread);
    this.conns[slot] = c;
    this.fds[slot] = fd;
    void c.closed.then((reason) => this.onClosed(slot, c, reason));
  }

  /** Whether the last daemon left every socket of this device in the store, each stopped at a request boundary. */
  canAdopt(): boolean {
    const { fdStore } = this.ports;
    const i = this.record.index;
    return [...this.conns.keys()].every((slot) => fdStore.has(socketName(i, slot)) && fdStore.has(unreadName(i, slot)));
  }

  /**
   * Sockets of this device the last daemon left in the store that cannot be
   * adopted (not all of them, or not at a request boundary): shut down, so the
   * kernel sees them dead and takes a RECONFIGURE. Whether there were any.
   */
  dropStored(): boolean {
    const { fdStore } = this.ports;
    let any = false;
    for (const slot of this.conns.keys()) {
      const unread = fdStore.take(unreadName(this.record.index, slot));
      if (unread !== undefined) closeFd(unread);
      const fd = fdStore.take(socketName(this.record.index, slot));
      if (fd === undefined) continue;
      any = true;
      closeStoredSocket(fd);
    }
    return any;
  }

  /** Carry on serving the last daemon's sockets, where it stopped reading: no RECONFIGURE, nothing the kernel sees. */
  adopt(): void {
    const { fdStore } = this.ports;
    if (!this.lun) throw new IscsiNbdError('ECONFIG', `${this.device}: its LUN is not open`);
    for (const slot of this.conns.keys()) {
      const unread = fdStore.takeBytes(unreadName(this.record.index, slot))!;
      const fd = fdStore.take(socketName(this.record.index, slot))!;
      this.serve(this.lun, slot, fd, unread);
    }
    this.how = 'adopted';
    this.ports.onAttach?.(this.device, 'adopted');
  }

  /** A new kernel device (NBD_CMD_CONNECT) on every slot; the kernel's index. */
  async connect(lun: OpenLun, c: { index?: number; timeoutSec: number; deadConnTimeoutSec: number }): Promise<number> {
    const { kernel } = this.ports;
    const fds = this.openSockets(lun, [...this.conns.keys()]);
    try {
      return await kernel.connect({
        index: c.index, sizeBytes: lun.nbd.size, blockSize: lun.lun.info.blockSize, serverFlags: transmissionFlagsFor(lun.nbd, false),
        timeoutSec: c.timeoutSec, deadConnTimeoutSec: c.deadConnTimeoutSec, backendId: this.record.backendId, fds,
      });
    } catch (err) {
      this.setState('detached');
      for (const conn of this.conns) void conn?.handOver(0);
      throw err;
    } finally {
      for (const fd of fds) kernel.closeFd(fd);
    }
  }

  /** Fresh sockets for the given slots of an existing device (NBD_CMD_RECONFIGURE). */
  async reconfigure(slots: number[]): Promise<void> {
    const { kernel } = this.ports;
    if (!this.lun) throw new IscsiNbdError('ECONFIG', `${this.device}: its LUN is not open`);
    const backend = kernel.backend(this.record.index);
    if (backend !== undefined && backend !== this.record.backendId) {
      throw new IscsiNbdError('ECONFIG', `${this.device} now belongs to another backend (${backend}), not ${this.record.backendId}`);
    }
    const fds = this.openSockets(this.lun, slots);
    try {
      await kernel.reconfigure({ index: this.record.index, fds, backendId: this.record.backendId });
    } catch (err) {
      for (const s of slots) {
        const c = this.conns[s];
        this.conns[s] = undefined;
        void c?.handOver(0);
      }
      throw err;
    } finally {
      for (const fd of fds) kernel.closeFd(fd);
    }
  }

  private onClosed(slot: number, c: AdoptedConnection, reason: string): void {
    if (this.conns[slot] !== c) return;
    this.conns[slot] = undefined;
    this.fds[slot] = undefined;
    if (this.state !== 'attached' && this.state !== 'reattaching') return;
    // The kernel dropped the socket (a request timed out) or it broke here.
    // It re-sends what that socket carried on the next one, so the next one
    // comes only once every request read from this one has finished at the
    // target: a re-sent write must never race its stale twin.
    this.ports.log.warn({ device: this.device, slot, reason, inFlight: c.info().inFlight }, 'kernel connection lost; reattaching once its requests have finished');
    if (!this.deadSince) this.deadSince = Date.now();
    this.setState('reattaching');
    this.settling.add(slot);
    void c.idle().then(() => {
      this.settling.delete(slot);
      if (this.state === 'reattaching') this.scheduleReattach();
    });
  }

  private scheduleReattach(): void {
    if (this.reattachTimer) return;
    this.reattachTimer = setTimeout(() => {
      this.reattachTimer = undefined;
      void this.reattachDead();
    }, backoffDelay(this.attempts++, REATTACH_BACKOFF));
  }

  private async reattachDead(): Promise<void> {
    if (this.state !== 'reattaching') return;
    const slots = this.conns.map((c, i) => (c || this.settling.has(i) ? -1 : i)).filter((i) => i >= 0);
    if (slots.length === 0) {
      if (this.settling.size > 0) return; // the rest follow once their requests finish
      this.setState('attached');
      return;
    }
    try {
      await this.reconfigure(slots);
      this.ports.log.info({ device: this.device, slots }, 'kernel connection reattached');
      this.how = 'reattached';
      this.ports.onAttach?.(this.device, 'reattached');
      this.deadSince = 0;
      this.attempts = 0;
      this.setState('attached');
    } catch (err) {
      const gaveUp = Date.now() - this.deadSince > this.record.reattachTimeout * 1000;
      this.ports.log.error({ device: this.device, err }, gaveUp ? 'cannot reattach the kernel connection; giving up' : 'cannot reattach the kernel connection yet; retrying');
      if (gaveUp) this.setState('refused', (err as Error).message);
      else this.scheduleReattach();
    }
  }

  /**
   * Stop timers and hand every socket over (answer what was read, read
   * nothing more). With `keep`, a socket that stopped at a request boundary
   * goes to the fd store with the bytes read and not handled, so the next
   * daemon carries on with it; any other is closed, and the next daemon
   * reattaches that device.
   */
  async handOver(keep = false): Promise<void> {
    if (this.reattachTimer) clearTimeout(this.reattachTimer);
    this.reattachTimer = undefined;
    const { fdStore, log } = this.ports;
    await Promise.all(
      this.conns.map((c, slot) => {
        const fd = this.fds[slot];
        const store = keep && fdStore.enabled && fd !== undefined && this.state === 'handing-over'
          ? (unread: Buffer) => {
              try {
                // The socket first: an unread entry without its socket is never taken for one.
                fdStore.put(socketName(this.record.index, slot), fd);
                fdStore.putBytes(unreadName(this.record.index, slot), unread);
                log.debug({ device: this.device, slot, unread: unread.length }, 'kernel socket kept in the fd store');
              } catch (err) {
                log.warn({ device: this.device, slot, err }, 'cannot keep the kernel socket in the fd store; the next daemon reattaches it');
              }
            }
          : undefined;
        return c?.handOver(HANDOVER_MS, store);
      }),
    );
  }

  status(): MappingStatus {
    const r = this.record;
    return {
      device: this.device, index: r.index, url: parseIscsiUrl(r.url).redacted(), export: this.lun?.exp.name ?? r.exportName ?? '',
      identity: r.identity, blockSize: r.blockSize, size: r.size, connections: r.connections, readOnly: r.readOnly,
      state: this.state, attach: this.how, ...(this.error ? { error: this.error } : {}),
      ...(this.lun?.exp.poolId ? { pool: this.lun.exp.poolId } : {}),
      ...(this.lun ? { sessions: exportStatus(this.lun.exp).sessions } : {}),
    };
  }
}

export class DeviceManager {
  private readonly mappings = new Map<number, DeviceMapping>();
  private kernelP?: Promise<KernelNbd>;
  /** Records that could not be read (named in list-mapped). */
  private problems: { file: string; message: string }[] = [];

  constructor(private readonly opts: DeviceManagerOptions) {}

  private kernel(): Promise<KernelNbd> {
    if (!this.kernelP) {
      this.kernelP = this.opts.kernel();
      this.kernelP.catch(() => (this.kernelP = undefined));
    }
    return this.kernelP;
  }

  private ports(kernel: KernelNbd): MappingPorts {
    return {
      kernel, server: this.opts.server, fdStore: this.opts.fdStore ?? NO_FD_STORE, save: (r) => this.opts.store.save(r),
      log: this.opts.log, onAttach: this.opts.onAttach,
    };
  }

  /** Flush, log out, and let metrics forget it. */
  private async closeExport(name: string): Promise<void> {
    await this.opts.exports.remove(name);
    this.opts.onExportClosed?.(name);
  }

  private exportSpec(source: MapSource, digest: DigestPref | undefined, readOnly: boolean, ifaces?: string[]): ExportConfig {
    const named = source.kind === 'export' ? this.opts.configExport(source.name) : undefined;
    if (source.kind === 'export' && !named) throw new ConfigError('ECONFIG', `"${source.name}" is neither an iscsi:// URL nor an export in the config`);
    const urlText = named?.url ?? sourceText(source);
    const url = parseLunUrl(urlText);
    if (!url.target) throw new ConfigError('EBADURL', `${url.redacted()} names no target (want iscsi://host/<iqn>/<lun>)`);
    // Its own name space: a mapped LUN is never an NBD export, and its metrics never mix with one.
    const name = `map:${named?.name ?? `${url.target}/${url.lun ?? 0}`}`;
    const d = digest ?? named?.digest;
    // The request's interfaces, else the config export's, else (in the manager) the daemon's.
    const i = ifaces ?? named?.ifaces;
    return { ...(named ?? {}), name, url: urlText, readOnly: readOnly || named?.readOnly, ...(d ? { digest: d } : {}), ...(i ? { ifaces: i } : {}) };
  }

  private async openLun(spec: ExportConfig): Promise<OpenLun> {
    const taken = this.opts.exports.exports.get(spec.name);
    if (taken) {
      const other = [...this.mappings.values()].find((m) => m.lun?.exp === taken);
      throw new ConfigError('ECONFIG', `${spec.name} is mapped already${other ? ` as ${other.device}` : ''}`);
    }
    const exp = await this.opts.exports.add(spec);
    if (!exp.lun || !exp.export) {
      await this.closeExport(spec.name);
      throw new IscsiNbdError('EIO', `${spec.name}: the LUN opened without a unit to serve`);
    }
    return { exp, lun: exp.lun, nbd: exp.export };
  }

  private identityOf(l: OpenLun): { identity: string; backendId: string } {
    const identity = l.lun.info.identity || `${l.exp.url.target}/${l.exp.url.lun ?? 0}`;
    return { identity, backendId: `iscsi-nbd:${identity}` };
  }

  /** `iscsi-nbd map`: open the LUN, configure a kernel device for it, wait until it answers. */
  async map(req: MapSpec): Promise<MappingStatus> {
    const ioTimeout = req.ioTimeout ?? this.opts.defaults.ioTimeout;
    const reattachTimeout = req.reattachTimeout ?? this.opts.defaults.reattachTimeout;
    const connections = req.connections ?? this.opts.defaults.connections;
    const kernel = await this.kernel();
    if (req.device !== undefined) {
      if (this.mappings.has(req.device)) throw new ConfigError('ECONFIG', `/dev/nbd${req.device} is mapped already (to ${this.mappings.get(req.device)!.status().url})`);
      if (await kernel.configured(req.device)) throw new ConfigError('ECONFIG', `/dev/nbd${req.device} is in use already (configured by another program); pick another --device or leave it out`);
    }
    const spec = this.exportSpec(req.source, req.digest, req.readOnly ?? false, req.ifaces);
    const lun = await this.openLun(spec);
    try {
      const { identity, backendId } = this.identityOf(lun);
      const same = [...this.mappings.values()].find((m) => m.record.identity === identity);
      if (same) throw new ConfigError('ECONFIG', `that LUN (${identity}) is mapped already as ${same.device}`);
      const blockSize = lun.lun.info.blockSize;
      const record: MappingRecord = {
        version: MAPPING_VERSION, index: req.device ?? -1, url: spec.url, exportName: req.source.kind === 'export' ? req.source.name : undefined, backendId, identity,
        blockSize, size: lun.nbd.size.toString(), connections, readOnly: lun.nbd.flags.readOnly,
        ioTimeout, reattachTimeout, mappedAt: new Date().toISOString(), ...(req.digest ? { digest: req.digest } : {}),
        ...(req.ifaces ? { ifaces: req.ifaces } : {}),
      };
      const m = new DeviceMapping(record, this.ports(kernel), lun);
      record.index = await m.connect(lun, { index: req.device, timeoutSec: ioTimeout, deadConnTimeoutSec: reattachTimeout });
      this.mappings.set(record.index, m);
      this.opts.store.save(record);
      m.setState('attached');
      await kernel.probe(record.index, blockSize);
      this.opts.log.info({ device: m.device, url: parseIscsiUrl(spec.url).redacted(), identity, blockSize, size: record.size, connections }, 'device mapped');
      return m.status();
    } catch (err) {
      if (![...this.mappings.values()].some((m) => m.lun === lun)) await this.closeExport(spec.name);
      throw err;
    }
  }

  /**
   * On start: reattach every recorded device that the kernel still holds for
   * us, after checking that the LUN is the same one. A device that is gone
   * (a reboot, an unmap by hand) is forgotten; a LUN that changed is refused.
   */
  async restore(): Promise<void> {
    const { records, problems } = this.opts.store.load();
    this.problems = problems;
    for (const p of problems) this.opts.log.error({ file: p.file }, p.message);
    if (records.length === 0) return;
    const kernel = await this.kernel();
    await Promise.all(records.map((r) => this.restoreOne(r, kernel)));
  }

  /** Why an opened LUN may not take over a recorded device, if it may not. */
  private mismatch(r: MappingRecord, lun: OpenLun): string | undefined {
    const { identity } = this.identityOf(lun);
    if (identity !== r.identity) return `the LUN behind ${parseIscsiUrl(r.url).redacted()} is another device now: mapped ${r.identity}, found ${identity}`;
    if (lun.lun.info.blockSize !== r.blockSize) return `the LUN's block size changed from ${r.blockSize} to ${lun.lun.info.blockSize}`;
    if (lun.nbd.size < BigInt(r.size)) return `the LUN shrank from ${r.size} to ${lun.nbd.size} bytes`;
    return undefined;
  }

  private async restoreOne(r: MappingRecord, kernel: KernelNbd): Promise<void> {
    const log = this.opts.log.child({ device: `/dev/nbd${r.index}` });
    const backend = kernel.backend(r.index);
    if (!(await kernel.configured(r.index)) || (backend !== undefined && backend !== r.backendId)) {
      log.warn({ url: parseIscsiUrl(r.url).redacted(), backend: backend ?? null }, 'the device is no longer configured for this mapping (reboot or detached by hand); forgetting it');
      this.opts.store.remove(r.index);
      return;
    }
    const refuse = async (m: DeviceMapping, problem: string): Promise<void> => {
      m.setState('refused', problem);
      if (m.lun) await this.closeExport(m.lun.exp.name);
      m.lun = undefined;
    };
    let lun: OpenLun;
    try {
      // Mapped by export name: that export's current spec, while the config still has it.
      const source: MapSource = r.exportName && this.opts.configExport(r.exportName) ? { kind: 'export', name: r.exportName } : { kind: 'url', url: r.url };
      lun = await this.openLun(this.exportSpec(source, r.digest, r.readOnly, r.ifaces));
    } catch (err) {
      log.error({ err }, 'cannot reattach the device');
      const m = new DeviceMapping(r, this.ports(kernel));
      this.mappings.set(r.index, m);
      await refuse(m, (err as Error).message);
      return;
    }
    const m = new DeviceMapping(r, this.ports(kernel), lun);
    this.mappings.set(r.index, m);
    try {
      const problem = this.mismatch(r, lun);
      if (problem) {
        log.error({ was: r.identity, now: this.identityOf(lun).identity }, `refusing to reattach: ${problem}; the device is left to fail its I/O (unmap it)`);
        await refuse(m, problem);
        return;
      }
      if (m.canAdopt()) {
        m.adopt();
        m.setState('attached');
        log.info({ identity: r.identity, connections: r.connections, path: 'adopted' }, 'device adopted');
        await m.applySize().catch(() => undefined); // grown while no daemon ran
        return;
      }
      // Sockets the kernel still thinks alive would make it drop the new ones.
      if (m.dropStored()) await new Promise((resolve) => setTimeout(resolve, STORED_SOCKET_SHUTDOWN_MS));
      await m.reconfigure([...Array(r.connections).keys()]);
      // The kernel answers success but drops our socket when an old one is
      // still alive: then ours reads EOF at once. Never leave it half-attached.
      await new Promise((resolve) => setTimeout(resolve, KEPT_OLD_SOCKET_CHECK_MS));
      if (m.conns.some((c) => c === undefined)) {
        const problem = `the kernel kept an older connection of /dev/nbd${r.index} alive (another process still serves it): stop that process, then restart this daemon`;
        log.error(problem);
        await m.handOver();
        await refuse(m, problem);
        return;
      }
      m.setState('attached');
      m.how = 'reattached';
      this.opts.onAttach?.(m.device, 'reattached');
      log.info({ identity: r.identity, connections: r.connections, path: 'reattached' }, 'device reattached');
      await m.applySize().catch(() => undefined); // grown while no daemon ran
    } catch (err) {
      log.error({ err }, 'cannot reattach the device');
      await refuse(m, (err as Error).message);
    }
  }

  /** Declared devices (config `devices:`) that are not mapped yet. */
  async ensure(specs: MapSpec[]): Promise<void> {
    for (const req of specs) {
      let name: string;
      try {
        name = this.exportSpec(req.source, req.digest, false).name;
      } catch (err) {
        this.opts.log.error({ err, url: redactedSource(req.source) }, 'declared device could not be mapped');
        continue;
      }
      const mapped = [...this.mappings.values()].some((m) => m.lun?.exp.name === name || (req.device !== undefined && m.record.index === req.device));
      if (mapped) continue;
      try {
        const st = await this.map(req);
        this.opts.log.info({ device: st.device, url: st.url }, 'declared device mapped');
      } catch (err) {
        this.opts.log.error({ err, url: redactedSource(req.source) }, 'declared device could not be mapped');
      }
    }
  }

  /** `iscsi-nbd unmap`: refuse a mounted device unless forced; flush, disconnect, forget. */
  async unmap(index: number, force = false): Promise<void> {
    const m = this.mappings.get(index);
    const rec = m?.record ?? this.opts.store.get(index);
    if (!rec) throw new ConfigError('ECONFIG', `/dev/nbd${index} is not mapped by this daemon (see iscsi-nbd list-mapped)`);
    const users = holders(index);
    if (users.length && !force) throw new ConfigError('ECONFIG', `/dev/nbd${index} is in use (${users.join(', ')}): unmount it first, or pass --force`);
    const kernel = await this.kernel();
    m?.setState('unmapping');
    if (await kernel.configured(index)) {
      // The kernel sends NBD_CMD_DISC after what is queued; our connections close with it.
      await kernel.disconnect(index);
    }
    if (m) {
      await Promise.all(m.conns.map((c) => c?.closed));
      if (m.lun) await this.closeExport(m.lun.exp.name); // flushes and logs out
      this.mappings.delete(index);
    }
    this.opts.store.remove(index);
    this.opts.log.info({ device: `/dev/nbd${index}` }, 'device unmapped');
  }

  /**
   * `iscsi-nbd resize`: read each mapped LUN's capacity again (all of them,
   * or /dev/nbd`index`) and grow its device to it, as `iscsiadm -m session -R`
   * rescans. A LUN that shrank is refused and keeps its size.
   */
  async resize(index?: number): Promise<(ResizeOutcome & { device: string })[]> {
    const targets = [...this.mappings.values()].filter((m) => index === undefined || m.record.index === index);
    if (index !== undefined && targets.length === 0) throw new ConfigError('ECONFIG', `/dev/nbd${index} is not mapped by this daemon (see iscsi-nbd list-mapped)`);
    return Promise.all(
      targets.map(async (m) => {
        if (!m.lun) return { device: m.device, export: m.record.exportName ?? '', was: m.record.size, now: m.record.size, changed: false, refused: `not attached (${m.state}${m.error ? `: ${m.error}` : ''})` };
        const was = m.record.size;
        const out = await m.lun.exp.rescan('command');
        await m.applySize();
        return { ...out, device: m.device, was, now: m.record.size, changed: m.record.size !== was };
      }),
    );
  }

  /** How many mappings the state dir records (before restore()). */
  storeRecords(): number {
    return this.opts.store.load().records.length;
  }

  list(): MappingStatus[] {
    return [...this.mappings.values()].sort((a, b) => a.record.index - b.record.index).map((m) => m.status());
  }

  get storeProblems(): { file: string; message: string }[] {
    return this.problems;
  }

  /**
   * SIGTERM: hand the sockets over (no device is detached), then the caller
   * closes the exports. Each socket that stops at a request boundary is kept
   * in the fd store, when there is one, for the next daemon to adopt.
   */
  async handOver(): Promise<void> {
    for (const m of this.mappings.values()) if (m.state !== 'refused') m.setState('handing-over');
    await Promise.all([...this.mappings.values()].map((m) => m.handOver(true)));
    this.kernelP?.then((k) => k.close(), () => undefined);
  }
}

/** A source for the log, without its secrets. */
function redactedSource(s: MapSource): string {
  if (s.kind === 'export') return s.name;
  try {
    return parseIscsiUrl(s.url).redacted();
  } catch {
    return '(a URL that does not parse)';
  }
}

/** Mounts and holders of /dev/nbdN (what makes a detach lose data). */
function holders(index: number): string[] {
  const out: string[] = [];
  try {
    for (const line of fs.readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
      const [dev, where] = line.split(' ');
      if (dev === `/dev/nbd${index}` || dev?.startsWith(`/dev/nbd${index}p`)) out.push(`mounted on ${where}`);
    }
  } catch {
    // no /proc: nothing to say
  }
  try {
    for (const h of fs.readdirSync(`/sys/block/nbd${index}/holders`)) out.push(`held by ${h}`);
  } catch {
    // no such device or no sysfs
  }
  return out;
}
