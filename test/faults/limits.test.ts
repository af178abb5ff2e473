import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { subtaskWorkflowId, taskWorkflowId } from '../../core/constants';
import { activityPayloads, allPayloadText, createTestStack, historyOf, localActivities, planReply, scheduledActivities, toolCall, type ScriptInput, type TestStack } from '../helpers';
import { activityRuns } from './helpers';

let stack: TestStack;
beforeAll(async () => {
  stack = await createTestStack();
});
afterAll(async () => {
  await stack?.teardown();
});

const ws = (taskId: string, rel: string): string => path.join(stack.workspaceRoot, taskId, rel);

/** `n` characters of numbered lines, so any slice of it is recognisable. */
function numberedText(tag: string, n: number): string {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < n; i++) {
    const line = `${tag} line ${String(i).padStart(7, '0')}: the quick brown fox jumps over the lazy dog\n`;
    lines.push(line);
    size += line.length;
  }
  return lines.join('').slice(0, n);
}

test('a tool returns 3 MB and the model sends 3 MB back → both stored in blobs, no history payload carries them, the oversized write is refused once as a tool error, and the task COMPLETES', async () => {
  const MB3 = 3 * 1024 * 1024;
  const existing = numberedText('read', MB3); // a file the read tool returns whole: 3 MB
  const echoed = numberedText('echo', MB3); // what the model then tries to write: 3 MB again
  mkdirSync(ws('huge', 'data'), { recursive: true });
  writeFileSync(ws('huge', 'data/big.log'), existing);
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'big', title: 'Big', instructions: 'read data/big.log and copy it', role: 'writer', acceptanceCriteria: [{ kind: 'output_contains', text: 'copied' }] }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.read', { path: 'data/big.log' }) },
      { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.write', { path: 'data/copy.log', content: echoed }) },
      { match: { purpose: 'act', turn: 2 }, reply: { text: 'could not be copied: the file is too large' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'huge', goal: 'copy a huge file' });
    return stack.client.result('huge');
  });
  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks[0]?.output).toBe('could not be copied: the file is too large');

  // the 3 MB the tool returned and the 3 MB the model sent are both in PostgreSQL
  const { rows: blobs } = await stack.pool.query<{ size: number; same: boolean }>(`SELECT size, content = $1 AS same FROM blobs WHERE content IN ($1, $2) ORDER BY same DESC`, [existing, echoed]);
  expect(blobs).toEqual([
    { size: MB3, same: true },
    { size: MB3, same: false },
  ]);

  // and neither is in any history: only a 4,000-character preview, the digest and a blob reference are
  const child = await historyOf(stack, subtaskWorkflowId('huge', 'big'));
  const parent = await historyOf(stack, taskWorkflowId('huge'));
  for (const events of [child, parent]) {
    const text = allPayloadText(events);
    expect(text.length).toBeLessThan(200_000);
    expect(text).not.toContain('read line 0001000:');
    expect(text).not.toContain('echo line 0000001:');
  }
  const readResult = activityPayloads(child, 'workspace.read', 'result')[0] ?? '';
  expect(readResult).toContain('read line 0000000:');
  expect(readResult).toContain(`[truncated: ${MB3} characters in all, stored as blob`);
  const modelResults = activityPayloads(child, 'callModel', 'result');
  expect(modelResults[1]).toMatch(/"content":\{"\$blob":"[0-9a-f]{64}","size":3145728\}/);

  // the oversized write ran once, was refused with a clear message and touched nothing
  // (bookkeeping runs as local activities, and so does the verifier of this quick criterion: only model and tool steps are listed)
  const runs = activityRuns(subtaskWorkflowId('huge', 'big'), child).filter((r) => ['callModel', 'workspace.read', 'workspace.write', 'verify'].includes(r.type));
  expect(runs.map((r) => `${r.type}:${r.attempt}:${r.outcome}`)).toEqual([
    'callModel:1:completed',
    'workspace.read:1:completed',
    'callModel:1:completed',
    'workspace.write:1:completed',
    'callModel:1:completed',
  ]);
  expect(localActivities(child)).toEqual(['embody', 'mediateToolCall', 'verify', 'finishSubtask']); // the 3 MB write's arguments are blob references: mediated in an activity
  const { rows: calls } = await stack.pool.query(`SELECT tool, status, detail, attempts FROM tool_calls WHERE task_id = 'huge' ORDER BY created_at`);
  expect(calls.map((c) => [c.tool, c.status, c.attempts])).toEqual([
    ['workspace.read', 'ok', 1],
    ['workspace.write', 'error', 1],
  ]);
  expect(calls[1].detail).toMatch(/^invalid arguments for workspace.write: content: Too big/);
  expect(existsSync(ws('huge', 'data/copy.log'))).toBe(false);
  expect(readFileSync(ws('huge', 'data/big.log'), 'utf8')).toBe(existing);
  // the model saw the refusal as a tool error
  expect(activityPayloads(child, 'callModel', 'input')[2]).toContain('invalid arguments for workspace.write: content: Too big');
  const { rows: snaps } = await stack.pool.query(`SELECT count(*)::int AS n FROM workspace_snapshots WHERE task_id = 'huge'`);
  expect(snaps[0].n).toBe(0);
});

