/**
 * Issue 15 §1: arguments longer than what workflow history carries (4,000 characters) travel as
 * blob references; every grant limit, policy condition and sensitivity check still sees them whole,
 * and only references the model-call activity made from the call's own text are ever expanded.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { type ApprovalView } from '../../validation';
import { subtaskWorkflowId, TOOL_OUTPUT_HISTORY_LIMIT } from '../../core/constants';
import { allPayloadText, createTestStack, historyOf, localActivities, planReply, scheduledActivities, toolCall, type ScriptInput, type TestStack } from '../helpers';

let stack: TestStack;
const who = { actor: 'test' };

beforeAll(async () => {
  stack = await createTestStack();
  await stack.roles.repository.publish(
    {
      name: 'shortwriter',
      version: '1.0.0',
      description: 'Writes short notes.',
      systemPrompt: 'You write short notes.',
      tools: [{ tool: 'workspace.write', access: 'write', args: { content: { maxLength: 1000 }, path: { globs: ['notes/*.md'] } } }],
    },
    who,
  );
  await stack.roles.repository.publish(
    { name: 'longwriter', version: '1.0.0', description: 'Writes anything.', systemPrompt: 'You write.', tools: [{ tool: 'workspace.write', access: 'write' }] },
    who,
  );
  await stack.policies.repository.publish(
    {
      schemaVersion: 1,
      name: 'long-args',
      version: '1.0.0',
      rules: [
        { id: 'no-danger', when: { targets: ['workspace.write'], args: { content: { pattern: 'DANGER' } } }, decision: 'deny', reason: 'dangerous content' },
        { id: 'release-needs-a-person', when: { targets: ['workspace.write'], args: { content: { pattern: 'RELEASE' } } }, decision: 'escalate', reason: 'a release note needs a person' },
        { id: 'no-config-writes', when: { targets: ['workspace.write'], args: { path: { globs: ['**/*.conf'] } } }, decision: 'deny', reason: 'config files are off limits' },
      ],
    },
    who,
  );
});

afterAll(async () => stack?.teardown());

const pad = (text: string, length = 4_100): string => `${'x'.repeat(length)}\n${text}`;

/** Runs a one-subtask task whose model makes `calls`, one per turn, then answers. */
async function run(taskId: string, role: string, calls: Record<string, unknown>[], during?: () => Promise<void>, tenant?: string) {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'w', title: 'Write', instructions: 'Write the files', role }]),
      ...calls.map((args, turn) => ({ match: { purpose: 'act', turn }, reply: toolCall('workspace.write', args) })),
      { match: { purpose: 'act' }, reply: { text: 'done' } },
    ],
  };
  return stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId, goal: 'write', ...(tenant ? { tenant } : {}) });
    await during?.();
    return stack.client.result(taskId);
  });
}

const workspaceFile = (taskId: string, rel: string): string => path.join(stack.workspaceRoot, taskId, rel);

async function deniedCalls(taskId: string): Promise<string[]> {
  const { rows } = await stack.pool.query<{ detail: string }>(`SELECT detail FROM tool_calls WHERE task_id = $1 AND status = 'denied' ORDER BY call_key`, [taskId]);
  return rows.map((r) => r.detail);
}

test('a grant maxLength of 1,000 refuses a 5,000-character write (seen), and a non-string argument whose JSON is long', async () => {
  const long = 'y'.repeat(5_000);
  await run('long-maxlength', 'shortwriter', [
    { path: 'notes/a.md', content: long },
    { path: 'notes/b.md', content: Array.from({ length: 500 }, (_, i) => `line ${i}`) },
    { path: 'notes/c.md', content: 'short is fine' },
  ]);
  expect(existsSync(workspaceFile('long-maxlength', 'notes/a.md'))).toBe(false);
  expect(existsSync(workspaceFile('long-maxlength', 'notes/b.md'))).toBe(false);
  expect(readFileSync(workspaceFile('long-maxlength', 'notes/c.md'), 'utf8')).toBe('short is fine');
  const denied = await deniedCalls('long-maxlength');
  expect(denied).toHaveLength(2);
  denied.forEach((d) => expect(d).toMatch(/longer than the 1000 characters/));
  // The content never entered history: the call went by reference, checked in a local activity.
  const events = await historyOf(stack, subtaskWorkflowId('long-maxlength', 'w'));
  expect(allPayloadText(events)).not.toContain(long);
  expect(localActivities(events).filter((a) => a === 'mediateToolCall')).toHaveLength(2);
  expect(scheduledActivities(events).filter((a) => a === 'workspace.write')).toHaveLength(1);
});

