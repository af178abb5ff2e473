import { readFileSync } from 'node:fs';
import path from 'node:path';
import { createModelClient } from '../../infra/models/model';
import { createTestStack, historyOf, planReply, toolCall, type ScriptInput, type TestStack } from '../helpers';
import { eventMillis, taskWorkflowIds, withModelWorker, workflowTaskFailures } from './helpers';

let stack: TestStack;
beforeAll(async () => {
  stack = await createTestStack();
});
afterAll(async () => {
  await stack?.teardown();
});

const TASKS = 30;
const CACHE = 3;

const script: ScriptInput = {
  // latency and jitter interleave the tasks, so the tiny cache keeps evicting and replaying them
  delayMs: 300,
  delayJitterMs: 200,
  rules: [
    planReply(
      ['left', 'right'].map((id) => ({
        id,
        title: id,
        instructions: `write ${id}.md`,
        role: 'writer',
        acceptanceCriteria: [{ kind: 'file_contains', path: `${id}.md`, text: id }],
      })),
    ),
    { match: { purpose: 'act', subtask: 'left', turn: 0 }, reply: toolCall('workspace.write', { path: 'left.md', content: '# left\n' }) },
    { match: { purpose: 'act', subtask: 'right', turn: 0 }, reply: toolCall('workspace.write', { path: 'right.md', content: '# right\n' }) },
    { match: { purpose: 'act' }, reply: { text: 'written' } },
  ],
};

test(`maxCachedWorkflows = ${CACHE} with ${TASKS} concurrent tasks → no workflow task fails (no nondeterminism) in any of the ${TASKS * 3} histories, ${TASKS} of ${TASKS} COMPLETED, each write once`, async () => {
  const ids = Array.from({ length: TASKS }, (_, i) => `cache-${String(i).padStart(2, '0')}`);
  const model = createModelClient({ provider: 'scripted', modelId: stack.writeScript(script) });
  const results = await withModelWorker(stack, { model, tuning: { maxCachedWorkflows: CACHE, maxConcurrentWorkflowTaskExecutions: CACHE } }, async () => {
    await Promise.all(ids.map((taskId) => stack.client.submitTask({ taskId, goal: 'write left.md and right.md' })));
    return Promise.all(ids.map((id) => stack.client.result(id)));
  });
  expect(results.map((r) => r.status)).toEqual(ids.map(() => 'COMPLETED'));

  const failures: string[] = [];
  const lifetimes: { start: number; end: number }[] = [];
  for (const r of results) {
    for (const wid of taskWorkflowIds(r)) {
      const events = await historyOf(stack, wid);
      failures.push(...workflowTaskFailures(events).map((f) => `${wid}: ${f.cause}: ${f.message}`));
      const first = events[0];
      const last = events[events.length - 1];
      expect(last?.workflowExecutionCompletedEventAttributes).toBeTruthy();
      lifetimes.push({ start: eventMillis(first!), end: eventMillis(last!) });
    }
  }
  expect(failures).toEqual([]);
  expect(lifetimes).toHaveLength(TASKS * 3);
  // far more workflows were open at once than the cache holds, so they were evicted and replayed
  const peakOpen = Math.max(...lifetimes.map((l) => lifetimes.filter((o) => o.start <= l.start && o.end > l.start).length));
  expect(peakOpen).toBeGreaterThan(CACHE * 3);

  const { rows: calls } = await stack.pool.query(`SELECT task_id, count(*)::int AS n FROM tool_calls WHERE status = 'ok' GROUP BY task_id ORDER BY task_id`);
  expect(calls).toEqual(ids.map((task_id) => ({ task_id, n: 2 })));
  const { rows: snaps } = await stack.pool.query(`SELECT count(*)::int AS n FROM workspace_snapshots WHERE existed = false`);
  expect(snaps[0].n).toBe(TASKS * 2);
  const { rows: modelCalls } = await stack.pool.query(`SELECT count(*)::int AS n FROM model_calls`);
  expect(modelCalls[0].n).toBe(TASKS * 5); // plan + two turns per subtask
  for (const id of ids) expect(readFileSync(path.join(stack.workspaceRoot, id, 'right.md'), 'utf8')).toBe('# right\n');
});
