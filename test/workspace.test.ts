import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { resolveInWorkspace, WorkspacePathError } from '../activities/workspace';

let dir: string;
let ws: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'mare-ws-'));
  ws = path.join(dir, 'task');
  mkdirSync(path.join(dir, 'outside'), { recursive: true });
  mkdirSync(ws, { recursive: true });
  symlinkSync(path.join(dir, 'outside'), path.join(ws, 'escape'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test('paths inside the workspace resolve, including ones that do not exist yet', async () => {
  await expect(resolveInWorkspace(ws, 'notes/a.md')).resolves.toBe(path.join(ws, 'notes', 'a.md'));
  await expect(resolveInWorkspace(ws, '.')).resolves.toBe(ws);
});

test.each([
  ['a parent path', '../outside/x'],
  ['a nested parent path', 'a/../../outside/x'],
  ['an absolute path', '/etc/passwd'],
  ['a symlink out of the workspace', 'escape/x.md'],
])('%s is rejected', async (_name, rel) => {
  await expect(resolveInWorkspace(ws, rel)).rejects.toThrow(WorkspacePathError);
});
