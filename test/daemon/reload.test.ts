import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planReload } from '../../src/daemon/reload';
import type { ExportConfig } from '../../src/config';

const a: ExportConfig = { name: 'a', url: 'iscsi://h/iqn.2000-01.x:t/1' };
const b: ExportConfig = { name: 'b', url: 'iscsi://h/iqn.2000-01.x:t/2', sessions: 2 };
const c: ExportConfig = { name: 'c', url: 'iscsi://h/iqn.2000-01.x:t/3' };

test('planReload: unchanged exports are kept, new ones added, missing ones removed', () => {
  assert.deepEqual(planReload([a, b], [a, c]), { remove: ['b'], change: [], add: ['c'], keep: ['a'] });
});

test('planReload: any change to a spec re-opens that export', () => {
  const plan = planReload([a, b], [a, { ...b, sessions: 4 }]);
  assert.deepEqual(plan, { remove: [], change: ['b'], add: [], keep: ['a'] });
  assert.deepEqual(planReload([a], [{ ...a, chap: { user: 'u', secret: 's' } }]).change, ['a']);
  assert.deepEqual(planReload([a], [{ ...a, portals: ['h2:3260'] }]).change, ['a']);
});

test('planReload: an undefined key equals an absent one, key order does not matter', () => {
  const reordered = { url: a.url, description: undefined, name: 'a' } as ExportConfig;
  assert.deepEqual(planReload([a], [reordered]), { remove: [], change: [], add: [], keep: ['a'] });
});

test('planReload: empty to some and some to empty', () => {
  assert.deepEqual(planReload([], [a, b]), { remove: [], change: [], add: ['a', 'b'], keep: [] });
  assert.deepEqual(planReload([a, b], []), { remove: ['a', 'b'], change: [], add: [], keep: [] });
});
