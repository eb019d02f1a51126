import fs from 'node:fs';
import path from 'node:path';
import type { DigestPref } from '../config';
import { ConfigError } from '../errors';
import { isDigestMode } from '../iscsi/digest';

// One file per mapped device under <state dir>/mappings/, written atomically
// (temporary file, fsync, rename, fsync of the directory), so that a crash
// leaves either the old record or the new one. A torn or foreign file is
// reported by name and never takes another mapping down with it.

export const MAPPING_VERSION = 1;

export interface MappingRecord {
  version: typeof MAPPING_VERSION;
  /** Kernel device index: /dev/nbd<index>. */
  index: number;
  /** The iscsi:// URL as given (it may carry CHAP credentials: the file is 0600). */
  url: string;
  /** The config export it came from, when `map` named one. */
  exportName?: string;
  /** What the kernel knows the device by (NBD_ATTR_BACKEND_IDENTIFIER). */
  backendId: string;
  /** The LUN's identity (VPD 0x83 designator or 0x80 serial) at map time. */
  identity: string;
  blockSize: number;
  /** Device size in bytes (decimal string: it may not fit a double). */
  size: string;
  connections: number;
  readOnly: boolean;
  /** Kernel request timeout and dead_conn_timeout, seconds. */
  ioTimeout: number;
  reattachTimeout: number;
  mappedAt: string;
  /** `map --digest`, when given (restarts log in the same way). */
  digest?: DigestPref;
  /** `map --iface`, when given (restarts leave through the same interfaces). */
  ifaces?: string[];
}

export interface StoreProblem {
  file: string;
  message: string;
}

function isRecord(v: unknown): v is MappingRecord {
  const r = v as MappingRecord;
  return (
    typeof r === 'object' && r !== null && r.version === MAPPING_VERSION &&
    Number.isInteger(r.index) && r.index >= 0 && typeof r.url === 'string' && typeof r.backendId === 'string' &&
    typeof r.identity === 'string' && Number.isInteger(r.blockSize) && typeof r.size === 'string' && /^\d+$/.test(r.size) &&
    Number.isInteger(r.connections) && r.connections >= 1 && typeof r.readOnly === 'boolean' &&
    typeof r.ioTimeout === 'number' && typeof r.reattachTimeout === 'number' &&
    (r.digest === undefined || isDigestMode(r.digest)) &&
    (r.ifaces === undefined || (Array.isArray(r.ifaces) && r.ifaces.every((i) => typeof i === 'string' && i !== '')))
  );
}

export class MappingStore {
  readonly dir: string;

  constructor(readonly stateDir: string) {
    this.dir = path.join(stateDir, 'mappings');
  }

  private file(index: number): string {
    return path.join(this.dir, `nbd${index}.json`);
  }

  ensure(): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  /** Every readable record, and a problem line for each file that is not one. */
  load(): { records: MappingRecord[]; problems: StoreProblem[] } {
    const records: MappingRecord[] = [];
    const problems: StoreProblem[] = [];
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { records, problems };
      throw new ConfigError('ECONFIG', `cannot read the mapping state in ${this.dir}: ${(err as Error).message}`);
    }
    for (const name of names.sort()) {
      const m = /^nbd(\d+)\.json$/.exec(name);
      if (!m) continue; // temporary files of an interrupted write, and anything else
      const file = path.join(this.dir, name);
      try {
        const doc: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
        if (!isRecord(doc)) throw new Error('not a mapping record of this version');
        if (doc.index !== Number(m[1])) throw new Error(`it describes nbd${doc.index}, not nbd${m[1]}`);
        records.push(doc);
      } catch (err) {
        problems.push({ file, message: `${file}: ${(err as Error).message}; this mapping is not reattached (remove the file once the device is dealt with)` });
      }
    }
    return { records, problems };
  }

  get(index: number): MappingRecord | undefined {
    return this.load().records.find((r) => r.index === index);
  }

  save(r: MappingRecord): void {
    this.ensure();
    const final = this.file(r.index);
    const tmp = `${final}.${process.pid}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, JSON.stringify(r, null, 2) + '\n');
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, final);
    syncDir(this.dir);
  }

  remove(index: number): void {
    fs.rmSync(this.file(index), { force: true });
    syncDir(this.dir);
  }
}

function syncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // some filesystems refuse fsync on a directory; the rename is still atomic
  }
}
