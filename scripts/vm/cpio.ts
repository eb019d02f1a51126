// Minimal writer for the "newc" cpio format the kernel unpacks as an initramfs.
//
// Header: "070701" then 13 fields of 8 ASCII hex digits: ino, mode, uid, gid,
// nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize
// (including the NUL), check (0). The name follows, NUL-terminated and padded
// so header+name is a multiple of 4; then the data, padded to 4. The archive
// ends with an entry named "TRAILER!!!". Archives may be concatenated.

export type CpioEntry =
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'file'; path: string; data: Buffer; mode?: number }
  | { kind: 'symlink'; path: string; target: string };

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

export function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const push = (name: string, mode: number, data: Buffer, nlink: number): void => {
    const nameBuf = Buffer.from(name + '\0');
    const header =
      '070701' +
      [ino++, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0].map(hex8).join('');
    parts.push(Buffer.from(header, 'ascii'), nameBuf, Buffer.alloc(pad4(110 + nameBuf.length)));
    parts.push(data, Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) {
    const name = e.path.replace(/^\/+/, '');
    if (e.kind === 'dir') push(name, 0o040000 | (e.mode ?? 0o755), Buffer.alloc(0), 2);
    else if (e.kind === 'file') push(name, 0o100000 | (e.mode ?? 0o644), e.data, 1);
    else push(name, 0o120777, Buffer.from(e.target), 1);
  }
  push('TRAILER!!!', 0, Buffer.alloc(0), 1);
  return Buffer.concat(parts);
}

/** Entries for an archive, each directory added once, before anything in it. */
export class CpioTree {
  readonly entries: CpioEntry[] = [];
  private readonly dirs = new Set<string>();

  dir(d: string): void {
    if (d === '/' || this.dirs.has(d)) return;
    this.dir(posixDirname(d));
    this.dirs.add(d);
    this.entries.push({ kind: 'dir', path: d });
  }

  file(p: string, data: Buffer, mode: number): void {
    this.dir(posixDirname(p));
    this.entries.push({ kind: 'file', path: p, data, mode });
  }
}

function posixDirname(p: string): string {
  const i = p.lastIndexOf('/');
  return i <= 0 ? '/' : p.slice(0, i);
}
