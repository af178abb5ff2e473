import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { RE2JS } from 're2js';
import { canonicalJson } from '../activities/idempotency';
import { type ApprovalView, type ChatMessage } from '../validation';
import { subtaskWorkflowId } from '../core/constants';
import { createTestStack, planReply, toolCall, type ScriptInput, type TestStack } from './helpers';

let stack: TestStack;
const who = { actor: 'test' };

beforeAll(async () => {
  stack = await createTestStack();
  const role = (name: string, extra: Record<string, unknown>) =>
    stack.roles.repository.publish(
      { name, version: '1.0.0', description: `${name} role`, systemPrompt: `You are the ${name}.`, tools: [{ tool: 'workspace.write', access: 'write' }, { tool: 'workspace.read', access: 'read' }], confidenceThreshold: 0.5, ...extra },
      who,
    );
  await role('persistent', { maxAttempts: 3 });
  await role('senior', { maxAttempts: 1 });
  await role('junior', { maxAttempts: 1, escalateTo: 'senior' });
  await role('careful', { maxAttempts: 1, escalateTo: 'human' });
});

afterAll(async () => {
  await stack?.teardown();
});

const ws = (taskId: string, rel: string): string => path.join(stack.workspaceRoot, taskId, rel);
// The exact `node -e` scripts these tests' criteria run (an allowlist entry is a whole argument vector).
const CHECK_DATA = "const d = JSON.parse(require('fs').readFileSync('data.json', 'utf8')); if (d.version !== 2) process.exit(3); console.log('checked', d.version)";
const nodeScripts = [CHECK_DATA, 'process.exit(4)', 'setTimeout(() => {}, 60000)'];
const TOOLS = { verifyCommands: nodeScripts.map((code) => ({ command: 'node', args: ['-e', RE2JS.quote(code)] })) };

async function rows<T>(sql: string, params: unknown[] = []): Promise<T[]> {
  return (await stack.pool.query(sql, params)).rows as T[];
}

async function run(taskId: string, script: ScriptInput, request: Record<string, unknown> = {}, during?: () => Promise<void>) {
  return stack.withWorker(
    script,
    async () => {
      await stack.client.submitTask({ taskId, goal: `gates ${taskId}`, ...request });
      await during?.();
      return stack.client.result(taskId);
    },
    { toolsConfig: TOOLS },
  );
}

test('a pass: typed deterministic criteria (JSON Schema, a tool result field, a sandboxed command) with an evidence bundle stored under its digest', async () => {
  const criteria = [
    { kind: 'json_schema', schema: { type: 'object', required: ['status', 'count'], properties: { status: { const: 'ok' }, count: { type: 'integer', minimum: 1 } } } },
    { kind: 'tool_result_field', tool: 'workspace.read', field: 'version', equals: 2 },
    { kind: 'command_succeeds', command: 'node', args: ['-e', CHECK_DATA], timeoutSeconds: 20 },
    { kind: 'file_contains', path: 'data.json', text: '"version": 2' },
  ];
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'p', title: 'Write data', instructions: 'Write data.json', role: 'persistent', acceptanceCriteria: criteria }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'data.json', content: '{ "version": 2 }' }) },
      { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.read', { path: 'data.json' }) },
      { match: { purpose: 'act' }, reply: { text: '{"status": "ok", "count": 3}' } },
    ],
  };
  const result = await run('pass', script);
  expect(result.status).toBe('COMPLETED');
  const sub = result.subtasks[0]!;
  expect(sub.attempts).toBe(1);
  const [evidence] = await rows<{ evidence_id: string; passed: boolean; body: Record<string, unknown> & { results: { passed: boolean; detail: string }[] } }>(
    `SELECT evidence_id, passed, body FROM evidence WHERE task_id = 'pass'`,
  );
  // Referenced from the result (and so from history) by id; the id is the digest of the body.
  expect(sub.evidenceIds).toEqual([evidence!.evidence_id]);
  expect(createHash('sha256').update(canonicalJson(evidence!.body)).digest('hex')).toBe(evidence!.evidence_id);
  expect(evidence!.body.results.map((r) => r.passed)).toEqual([true, true, true, true]);
  const body = evidence!.body as unknown as {
    toolOutputs: { tool: string; digest: string; reliedOn: boolean }[];
    filesChanged: { path: string; existed: boolean; diff: string }[];
    commands: { command: string; exitCode: number; stdout: string }[];
  };
  const content = '{ "version": 2 }';
  expect(body.toolOutputs.find((t) => t.tool === 'workspace.read')).toMatchObject({ digest: createHash('sha256').update(content).digest('hex'), reliedOn: true });
  expect(body.filesChanged).toEqual([{ path: 'data.json', existed: false, diff: expect.stringContaining('+{ "version": 2 }') }]);
  expect(body.commands).toEqual([expect.objectContaining({ command: 'node', exitCode: 0, stdout: 'checked 2\n' })]);
});

