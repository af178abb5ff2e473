import { readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { InvalidTaskRequestError, TaskNotFoundError } from '../client/client';
import { ApplicationFailure, WorkflowFailedError } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import type { TaskProgress } from '../validation';
import { TASK_QUEUE, taskWorkflowId } from '../core/constants';
import { activityPayloads, allPayloadText, createTestStack, failureMessage, historyOf, localActivities, planReply, recordHistory, scheduledActivities, toolCall, type ScriptInput, type TestStack } from './helpers';

const demoScript = JSON.parse(readFileSync(path.join(__dirname, '..', 'scripts', 'demo-script.json'), 'utf8')) as ScriptInput;

let stack: TestStack;
beforeAll(async () => {
  stack = await createTestStack();
});
afterAll(async () => {
  await stack?.teardown();
});

/** Refreshes test/histories/ from this run (`npm run histories`); the replay test reads them. */
async function recordHistories(taskId: string): Promise<void> {
  await recordHistory(stack, 'orchestrateTask.happy.json', taskWorkflowId(taskId));
  await recordHistory(stack, 'executeSubtask.draft.json', `${taskWorkflowId(taskId)}--draft`);
}

const ws = (taskId: string, rel: string): string => path.join(stack.workspaceRoot, taskId, rel);

test('happy path: the demo task is decomposed, executed by two roles with tools, verified and COMPLETED', async () => {
  const result = await stack.withWorker({ ...demoScript, delayMs: 0 }, async () => {
    const { taskId } = await stack.client.submitTask({ taskId: 'happy', goal: 'Write a short guide to durable execution' });
    return stack.client.result(taskId);
  });
  expect(result.status).toBe('COMPLETED');
  expect(result.planFallbackReason).toBeUndefined();
  expect(result.subtasks.map((s) => [s.id, s.role, s.status])).toEqual([
    ['outline', 'writer', 'completed'],
    ['draft', 'writer', 'completed'],
    ['review', 'reviewer', 'completed'],
  ]);
  expect(result.usage.inputTokens).toBeGreaterThan(0);
  expect(readFileSync(ws('happy', 'guide/guide.md'), 'utf8')).toContain('Durable execution');
  expect(result.subtasks.find((s) => s.id === 'review')?.output).toContain('Findings');

  const { rows: tasks } = await stack.pool.query('SELECT status FROM tasks WHERE task_id = $1', ['happy']);
  expect(tasks).toEqual([{ status: 'COMPLETED' }]);
  const { rows: evidence } = await stack.pool.query('SELECT subtask_id, passed FROM evidence WHERE task_id = $1 ORDER BY subtask_id', ['happy']);
  expect(evidence).toEqual([
    { subtask_id: 'draft', passed: true },
    { subtask_id: 'outline', passed: true },
    { subtask_id: 'review', passed: true },
  ]);
  const { rows: calls } = await stack.pool.query(`SELECT tool, status FROM tool_calls WHERE task_id = $1 ORDER BY created_at`, ['happy']);
  expect(calls.map((c) => `${c.tool}:${c.status}`)).toEqual(['workspace.write:ok', 'workspace.read:ok', 'workspace.write:ok', 'workspace.read:ok']);
  // token usage is recorded per model call: plan 1, outline 2, draft 3 + 1 judge, review 2
  const { rows: modelCalls } = await stack.pool.query(`SELECT purpose, count(*)::int AS n, sum(input_tokens)::int AS tokens FROM model_calls WHERE task_id = 'happy' GROUP BY purpose ORDER BY purpose`);
  expect(modelCalls.map((r) => [r.purpose, r.n])).toEqual([['act', 7], ['judge', 1], ['plan', 1]]);
  expect(modelCalls.reduce((sum, r) => sum + r.tokens, 0)).toBe(result.usage.inputTokens);
  // the transcript is in PostgreSQL, and history carries each message once: later calls send only what is new
  const { rows: transcript } = await stack.pool.query(`SELECT message->>'role' AS role FROM transcript_messages WHERE transcript_id = $1 ORDER BY seq`, [
    `${taskWorkflowId('happy')}--draft/a1`,
  ]);
  expect(transcript.map((r) => r.role)).toEqual(['system', 'system', 'user', 'assistant', 'tool', 'assistant', 'tool']);
  const draftInputs = activityPayloads(await historyOf(stack, `${taskWorkflowId('happy')}--draft`), 'callModel', 'input');
  expect(draftInputs[0]).toContain('You are an agent embodied by MARE');
  expect(draftInputs[1]).not.toContain('You are an agent embodied by MARE');
  expect(draftInputs[1]).toContain('"transcript":{"id":"mare-task-happy--draft/a1","offset":3}');
  // the draft's context carried the outline's output (its dependency)
  const draftPrompt = draftInputs[0];
  expect(draftPrompt).toContain('# Output of \\"Outline the guide\\" (outline)\\nWrote guide/outline.md with a title and three sections.');
  // the draft received the outline's output as a dependency and ran as its own child workflow
  const childEvents = await historyOf(stack, `${taskWorkflowId('happy')}--draft`);
  const child = scheduledActivities(childEvents);
  await recordHistories('happy');
  expect(child).toEqual(['callModel', 'workspace.read', 'callModel', 'workspace.write', 'callModel', 'verify']);
  // bookkeeping runs as local activities (markers, no task-queue round trip), one at the embodiment's start and one at the end
  expect(localActivities(childEvents)).toEqual(['embody', 'finishSubtask']);
  const parentEvents = await historyOf(stack, taskWorkflowId('happy'));
  expect(localActivities(parentEvents)).toEqual(['startTask', 'recordTaskFinished']);
  expect(scheduledActivities(parentEvents)).toEqual(['decompose']);
});

test('the same task id starts at most one run', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'only', title: 'Say hi', instructions: 'Say hi', role: 'generalist' }]),
      { match: { purpose: 'act' }, reply: { text: 'hi' } },
    ],
  };
  await stack.withWorker(script, async () => {
    const a = await stack.client.submitTask({ taskId: 'idem', goal: 'say hi' });
    const b = await stack.client.submitTask({ taskId: 'idem', goal: 'say hi' });
    expect(b.workflowId).toBe(a.workflowId);
    await stack.client.result('idem');
    const c = await stack.client.submitTask({ taskId: 'idem', goal: 'say hi' });
    expect(c.workflowId).toBe(a.workflowId);
  });
  const runs = [];
  for await (const wf of stack.env.client.workflow.list({ query: `WorkflowId = '${taskWorkflowId('idem')}'` })) runs.push(wf.runId);
  expect(runs).toHaveLength(1);
});

