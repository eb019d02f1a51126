import fs from 'node:fs';
import net from 'node:net';
import type { NbdServer, AdoptedConnection } from '../nbd/server';
import { transmissionFlagsFor } from '../nbd/common';
import type { BridgedExport, ExportManager } from '../bridge/manager';
import { DIGEST_MODES, type DigestPref, type ExportConfig } from '../config';
import { isDigestMode } from '../iscsi/digest';
import { ConfigError, IscsiNbdError } from '../errors';
import { parseIscsiUrl, parseLunUrl } from '../iscsi/url';
import type { Logger } from '../log';
import { exportStatus, type MappingStatus } from './status';
import { MappingRecord, MappingStore, MAPPING_VERSION } from './mapping-store';

// Kernel NBD devices this daemon owns (`iscsi-nbd map`): each is a LUN opened
// through the export manager, served to the kernel over socketpairs handed in
// with netlink. The device outlives the daemon: on restart the records in the
// state dir are reattached with NBD_CMD_RECONFIGURE, after the LUN proves to
// be the same device; a stop hands the sockets over without failing I/O.

/** What the daemon needs of the kernel; the real one is netlink (src/nbd/netlink), tests pass a fake. */
export interface KernelNbd {
  connect(c: { index?: number; sizeBytes: bigint; blockSize: number; serverFlags: number; timeoutSec: number; deadConnTimeoutSec: number; backendId: string; fds: number[] }): Promise<number>;
  reconfigure(c: { index: number; fds: number[]; backendId: string }): Promise<void>;
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

export interface MapRequest {
  /** iscsi:// URL, or the name of an export in the config. */
  url: string;
  device?: number;
  connections?: number;
  readOnly?: boolean;
  /** Header/data digests of the LUN's sessions (else the config export's, else the daemon's). */
  digest?: DigestPref;
  ioTimeout?: number;
  reattachTimeout?: number;
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
  /** A kernel connection was replaced (metrics). */
  onReattach?: (device: string) => void;
  /** A mapped LUN was closed (metrics forget its series). */
  onExportClosed?: (name: string) => void;
  log: Logger;
}

export type MappingState = 'attaching' | 'attached' | 'reattaching' | 'refused' | 'handing-over' | 'unmapping' | 'detached';

const HANDOVER_MS = 20_000;
/** How long a reattached socket must stay open to count as taken by the kernel. */
const KEPT_OLD_SOCKET_CHECK_MS = 300;

class DeviceMapping {
  state: MappingState = 'attaching';
  error?: string;
  exp?: BridgedExport;
  readonly conns: (AdoptedConnection | undefined)[];
  private reattachTimer?: NodeJS.Timeout;
  /** Slots whose dead connection still has requests running at the target. */
  private readonly settling = new Set<number>();
  private deadSince = 0;
  private backoffMs = 100;

  constructor(public record: MappingRecord, private readonly owner: DeviceManager, private readonly log: Logger) {
    this.conns = new Array(record.connections).fill(undefined);
  }

  get device(): string {
    return `/dev/nbd${this.record.index}`;
  }

  setState(s: MappingState, error?: string): void {
    if (s !== this.state) this.log.debug({ device: this.device, from: this.state, to: s }, 'mapping state');
    this.state = s;
    this.error = error;
  }

  /** Make socket pairs, serve our ends, return the kernel's ends (closed by the caller once the kernel has them). */
  openSockets(slots: number[], kernel: KernelNbd): number[] {
    const fds: number[] = [];
    for (const slot of slots) {
      const { ours, kernel: theirs } = kernel.socketPair();
      fds.push(theirs);
      const sock = new net.Socket({ fd: ours, readable: true, writable: true });
      const c = this.owner.adopt(sock, this);
      this.conns[slot] = c;
      void c.closed.then((reason) => this.onClosed(slot, c, reason));
    }
    return fds;
  }

