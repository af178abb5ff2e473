import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { type TaskResult } from '../validation';
import { taskWorkflowId } from '../core/constants';
import { createTestStack, historyOf, planReply, type ScriptInput, type TestStack } from './helpers';

// These tests run the real `mare worker` command from dist/ (npm test builds it first).
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');
const demoScript = JSON.parse(readFileSync(path.join(__dirname, '..', 'scripts', 'demo-script.json'), 'utf8')) as ScriptInput;

let stack: TestStack;
const workers: ChildProcess[] = [];
beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  stack = await createTestStack();
});
afterEach(() => {
  for (const w of workers.splice(0)) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
});
afterAll(async () => {
  await stack?.teardown();
});

/** Starts `mare worker` as its own OS process and resolves once it polls. */
async function startWorkerProcess(identity: string, script: ScriptInput, env: Record<string, string> = {}): Promise<ChildProcess> {
  const child = spawn(process.execPath, [CLI, 'worker', '--identity', identity], {
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: stack.env.address,
      TEMPORAL_NAMESPACE: 'default',
      DATABASE_URL: stack.databaseUrl,
      ...stack.roleKeysEnv,
      MARE_MODEL: `scripted:${stack.writeScript(script)}`,
      MARE_WORKSPACE_DIR: stack.workspaceRoot,
      MARE_LOG_LEVEL: 'info',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  workers.push(child);
  let output = '';
  let timer: NodeJS.Timeout | undefined;
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      if (output.includes('worker started')) resolve();
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (c: Buffer) => (output += c.toString()));
    child.once('exit', (code) => reject(new Error(`worker ${identity} exited early (${code}):\n${output}`)));
    timer = setTimeout(() => reject(new Error(`worker ${identity} did not start:\n${output}`)), 60_000);
  }).finally(() => clearTimeout(timer));
  child.stdout?.resume();
  child.stderr?.resume();
  return child;
}

/** Identities of the workers that started activities in a task's workflow and its children. */
async function activityWorkers(result: TaskResult): Promise<Set<string>> {
  const ids = new Set<string>();
  for (const wid of [taskWorkflowId(result.taskId), ...result.plan.subtasks.map((s) => `${taskWorkflowId(result.taskId)}--${s.id}`)]) {
    for (const e of await historyOf(stack, wid)) {
      const identity = e.activityTaskStartedEventAttributes?.identity;
      if (identity) ids.add(identity);
    }
  }
  return ids;
}

test('two worker processes on the same task queue share the work', async () => {
  const script = { ...demoScript, delayMs: 200 };
  await Promise.all([startWorkerProcess('alpha', script), startWorkerProcess('beta', script)]);
  const ids = ['share-1', 'share-2', 'share-3', 'share-4', 'share-5', 'share-6'];
  await Promise.all(ids.map((taskId) => stack.client.submitTask({ taskId, goal: 'Write a short guide to durable execution' })));
  const results = await Promise.all(ids.map((id) => stack.client.result(id)));
  expect(results.map((r) => r.status)).toEqual(ids.map(() => 'COMPLETED'));
  const all = new Set<string>();
  for (const r of results) (await activityWorkers(r)).forEach((i) => all.add(i));
  expect([...all].sort()).toEqual(['alpha', 'beta']);
});