test.each([
  ['invalid JSON', 'here is my plan: subtasks are outline, draft', 'not valid JSON'],
  ['a cycle', JSON.stringify({ subtasks: [
    { id: 'a', title: 'A', instructions: 'a', role: 'writer', dependsOn: ['b'] },
    { id: 'b', title: 'B', instructions: 'b', role: 'writer', dependsOn: ['a'] },
  ] }), 'cycle: a -> b -> a'],
  ['an unknown dependency', JSON.stringify({ subtasks: [{ id: 'a', title: 'A', instructions: 'a', role: 'writer', dependsOn: ['zz'] }] }), 'unknown subtask "zz"'],
  ['a schema violation', JSON.stringify({ subtasks: [{ id: 'a', title: 'A', role: 'writer' }] }), 'schema at subtasks.0.instructions'],
  ['too many subtasks', JSON.stringify({ subtasks: Array.from({ length: 13 }, (_, i) => ({ id: `s${i}`, title: 'S', instructions: 's', role: 'writer' })) }), 'more than the limit of 12'],
])('a plan with %s falls back to one atomic subtask and records why', async (_name, planText, reason) => {
  const taskId = `fallback-${_name.replace(/\W+/g, '-')}`;
  const result = await stack.withWorker(
    { rules: [{ match: { purpose: 'plan' }, reply: { text: planText } }, { match: { purpose: 'act' }, reply: { text: 'did it all' } }] },
    async () => {
      await stack.client.submitTask({ taskId, goal: 'do everything at once' });
      return stack.client.result(taskId);
    },
  );
  expect(result.status).toBe('COMPLETED');
  expect(result.plan.subtasks).toHaveLength(1);
  expect(result.plan.subtasks[0]).toMatchObject({ id: 'task', role: 'generalist', instructions: 'do everything at once' });
  expect(result.planFallbackReason).toContain(reason);
  const { rows } = await stack.pool.query('SELECT plan_fallback_reason FROM tasks WHERE task_id = $1', [taskId]);
  expect(rows[0].plan_fallback_reason).toContain(reason);
});

