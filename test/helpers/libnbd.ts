// libnbd (Python bindings) as a test client. Every script runs with PRELUDE
// in front, so the common steps have one name each:
//   connect(uri, strict=True, meta=False, structured=True, block_size=True, tls_certs=None)
//       an nbd.NBD() handle, connected; strict=False lets invalid requests
//       reach the server, meta=True asks for base:allocation
//   err(fn)           run fn; 0, or the errno of the NBD error
//   tryit(name, fn)   res[name] = err(fn)
//   digest(h)         sha256 of the whole export, read in 4 MiB pieces
//   done()            print res as JSON (nbdJson() parses it)
// The script's own arguments are sys.argv[1:].
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { describeRun, run, type RunOptions, type RunResult } from './process';

/** /usr/bin/python3 (the one with Debian's nbd module), else python3 on PATH. */
export const PY = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

export const PRELUDE = `
import nbd, sys, json, hashlib, os
res = {}
def connect(uri, strict=True, meta=False, structured=True, block_size=True, tls_certs=None):
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    if not structured:
        h.set_request_structured_replies(False)
    if not block_size:
        h.set_request_block_size(False)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if tls_certs is not None:
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates(tls_certs)
    h.connect_uri(uri)
    return h
def err(fn):
    try:
        fn()
        return 0
    except nbd.Error as e:
        return e.errnum or -1
def tryit(name, fn):
    res[name] = err(fn)
def digest(h):
    m = hashlib.sha256()
    size = h.get_size()
    off = 0
    while off < size:
        n = min(4 * 1024 * 1024, size - off)
        m.update(h.pread(n, off))
        off += n
    return m.hexdigest()
def done():
    print(json.dumps(res))
`;

export interface NbdRunOptions {
  timeoutMs?: number;
  /** Kill the script when this test ends, if it still runs. */
  t?: RunOptions['t'];
  /** python3 -u: stdout unbuffered (for a script read while it runs). */
  unbuffered?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** Run PRELUDE + body with python3; args become sys.argv[1:]. */
export function nbdPython(body: string, args: string[], o: NbdRunOptions = {}): Promise<RunResult> {
  return run(PY, [...(o.unbuffered ? ['-u'] : []), '-c', PRELUDE + body, ...args], { timeoutMs: o.timeoutMs ?? 30_000, env: o.env, t: o.t });
}

/** Run a script that must exit 0; the last line it prints, as JSON (see done()). */
export async function nbdJson<T = Record<string, unknown>>(what: string, body: string, args: string[], o: NbdRunOptions = {}): Promise<T> {
  const r = await nbdPython(body, args, o);
  assert.equal(r.code, 0, describeRun(r, what));
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}

/** `h = connect(uri)`, then body; the last line it prints, as JSON. */
export function nbdEval<T = unknown>(uri: string, body: string, o: NbdRunOptions = {}): Promise<T> {
  return nbdJson<T>(`libnbd script on ${uri}`, `h = connect(sys.argv[1])\n${body}`, [uri], o);
}

/** Connect, write data at offset (FUA unless told not to), flush, read it back; true when it reads back equal. */
export async function writeReadBack(uri: string, offset: number, data: Buffer, o: NbdRunOptions & { tlsCerts?: string } = {}): Promise<boolean> {
  const r = await nbdJson<{ same: boolean }>('libnbd write/read back', `
h = connect(sys.argv[1], tls_certs=(sys.argv[4] or None))
data = bytes.fromhex(sys.argv[3])
h.pwrite(data, int(sys.argv[2]), nbd.CMD_FLAG_FUA if h.can_fua() else 0)
h.flush()
res['same'] = h.pread(len(data), int(sys.argv[2])) == data
h.shutdown()
done()
`, [uri, String(offset), data.toString('hex'), o.tlsCerts ?? ''], o);
  return r.same;
}

/** Read len bytes at offset. */
export async function readAt(uri: string, offset: number, len: number, o: NbdRunOptions = {}): Promise<Buffer> {
  const r = await nbdJson<{ hex: string }>('libnbd read', `
h = connect(sys.argv[1])
res['hex'] = h.pread(int(sys.argv[3]), int(sys.argv[2])).hex()
h.shutdown()
done()
`, [uri, String(offset), String(len)], o);
  return Buffer.from(r.hex, 'hex');
}

export interface ExportInfo { name: string; size: number; readOnly: boolean; canTrim: boolean; canZero: boolean; canFua: boolean; canFlush: boolean; blockSizes: [number, number, number] }

/** The exports the server lists (NBD_OPT_LIST), with their descriptions. uri: nbd://host:port/ */
export async function listExports(uri: string, o: NbdRunOptions = {}): Promise<Array<{ name: string; description: string }>> {
  const r = await nbdJson<{ exports: Array<{ name: string; description: string }> }>('libnbd list', `
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(sys.argv[1])
found = []
h.opt_list(lambda name, desc: found.append({'name': name, 'description': desc}) or 0)
h.opt_abort()
res['exports'] = found
done()
`, [uri], o);
  return r.exports;
}

/** What the server says about one export after the handshake. */
export async function exportInfo(uri: string, o: NbdRunOptions = {}): Promise<ExportInfo> {
  return nbdJson<ExportInfo>('libnbd info', `
h = connect(sys.argv[1])
res = {
    'name': h.get_export_name(),
    'size': h.get_size(), 'readOnly': bool(h.is_read_only()), 'canTrim': bool(h.can_trim()), 'canZero': bool(h.can_zero()),
    'canFua': bool(h.can_fua()), 'canFlush': bool(h.can_flush()),
    'blockSizes': [h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED), h.get_block_size(nbd.SIZE_MAXIMUM)],
}
h.shutdown()
done()
`, [uri], o);
}