test('a worker killed with SIGKILL mid-run: the other worker finishes every task, each side effect exactly once', async () => {
  // Slow model calls make sure the victim dies in the middle of model and tool work.
  const script = { ...demoScript, delayMs: 1_500 };
  const victim = await startWorkerProcess('victim', script);
  const ids = ['kill-1', 'kill-2', 'kill-3'];
  await Promise.all(ids.map((taskId) => stack.client.submitTask({ taskId, goal: 'Write a short guide to durable execution' })));
  // Wait until the victim has written files (mid-run), then start the survivor and kill the victim.
  const outline = (id: string): string => path.join(stack.workspaceRoot, id, 'guide', 'outline.md');
  for (let i = 0; i < 300 && !ids.some((id) => existsSync(outline(id))); i++) await new Promise((r) => setTimeout(r, 100));
  expect(ids.some((id) => existsSync(outline(id)))).toBe(true);
  await startWorkerProcess('survivor', script);
  victim.kill('SIGKILL');

  const results = await Promise.all(ids.map((id) => stack.client.result(id)));
  expect(results.map((r) => r.status)).toEqual(['COMPLETED', 'COMPLETED', 'COMPLETED']);
  const expectedGuide = (demoScript.rules as { reply: { toolCalls?: { args: { path: string; content: string } }[] } }[])
    .flatMap((r) => r.reply.toolCalls ?? [])
    .find((c) => c.args.path === 'guide/guide.md')?.args.content;
  for (const r of results) {
    expect(readFileSync(path.join(stack.workspaceRoot, r.taskId, 'guide', 'guide.md'), 'utf8')).toBe(expectedGuide);
    expect(r.compensations).toEqual([]);
    const workersSeen = await activityWorkers(r);
    expect(workersSeen.has('survivor')).toBe(true);
  }
  // the victim really worked before it died, and its work was not redone as new calls
  const victimWork = await Promise.all(results.map(activityWorkers));
  expect(victimWork.some((s) => s.has('victim'))).toBe(true);
  const { rows } = await stack.pool.query<{ task_id: string; tool: string; n: string }>(
    `SELECT task_id, tool, count(*) AS n FROM tool_calls WHERE task_id = ANY($1) GROUP BY task_id, tool ORDER BY task_id, tool`,
    [ids],
  );
  expect(rows.map((r) => `${r.task_id}:${r.tool}:${r.n}`)).toEqual(ids.flatMap((id) => [`${id}:workspace.read:2`, `${id}:workspace.write:2`]));
  const { rows: snaps } = await stack.pool.query(`SELECT task_id, count(*)::int AS n FROM workspace_snapshots WHERE task_id = ANY($1) GROUP BY task_id`, [ids]);
  expect(snaps.every((s) => s.n === 2)).toBe(true);
  const { rows: subtasks } = await stack.pool.query(`SELECT count(*)::int AS n FROM subtasks WHERE task_id = ANY($1) AND status = 'completed'`, [ids]);
  expect(subtasks[0].n).toBe(9);
  const { rows: finished } = await stack.pool.query(`SELECT count(*)::int AS n FROM audit_events WHERE task_id = ANY($1) AND kind = 'task.finished'`, [ids]);
  expect(finished[0].n).toBe(3);
});

/** The role version a task's one subtask embodied, and which worker process loaded it. */
async function embodiment(taskId: string): Promise<{ version: string; loadedBy: string }> {
  const result = await stack.client.result(taskId);
  const events = await historyOf(stack, `${taskWorkflowId(taskId)}--w`);
  // embody (which loads the role) is a local activity: it ran in the workflow task completed just before its marker.
  const marker = events.findIndex((e) => e.markerRecordedEventAttributes);
  const completed = events.slice(0, marker).reverse().find((e) => e.workflowTaskCompletedEventAttributes);
  return { version: result.subtasks[0]?.roleVersion ?? '', loadedBy: completed?.workflowTaskCompletedEventAttributes?.identity ?? '' };
}

test('two worker processes whose role caches live 10 minutes both embody a newly published version within a second', async () => {
  const script: ScriptInput = {
    rules: [planReply([{ id: 'w', title: 'Write it', instructions: 'Write it', role: 'writer' }]), { match: { purpose: 'act' }, reply: { text: 'done' } }],
  };
  const env = { MARE_ROLE_CACHE_TTL_MS: '600000' };
  await Promise.all([startWorkerProcess('one', script, env), startWorkerProcess('two', script, env)]);
  const runBatch = async (prefix: string): Promise<{ version: string; loadedBy: string }[]> => {
    const ids = Array.from({ length: 8 }, (_, i) => `${prefix}-${i}`);
    await Promise.all(ids.map((taskId) => stack.client.submitTask({ taskId, goal: 'write it' })));
    return Promise.all(ids.map(embodiment));
  };
  // Both workers load (and cache) writer@1.0.0 first.
  const before = [...(await runBatch('warm-a')), ...(await runBatch('warm-b'))];
  expect(new Set(before.map((e) => e.version))).toEqual(new Set(['1.0.0']));
  expect(new Set(before.map((e) => e.loadedBy))).toEqual(new Set(['one', 'two']));

  await stack.roles.repository.publish({ name: 'writer', version: '1.1.0', extends: 'writer@1.0.0', systemPrompt: 'Version two.' }, { actor: 'test' });
  await new Promise((r) => setTimeout(r, 1_000));
  const after = [...(await runBatch('fresh-a')), ...(await runBatch('fresh-b'))];
  expect(new Set(after.map((e) => e.loadedBy))).toEqual(new Set(['one', 'two']));
  expect(after.map((e) => e.version)).toEqual(after.map(() => '1.1.0'));
});