test('a tool the role does not permit never becomes an activity; the model gets a tool error', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'rev', title: 'Review', instructions: 'Review and fix the doc', role: 'reviewer' }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'doc.md', content: 'sneaky edit' }) },
      { match: { purpose: 'act' }, reply: { text: 'I was not allowed to edit; findings only.' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'denied', goal: 'review the doc' });
    return stack.client.result('denied');
  });
  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks[0]?.deniedToolCalls).toBe(1);
  const events = await historyOf(stack, `${taskWorkflowId('denied')}--rev`);
  expect(scheduledActivities(events)).not.toContain('workspace.write');
  expect(localActivities(events)).toContain('recordToolDenied');
  // the second model call saw the denial as a tool error
  const modelInputs = activityPayloads(events, 'callModel', 'input');
  expect(modelInputs).toHaveLength(2);
  expect(modelInputs[1]).toContain('"role":"tool"');
  expect(modelInputs[1]).toContain('Permission denied: role \\"reviewer\\" may not use tool \\"workspace.write\\".');
  expect(modelInputs[1]).toContain('"isError":true');
  expect(existsSync(ws('denied', 'doc.md'))).toBe(false);
  const { rows } = await stack.pool.query(`SELECT tool, status FROM tool_calls WHERE task_id = 'denied'`);
  expect(rows).toEqual([{ tool: 'workspace.write', status: 'denied' }]);
});

test('verification fails once, the subtask retries with the feedback, then passes', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'note', title: 'Write note', instructions: 'Write note.md saying DONE', role: 'writer', acceptanceCriteria: [{ kind: 'file_contains', path: 'note.md', text: 'DONE' }] }]),
      { match: { purpose: 'act', attempt: 1, turn: 0 }, reply: toolCall('workspace.write', { path: 'note.md', content: 'not yet' }) },
      { match: { purpose: 'act', attempt: 2, turn: 0 }, reply: toolCall('workspace.write', { path: 'note.md', content: 'DONE' }) },
      { match: { purpose: 'act' }, reply: { text: 'written' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'retry-once', goal: 'write the note' });
    return stack.client.result('retry-once');
  });
  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks[0]).toMatchObject({ attempts: 2, status: 'completed' });
  expect(result.subtasks[0]?.evidenceIds).toHaveLength(2);
  expect(readFileSync(ws('retry-once', 'note.md'), 'utf8')).toBe('DONE');
  const { rows } = await stack.pool.query(`SELECT attempt, passed FROM evidence WHERE task_id = 'retry-once' ORDER BY attempt`);
  expect(rows).toEqual([{ attempt: 1, passed: false }, { attempt: 2, passed: true }]);
  // the second attempt's prompt carried the verifier's feedback
  const events = await historyOf(stack, `${taskWorkflowId('retry-once')}--note`);
  const inputs = activityPayloads(events, 'callModel', 'input');
  expect(inputs[0]).not.toContain('Feedback on your previous attempt');
  expect(inputs[2]).toContain('Feedback on your previous attempt');
  expect(inputs[2]).toContain('\\"DONE\\" not found in note.md');
});

