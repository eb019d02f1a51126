import path from 'node:path';
import { ConfigError } from '../errors';

// Image containers that must not be copied onto a LUN byte for byte: a qcow2
// written raw onto a disk boots nothing and exits 0. Recognised by the magic
// numbers qemu's block drivers probe for (block/qcow2.h, vmdk.c, vpc.c,
// vhdx.h, vdi.c, qed.h, crypto/block-luks.c).

export interface ImageFormat {
  /** qemu-img's name for the format (-f). */
  id: 'qcow2' | 'qcow' | 'vmdk' | 'vpc' | 'vhdx' | 'vdi' | 'qed' | 'luks';
  /** For people: "a qcow2 image", "a VMDK descriptor". */
  what: string;
}

/** Bytes of the head of a source that detectImageFormat wants (the VMDK descriptor probe reads text). */
export const HEAD_BYTES = 4096;
/** A VHD footer: the last 512 bytes of a fixed VHD. */
export const VHD_FOOTER_BYTES = 512;

const ascii = (buf: Buffer, off: number, s: string): boolean =>
  buf.length >= off + s.length && buf.toString('latin1', off, off + s.length) === s;

/**
 * qemu's VMDK descriptor probe: comment lines and blank lines, then a
 * "version=1|2|3" line. A descriptor written by VMware starts with
 * "# Disk DescriptorFile", which we take on its own as well.
 */
function vmdkDescriptor(head: Buffer): boolean {
  if (ascii(head, 0, '# Disk DescriptorFile')) return true;
  const text = head.toString('latin1');
  let p = 0;
  while (p < text.length) {
    if (text[p] === '#') {
      const nl = text.indexOf('\n', p);
      if (nl < 0) return false;
      p = nl + 1;
      continue;
    }
    if (text[p] === ' ' || text[p] === '\r' || text[p] === '\n') {
      // only blank lines before "version="
      const m = /^ *\r?\n/.exec(text.slice(p, p + 4096));
      if (!m) return false;
      p += m[0].length;
      continue;
    }
    return /^version=[123]\r?\n/.test(text.slice(p, p + 12));
  }
  return false;
}

/**
 * The image format a source holds, from its first bytes (and, for a fixed
 * VHD, its last 512 bytes), or undefined for anything that may be raw.
 */
export function detectImageFormat(head: Buffer, tail?: Buffer): ImageFormat | undefined {
  // qcow and qcow2: "QFI\xfb", then a big-endian version (1: qcow, 2 and 3: qcow2).
  if (head.length >= 8 && head[0] === 0x51 && head[1] === 0x46 && head[2] === 0x49 && head[3] === 0xfb) {
    const version = head.readUInt32BE(4);
    if (version >= 2) return { id: 'qcow2', what: 'a qcow2 image' };
    if (version === 1) return { id: 'qcow', what: 'a qcow (version 1) image' };
  }
  // QED: "QED\0" (little-endian magic).
  if (head.length >= 4 && ascii(head, 0, 'QED') && head[3] === 0) return { id: 'qed', what: 'a QED image' };
  // VMDK sparse extents: "KDMV" (VMDK4) and "COWD" (VMDK3, ESX), then the descriptor text.
  if (ascii(head, 0, 'KDMV')) return { id: 'vmdk', what: 'a VMDK image (sparse extent)' };
  if (ascii(head, 0, 'COWD')) return { id: 'vmdk', what: 'a VMDK image (VMFS sparse extent)' };
  // VHDX: the file identifier "vhdxfile".
  if (ascii(head, 0, 'vhdxfile')) return { id: 'vhdx', what: 'a VHDX image' };
  // VHD: a dynamic disk has a copy of the footer ("conectix") at offset 0; a fixed one only at the end.
  if (ascii(head, 0, 'conectix')) return { id: 'vpc', what: 'a VHD image (dynamic)' };
  if (tail && tail.length === VHD_FOOTER_BYTES && ascii(tail, 0, 'conectix')) {
    return { id: 'vpc', what: 'a VHD image (fixed, footer at the end)' };
  }
  // VDI: a text pre-header "<<< ... >>>\n" in the first 64 bytes, signature 0xbeda107f (LE) at 0x40.
  if (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) return { id: 'vdi', what: 'a VDI image' };
  if (/^<<< [^\n]{1,56} >>>\n/.test(head.toString('latin1', 0, Math.min(head.length, 0x40)))) return { id: 'vdi', what: 'a VDI image' };
  // LUKS: "LUKS\xba\xbe" then a big-endian version (1 or 2).
  if (head.length >= 6 && ascii(head, 0, 'LUKS') && head[4] === 0xba && head[5] === 0xbe) return { id: 'luks', what: 'a LUKS volume (encrypted)' };
  if (vmdkDescriptor(head)) return { id: 'vmdk', what: 'a VMDK descriptor' };
  return undefined;
}

/** The refusal for a source holding an image format (exit code class: config). */
export function notRawError(label: string, fmt: ImageFormat, isStdin = false): ConfigError {
  if (isStdin) {
    return new ConfigError(
      'ECONFIG',
      `stdin starts like ${fmt.what}, not raw: convert it first with \`qemu-img convert -O raw IMAGE disk.raw\` and copy that, ` +
        'or pass --format raw to copy its bytes as they are',
    );
  }
  const ext = path.extname(label);
  let out = path.join(path.dirname(label), `${path.basename(label, ext)}.raw`);
  if (path.resolve(out) === path.resolve(label)) out = path.join(path.dirname(label), `${path.basename(label, ext)}-converted.raw`);
  const outShown = path.dirname(label) === '.' && !label.startsWith('./') ? path.basename(out) : out;
  return new ConfigError(
    'ECONFIG',
    `${label} is ${fmt.what}, not raw: convert it first with \`qemu-img convert -O raw ${label} ${outShown}\`, ` +
      'or pass --format raw to copy its bytes as they are',
  );
}
