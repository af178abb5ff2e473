import { readFileSync } from 'node:fs';
import path from 'node:path';
import { subtaskWorkflowId } from '../../core/constants';
import { createTestStack, historyOf, planReply, toolCall, type ScriptInput, type TestStack } from '../helpers';
import { activityRuns, assertBuilt, killWorkerProcesses, startWorkerProcess, taskWorkflowIds, timeoutTypeOf, waitFor, workflowTaskFailures, type ActivityRun } from './helpers';

let stack: TestStack;
beforeAll(async () => {
  assertBuilt();
  stack = await createTestStack();
});
afterAll(async () => {
  await killWorkerProcesses();
  await stack?.teardown();
});

const TASKS = 50;
const VICTIM_APP = 'mare-fault-victim';

const script: ScriptInput = {
  // slow enough that every worker always has model calls in flight
  delayMs: 1_000,
  delayJitterMs: 500,
  rules: [
    planReply([
      {
        id: 'doc',
        title: 'Doc',
        instructions: 'write doc/a.md and doc/b.md',
        role: 'writer',
        acceptanceCriteria: [
          { kind: 'file_contains', path: 'doc/a.md', text: 'alpha' },
          { kind: 'file_contains', path: 'doc/b.md', text: 'beta' },
        ],
      },
    ]),
    { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'doc/a.md', content: '# A\nalpha\n' }) },
    { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.write', { path: 'doc/b.md', content: '# B\nbeta\n' }) },
    { match: { purpose: 'act' }, reply: { text: 'wrote doc/a.md and doc/b.md' } },
  ],
};