test('verification fails twice: the task is COMPENSATED and files are restored in reverse order', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([
        { id: 'first', title: 'First', instructions: 'write a.md and b.md', role: 'writer' },
        { id: 'second', title: 'Second', instructions: 'edit a.md', role: 'writer', dependsOn: ['first'], acceptanceCriteria: [{ kind: 'file_contains', path: 'a.md', text: 'IMPOSSIBLE' }] },
      ]),
      { match: { purpose: 'act', subtask: 'first', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.md', content: 'a1' }) },
      { match: { purpose: 'act', subtask: 'first', turn: 1 }, reply: toolCall('workspace.write', { path: 'b.md', content: 'b1' }) },
      { match: { purpose: 'act', subtask: 'second', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.md', content: 'a2' }) },
      { match: { purpose: 'act' }, reply: { text: 'done' } },
    ],
  };
  // a.md existed before the task: its original content must come back
  const { mkdirSync, writeFileSync } = await import('node:fs');
  mkdirSync(ws('rollback', ''), { recursive: true });
  writeFileSync(ws('rollback', 'a.md'), 'original');
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'rollback', goal: 'an impossible edit' });
    return stack.client.result('rollback');
  });
  expect(result.status).toBe('COMPENSATED');
  expect(result.error).toContain('second: verification failed 2 times');
  // The run's outcome is Temporal's outcome: failed, typed TaskCompensated, the TaskResult in its details,
  // a message that names ids and types only (readable without the codec), and no directory of this machine.
  const closed = (await historyOf(stack, taskWorkflowId('rollback'))).at(-1)?.workflowExecutionFailedEventAttributes?.failure;
  expect(closed?.applicationFailureInfo?.type).toBe('TaskCompensated');
  expect(closed?.message).toBe('task rollback COMPENSATED: subtask second failed after 2 attempt(s): VerificationFailed; 4 of 4 undo steps done');
  expect(defaultPayloadConverter.fromPayload(closed!.applicationFailureInfo!.details!.payloads![0]!)).toEqual(result);
  expect(JSON.stringify(closed)).not.toContain(stack.workspaceRoot);
  expect(JSON.stringify(closed)).not.toContain(process.cwd());
  const { status } = await stack.env.client.workflow.getHandle(taskWorkflowId('rollback')).describe();
  expect(status.name).toBe('FAILED');
  expect(readFileSync(ws('rollback', 'a.md'), 'utf8')).toBe('original');
  expect(existsSync(ws('rollback', 'b.md'))).toBe(false);
  const { rows } = await stack.pool.query(`SELECT seq, subtask_id, ok, detail FROM compensations WHERE task_id = 'rollback' ORDER BY seq`);
  // second's two attempts wrote a.md twice, then first's b.md and a.md: newest first
  expect(rows.map((r) => [r.subtask_id, r.ok])).toEqual([
    ['second', true],
    ['second', true],
    ['first', true],
    ['first', true],
  ]);
  expect(rows.map((r) => r.detail)).toEqual([
    'restored previous content of a.md',
    'restored previous content of a.md',
    'deleted b.md, which the write had created',
    'restored previous content of a.md',
  ]);
});