  private onClosed(slot: number, c: AdoptedConnection, reason: string): void {
    if (this.conns[slot] !== c) return;
    this.conns[slot] = undefined;
    if (this.state !== 'attached' && this.state !== 'reattaching') return;
    // The kernel dropped the socket (a request timed out) or it broke here.
    // It re-sends what that socket carried on the next one, so the next one
    // comes only once every request read from this one has finished at the
    // target: a re-sent write must never race its stale twin.
    this.log.warn({ device: this.device, slot, reason, inFlight: c.info().inFlight }, 'kernel connection lost; reattaching once its requests have finished');
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
    }, this.backoffMs);
    this.backoffMs = Math.min(this.backoffMs * 2, 5000);
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
      await this.owner.reconfigure(this, slots);
      this.log.info({ device: this.device, slots }, 'kernel connection reattached');
      this.owner.reattached(this.device);
      this.deadSince = 0;
      this.backoffMs = 100;
      this.setState('attached');
    } catch (err) {
      const gaveUp = Date.now() - this.deadSince > this.record.reattachTimeout * 1000;
      this.log.error({ device: this.device, err }, gaveUp ? 'cannot reattach the kernel connection; giving up' : 'cannot reattach the kernel connection yet; retrying');
      if (gaveUp) this.setState('refused', (err as Error).message);
      else this.scheduleReattach();
    }
  }

  /** Stop timers and hand every socket over (answer what was read, read nothing more). */
  async handOver(): Promise<void> {
    if (this.reattachTimer) clearTimeout(this.reattachTimer);
    this.reattachTimer = undefined;
    await Promise.all(this.conns.map((c) => c?.handOver(HANDOVER_MS)));
  }

  status(): MappingStatus {
    const r = this.record;
    return {
      device: this.device, index: r.index, url: parseIscsiUrl(r.url).redacted(), export: this.exp?.name ?? r.exportName ?? '',
      identity: r.identity, blockSize: r.blockSize, size: r.size, connections: r.connections, readOnly: r.readOnly,
      state: this.state, ...(this.error ? { error: this.error } : {}),
      ...(this.exp ? { sessions: exportStatus(this.exp).sessions } : {}),
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

  /** Flush, log out, and let metrics forget it. */
  private async closeExport(name: string): Promise<void> {
    await this.opts.exports.remove(name);
    this.opts.onExportClosed?.(name);
  }

  /** @internal */ reattached(device: string): void {
    this.opts.onReattach?.(device);
  }

  /** @internal */ adopt(sock: net.Socket, m: DeviceMapping): AdoptedConnection {
    return this.opts.server.adopt(sock, m.exp!.name, m.exp!.export!, `kernel:nbd${m.record.index}`);
  }

  private exportSpec(req: { url: string; exportName?: string; digest?: DigestPref }, readOnly: boolean): ExportConfig {
    const named = req.exportName ? this.opts.configExport(req.exportName) : undefined;
    const url = parseLunUrl(named?.url ?? req.url);
    if (!url.target) throw new ConfigError('EBADURL', `${url.redacted()} names no target (want iscsi://host/<iqn>/<lun>)`);
    // Its own name space: a mapped LUN is never an NBD export, and its metrics never mix with one.
    const name = `map:${named?.name ?? `${url.target}/${url.lun ?? 0}`}`;
    const digest = req.digest ?? named?.digest;
    return { ...(named ?? {}), name, url: named?.url ?? req.url, readOnly: readOnly || named?.readOnly, ...(digest ? { digest } : {}) };
  }

  private identityOf(e: BridgedExport): { identity: string; backendId: string } {
    const info = e.lun!.info;
    const identity = info.identity || `${e.url.target}/${e.url.lun ?? 0}`;
    return { identity, backendId: `iscsi-nbd:${identity}` };
  }

  private async openExport(spec: ExportConfig): Promise<BridgedExport> {
    const taken = this.opts.exports.exports.get(spec.name);
    if (taken) {
      const other = [...this.mappings.values()].find((m) => m.exp === taken);
      throw new ConfigError('ECONFIG', `${spec.name} is mapped already${other ? ` as ${other.device}` : ''}`);
    }
    return this.opts.exports.add(spec);
  }

  /** `iscsi-nbd map`: open the LUN, configure a kernel device for it, wait until it answers. */
  async map(req: MapRequest): Promise<MappingStatus> {
    const d = {
      ioTimeout: req.ioTimeout ?? this.opts.defaults.ioTimeout,
      reattachTimeout: req.reattachTimeout ?? this.opts.defaults.reattachTimeout,
    };
    for (const [k, v] of Object.entries(d)) if (!Number.isFinite(v) || v < 0 || v > 86400) throw new ConfigError('ECONFIG', `${k} must be 0..86400 seconds`);
    // Requests also come straight off the control socket: check their shape here.
    if (typeof req.url !== 'string' || req.url === '') throw new ConfigError('ECONFIG', 'map needs a URL or an export name');
    if (req.device !== undefined && (!Number.isInteger(req.device) || req.device < 0)) throw new ConfigError('ECONFIG', `bad device ${JSON.stringify(req.device)}: want /dev/nbdN`);
    const connections = req.connections ?? this.opts.defaults.connections;
    if (!Number.isInteger(connections) || connections < 1 || connections > 16) throw new ConfigError('ECONFIG', '--connections must be 1..16');
    const kernel = await this.kernel();
    if (req.device !== undefined) {
      if (this.mappings.has(req.device)) throw new ConfigError('ECONFIG', `/dev/nbd${req.device} is mapped already (to ${this.mappings.get(req.device)!.status().url})`);
      if (await kernel.configured(req.device)) throw new ConfigError('ECONFIG', `/dev/nbd${req.device} is in use already (configured by another program); pick another --device or leave it out`);
    }
    if (req.digest !== undefined && !isDigestMode(req.digest)) throw new ConfigError('ECONFIG', `bad digest ${JSON.stringify(req.digest)}: want one of ${DIGEST_MODES.join(', ')}`);
    const isUrl = /^iscsi:\/\//i.test(req.url);
    const spec = this.exportSpec(isUrl ? { url: req.url, digest: req.digest } : { url: '', exportName: req.url, digest: req.digest }, req.readOnly ?? false);
    if (!isUrl && !this.opts.configExport(req.url)) throw new ConfigError('ECONFIG', `"${req.url}" is neither an iscsi:// URL nor an export in the config`);
    const exp = await this.openExport(spec);
    try {
      const { identity, backendId } = this.identityOf(exp);
      const same = [...this.mappings.values()].find((m) => m.record.identity === identity);
      if (same) throw new ConfigError('ECONFIG', `that LUN (${identity}) is mapped already as ${same.device}`);
      const info = exp.lun!.info;
      const record: MappingRecord = {
        version: MAPPING_VERSION, index: req.device ?? -1, url: spec.url, exportName: isUrl ? undefined : req.url, backendId, identity,
        blockSize: info.blockSize, size: exp.export!.size.toString(), connections, readOnly: exp.export!.flags.readOnly,
        ioTimeout: d.ioTimeout, reattachTimeout: d.reattachTimeout, mappedAt: new Date().toISOString(), ...(req.digest ? { digest: req.digest } : {}),
      };
      const m = new DeviceMapping(record, this, this.opts.log);
      m.exp = exp;
      const fds = m.openSockets([...Array(connections).keys()], kernel);
      let index: number;
      try {
        index = await kernel.connect({
          index: req.device, sizeBytes: exp.export!.size, blockSize: info.blockSize, serverFlags: transmissionFlagsFor(exp.export!, false),
          timeoutSec: d.ioTimeout, deadConnTimeoutSec: d.reattachTimeout, backendId, fds,
        });
      } catch (err) {
        m.setState('detached');
        for (const c of m.conns) c?.handOver(0);
        throw err;
      } finally {
        for (const fd of fds) kernel.closeFd(fd);
      }
      record.index = index;
      this.mappings.set(index, m);
      this.opts.store.save(record);
      m.setState('attached');
      await kernel.probe(index, info.blockSize);
      this.opts.log.info({ device: m.device, url: parseIscsiUrl(spec.url).redacted(), identity, blockSize: info.blockSize, size: record.size, connections }, 'device mapped');
      return m.status();
    } catch (err) {
      if (![...this.mappings.values()].some((m) => m.exp === exp)) await this.closeExport(spec.name);
      throw err;
    }
  }

  /** @internal */ async reconfigure(m: DeviceMapping, slots: number[]): Promise<void> {
    const kernel = await this.kernel();
    const backend = kernel.backend(m.record.index);
    if (backend !== undefined && backend !== m.record.backendId) {
      throw new IscsiNbdError('ECONFIG', `${m.device} now belongs to another backend (${backend}), not ${m.record.backendId}`);
    }
    const fds = m.openSockets(slots, kernel);
    try {
      await kernel.reconfigure({ index: m.record.index, fds, backendId: m.record.backendId });
    } catch (err) {
      for (const s of slots) {
        const c = m.conns[s];
        m.conns[s] = undefined;
        void c?.handOver(0);
      }
      throw err;
    } finally {
      for (const fd of fds) kernel.closeFd(fd);
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

  private async restoreOne(r: MappingRecord, kernel: KernelNbd): Promise<void> {
    const log = this.opts.log.child({ device: `/dev/nbd${r.index}` });
    const backend = kernel.backend(r.index);
    if (!(await kernel.configured(r.index)) || (backend !== undefined && backend !== r.backendId)) {
      log.warn({ url: parseIscsiUrl(r.url).redacted(), backend: backend ?? null }, 'the device is no longer configured for this mapping (reboot or detached by hand); forgetting it');
      this.opts.store.remove(r.index);
      return;
    }
    const m = new DeviceMapping(r, this, this.opts.log);
    this.mappings.set(r.index, m);
    try {
      const exp = await this.openExport(this.exportSpec({ url: r.url, exportName: r.exportName, digest: r.digest }, r.readOnly));
      m.exp = exp;
      const { identity } = this.identityOf(exp);
      const info = exp.lun!.info;
      const problem =
        identity !== r.identity ? `the LUN behind ${parseIscsiUrl(r.url).redacted()} is another device now: mapped ${r.identity}, found ${identity}`
        : info.blockSize !== r.blockSize ? `the LUN's block size changed from ${r.blockSize} to ${info.blockSize}`
        : exp.export!.size < BigInt(r.size) ? `the LUN shrank from ${r.size} to ${exp.export!.size} bytes`
        : undefined;
      if (problem) {
        log.error({ was: r.identity, now: identity }, `refusing to reattach: ${problem}; the device is left to fail its I/O (unmap it)`);
        m.setState('refused', problem);
        await this.closeExport(exp.name);
        m.exp = undefined;
        return;
      }
      await this.reconfigure(m, [...Array(r.connections).keys()]);
      // The kernel answers success but drops our socket when an old one is
      // still alive: then ours reads EOF at once. Never leave it half-attached.
      await new Promise((resolve) => setTimeout(resolve, KEPT_OLD_SOCKET_CHECK_MS));
      if (m.conns.some((c) => c === undefined)) {
        const problem = `the kernel kept an older connection of /dev/nbd${r.index} alive (another process still serves it): stop that process, then restart this daemon`;
        log.error(problem);
        m.setState('refused', problem);
        await m.handOver();
        await this.closeExport(exp.name);
        m.exp = undefined;
        return;
      }
      m.setState('attached');
      log.info({ identity, connections: r.connections }, 'device reattached');
    } catch (err) {
      log.error({ err }, 'cannot reattach the device');
      m.setState('refused', (err as Error).message);
      if (m.exp) await this.closeExport(m.exp.name);
      m.exp = undefined;
    }
  }

  /** Declared devices (config `devices:`) that are not mapped yet. */
  async ensure(reqs: MapRequest[]): Promise<void> {
    for (const req of reqs) {
      const spec = this.exportSpec(/^iscsi:\/\//i.test(req.url) ? { url: req.url } : { url: '', exportName: req.url }, false);
      const mapped = [...this.mappings.values()].some((m) => m.exp?.name === spec.name || (req.device !== undefined && m.record.index === req.device));
      if (mapped) continue;
      try {
        const st = await this.map(req);
        this.opts.log.info({ device: st.device, url: st.url }, 'declared device mapped');
      } catch (err) {
        this.opts.log.error({ err, url: parseIscsiUrl(spec.url).redacted() }, 'declared device could not be mapped');
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
      if (m.exp) await this.closeExport(m.exp.name); // flushes and logs out
      this.mappings.delete(index);
    }
    this.opts.store.remove(index);
    this.opts.log.info({ device: `/dev/nbd${index}` }, 'device unmapped');
  }

  list(): MappingStatus[] {
    return [...this.mappings.values()].sort((a, b) => a.record.index - b.record.index).map((m) => m.status());
  }

  get storeProblems(): { file: string; message: string }[] {
    return this.problems;
  }

  /** SIGTERM: hand the sockets over (no device is detached), then the caller closes the exports. */
  async handOver(): Promise<void> {
    for (const m of this.mappings.values()) if (m.state !== 'refused') m.setState('handing-over');
    await Promise.all([...this.mappings.values()].map((m) => m.handOver()));
    this.kernelP?.then((k) => k.close(), () => undefined);
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