test('failing deterministic criteria say why: schema errors, a missing field, a command not allowed, a non-zero exit, a time limit', async () => {
  const criteria = [
    { kind: 'json_schema', schema: { type: 'object', required: ['status'] } },
    { kind: 'tool_result_field', tool: 'workspace.read', field: 'missing' },
    { kind: 'command_succeeds', command: 'sh', args: ['-c', 'true'] },
    { kind: 'command_succeeds', command: 'node', args: ['-e', 'process.exit(4)'] },
    { kind: 'command_succeeds', command: 'node', args: ['-e', 'setTimeout(() => {}, 60000)'], timeoutSeconds: 1 },
  ];
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'f', title: 'Fail', instructions: 'Fail', role: 'senior', acceptanceCriteria: criteria }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'x.json', content: '{"a": 1}' }) },
      { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.read', { path: 'x.json' }) },
      { match: { purpose: 'act' }, reply: { text: '{"other": true}' } },
    ],
  };
  const result = await run('fail-why', script);
  expect(result.status).toBe('COMPENSATED');
  const [evidence] = await rows<{ body: { results: { passed: boolean; detail: string }[] } }>(`SELECT body FROM evidence WHERE task_id = 'fail-why'`);
  const details = evidence!.body.results.map((r) => [r.passed, r.detail]);
  expect(details[0]).toEqual([false, expect.stringContaining("must have required property 'status'")]);
  expect(details[1]).toEqual([false, 'no workspace.read result has missing']);
  expect(details[2]).toEqual([false, expect.stringContaining('command "sh" with these 2 arguments is not allowed here')]);
  expect(details[3]).toEqual([false, expect.stringContaining('`node` exited 4')]);
  expect(details[4]).toEqual([false, '`node` did not finish within 1 s']);
  // The rollback removed what the failed subtask wrote.
  expect(existsSync(ws('fail-why', 'x.json'))).toBe(false);
});

test('retry then pass: a role with three attempts gets the verifier feedback and passes on the third', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'r', title: 'Retry', instructions: 'Write done.md', role: 'persistent', acceptanceCriteria: [{ kind: 'file_contains', path: 'done.md', text: 'DONE' }] }]),
      { match: { purpose: 'act', attempt: 1, turn: 0 }, reply: toolCall('workspace.write', { path: 'done.md', content: 'not yet' }) },
      { match: { purpose: 'act', attempt: 2, turn: 0 }, reply: toolCall('workspace.write', { path: 'done.md', content: 'still not' }) },
      { match: { purpose: 'act', attempt: 3, turn: 0 }, reply: toolCall('workspace.write', { path: 'done.md', content: 'DONE' }) },
      { match: { purpose: 'act' }, reply: { text: 'written' } },
    ],
  };
  const result = await run('retry', script);
  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks[0]).toMatchObject({ attempts: 3, role: 'persistent' });
  expect(result.subtasks[0]!.evidenceIds).toHaveLength(3);
  const passed = await rows<{ attempt: number; passed: boolean }>(`SELECT attempt, passed FROM evidence WHERE task_id = 'retry' ORDER BY attempt`);
  expect(passed).toEqual([
    { attempt: 1, passed: false },
    { attempt: 2, passed: false },
    { attempt: 3, passed: true },
  ]);
  // The second attempt's prompt carried the verifier's feedback.
  const prompts = await rows<{ message: ChatMessage }>(`SELECT message FROM transcript_messages WHERE transcript_id = $1 AND message->>'role' = 'user'`, [`${subtaskWorkflowId('retry', 'r')}/a2`]);
  expect(JSON.stringify(prompts)).toContain('\\"DONE\\" not found in done.md');
  const [row] = await rows(`SELECT role, outcome, attempts FROM embodiments WHERE task_id = 'retry'`);
  expect(row).toEqual({ role: 'persistent', outcome: 'completed', attempts: 3 });
});

test('escalation to a stronger role: a fresh embodiment of it, which passes; both embodiments are recorded', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'e', title: 'Escalate', instructions: 'Write result.md', role: 'junior', acceptanceCriteria: [{ kind: 'file_contains', path: 'result.md', text: 'SENIOR' }] }]),
      { match: { purpose: 'act', role: 'junior', turn: 0 }, reply: toolCall('workspace.write', { path: 'result.md', content: 'junior work' }) },
      { match: { purpose: 'act', role: 'senior', turn: 0 }, reply: toolCall('workspace.write', { path: 'result.md', content: 'SENIOR work' }) },
      { match: { purpose: 'act' }, reply: { text: 'done' } },
    ],
  };
  const result = await run('escalate-role', script);
  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks[0]).toMatchObject({ role: 'senior', roleVersion: '1.0.0', escalations: 1, escalatedFrom: ['junior@1.0.0'], attempts: 2 });
  expect(readFileSync(ws('escalate-role', 'result.md'), 'utf8')).toBe('SENIOR work');
  // Fresh: the senior's model input holds nothing of the junior's transcript.
  const senior = await rows<{ message: ChatMessage }>(`SELECT message FROM transcript_messages WHERE transcript_id = $1 ORDER BY seq`, [`${subtaskWorkflowId('escalate-role', 'e')}/a2`]);
  expect(JSON.stringify(senior)).not.toContain('junior work');
  expect(JSON.stringify(senior)).toContain('You are the senior.');
  const embodiments = await rows(`SELECT role, outcome, attempts FROM embodiments WHERE task_id = 'escalate-role' ORDER BY started_at`);
  expect(embodiments).toEqual([
    { role: 'junior', outcome: 'escalated', attempts: 1 },
    { role: 'senior', outcome: 'completed', attempts: 1 },
  ]);
});

