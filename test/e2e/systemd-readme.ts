// What README and scripts/systemd say a user puts in /etc/fstab and /etc/nbdtab, read at run
// time: systemd-units.test.ts checks they agree, systemd.test.ts installs them in the VM.

import fs from 'node:fs';
import path from 'node:path';

export const REPO = path.resolve(__dirname, '../../..');
export const UNITS_DIR = path.join(REPO, 'scripts/systemd');

/** The fstab entries of a text (six fields, /dev/nbdN first, a mount point second), a leading "# " dropped, split into fields. */
export function fstabEntries(text: string): string[][] {
  return text
    .split('\n')
    .map((l) => l.trim().replace(/^#\s*/, ''))
    .filter((l) => /^\/dev\/nbd\d+\s+\/\S*\s+\S+\s+\S+\s+\d+\s+\d+$/.test(l))
    .map((l) => l.split(/\s+/));
}

/** README's indented code lines (prose may quote options; code is what users copy). */
export function readmeCode(): string {
  return fs.readFileSync(path.join(REPO, 'README.md'), 'utf8').split('\n').filter((l) => /^ {4,}\S/.test(l)).join('\n');
}

/** README's fstab line for a mount point, exactly as README writes it. */
export function readmeFstabLine(mountPoint: string): string {
  const lines = readmeCode().split('\n').map((l) => l.trim()).filter((l) => fstabEntries(l)[0]?.[1] === mountPoint);
  if (lines.length !== 1) throw new Error(`README has ${lines.length} fstab lines for ${mountPoint}`);
  return lines[0];
}

/** nbdtab.example's line for a device (nbd1). */
export function nbdtabExampleLine(dev: string): string {
  const l = fs.readFileSync(path.join(UNITS_DIR, 'nbdtab.example'), 'utf8').split('\n').filter((x) => x.startsWith(`${dev} `));
  if (l.length !== 1) throw new Error(`nbdtab.example has ${l.length} lines for ${dev}`);
  return l[0];
}
