// The Dockerfile cannot be built here (no engine), so its structure is linted:
// stages, the non-root user, HEALTHCHECK without curl, what it COPYs exists,
// and .dockerignore does not hide what the build needs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../helpers/process';

interface Instr { cmd: string; args: string; stage: number; line: number }

function parse(text: string): { instrs: Instr[]; stages: { name?: string; image: string }[] } {
  const instrs: Instr[] = [];
  const stages: { name?: string; image: string }[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let l = lines[i];
    const start = i + 1;
    if (/^\s*(#|$)/.test(l)) continue;
    while (l.endsWith('\\') && i + 1 < lines.length) l = l.slice(0, -1) + ' ' + lines[++i].trim();
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(l);
    assert.ok(m, `line ${start}: cannot parse "${l}"`);
    const cmd = m[1].toUpperCase();
    if (cmd === 'FROM') {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(m[2].trim());
      assert.ok(f, `line ${start}: bad FROM`);
      stages.push({ image: f[1], name: f[2] });
    }
    instrs.push({ cmd, args: m[2].trim(), stage: stages.length - 1, line: start });
  }
  return { instrs, stages };
}

const dockerfile = fs.readFileSync(path.join(REPO_ROOT, 'Dockerfile'), 'utf8');
const { instrs, stages } = parse(dockerfile);
const known = new Set(['FROM', 'ARG', 'ENV', 'WORKDIR', 'COPY', 'RUN', 'USER', 'EXPOSE', 'VOLUME', 'HEALTHCHECK', 'ENTRYPOINT', 'CMD', 'LABEL', 'STOPSIGNAL']);

test('every instruction is a known one', () => {
  for (const i of instrs) assert.ok(known.has(i.cmd), `line ${i.line}: unknown instruction ${i.cmd}`);
});

test('multi-stage: a node:20-bookworm-slim build stage with npm ci and tsc, a runtime stage without dev deps', () => {
  const args = Object.fromEntries(instrs.filter((i) => i.cmd === 'ARG').map((i) => i.args.split('=')));
  const image = (s: { image: string }) => s.image.replace(/\$\{(\w+)\}/g, (_m, k) => args[k] ?? '');
  assert.ok(stages.length >= 2, 'at least two stages');
  for (const s of stages) assert.equal(image(s), 'node:20-bookworm-slim');
  const build = stages.findIndex((s) => s.name === 'build');
  assert.ok(build >= 0, 'a stage named build');
  const runs = (st: number) => instrs.filter((i) => i.stage === st && i.cmd === 'RUN').map((i) => i.args).join('\n');
  assert.match(runs(build), /npm ci/);
  assert.match(runs(build), /tsc -p \./);
  const last = stages.length - 1;
  assert.notEqual(last, build, 'the runtime is not the build stage');
  assert.doesNotMatch(runs(last), /npm (ci|install)(?!.*--omit=dev)/, 'no dev install in the runtime');
  const copies = instrs.filter((i) => i.stage === last && i.cmd === 'COPY').map((i) => i.args);
  assert.ok(copies.some((c) => /--from=build\s+\S*dist\/src\s/.test(c)), 'runtime copies only dist/src from build');
  assert.ok(!copies.some((c) => /--from=build\s+\S*node_modules/.test(c)), 'runtime does not take the build stage node_modules');
  assert.ok(copies.some((c) => /node_modules/.test(c) && /--from=deps/.test(c)), 'production node_modules from the deps stage');
  const deps = stages.findIndex((s) => s.name === 'deps');
  assert.match(runs(deps), /npm ci --omit=dev/);
});

test('runs as a non-root user', () => {
  const last = stages.length - 1;
  const users = instrs.filter((i) => i.stage === last && i.cmd === 'USER');
  assert.ok(users.length > 0, 'USER in the runtime stage');
  const u = users[users.length - 1].args.split(':')[0];
  assert.ok(u !== 'root' && u !== '0', `USER ${u}`);
  // USER comes before ENTRYPOINT/CMD.
  const userLine = users[users.length - 1].line;
  for (const i of instrs.filter((x) => x.stage === last && (x.cmd === 'ENTRYPOINT' || x.cmd === 'CMD'))) assert.ok(i.line > userLine);
});

test('HEALTHCHECK asks /healthz with node (no curl), default CMD serves the mounted config with metrics', () => {
  const hc = instrs.filter((i) => i.cmd === 'HEALTHCHECK');
  assert.equal(hc.length, 1);
  assert.match(hc[0].args, /CMD \["node", "-e"/);
  assert.doesNotMatch(hc[0].args, /curl|wget/);
  const env = instrs.filter((i) => i.cmd === 'ENV').map((i) => i.args).join(' ');
  assert.match(env, /ISCSI_NBD_HEALTH_URL=http:\/\/127\.0\.0\.1:9810\/healthz/);
  // The node -e snippet is valid JavaScript.
  const js = JSON.parse(hc[0].args.slice(hc[0].args.indexOf('CMD ') + 4))[2] as string;
  assert.doesNotThrow(() => new Function(js));
  const cmd = JSON.parse(instrs.filter((i) => i.cmd === 'CMD').pop()!.args) as string[];
  assert.deepEqual(cmd, ['serve', '--config', '/etc/iscsi-nbd/config.yaml', '--metrics', '0.0.0.0:9810']);
  const entry = JSON.parse(instrs.filter((i) => i.cmd === 'ENTRYPOINT').pop()!.args) as string[];
  assert.equal(entry[0], 'node');
  assert.match(instrs.filter((i) => i.cmd === 'VOLUME').map((i) => i.args).join(' '), /\/etc\/iscsi-nbd/);
});

test('everything COPYed from the context exists and is not excluded by .dockerignore', () => {
  const ignore = fs.readFileSync(path.join(REPO_ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const ignored = (p: string) => ignore.some((pat) => {
    const re = new RegExp('^' + pat.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*') + '(/.*)?$');
    return re.test(p);
  });
  for (const i of instrs.filter((x) => x.cmd === 'COPY' && !/--from=/.test(x.args))) {
    const parts = i.args.split(/\s+/).filter((p) => !p.startsWith('--'));
    for (const src of parts.slice(0, -1)) {
      assert.ok(fs.existsSync(path.join(REPO_ROOT, src)), `line ${i.line}: COPY ${src}: not in the repository`);
      assert.ok(!ignored(src), `line ${i.line}: COPY ${src} is excluded by .dockerignore`);
    }
  }
  for (const must of ['node_modules', 'dist', '.git']) assert.ok(ignored(must), `.dockerignore should exclude ${must}`);
});
