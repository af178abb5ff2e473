import { readFileSync } from 'node:fs';
import path from 'node:path';
import { temporal } from '@temporalio/proto';
import { subtaskWorkflowId, taskWorkflowId } from '../../core/constants';
import { createTestStack, historyOf, localActivities, planReply, toolCall, type ScriptInput, type TestStack } from '../helpers';
import { activityRuns, assertBuilt, killWorkerProcesses, startWorkerProcess, waitFor, type ActivityRun, type WorkerProcess } from './helpers';

let stack: TestStack;
beforeAll(async () => {
  assertBuilt();
  stack = await createTestStack();
});
afterEach(killWorkerProcesses);
afterAll(async () => {
  await killWorkerProcesses();
  await stack?.teardown();
});

const ws = (taskId: string, rel: string): string => path.join(stack.workspaceRoot, taskId, rel);
const GRACE_MS = 20_000; // mare worker's shutdownGraceTime

/** One writer subtask: write a.md, write b.md, answer. */
const script = (delayMs: number): ScriptInput => ({
  delayMs,
  rules: [
    planReply([
      {
        id: 'doc',
        title: 'Doc',
        instructions: 'write a.md and b.md',
        role: 'writer',
        acceptanceCriteria: [
          { kind: 'file_contains', path: 'a.md', text: 'alpha' },
          { kind: 'file_contains', path: 'b.md', text: 'beta' },
        ],
      },
    ]),
    { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.md', content: 'alpha' }) },
    { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.write', { path: 'b.md', content: 'beta' }) },
    { match: { purpose: 'act' }, reply: { text: 'wrote a.md and b.md' } },
  ],
});

const start = (identity: string, s: ScriptInput): Promise<WorkerProcess> =>
  startWorkerProcess({ identity, address: stack.env.address, databaseUrl: stack.databaseUrl, roleKeys: stack.roleKeysEnv, workspaceRoot: stack.workspaceRoot, model: `scripted:${stack.writeScript(s)}` });

/** The activity of a workflow that a worker has started and not finished yet, if any. */
async function startedActivity(workflowId: string, type: string): Promise<{ activityId: string; identity: string } | undefined> {
  const { raw } = await stack.env.client.workflow.getHandle(workflowId).describe();
  const a = (raw.pendingActivities ?? []).find(
    (p) => p.activityType?.name === type && p.state === temporal.api.enums.v1.PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
  );
  return a ? { activityId: a.activityId ?? '', identity: a.lastWorkerIdentity ?? '' } : undefined;
}

/** Side effects of a task: one tool_calls row and one snapshot per write, each from the first attempt or a retry. */
async function sideEffects(taskId: string) {
  const { rows: calls } = await stack.pool.query(`SELECT call_key, status FROM tool_calls WHERE task_id = $1 ORDER BY call_key`, [taskId]);
  const { rows: snaps } = await stack.pool.query(`SELECT call_key, path, existed FROM workspace_snapshots WHERE task_id = $1 ORDER BY call_key`, [taskId]);
  const { rows: models } = await stack.pool.query(`SELECT purpose, count(*)::int AS n FROM model_calls WHERE task_id = $1 GROUP BY purpose ORDER BY purpose`, [taskId]);
  return { calls, snaps, models };
}

const expectedEffects = (taskId: string) => {
  const key = (i: number): string => `${subtaskWorkflowId(taskId, 'doc')}/a1/i${i}/c0`;
  return {
    calls: [
      { call_key: key(1), status: 'ok' },
      { call_key: key(2), status: 'ok' },
    ],
    snaps: [
      { call_key: key(1), path: 'a.md', existed: false },
      { call_key: key(2), path: 'b.md', existed: false },
    ],
    models: [
      { purpose: 'act', n: 3 },
      { purpose: 'plan', n: 1 },
    ],
  };
};

async function runsOf(taskId: string): Promise<ActivityRun[]> {
  const runs: ActivityRun[] = [];
  for (const wid of [taskWorkflowId(taskId), subtaskWorkflowId(taskId, 'doc')]) runs.push(...activityRuns(wid, await historyOf(stack, wid)));
  return runs;
}

test('SIGTERM to a worker while its model call runs (shorter than the 20 s grace) → the call finishes on that worker at attempt 1, the worker exits 0, the other worker finishes the task COMPLETED, each side effect once', async () => {
  const taskId = 'sigterm-grace';
  const workers = [await start('one', script(3_000)), await start('two', script(3_000))]; // not at once: see crash.test.ts
  await stack.client.submitTask({ taskId, goal: 'write two files' });
  // wait until a.md is written and the next model call is running on one of the workers
  const child = subtaskWorkflowId(taskId, 'doc');
  const inFlight = await waitFor('the model call after the first write to be running', async () => {
    const { rows } = await stack.pool.query(`SELECT 1 FROM tool_calls WHERE task_id = $1`, [taskId]);
    return rows.length === 1 ? startedActivity(child, 'callModel').catch(() => undefined) : undefined;
  }, 60_000, 50);
  const victim = workers.find((w) => w.identity === inFlight.identity)!;
  const other = workers.find((w) => w !== victim)!;
  const signalledAt = Date.now();
  victim.child.kill('SIGTERM');

  const result = await stack.client.result(taskId);
  expect(result.status).toBe('COMPLETED');
  const exit = await victim.exited;
  expect({ code: exit.code, signal: exit.signal }).toEqual({ code: 0, signal: null });
  expect(exit.at - signalledAt).toBeLessThan(GRACE_MS + 10_000);

  const runs = await runsOf(taskId);
  const interrupted = runs.find((r) => r.workflowId === child && r.activityId === inFlight.activityId)!;
  expect(interrupted).toMatchObject({ type: 'callModel', attempt: 1, identity: victim.identity, outcome: 'completed' });
  // once it had finished, nothing new ran on the stopping worker
  const later = runs.filter((r) => r.scheduledAt > interrupted.closedAt!);
  expect(later.length).toBeGreaterThan(0);
  expect(new Set(later.map((r) => r.identity))).toEqual(new Set([other.identity]));
  expect(runs.every((r) => r.attempt === 1 && r.outcome === 'completed')).toBe(true);

  expect(await sideEffects(taskId)).toEqual(expectedEffects(taskId));
  expect(readFileSync(ws(taskId, 'a.md'), 'utf8')).toBe('alpha');
  expect(readFileSync(ws(taskId, 'b.md'), 'utf8')).toBe('beta');
  expect(result.compensations).toEqual([]);
});

test('SIGTERM to a worker while its model call runs longer than the 20 s grace → the call is cancelled at the end of the grace time and retried on the other worker, the task COMPLETES, the call is recorded once', async () => {
  const taskId = 'sigterm-retry';
  const slow = await start('slow', script(60_000));
  await stack.client.submitTask({ taskId, goal: 'write two files' });
  const inFlight = await waitFor('the planning call to be running on the slow worker', () => startedActivity(taskWorkflowId(taskId), 'decompose').catch(() => undefined), 60_000, 50);
  expect(inFlight.identity).toBe('slow');
  const fast = await start('fast', script(200));
  const signalledAt = Date.now();
  slow.child.kill('SIGTERM');

  const result = await stack.client.result(taskId);
  expect(result.status).toBe('COMPLETED');
  const exit = await slow.exited;
  expect({ code: exit.code, signal: exit.signal }).toEqual({ code: 0, signal: null });
  expect(exit.at - signalledAt).toBeGreaterThanOrEqual(GRACE_MS - 1_000);
  expect(exit.at - signalledAt).toBeLessThan(GRACE_MS + 15_000);

  const runs = await runsOf(taskId);
  const decompose = runs.find((r) => r.type === 'decompose')!;
  expect(decompose).toMatchObject({ attempt: 2, identity: fast.identity, outcome: 'completed' });
  // the SDK reports an attempt cut off by shutdown as a retryable WorkerShutdown failure, so it is retried
  expect(decompose.lastFailure?.applicationFailureInfo?.type).toBe('WorkerShutdown');
  const { rows: plans } = await stack.pool.query(`SELECT count(*)::int AS n FROM audit_events WHERE task_id = $1 AND kind = 'task.planned'`, [taskId]);
  expect(plans[0].n).toBe(1);
  // everything after the planning call ran once, on the other worker
  const later = runs.filter((r) => r.scheduledAt > decompose.scheduledAt);
  expect(later.filter((r) => ['callModel', 'workspace.write', 'verify'].includes(r.type)).map((r) => r.type).sort()).toEqual(
    ['callModel', 'callModel', 'callModel', 'workspace.write', 'workspace.write'],
  );
  // its criteria are quick file checks: verified once, in a local activity
  expect(localActivities(await historyOf(stack, subtaskWorkflowId(taskId, 'doc'))).filter((t) => t === 'verify')).toEqual(['verify']);
  expect(later.every((r) => r.identity === fast.identity && r.attempt === 1 && r.outcome === 'completed')).toBe(true);
  expect(await sideEffects(taskId)).toEqual(expectedEffects(taskId));
  expect(result.compensations).toEqual([]);
});