test('an undo step that fails leaves the task FAILED with the failed step listed, and the other undo steps still run', async () => {
  const script: ScriptInput = {
    delayMs: 300,
    rules: [
      planReply([{ id: 'w', title: 'W', instructions: 'write', role: 'writer', acceptanceCriteria: [{ kind: 'file_contains', path: 'keep.md', text: 'IMPOSSIBLE' }] }]),
      { match: { purpose: 'act', attempt: 1, turn: 0 }, reply: toolCall('workspace.write', { path: 'sub/a.md', content: 'a' }) },
      { match: { purpose: 'act', attempt: 1, turn: 1 }, reply: toolCall('workspace.write', { path: 'keep.md', content: 'k' }) },
      { match: { purpose: 'act' }, reply: { text: 'done' } },
    ],
  };
  const { mkdirSync, renameSync, symlinkSync } = await import('node:fs');
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'undo-fails', goal: 'write two files' });
    for (let i = 0; i < 100 && !existsSync(ws('undo-fails', 'keep.md')); i++) await new Promise((r) => setTimeout(r, 50));
    // someone swaps the directory for a symlink out of the workspace: its undo must not follow it
    const outside = path.join(stack.dir, 'outside');
    mkdirSync(outside, { recursive: true });
    renameSync(ws('undo-fails', 'sub'), path.join(stack.dir, 'moved-sub'));
    symlinkSync(outside, ws('undo-fails', 'sub'));
    return stack.client.result('undo-fails');
  });
  expect(result.status).toBe('FAILED');
  const closed = (await historyOf(stack, taskWorkflowId('undo-fails'))).at(-1)?.workflowExecutionFailedEventAttributes?.failure;
  expect(closed?.applicationFailureInfo?.type).toBe('TaskFailed');
  expect(closed?.message).toMatch(/^task undo-fails FAILED: .*; 1 of 2 undo steps done$/);
  expect(result.compensations.map((c) => [c.step.args.path, c.ok])).toEqual([
    ['keep.md', true],
    ['sub/a.md', false],
  ]);
  expect(result.compensations[1]?.detail).toContain('undo refused: path "sub/a.md" leaves the workspace through a symlink');
  expect(existsSync(ws('undo-fails', 'keep.md'))).toBe(false);
  const { rows } = await stack.pool.query(`SELECT ok FROM compensations WHERE task_id = 'undo-fails' ORDER BY seq`);
  expect(rows).toEqual([{ ok: true }, { ok: false }]);
  // the refused undo failed once, without retries
  const events = await historyOf(stack, taskWorkflowId('undo-fails'));
  const failedUndo = events.filter((e) => e.activityTaskFailedEventAttributes);
  expect(failedUndo.map((e) => e.activityTaskFailedEventAttributes?.failure?.applicationFailureInfo?.type)).toEqual(['UndoRefused']);
  const started = events.find((e) => String(e.eventId) === String(failedUndo[0]?.activityTaskFailedEventAttributes?.startedEventId));
  expect(started?.activityTaskStartedEventAttributes?.attempt).toBe(1);
});

test('cancellation mid-run rolls back what was done', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([
        { id: 'write', title: 'Write', instructions: 'write x.md', role: 'writer' },
        { id: 'slow', title: 'Slow', instructions: 'think for a long time', role: 'writer', dependsOn: ['write'] },
      ]),
      { match: { purpose: 'act', subtask: 'write', turn: 0 }, reply: toolCall('workspace.write', { path: 'x.md', content: 'x' }) },
      { match: { purpose: 'act', subtask: 'write' }, reply: { text: 'wrote x.md' } },
      { match: { purpose: 'act', subtask: 'slow', turn: 0 }, reply: toolCall('workspace.write', { path: 'y.md', content: 'y' }) },
      { match: { purpose: 'act', subtask: 'slow', turn: 1 }, reply: toolCall('workspace.list', {}) },
      { match: { purpose: 'act', subtask: 'slow', turn: 2 }, reply: toolCall('workspace.list', {}) },
      { match: { purpose: 'act', subtask: 'slow', turn: 3 }, reply: toolCall('workspace.list', {}) },
      { match: { purpose: 'act', subtask: 'slow', turn: 4 }, reply: toolCall('workspace.list', {}) },
      { match: { purpose: 'act', subtask: 'slow', turn: 5 }, reply: toolCall('workspace.list', {}) },
      { match: { purpose: 'act', subtask: 'slow' }, reply: { text: 'finally' } },
    ],
    delayMs: 400,
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'cancel-me', goal: 'be cancelled' });
    // A wait on state, bounded generously: on a busy machine planning and the first subtask take a while.
    for (let i = 0; i < 600 && !existsSync(ws('cancel-me', 'y.md')); i++) await new Promise((r) => setTimeout(r, 100));
    expect(existsSync(ws('cancel-me', 'x.md'))).toBe(true);
    await stack.client.cancelTask('cancel-me');
    return stack.client.result('cancel-me');
  });
  expect(result.cancelled).toBe(true);
  expect(result.status).toBe('COMPENSATED');
  // A cancelled task ends its run cancelled; its result comes from the run's `result` query.
  expect((await historyOf(stack, taskWorkflowId('cancel-me'))).at(-1)?.workflowExecutionCanceledEventAttributes).toBeTruthy();
  expect((await stack.env.client.workflow.getHandle(taskWorkflowId('cancel-me')).describe()).status.name).toBe('CANCELLED');
  expect(existsSync(ws('cancel-me', 'x.md'))).toBe(false);
  expect(existsSync(ws('cancel-me', 'y.md'))).toBe(false);
  const { rows } = await stack.pool.query(`SELECT subtask_id, ok FROM compensations WHERE task_id = 'cancel-me' ORDER BY seq`);
  expect(rows).toEqual([{ subtask_id: 'slow', ok: true }, { subtask_id: 'write', ok: true }]);
});