test('a model that calls tools forever → BudgetExceeded after exactly 8 callModel activities (the writer limit), then all 8 writes are undone newest first and the task is COMPENSATED', async () => {
  // Every turn writes another file; turn 3 overwrites a file that existed before the task.
  const pathOf = (turn: number): string => (turn === 3 ? 'keep.md' : `loop/step-${turn}.md`);
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'loop', title: 'Loop', instructions: 'keep writing until told to stop', role: 'writer', acceptanceCriteria: [{ kind: 'output_contains', text: 'done' }] }]),
      ...Array.from({ length: 8 }, (_, turn) => ({ match: { purpose: 'act', turn }, reply: toolCall('workspace.write', { path: pathOf(turn), content: `turn ${turn}` }) })),
      // never a final answer, whatever the turn
      { match: { purpose: 'act' }, reply: toolCall('workspace.write', { path: 'loop/beyond-the-limit.md', content: 'should never be written' }) },
    ],
  };
  mkdirSync(ws('forever', ''), { recursive: true });
  writeFileSync(ws('forever', 'keep.md'), 'original');
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'forever', goal: 'never stop' });
    return stack.client.result('forever');
  });
  expect(result.status).toBe('COMPENSATED');
  expect(result.error).toBe('loop: BudgetExceeded: no final answer after 8 model calls');
  expect(result.subtasks[0]).toMatchObject({ id: 'loop', status: 'failed', attempts: 1 });

  // the child: 8 model calls, 8 writes, no verification, failed non-retryably as SubtaskFailed caused by BudgetExceeded
  const child = await historyOf(stack, subtaskWorkflowId('forever', 'loop'));
  const activities = scheduledActivities(child);
  expect(activities.filter((a) => a === 'callModel')).toHaveLength(8);
  expect(activities.filter((a) => a === 'workspace.write')).toHaveLength(8);
  expect(activities).not.toContain('verify');
  expect(localActivities(child)).not.toContain('verify');
  const inputs = activityPayloads(child, 'callModel', 'input');
  expect(inputs.every((i) => i.includes('"attempt":1'))).toBe(true);
  const failure = child.find((e) => e.workflowExecutionFailedEventAttributes)?.workflowExecutionFailedEventAttributes?.failure;
  expect(failure?.applicationFailureInfo).toMatchObject({ type: 'SubtaskFailed', nonRetryable: true });
  expect(failure?.cause?.applicationFailureInfo).toMatchObject({ type: 'BudgetExceeded', nonRetryable: true });
  const { rows: modelCalls } = await stack.pool.query(`SELECT purpose, count(*)::int AS n FROM model_calls WHERE task_id = 'forever' GROUP BY purpose ORDER BY purpose`);
  expect(modelCalls).toEqual([{ purpose: 'act', n: 8 }, { purpose: 'plan', n: 1 }]);

  // the parent undid all 8 writes, newest first, each once
  const parent = await historyOf(stack, taskWorkflowId('forever'));
  const undo = activityRuns(taskWorkflowId('forever'), parent).filter((r) => r.type === 'compensate');
  expect(undo.map((r) => `${r.attempt}:${r.outcome}`)).toEqual(Array.from({ length: 8 }, () => '1:completed'));
  const { rows } = await stack.pool.query<{ seq: number; call_key: string; ok: boolean; detail: string }>(
    `SELECT seq, call_key, ok, detail FROM compensations WHERE task_id = 'forever' ORDER BY seq`,
  );
  const key = (turn: number): string => `${subtaskWorkflowId('forever', 'loop')}/a1/i${turn + 1}/c0`;
  expect(rows.map((r) => [r.seq, r.call_key, r.ok])).toEqual(Array.from({ length: 8 }, (_, i) => [i, key(7 - i), true]));
  expect(rows.map((r) => r.detail)).toEqual(
    Array.from({ length: 8 }, (_, i) => 7 - i).map((turn) => (turn === 3 ? 'restored previous content of keep.md' : `deleted loop/step-${turn}.md, which the write had created`)),
  );
  expect(readFileSync(ws('forever', 'keep.md'), 'utf8')).toBe('original');
  expect(readdirSync(ws('forever', 'loop'))).toEqual([]);
  const { rows: calls } = await stack.pool.query(`SELECT count(*)::int AS n FROM tool_calls WHERE task_id = 'forever' AND tool = 'workspace.write' AND status = 'ok'`);
  expect(calls[0].n).toBe(8);
});