test('escalation that fails too ends in the rollback of everything the embodiments did', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'x', title: 'Escalate and fail', instructions: 'Write', role: 'junior', acceptanceCriteria: [{ kind: 'file_exists', path: 'never.md' }] }]),
      { match: { purpose: 'act', role: 'junior', turn: 0 }, reply: toolCall('workspace.write', { path: 'j.md', content: 'junior' }) },
      { match: { purpose: 'act', role: 'senior', turn: 0 }, reply: toolCall('workspace.write', { path: 's.md', content: 'senior' }) },
      { match: { purpose: 'act' }, reply: { text: 'done' } },
    ],
  };
  const result = await run('escalate-fail', script);
  expect(result.status).toBe('COMPENSATED');
  expect(result.error).toContain('verification failed 1 times');
  expect(existsSync(ws('escalate-fail', 'j.md'))).toBe(false);
  expect(existsSync(ws('escalate-fail', 's.md'))).toBe(false);
  expect(result.compensations.map((c) => c.step.args.path)).toEqual(['s.md', 'j.md']);
  const embodiments = await rows(`SELECT role, outcome FROM embodiments WHERE task_id = 'escalate-fail' ORDER BY started_at`);
  expect(embodiments).toEqual([
    { role: 'junior', outcome: 'escalated' },
    { role: 'senior', outcome: 'failed' },
  ]);
});

test('escalation to a person: failed work waits for an approval; approved, it completes', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'h', title: 'Human', instructions: 'Write', role: 'careful', acceptanceCriteria: [{ kind: 'output_contains', text: 'PERFECT' }] }]),
      { match: { purpose: 'act' }, reply: { text: 'good enough' } },
    ],
  };
  let pending: ApprovalView | undefined;
  const result = await run('escalate-human', script, {}, async () => {
    for (let i = 0; i < 300 && !pending; i++) {
      pending = (await stack.client.approvals('escalate-human').catch(() => [])).find((a) => a.status === 'pending');
      if (!pending) await new Promise((r) => setTimeout(r, 100));
    }
    expect(pending).toMatchObject({ kind: 'verification', target: 'careful@1.0.0', args: { score: 0 } });
    await stack.client.decideApproval('escalate-human', { approvalId: pending!.approvalId, decision: 'approve', reason: 'fine as it is', by: 'erin' });
  });
  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks[0]).toMatchObject({ status: 'completed', approvedBy: 'erin', escalations: 1 });
  const [embodiment] = await rows(`SELECT outcome FROM embodiments WHERE task_id = 'escalate-human'`);
  expect(embodiment).toEqual({ outcome: 'escalated' });
});

test("the task's own acceptance criteria are verified over the combined result; failing them rolls the task back", async () => {
  const script: ScriptInput = {
    rules: [
      planReply([
        { id: 'a', title: 'A', instructions: 'Write a', role: 'senior' },
        { id: 'b', title: 'B', instructions: 'Write b', role: 'senior' },
      ]),
      { match: { purpose: 'act', subtask: 'a', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.md', content: 'alpha' }) },
      { match: { purpose: 'act', subtask: 'b', turn: 0 }, reply: toolCall('workspace.write', { path: 'b.md', content: 'beta' }) },
      { match: { purpose: 'act', subtask: 'a' }, reply: { text: 'wrote alpha' } },
      { match: { purpose: 'act', subtask: 'b' }, reply: { text: 'wrote beta' } },
    ],
  };
  const ok = await run('task-ok', script, { acceptanceCriteria: [{ kind: 'output_contains', text: 'wrote beta' }, { kind: 'file_exists', path: 'a.md' }] });
  expect(ok.status).toBe('COMPLETED');
  expect(ok.verification).toMatchObject({ passed: true, score: 1 });
  const [task] = await rows<{ evidence_id: string }>(`SELECT evidence_id FROM tasks WHERE task_id = 'task-ok'`);
  expect(task!.evidence_id).toBe(ok.verification!.evidenceId);
  const [taskEvidence] = await rows<{ subtask_id: string }>(`SELECT subtask_id FROM evidence WHERE evidence_id = $1`, [ok.verification!.evidenceId]);
  expect(taskEvidence).toEqual({ subtask_id: '(task)' });

  const bad = await run('task-bad', script, { acceptanceCriteria: [{ kind: 'file_contains', path: 'a.md', text: 'omega' }] });
  expect(bad.status).toBe('COMPENSATED');
  expect(bad.error).toContain("the task's acceptance criteria failed: file a.md contains \"omega\"");
  expect(bad.subtasks.every((s) => s.status === 'completed')).toBe(true);
  expect(existsSync(ws('task-bad', 'a.md'))).toBe(false);
  expect(existsSync(ws('task-bad', 'b.md'))).toBe(false);
});
