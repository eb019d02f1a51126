import test from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { TagTable } from '../src/tag-table';

type Op = { kind: 'set'; tag: number; v: number } | { kind: 'delete'; tag: number } | { kind: 'clear' };

// Tags drawn from a small range (many collisions and probe runs), near-sequential
// ones (how ITTs and request ids look), and the whole uint32 range.
const tagArb = fc.oneof(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0xfffffff0, max: 0xffffffff }), fc.nat({ max: 0xffffffff }));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('set' as const), tag: tagArb, v: fc.integer() }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('delete' as const), tag: tagArb }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'clear' as const }) },
);

test('TagTable behaves like a Map (get/has/size/values order) under random operations', () => {
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 400 }), fc.integer({ min: 1, max: 64 }), (ops, cap) => {
      const t = new TagTable<{ v: number }>(cap);
      const m = new Map<number, { v: number }>();
      for (const op of ops) {
        if (op.kind === 'set') {
          const o = { v: op.v };
          t.set(op.tag, o);
          m.set(op.tag, o);
        } else if (op.kind === 'delete') {
          assert.equal(t.delete(op.tag), m.delete(op.tag));
        } else {
          t.clear();
          m.clear();
        }
        assert.equal(t.size, m.size);
      }
      for (const k of m.keys()) assert.equal(t.get(k), m.get(k));
      assert.deepEqual(t.values(), [...m.values()]);
      for (let k = 0; k < 50; k++) assert.equal(t.has(k), m.has(k));
    }),
    { numRuns: 300 },
  );
});

test('TagTable keeps insertion order across growth and replacing a value keeps its place', () => {
  const t = new TagTable<string>(8);
  for (let i = 0; i < 100; i++) t.set(1000 - i * 7, `v${i}`);
  t.set(1000, 'first-replaced');
  assert.equal(t.size, 100);
  const vals = t.values();
  assert.equal(vals[0], 'first-replaced');
  assert.equal(vals[99], 'v99');
});

test('TagTable drops its references on delete, clear and growth (nothing dead keeps a value alive)', () => {
  const t = new TagTable<object>(8);
  const inner = (t as unknown as { vals: unknown[] });
  const before = inner.vals;
  for (let i = 0; i < 20; i++) t.set(i, { i });
  assert.notEqual(inner.vals, before, 'grew');
  assert.ok(before.every((v) => v === undefined), 'the outgrown table was wiped');
  for (let i = 0; i < 20; i++) t.delete(i);
  assert.ok(inner.vals.every((v) => v === undefined));
  t.set(5, {});
  t.clear();
  assert.ok(inner.vals.every((v) => v === undefined));
});