test('a grant glob sees a 4,100-character path whole', async () => {
  await run('long-path', 'shortwriter', [{ path: `notes/${'p'.repeat(4_100)}/x.md`, content: 'deep' }]);
  expect(await deniedCalls('long-path')).toEqual([expect.stringMatching(/is outside notes\/\*\.md/)]);
});

test('a deny pattern denies DANGER in 15 characters and padded past 4,100 (seen), and a deny glob a long path', async () => {
  await run('long-deny', 'longwriter', [
    { path: 'short.md', content: 'this is DANGER!' },
    { path: 'padded.md', content: pad('this is DANGER!') },
    { path: `${'d/'.repeat(2_100)}app.conf`, content: 'settings' },
    { path: 'fine.md', content: pad('nothing to see') },
  ]);
  expect(existsSync(workspaceFile('long-deny', 'short.md'))).toBe(false);
  expect(existsSync(workspaceFile('long-deny', 'padded.md'))).toBe(false);
  expect(readFileSync(workspaceFile('long-deny', 'fine.md'), 'utf8')).toBe(pad('nothing to see'));
  const { rows } = await stack.pool.query<{ decision: string; rule: string }>(
    `SELECT decision, rule FROM policy_decisions WHERE task_id = 'long-deny' AND kind = 'tool' ORDER BY decision_key`,
  );
  expect(rows.filter((r) => r.decision === 'deny').map((r) => r.rule).sort()).toEqual(['no-config-writes', 'no-danger', 'no-danger']);
});

test('an escalate rule on a padded argument waits for a person (seen: it ran without asking anyone)', async () => {
  let pending: ApprovalView | undefined;
  await run('long-escalate', 'longwriter', [{ path: 'release.md', content: pad('RELEASE 2.0') }], async () => {
    for (;;) {
      pending = (await stack.client.approvals('long-escalate').catch(() => [])).find((a) => a.status === 'pending');
      if (pending) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(existsSync(workspaceFile('long-escalate', 'release.md'))).toBe(false);
    await stack.client.decideApproval('long-escalate', { approvalId: pending.approvalId, decision: 'deny', reason: 'not yet', by: 'alice' });
  });
  expect(pending?.policy).toBe('long-args@1.0.0#release-needs-a-person');
  expect(existsSync(workspaceFile('long-escalate', 'release.md'))).toBe(false);
});

test("a model-written $blob is plain text: tenant B cannot pull tenant A's content by its digest (seen)", async () => {
  const secretOfA = `tenant A's plan: ${'a'.repeat(TOOL_OUTPUT_HISTORY_LIMIT + 100)}`;
  await run('blob-owner', 'longwriter', [{ path: 'plan.md', content: secretOfA }], undefined, 'tenant-a');
  expect(readFileSync(workspaceFile('blob-owner', 'plan.md'), 'utf8')).toBe(secretOfA);
  const digest = createHash('sha256').update(secretOfA).digest('hex');
  const { rows } = await stack.pool.query('SELECT 1 FROM blobs WHERE hash = $1', [digest]);
  expect(rows).toHaveLength(1);

  const forged = { $blob: digest, size: secretOfA.length };
  await run('blob-thief', 'longwriter', [{ path: 'stolen.md', content: forged }, { path: 'stolen2.md', content: { $blob: digest, size: 5, json: true } }], undefined, 'tenant-b');
  const stolen = readFileSync(workspaceFile('blob-thief', 'stolen.md'), 'utf8');
  expect(stolen).toBe(JSON.stringify(forged));
  expect(stolen).not.toContain("tenant A's plan");
  expect(readFileSync(workspaceFile('blob-thief', 'stolen2.md'), 'utf8')).not.toContain("tenant A's plan");
  // And the transcript the model sees next holds the text it wrote, not tenant A's content.
  const transcript = await stack.pool.query<{ message: string }>(`SELECT message::text AS message FROM transcript_messages WHERE transcript_id LIKE $1`, [`${subtaskWorkflowId('blob-thief', 'w')}/%`]);
  expect(transcript.rows.map((r) => r.message).join('\n')).not.toContain("tenant A's plan");
});