test('a model that calls tools forever hits BudgetExceeded at the iteration limit and the rollback runs', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'loop', title: 'Loop', instructions: 'keep writing', role: 'writer' }]),
      { match: { purpose: 'act' }, reply: toolCall('workspace.write', { path: 'loop.md', content: 'again' }) },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'budget', goal: 'never stop' });
    return stack.client.result('budget');
  });
  expect(result.status).toBe('COMPENSATED');
  expect(result.error).toContain('BudgetExceeded: no final answer after 8 model calls');
  expect(existsSync(ws('budget', 'loop.md'))).toBe(false);
  const events = await historyOf(stack, `${taskWorkflowId('budget')}--loop`);
  expect(scheduledActivities(events).filter((a) => a === 'callModel')).toHaveLength(8);
  // The subtask's run fails as SubtaskFailed, its cause the BudgetExceeded that ended it.
  const failure = events.find((e) => e.workflowExecutionFailedEventAttributes)?.workflowExecutionFailedEventAttributes?.failure;
  expect(failure?.applicationFailureInfo?.type).toBe('SubtaskFailed');
  expect(failure?.applicationFailureInfo?.nonRetryable).toBe(true);
  expect(failure?.message).toBe('subtask loop failed after 1 attempt(s): BudgetExceeded');
  expect(failure?.cause?.applicationFailureInfo?.type).toBe('BudgetExceeded');
  expect(failureMessage(failure?.cause)).toBe('BudgetExceeded: no final answer after 8 model calls');
  const { rows } = await stack.pool.query(`SELECT count(*)::int AS n, bool_and(ok) AS ok FROM compensations WHERE task_id = 'budget'`);
  expect(rows[0]).toEqual({ n: 8, ok: true });
});

