// Module structure of src/, checked with dependency-cruiser (a devDependency)
// on the TypeScript sources, so type-only imports count as edges too
// (tsPreCompilationDeps). Rules (test/structure/depcruise.json):
//   no-cycles      no import cycle among src/ modules
//   cli-is-a-leaf  nothing outside src/cli imports from src/cli
//   resolvable     every import in src/ resolves
//   layer-*        per folder, what it may import: docs/architecture.md's
//                  "May import" column, as rules
// A second test runs the same rules on a tiny fixture with a cycle, a
// library-to-CLI import and one forbidden import per layer, so a rule that
// silently stopped firing fails too. A third finds cycles between folders.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../helpers/process';

const ROOT = repoRoot();
const DEPCRUISE = path.join(ROOT, 'node_modules', 'dependency-cruiser', 'bin', 'dependency-cruise.mjs');
const CONFIG = path.join(ROOT, 'test', 'structure', 'depcruise.json');

interface Violation { from: string; to: string; rule: { name: string }; cycle?: Array<{ name: string } | string> }

interface CruisedModule { source: string; dependencies: { resolved: string }[] }

function cruise(cwd: string): { violations: Violation[]; modules: number; graph: CruisedModule[] } {
  const r = spawnSync(process.execPath, [DEPCRUISE, '--config', CONFIG, '--output-type', 'json', 'src'], {
    cwd, encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20,
  });
  assert.ok(r.stdout, `dependency-cruiser printed nothing (exit ${r.status}): ${r.stderr}`);
  const out = JSON.parse(r.stdout) as { summary: { violations: Violation[]; totalCruised: number }; modules: CruisedModule[] };
  return { violations: out.summary.violations, modules: out.summary.totalCruised, graph: out.modules };
}

