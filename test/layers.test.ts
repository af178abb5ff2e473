import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

// The layer order of docs/architecture.md, enforced by eslint.config.js, and no import cycles at all.
const root = path.join(__dirname, '..');
const PRODUCTION = ['core', 'validation', 'infra', 'activities', 'workflows', 'workers', 'client', 'cli', 'servers', 'dev'];

type Case = [file: string, code: string];
const REFUSED: Case[] = [
  ['core/constants.ts', "import { dataDir } from '../infra/paths';\nexport const d = dataDir;\n"],
  ['core/constants.ts', "import { RoleProfile } from '../validation/role';\nexport const r = RoleProfile;\n"],
  ['validation/plan.ts', "import { Keyring } from '../infra/crypto/keyring';\nexport const k = Keyring;\n"],
  ['infra/db/migrate.ts', "import { createActivities } from '../../activities';\nexport const a = createActivities;\n"],
  ['workflows/orchestrateTask.ts', "import { createActivities } from '../activities';\nexport const a = createActivities;\n"],
  ['workflows/orchestrateTask.ts', "import { dataDir } from '../infra/paths';\nexport const d = dataDir;\n"],
  ['client/client.ts', "import { startLocalStack } from '../dev/localStack';\nexport const s = startLocalStack;\n"],
  ['workers/worker.ts', "import { startLocalStack } from '../dev/localStack';\nexport const s = startLocalStack;\n"],
  ['servers/api.ts', "import { createWorker } from '../workers/worker';\nexport const w = createWorker;\n"],
];
const ALLOWED: Case[] = [
  ['core/constants.ts', "import type { RoleProfile } from '../validation';\nexport type R = RoleProfile;\n"],
  ['workflows/orchestrateTask.ts', "import type { createActivities } from '../activities';\nimport { oneLine } from '../core/constants';\nexport type A = typeof createActivities;\nexport const o = oneLine;\n"],
  ['activities/planner.ts', "import { dataDir } from '../infra/paths';\nexport const d = dataDir;\n"],
  ['cli/mare.ts', "import { startLocalStack } from '../dev/localStack';\nexport const s = startLocalStack;\n"],
];
const SANDBOX: Case[] = [
  ['core/constants.ts', "import { readFileSync } from 'node:fs';\nexport const r = readFileSync;\n"],
  ['core/constants.ts', "import { z } from 'zod';\nexport const s = z.string();\n"],
];

// One ESLint process lints every case (each as an existing file, so the TypeScript project knows it):
// its typed project is built once. Jest's module loader cannot run ESLint's API in-process.
const LINT_ALL = `
const { ESLint } = require('eslint');
const cases = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
const eslint = new ESLint({ cwd: process.cwd() });
(async () => {
  const out = [];
  for (const [file, code] of cases) out.push((await eslint.lintText(code, { filePath: require('node:path').resolve(file) }))[0].messages);
  process.stdout.write(JSON.stringify(out));
})();`;

type Message = { ruleId: string | null; message: string };
let messages: Map<string, Message[]>;

beforeAll(() => {
  const cases = [...REFUSED, ...ALLOWED, ...SANDBOX];
  const run = spawnSync(process.execPath, ['-e', LINT_ALL], { cwd: root, input: JSON.stringify(cases), encoding: 'utf8', maxBuffer: 1 << 26 });
  const results = JSON.parse(run.stdout) as Message[][];
  messages = new Map(cases.map(([file, code], i) => [`${file}\n${code}`, results[i] ?? []]));
}, 300_000);

/** ESLint's import-rule messages for a case, after checking it parsed. */
function lint(file: string, code: string): string[] {
  const all = messages.get(`${file}\n${code}`) ?? [];
  expect(all.filter((m) => m.ruleId === null)).toEqual([]); // no parsing errors
  return all.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

test.each(REFUSED)('a value import against the layer order is refused (%s: %s)', (file, code) => {
  expect(lint(file, code).join('\n')).toMatch(/may import .*docs\/architecture\.md/);
});

test.each(ALLOWED)('what the layer order allows passes (%s: %s)', (file, code) => {
  expect(lint(file, code)).toEqual([]);
});

test('core/ is held to the workflow sandbox: no Node builtins, no zod values', () => {
  expect(lint(...SANDBOX[0]!).join('\n')).toMatch(/deterministic sandbox/);
  expect(lint(...SANDBOX[1]!).join('\n')).toMatch(/only types from zod/);
});

/** Every production .ts file, relative to the root. */
function productionFiles(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(path.join(root, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.ts')) out.push(rel);
    }
  };
  PRODUCTION.forEach(walk);
  return out;
}

/** The file a relative import names, or undefined for a package. */
function resolveImport(from: string, spec: string, files: Set<string>): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const base = path.normalize(path.join(path.dirname(from), spec));
  return [`${base}.ts`, path.join(base, 'index.ts')].find((f) => files.has(f));
}

test('no import cycles anywhere in production code, type imports included', () => {
  const files = productionFiles();
  const known = new Set(files);
  const edges = new Map(
    files.map((f) => [f, ts.preProcessFile(readFileSync(path.join(root, f), 'utf8'), true, true).importedFiles.map((i) => resolveImport(f, i.fileName, known)).filter((x): x is string => x !== undefined)]),
  );
  // Depth-first search with colours: a grey node reached again closes a cycle.
  const colour = new Map<string, 'grey' | 'black'>();
  const cycles: string[][] = [];
  const visit = (f: string, trail: string[]): void => {
    colour.set(f, 'grey');
    for (const g of edges.get(f) ?? []) {
      if (colour.get(g) === 'grey') cycles.push([...trail.slice(trail.indexOf(g)), f, g]);
      else if (!colour.has(g)) visit(g, [...trail, f]);
    }
    colour.set(f, 'black');
  };
  for (const f of files) if (!colour.has(f)) visit(f, []);
  expect(files.length).toBeGreaterThan(80);
  expect(cycles).toEqual([]);
});