test('an unknown role falls back to the generalist, records why, and every judged criterion is scored and counted', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([
        {
          id: 'poem',
          title: 'Poem',
          instructions: 'write a poem',
          role: 'poet',
          acceptanceCriteria: [
            { kind: 'judged', rubric: 'it rhymes' },
            { kind: 'judged', rubric: 'it scans' },
          ],
        },
      ]),
      { match: { purpose: 'act' }, reply: { text: 'Roses are red' } },
      { match: { purpose: 'judge' }, reply: { text: '{"score": 0.8, "rationale": "fine"}' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'poet', goal: 'a poem' });
    return stack.client.result('poet');
  });
  expect(result.status).toBe('COMPLETED');
  const reason = 'role "poet" does not exist; using the default "generalist"';
  expect(result.subtasks[0]).toMatchObject({ role: 'generalist', roleVersion: '1.0.0', roleRequested: 'poet', roleRoutedBy: 'default', roleFallbackReason: reason });
  const { rows: audit } = await stack.pool.query(`SELECT data FROM audit_events WHERE task_id = 'poet' AND kind = 'role.loaded'`);
  expect(audit).toEqual([{ data: expect.objectContaining({ subtaskId: 'poem', requested: 'poet', role: 'generalist@1.0.0', routedBy: 'default', reason }) }]);
  const { rows: recorded } = await stack.pool.query(`SELECT role_requested, role_routed_by, role_fallback_reason FROM subtasks WHERE task_id = 'poet'`);
  expect(recorded).toEqual([{ role_requested: 'poet', role_routed_by: 'default', role_fallback_reason: reason }]);
  const { rows: judged } = await stack.pool.query(`SELECT count(*)::int AS n FROM model_calls WHERE task_id = 'poet' AND purpose = 'judge'`);
  expect(judged[0].n).toBe(2);
  const { rows: tokens } = await stack.pool.query(`SELECT sum(input_tokens)::int AS n FROM model_calls WHERE task_id = 'poet'`);
  expect(tokens[0].n).toBe(result.usage.inputTokens);
  const { rows: evidence } = await stack.pool.query<{ body: { results: { score: number; passed: boolean }[] } }>(`SELECT body FROM evidence WHERE task_id = 'poet'`);
  expect(evidence[0]?.body.results.map((r) => [r.score, r.passed])).toEqual([[0.8, true], [0.8, true]]);
});

test('large file content written by the model is stored in PostgreSQL, not in workflow history', async () => {
  const big = `# Big\n${'All work and no play. '.repeat(2_000)}`;
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'big', title: 'Big', instructions: 'write big.md', role: 'writer', acceptanceCriteria: [{ kind: 'file_contains', path: 'big.md', text: 'no play' }] }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'big.md', content: big }) },
      { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.read', { path: 'big.md' }) },
      { match: { purpose: 'act' }, reply: { text: 'done' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'big', goal: 'a big file' });
    return stack.client.result('big');
  });
  expect(result.status).toBe('COMPLETED');
  expect(readFileSync(ws('big', 'big.md'), 'utf8')).toBe(big);
  const history = allPayloadText(await historyOf(stack, `${taskWorkflowId('big')}--big`));
  expect(history).toContain('$blob');
  expect(history).not.toContain('All work and no play. '.repeat(300));
  const { rows } = await stack.pool.query(`SELECT size FROM blobs WHERE content = $1`, [big]);
  expect(rows).toEqual([{ size: big.length }]);
});

test('the client watches progress through the plan to the end, then reads the result, the list and the status', async () => {
  const seen: TaskProgress[] = [];
  const view = await stack.withWorker({ ...demoScript, delayMs: 300 }, async () => {
    const { taskId } = await stack.client.submitTask({ taskId: 'watched', goal: 'Write a short guide to durable execution' });
    for await (const p of stack.client.watchTask(taskId, { intervalMs: 100 })) seen.push(p);
    return stack.client.getTask(taskId);
  });
  expect(seen[0]?.taskId).toBe('watched');
  expect(seen.some((p) => p.plan?.subtasks.length === 3)).toBe(true);
  // live detail from the running child: its role is pinned with a version and it reports model calls
  expect(seen.some((p) => p.subtasks.some((s) => s.state === 'running' && s.role === 'writer@1.0.0' && /model call/.test(s.latestStep)))).toBe(true);
  const last = seen[seen.length - 1];
  expect(last?.status).toBe('COMPLETED');
  expect(last?.subtasks.map((s) => [s.id, s.state, s.attempts])).toEqual([
    ['outline', 'completed', 1],
    ['draft', 'completed', 1],
    ['review', 'completed', 1],
  ]);
  expect(view).toMatchObject({ taskId: 'watched', execution: 'COMPLETED', result: { status: 'COMPLETED' } });
  const listed = await stack.client.listTasks({ limit: 100 });
  expect(listed.find((t) => t.taskId === 'watched')).toMatchObject({ execution: 'COMPLETED', status: 'COMPLETED' });
  await expect(stack.client.getTask('no-such-task')).rejects.toThrow(TaskNotFoundError);
  await expect(stack.client.cancelTask('no-such-task')).rejects.toThrow(TaskNotFoundError);
});