/** The folder a module belongs to: src/nbd/netlink is its own; a file directly in src/ is a shared module of its own. */
function folderOf(file: string): string {
  const rel = file.replace(/^src\//, '');
  if (rel.startsWith('nbd/netlink/')) return 'nbd/netlink';
  return rel.includes('/') ? rel.split('/')[0] : rel.replace(/\.ts$/, '');
}

/** Cycles in the graph of folders (each as a path of folders), found depth first. */
function folderCycles(graph: CruisedModule[]): string[] {
  const edges = new Map<string, Set<string>>();
  for (const m of graph) {
    if (!m.source.startsWith('src/')) continue;
    const a = folderOf(m.source);
    for (const d of m.dependencies) {
      if (!d.resolved.startsWith('src/')) continue;
      const b = folderOf(d.resolved);
      if (a !== b) edges.set(a, (edges.get(a) ?? new Set()).add(b));
    }
  }
  const cycles: string[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const walk = (n: string, stack: string[]): void => {
    state.set(n, 'open');
    for (const next of edges.get(n) ?? []) {
      if (state.get(next) === 'open') cycles.push([...stack.slice(stack.indexOf(next)), next].join(' -> '));
      else if (!state.has(next)) walk(next, [...stack, next]);
    }
    state.set(n, 'done');
  };
  for (const n of edges.keys()) if (!state.has(n)) walk(n, [n]);
  return cycles;
}

function describe(v: Violation): string {
  const cycle = v.cycle?.map((c) => (typeof c === 'string' ? c : c.name)).join(' -> ');
  return `${v.rule.name}: ${v.from} -> ${v.to}${cycle ? ` (cycle: ${v.from} -> ${cycle})` : ''}`;
}

test('src/: no import cycles, nothing outside src/cli imports src/cli', { skip: !fs.existsSync(DEPCRUISE) && 'dependency-cruiser not installed' }, () => {
  const { violations, modules } = cruise(ROOT);
  assert.ok(modules > 50, `only ${modules} modules cruised: is src/ there?`);
  assert.deepEqual(violations.map(describe), []);
});

test('the structure rules fire on a fixture with a cycle and a library-to-CLI import', { skip: !fs.existsSync(DEPCRUISE) && 'dependency-cruiser not installed' }, (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'structure-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files: Record<string, string> = {
    'tsconfig.json': '{"compilerOptions":{"module":"commonjs","strict":true}}',
    'src/a.ts': "import type { B } from './b';\nexport interface A { b?: B }\n",
    'src/b.ts': "import type { A } from './a';\nexport interface B { a?: A }\n",
    'src/lib.ts': "import { run } from './cli/main';\nexport const x = run;\n",
    'src/cli/main.ts': "import { x } from '../lib';\nexport function run(): unknown { return x; }\n",
    // One import each layer must not make.
    'src/nbd/server.ts': "import type { D } from '../daemon/devices';\nexport type S = D;\n",
    'src/nbd/netlink/kernel.ts': "import type { L } from '../../log';\nexport type K = L;\n",
    'src/iscsi/initiator.ts': "import type { C } from '../config';\nexport type I = C;\n",
    'src/scsi/lun.ts': "import type { P } from '../iscsi/pdu';\nexport type U = P;\n",
    'src/bridge/lun-export.ts': "import type { S } from '../nbd/server';\nexport type E = S;\n",
    'src/target/engine.ts': "import type { I } from '../iscsi/initiator';\nexport type T = I;\n",
    'src/daemon/devices.ts': "import type { T } from '../target/engine';\nexport type D = T;\n",
    'src/copy/copy.ts': "import type { E } from '../bridge/lun-export';\nexport type C = E;\n",
    'src/config/index.ts': "import type { D } from '../daemon/devices';\nexport type C = D;\n",
    'src/log.ts': 'export type L = string;\n',
    'src/iscsi/pdu.ts': 'export type P = number;\n',
  };
  for (const [f, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.writeFileSync(path.join(dir, f), text);
  }
  const rules = new Set(cruise(dir).violations.map((v) => `${v.rule.name}: ${v.from} -> ${v.to}`));
  // a <-> b is type-only: it must still count.
  assert.ok(rules.has('no-cycles: src/a.ts -> src/b.ts'), [...rules].join('\n'));
  assert.ok(rules.has('no-cycles: src/lib.ts -> src/cli/main.ts') || rules.has('no-cycles: src/cli/main.ts -> src/lib.ts'), [...rules].join('\n'));
  assert.ok(rules.has('cli-is-a-leaf: src/lib.ts -> src/cli/main.ts'), [...rules].join('\n'));
  for (const r of [
    'layer-nbd: src/nbd/server.ts -> src/daemon/devices.ts',
    'layer-nbd-netlink: src/nbd/netlink/kernel.ts -> src/log.ts',
    'layer-iscsi: src/iscsi/initiator.ts -> src/config/index.ts',
    'layer-scsi: src/scsi/lun.ts -> src/iscsi/pdu.ts',
    'layer-bridge: src/bridge/lun-export.ts -> src/nbd/server.ts',
    'layer-target: src/target/engine.ts -> src/iscsi/initiator.ts',
    'layer-daemon: src/daemon/devices.ts -> src/target/engine.ts',
    'layer-copy: src/copy/copy.ts -> src/bridge/lun-export.ts',
    'layer-shared: src/config/index.ts -> src/daemon/devices.ts',
  ]) assert.ok(rules.has(r), `${r} fires:\n${[...rules].join('\n')}`);
  // And the folder check sees what a file check cannot: config -> daemon -> ... -> iscsi -> config.
  assert.ok(folderCycles(cruise(dir).graph).length > 0);
});

test('src/: no cycles between folders', { skip: !fs.existsSync(DEPCRUISE) && 'dependency-cruiser not installed' }, () => {
  assert.deepEqual(folderCycles(cruise(ROOT).graph), []);
});

test('package.json main and bin point at built files', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { main?: string; bin?: Record<string, string> };
  assert.ok(pkg.main, 'main is set');
  assert.ok(fs.existsSync(path.join(ROOT, pkg.main)), `main ${pkg.main} exists (after tsc)`);
  // The library entry is the composition root: the programmatic way to run what `iscsi-nbd serve` runs.
  const entry = require(path.join(ROOT, pkg.main)) as Record<string, unknown>;
  assert.equal(typeof entry.startDaemon, 'function');
  for (const [name, file] of Object.entries(pkg.bin ?? {})) assert.ok(fs.existsSync(path.join(ROOT, file)), `bin ${name}: ${file} exists`);
});
