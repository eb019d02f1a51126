// Module structure of src/, checked with dependency-cruiser (a devDependency)
// on the TypeScript sources, so type-only imports count as edges too
// (tsPreCompilationDeps). Rules (test/structure/depcruise.json):
//   no-cycles      no import cycle among src/ modules
//   cli-is-a-leaf  nothing outside src/cli imports from src/cli
//   resolvable     every import in src/ resolves
// A second test runs the same rules on a tiny fixture with a cycle and a
// library-to-CLI import, so a rule that silently stopped firing fails too.
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

function cruise(cwd: string): { violations: Violation[]; modules: number } {
  const r = spawnSync(process.execPath, [DEPCRUISE, '--config', CONFIG, '--output-type', 'json', 'src'], {
    cwd, encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20,
  });
  assert.ok(r.stdout, `dependency-cruiser printed nothing (exit ${r.status}): ${r.stderr}`);
  const out = JSON.parse(r.stdout) as { summary: { violations: Violation[]; totalCruised: number } };
  return { violations: out.summary.violations, modules: out.summary.totalCruised };
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