test('independent subtasks run at most `concurrency` at a time', async () => {
  const script: ScriptInput = {
    delayMs: 300,
    rules: [
      planReply(['a', 'b', 'c', 'd', 'e'].map((id) => ({ id, title: id, instructions: id, role: 'generalist' }))),
      { match: { purpose: 'act' }, reply: { text: 'ok' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'fanout', goal: 'five things', concurrency: 2 });
    return stack.client.result('fanout');
  });
  expect(result.status).toBe('COMPLETED');
  // replay the parent's history: at no point were more than two children started and not yet closed
  const events = await historyOf(stack, taskWorkflowId('fanout'));
  let open = 0;
  let peak = 0;
  for (const e of events) {
    if (e.startChildWorkflowExecutionInitiatedEventAttributes) peak = Math.max(peak, ++open);
    if (e.childWorkflowExecutionCompletedEventAttributes || e.childWorkflowExecutionFailedEventAttributes) open--;
  }
  expect(peak).toBe(2);
});

test('a malformed TaskRequest is refused with a clear error and starts nothing', async () => {
  await expect(stack.client.submitTask({ taskId: 'bad id with spaces', goal: 'x' })).rejects.toThrow(InvalidTaskRequestError);
  await expect(stack.client.submitTask({ goal: '   ' })).rejects.toThrow(/goal: goal must not be empty/);
  await expect(stack.client.submitTask({ goal: 'ok', concurrency: 0 })).rejects.toThrow(/concurrency/);
  await expect(stack.client.submitTask({ goal: 'ok', surprise: true } as never)).rejects.toThrow(/surprise/);
  const all = [];
  for await (const wf of stack.env.client.workflow.list({ query: `WorkflowId = '${taskWorkflowId('bad id with spaces')}'` })) all.push(wf);
  expect(all).toHaveLength(0);
});

test('a malformed request started without the client fails the run as InvalidTaskRequest, naming the field, and records no task', async () => {
  const error = await stack.withWorker({ rules: [{ reply: { text: 'unused' } }] }, async () => {
    const handle = await stack.env.client.workflow.start('orchestrateTask', {
      taskQueue: TASK_QUEUE,
      workflowId: taskWorkflowId('raw-bad'),
      args: [{ taskId: 'raw-bad', goal: 'do it', concurrency: -1 }],
    });
    return handle.result().then(
      () => undefined,
      (err: unknown) => err,
    );
  });
  expect(error).toBeInstanceOf(WorkflowFailedError);
  const cause = (error as WorkflowFailedError).cause;
  expect(cause).toBeInstanceOf(ApplicationFailure);
  expect((cause as ApplicationFailure).type).toBe('InvalidTaskRequest');
  expect(cause?.message).toMatch(/invalid TaskRequest:[\s\S]*concurrency/);
  const { rows } = await stack.pool.query(`SELECT 1 FROM tasks WHERE task_id = 'raw-bad'`);
  expect(rows).toHaveLength(0);
  // The run failed without a TaskResult: getTask shows it failed, result() throws Temporal's error.
  expect(await stack.client.getTask('raw-bad')).toEqual({ taskId: 'raw-bad', workflowId: taskWorkflowId('raw-bad'), execution: 'FAILED', result: undefined });
  await expect(stack.client.result('raw-bad')).rejects.toBeInstanceOf(WorkflowFailedError);
});
