import { spawnSync } from 'node:child_process';
import path from 'node:path';

// The rule of docs/changing-workflow-code.md, enforced: version decisions only in workflows/versions.ts.
const root = path.join(__dirname, '..');
const ESLINT = path.join(root, 'node_modules', 'eslint', 'bin', 'eslint.js');
const REFUSED = 'Version decisions happen at the start of a run only';

function eslint(args: string[], input?: string): string {
  const run = spawnSync(process.execPath, [ESLINT, ...args], { cwd: root, input, encoding: 'utf8' });
  return run.stdout;
}

test('ESLint refuses patched() and deprecatePatch() in workflow code, imported by name or through a namespace', () => {
  const code = [
    "import * as wf from '@temporalio/workflow';",
    "import { deprecatePatch, patched } from '@temporalio/workflow';",
    'export function f(): boolean {',
    "  deprecatePatch('y');",
    "  return patched('x') && wf.patched('z');",
    '}',
    '',
  ].join('\n');
  const [result] = JSON.parse(eslint(['--stdin', '--stdin-filename', 'workflows/orchestrateTask.ts', '--format', 'json'], code)) as { messages: { line: number; message: string }[] }[];
  const refused = (result?.messages ?? []).filter((m) => m.message.includes(REFUSED)).map((m) => m.line);
  // the namespace import (it reaches both names), the import of both names, and each of the three calls
  expect([...new Set(refused)].sort()).toEqual([1, 2, 4, 5]);
  expect(refused.filter((l) => l === 5)).toHaveLength(2);
});

test('the same rule holds outside workflows/, and workflows/versions.ts, where the decisions are taken, is exempt', () => {
  const restricted = (file: string): string => JSON.stringify(JSON.parse(eslint(['--print-config', file])).rules?.['no-restricted-imports'] ?? []);
  expect(restricted('client/client.ts')).toContain(REFUSED);
  expect(restricted('workflows/executeSubtask.ts')).toContain(REFUSED);
  expect(restricted('workflows/versions.ts')).not.toContain(REFUSED);
});