test(`SIGKILL of one of two workers during model and tool calls → ${TASKS} of ${TASKS} tasks COMPLETED, every write applied and recorded exactly once (one tool_calls row, one snapshot of the state before it), no compensation run`, async () => {
  const model = `scripted:${stack.writeScript(script)}`;
  const common = { address: stack.env.address, databaseUrl: stack.databaseUrl, roleKeys: stack.roleKeysEnv, workspaceRoot: stack.workspaceRoot, model };
  // PGAPPNAME tags the victim's PostgreSQL sessions, so the test can see where its tool calls are.
  const victim = await startWorkerProcess({ ...common, identity: 'victim', env: { PGAPPNAME: VICTIM_APP } });
  await startWorkerProcess({ ...common, identity: 'survivor' });
  const ids = Array.from({ length: TASKS }, (_, i) => `crash-${String(i).padStart(2, '0')}`);
  await Promise.all(ids.map((taskId) => stack.client.submitTask({ taskId, goal: 'write two files' })));
  await waitFor('the first writes', async () => (await stack.pool.query(`SELECT 1 FROM tool_calls LIMIT 10`)).rows.length >= 10, 120_000, 200);

  // Freeze the moment after a write's side effect and before it is recorded and acknowledged: writers
  // block on their tool_calls INSERT (the file and the snapshot are already there). Once the victim has
  // a write caught there, kill it, and let its sessions die with it.
  const locker = await stack.pool.connect();
  let killedAt: number;
  try {
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE tool_calls IN SHARE MODE');
    // (pg_stat_activity is read on other sessions: inside a transaction it is a snapshot that never changes)
    await waitFor('a write of the victim blocked after its side effect', async () => {
      const { rows } = await stack.pool.query(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO tool_calls%'`,
        [VICTIM_APP],
      );
      return rows[0].n > 0;
    }, 60_000, 20);
    victim.child.kill('SIGKILL');
    await victim.exited;
    killedAt = Date.now();
    await stack.pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, [VICTIM_APP]);
    await locker.query('COMMIT');
  } finally {
    locker.release();
  }
  const done = (await stack.pool.query(`SELECT count(*)::int AS n FROM tasks WHERE status = 'COMPLETED'`)).rows[0].n;
  expect(done).toBeLessThan(TASKS); // the kill really happened mid-run

  const results = await Promise.all(ids.map((id) => stack.client.result(id)));
  expect(results.map((r) => r.status)).toEqual(ids.map(() => 'COMPLETED'));
  expect(results.flatMap((r) => r.compensations)).toEqual([]);
  const { rows: compensations } = await stack.pool.query(`SELECT count(*)::int AS n FROM compensations`);
  expect(compensations[0].n).toBe(0);

  // every write: one row, status ok, one snapshot saying the file did not exist before (a retry that had
  // snapshotted its own write would say existed = true, and an undo would then restore the wrong state)
  const { rows: calls } = await stack.pool.query<{ call_key: string; task_id: string; status: string; attempts: number }>(`SELECT call_key, task_id, status, attempts FROM tool_calls ORDER BY call_key`);
  const { rows: snaps } = await stack.pool.query<{ call_key: string; path: string; existed: boolean }>(`SELECT call_key, path, existed FROM workspace_snapshots ORDER BY call_key`);
  const key = (id: string, i: number): string => `${subtaskWorkflowId(id, 'doc')}/a1/i${i}/c0`;
  const expectedKeys = ids.flatMap((id) => [key(id, 1), key(id, 2)]).sort();
  expect(calls.map((c) => c.call_key)).toEqual(expectedKeys);
  expect(calls.every((c) => c.status === 'ok')).toBe(true);
  expect(snaps.map((s) => s.call_key)).toEqual(expectedKeys);
  expect(snaps.every((s) => !s.existed)).toBe(true);
  for (const id of ids) {
    expect(readFileSync(path.join(stack.workspaceRoot, id, 'doc', 'a.md'), 'utf8')).toBe('# A\nalpha\n');
    expect(readFileSync(path.join(stack.workspaceRoot, id, 'doc', 'b.md'), 'utf8')).toBe('# B\nbeta\n');
  }
  // the writes caught by the kill were retried by the survivor, which found the snapshot already taken
  const retriedWrites = calls.filter((c) => c.attempts > 1);
  expect(retriedWrites.length).toBeGreaterThan(0);

  // one model_calls row per model call (plan + 3 turns), one completed subtask and one task.finished per task
  const { rows: modelCalls } = await stack.pool.query(`SELECT task_id, count(*)::int AS n FROM model_calls GROUP BY task_id`);
  expect(modelCalls.map((r) => r.n)).toEqual(ids.map(() => 4));
  const { rows: subtasks } = await stack.pool.query(`SELECT count(*)::int AS n FROM subtasks WHERE status = 'completed'`);
  expect(subtasks[0].n).toBe(TASKS);
  const { rows: finished } = await stack.pool.query(`SELECT count(*)::int AS n, count(DISTINCT task_id)::int AS tasks FROM audit_events WHERE kind = 'task.finished'`);
  expect(finished[0]).toEqual({ n: TASKS, tasks: TASKS });

  // history: the victim did real work; model and tool calls it held when it died timed out on their
  // heartbeat and ran again on the survivor; no workflow task failed
  const runs: ActivityRun[] = [];
  const wftFailures: string[] = [];
  for (const r of results) {
    for (const wid of taskWorkflowIds(r)) {
      const events = await historyOf(stack, wid);
      runs.push(...activityRuns(wid, events));
      wftFailures.push(...workflowTaskFailures(events).map((f) => `${wid}: ${f.cause} ${f.message}`));
    }
  }
  expect(wftFailures).toEqual([]);
  expect(runs.every((r) => r.outcome === 'completed')).toBe(true);
  expect(runs.filter((r) => r.identity === 'victim').length).toBeGreaterThan(0);
  const recovered = runs.filter((r) => r.attempt > 1);
  expect(recovered.every((r) => r.identity === 'survivor')).toBe(true);
  const recoveredModelCalls = recovered.filter((r) => ['decompose', 'callModel'].includes(r.type) && timeoutTypeOf(r.lastFailure) === 'TIMEOUT_TYPE_HEARTBEAT');
  expect(recoveredModelCalls.length).toBeGreaterThan(0);
  const recoveredWrites = recovered.filter((r) => r.type === 'workspace.write' && timeoutTypeOf(r.lastFailure) === 'TIMEOUT_TYPE_HEARTBEAT');
  expect(recoveredWrites.length).toBe(retriedWrites.length);
  expect(recovered.every((r) => r.scheduledAt < killedAt)).toBe(true);
});
