// test/helpers/libnbd.ts against an in-process NbdServer: the named helpers
// other tests build on do what they say.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { NbdServer } from '../../src/nbd/server';
import { MemoryExport, memoryRegistry } from '../helpers/memory-export';
import { haveAll } from '../helpers/tools';
import { exportInfo, listExports, nbdJson, readAt, writeReadBack } from '../helpers/libnbd';

const MiB = 1024 * 1024;

test('libnbd helpers: list, info, write/read back, tryit', { skip: !haveAll('nbdsh') && 'python3-libnbd missing' }, async (t) => {
  const disk = new MemoryExport({ name: 'disk', description: 'a disk', size: 4 * MiB, blockSizes: { minimum: 512, preferred: 4096, maximum: 4 * MiB } });
  const ro = new MemoryExport({ name: 'ro', size: MiB, flags: { readOnly: true } });
  const srv = new NbdServer({ exports: memoryRegistry(disk, ro) });
  const a = (await srv.listen({ host: '127.0.0.1', port: 0 })) as net.AddressInfo;
  t.after(() => srv.close({ drainMs: 1000 }));
  const uri = (n: string) => `nbd://127.0.0.1:${a.port}/${n}`;

  assert.deepEqual(await listExports(`nbd://127.0.0.1:${a.port}/`), [{ name: 'disk', description: 'a disk' }, { name: 'ro', description: '' }]);
  const info = await exportInfo(uri('disk'));
  assert.equal(info.name, 'disk');
  assert.equal(info.size, 4 * MiB);
  assert.equal(info.readOnly, false);
  assert.deepEqual(info.blockSizes, [512, 4096, 4 * MiB]);
  assert.equal((await exportInfo(uri('ro'))).readOnly, true);

  const data = Buffer.alloc(8192, 0x3c);
  assert.equal(await writeReadBack(uri('disk'), 65536, data), true);
  assert.ok(disk.peek(65536, 8192).equals(data));
  assert.ok((await readAt(uri('disk'), 65536 - 512, 1024)).equals(Buffer.concat([Buffer.alloc(512), Buffer.alloc(512, 0x3c)])));

  const res = await nbdJson('tryit', `
h = connect(sys.argv[1], strict=False)
tryit('ro_write', lambda: h.pwrite(b'x' * 512, 0))
tryit('read', lambda: h.pread(512, 0))
h.shutdown()
done()
`, [uri('ro')]);
  assert.deepEqual(res, { ro_write: 1, read: 0 });
});
