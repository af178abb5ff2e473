import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import pino from 'pino';
import { createModelClient } from '../infra/models/model';
import { createWorkspaceActivities, resolveInWorkspace, WorkspacePathError } from '../activities/workspace';
import { createToolActivities } from '../activities/tools';
import { builtinToolDeps, createTestDatabase, type TestDatabase } from './helpers';

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

describe('workspace.write and its undo, as activities against PostgreSQL', () => {
  let db: TestDatabase;
  let acts: ReturnType<typeof createWorkspaceActivities> & Pick<ReturnType<typeof createToolActivities>, 'compensate'>;
  const root = (): string => path.join(dir, 'roots');
  const run = <A extends unknown[], R>(fn: (...a: A) => Promise<R>, ...args: A): Promise<R> =>
    new MockActivityEnvironment({ attempt: 1 }).run(fn, ...args);
  beforeAll(async () => {
    db = await createTestDatabase();
    const model = createModelClient({ provider: 'scripted', modelId: path.join(__dirname, '..', 'scripts', 'demo-script.json') });
    const deps = { pool: db.pool, roles: db.roles, policies: db.policies, ...builtinToolDeps(), workspaceRoot: root(), model, logger: pino({ level: 'silent' }) };
    acts = { ...createWorkspaceActivities(deps), compensate: createToolActivities(deps).compensate };
  });
  afterAll(async () => db?.drop());

  const ctx = (callKey: string) => ({ taskId: 'undo', subtaskId: 's', callKey });
  const step = (callKey: string) => ({ tool: 'workspace.write', callKey, taskId: 'undo', subtaskId: 's', args: {} });
  const file = (rel: string): string => path.join(root(), 'undo', rel);

  test('undo restores the old content and deletes a created file; running it twice changes nothing more', async () => {
    mkdirSync(path.join(root(), 'undo'), { recursive: true });
    writeFileSync(file('old.md'), 'before');
    await run(acts['workspace.write'], ctx('k1'), { path: 'old.md', content: 'after' });
    await run(acts['workspace.write'], ctx('k2'), { path: 'new.md', content: 'fresh' });
    // a retry of the first write after it already ran must not snapshot its own output
    await run(acts['workspace.write'], ctx('k1'), { path: 'old.md', content: 'after' });
    expect(readFileSync(file('old.md'), 'utf8')).toBe('after');

    for (let i = 0; i < 2; i++) {
      await run(acts.compensate, step('k2'));
      await run(acts.compensate, step('k1'));
      expect(existsSync(file('new.md'))).toBe(false);
      expect(readFileSync(file('old.md'), 'utf8')).toBe('before');
    }
    await expect(run(acts.compensate, step('never-ran'))).resolves.toBe('nothing to undo: the write never ran');
  });

  test('a path outside the workspace is a tool error for the model, recorded, not a crash', async () => {
    const out = await run(acts['workspace.write'], ctx('k3'), { path: '../escape.md', content: 'x' });
    expect(out.ok).toBe(false);
    expect(out.content).toContain('relative path inside the task workspace');
    const { rows } = await db.pool.query(`SELECT status FROM tool_calls WHERE call_key = 'k3'`);
    expect(rows).toEqual([{ status: 'error' }]);
  });
});
