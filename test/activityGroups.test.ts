import path from 'node:path';
import ts from 'typescript';

// Which activities a workflow may call through which proxy (and so which run as local activities) is
// a type: workflows/activityProfiles.ts narrows each proxy to its group of activities/index.ts.
const root = path.join(__dirname, '..');

/** TypeScript's errors for `body`, compiled as a file in workflows/ with the project's options. */
function typeErrors(body: string): string[] {
  const file = path.join(root, 'workflows', '__groups_probe__.ts');
  const source = [
    "import { bookkeeping, compensations, modelsWith, verifierFor } from './activityProfiles';",
    'export async function probe(): Promise<void> {',
    body,
    '}',
  ].join('\n');
  const config = ts.getParsedCommandLineOfConfigFile(path.join(root, 'tsconfig.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: () => undefined });
  const host = ts.createCompilerHost(config!.options);
  const readFile = host.readFile.bind(host);
  host.readFile = (f) => (path.resolve(f) === file ? source : readFile(f));
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (f) => path.resolve(f) === file || fileExists(f);
  const program = ts.createProgram([file], config!.options, host);
  return ts
    .getPreEmitDiagnostics(program, program.getSourceFile(file))
    .map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
}

test('each proxy offers its own group only: a model call through bookkeeping() does not compile', () => {
  const allowed = typeErrors(
    [
      "  await bookkeeping('s').embody({} as never);",
      "  await modelsWith('s').callModel({} as never);",
      "  await verifierFor([], 's').verify({} as never);",
      "  await compensations('s').compensate({} as never);",
    ].join('\n'),
  );
  expect(allowed).toEqual([]);
  const refused = typeErrors(
    [
      "  await bookkeeping('s').callModel({} as never);",
      "  await bookkeeping('s').compensate({} as never);",
      "  await modelsWith('s').embody({} as never);",
      "  await compensations('s').verify({} as never);",
    ].join('\n'),
  );
  expect(refused).toHaveLength(4);
  for (const [i, name] of ['callModel', 'compensate', 'embody', 'verify'].entries()) expect(refused[i]).toContain(`Property '${name}' does not exist`);
}, 120_000);
