import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

// The layer order of docs/architecture.md, enforced by eslint.config.js, and no import cycles at all.
const root = path.join(__dirname, '..');
const ESLINT = path.join(root, 'node_modules', 'eslint', 'bin', 'eslint.js');
const PRODUCTION = ['core', 'validation', 'infra', 'activities', 'workflows', 'workers', 'client', 'cli', 'servers', 'dev'];

/** ESLint's import-rule messages for `code` as if it were the (existing, so the TypeScript project knows it) file `file`. */
function lint(file: string, code: string): string[] {
  const run = spawnSync(process.execPath, [ESLINT, '--stdin', '--stdin-filename', file, '--format', 'json'], { cwd: root, input: code, encoding: 'utf8' });
  const [result] = JSON.parse(run.stdout) as { messages: { ruleId: string | null; message: string }[] }[];
  expect((result?.messages ?? []).filter((m) => m.ruleId === null)).toEqual([]); // no parsing errors
  return (result?.messages ?? []).filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

test.each([
  ['core/constants.ts', "import { dataDir } from '../infra/paths';\nexport const d = dataDir;\n"],
  ['core/constants.ts', "import { RoleProfile } from '../validation/role';\nexport const r = RoleProfile;\n"],
  ['validation/plan.ts', "import { Keyring } from '../infra/crypto/keyring';\nexport const k = Keyring;\n"],
  ['infra/db/migrate.ts', "import { createActivities } from '../../activities';\nexport const a = createActivities;\n"],
  ['workflows/orchestrateTask.ts', "import { createActivities } from '../activities';\nexport const a = createActivities;\n"],
  ['workflows/orchestrateTask.ts', "import { dataDir } from '../infra/paths';\nexport const d = dataDir;\n"],
  ['client/client.ts', "import { startLocalStack } from '../dev/localStack';\nexport const s = startLocalStack;\n"],
  ['workers/worker.ts', "import { startLocalStack } from '../dev/localStack';\nexport const s = startLocalStack;\n"],
  ['servers/api.ts', "import { createWorker } from '../workers/worker';\nexport const w = createWorker;\n"],
])('a value import against the layer order is refused (%s: %s)', (file, code) => {
  expect(lint(file, code).join('\n')).toMatch(/may import .*docs\/architecture\.md/);
});

test.each([
  ['core/constants.ts', "import type { RoleProfile } from '../validation';\nexport type R = RoleProfile;\n"],
  ['workflows/orchestrateTask.ts', "import type { createActivities } from '../activities';\nimport { oneLine } from '../core/constants';\nexport type A = typeof createActivities;\nexport const o = oneLine;\n"],
  ['activities/planner.ts', "import { dataDir } from '../infra/paths';\nexport const d = dataDir;\n"],
  ['cli/mare.ts', "import { startLocalStack } from '../dev/localStack';\nexport const s = startLocalStack;\n"],
])('what the layer order allows passes (%s: %s)', (file, code) => {
  expect(lint(file, code)).toEqual([]);
});

test('core/ is held to the workflow sandbox: no Node builtins, no zod values', () => {
  expect(lint('core/constants.ts', "import { readFileSync } from 'node:fs';\nexport const r = readFileSync;\n").join('\n')).toMatch(/deterministic sandbox/);
  expect(lint('core/constants.ts', "import { z } from 'zod';\nexport const s = z.string();\n").join('\n')).toMatch(/only types from zod/);
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
