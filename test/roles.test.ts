import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { type ChatMessage } from '../validation';
import { SEARCH_ATTRIBUTES, subtaskWorkflowId, taskWorkflowId } from '../core/constants';
import { createTestStack, historyOf, localActivities, planReply, scheduledActivities, toolCall, type ScriptInput, type TestStack } from './helpers';

let stack: TestStack;

beforeAll(async () => {
  stack = await createTestStack();
});

afterAll(async () => {
  await stack?.teardown();
});

const who = { actor: 'test' };

/** Every message one subtask's model calls were given (its transcripts, all attempts). */
async function modelInput(taskId: string, subtaskId: string): Promise<ChatMessage[]> {
  const { rows } = await stack.pool.query<{ message: ChatMessage }>(
    `SELECT message FROM transcript_messages WHERE transcript_id LIKE $1 ORDER BY transcript_id, seq`,
    [`${subtaskWorkflowId(taskId, subtaskId)}/%`],
  );
  return rows.map((r) => r.message);
}

async function waitForRoleLoaded(taskId: string, subtaskId: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const { rowCount } = await stack.pool.query(`SELECT 1 FROM audit_events WHERE task_id = $1 AND kind = 'role.loaded' AND data->>'subtaskId' = $2`, [taskId, subtaskId]);
    if (rowCount) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`${subtaskId} never loaded its role`);
}

test('a role version is pinned per embodiment: a publish and a rollback mid-run change nothing in the running one, only in later ones, even across a worker restart', async () => {
  const steps = ['s1', 's2', 's3'].map((id, i) => ({ id, title: `Part ${i + 1}`, instructions: `Write part ${i + 1}`, role: 'writer', dependsOn: i ? [`s${i}`] : [] }));
  const script: ScriptInput = { delayMs: 600, rules: [planReply(steps), { match: { purpose: 'act' }, reply: { text: 'part written' } }] };
  const v2 = { name: 'writer', version: '1.1.0', extends: 'writer@1.0.0', systemPrompt: 'PROMPT-V2: you write in version two style.' };

  await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'pinning', goal: 'write three parts' });
    await waitForRoleLoaded('pinning', 's1');
    await stack.roles.repository.publish(v2, who); // while s1 runs
    await waitForRoleLoaded('pinning', 's2');
    await stack.roles.repository.rollback('writer', { actor: 'test', reason: 'mid-run rollback' }); // while s2 runs
  });
  // A new worker replays the history: the versions already loaded come from it, not from the repository.
  const result = await stack.withWorker(script, () => stack.client.result('pinning'));

  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks.map((s) => [s.id, `${s.role}@${s.roleVersion}`])).toEqual([
    ['s1', 'writer@1.0.0'],
    ['s2', 'writer@1.1.0'],
    ['s3', 'writer@1.0.0'],
  ]);
  const prompts = await Promise.all(['s1', 's2', 's3'].map(async (id) => JSON.stringify(await modelInput('pinning', id))));
  expect(prompts[0]).not.toContain('PROMPT-V2');
  expect(prompts[1]).toContain('PROMPT-V2');
  expect(prompts[1]).not.toContain('You are a technical writer.');
  expect(prompts[2]).not.toContain('PROMPT-V2');

  // The version is in the result rows, the audit trail and the MareRoles search attribute.
  const { rows } = await stack.pool.query(`SELECT subtask_id, role_version FROM subtasks WHERE task_id = 'pinning' ORDER BY subtask_id`);
  expect(rows).toEqual([
    { subtask_id: 's1', role_version: '1.0.0' },
    { subtask_id: 's2', role_version: '1.1.0' },
    { subtask_id: 's3', role_version: '1.0.0' },
  ]);
  const { rows: audit } = await stack.pool.query(`SELECT data->>'role' AS role FROM audit_events WHERE task_id = 'pinning' AND kind = 'subtask.completed' ORDER BY data->>'subtaskId'`);
  expect(audit.map((r: { role: string }) => r.role)).toEqual(['writer@1.0.0', 'writer@1.1.0', 'writer@1.0.0']);
  const found = await listWorkflowIds(`${SEARCH_ATTRIBUTES.roles.name} = 'writer@1.1.0'`, 2);
  expect(found.sort()).toEqual([taskWorkflowId('pinning'), subtaskWorkflowId('pinning', 's2')].sort());
  const description = await stack.env.client.workflow.getHandle(taskWorkflowId('pinning')).describe();
  expect(description.typedSearchAttributes.get(SEARCH_ATTRIBUTES.roles)?.sort()).toEqual(['writer@1.0.0', 'writer@1.1.0']);
});

/** Workflow ids matching a visibility query (the dev server indexes them shortly after they change). */
async function listWorkflowIds(query: string, expected: number): Promise<string[]> {
  let ids: string[] = [];
  for (let i = 0; i < 100 && ids.length < expected; i++) {
    ids = [];
    for await (const wf of stack.env.client.workflow.list({ query })) ids.push(wf.workflowId);
    if (ids.length < expected) await new Promise((r) => setTimeout(r, 100));
  }
  return ids;
}

test('routing: an unknown, deprecated or suspended role is replaced by a handles match or the generalist, and the reason is recorded on the subtask', async () => {
  await stack.roles.repository.publish(
    { name: 'scribe', version: '1.0.0', description: 'Old scribe.', systemPrompt: 'You are a scribe.', handles: [] },
    who,
  );
  await stack.roles.repository.deprecate('scribe', '1.0.0', { actor: 'test', reason: 'replaced by writer' });
  await stack.roles.repository.suspend('reviewer', { actor: 'test', reason: 'too many failed verifications' });
  try {
    const script: ScriptInput = {
      rules: [
        planReply([
          { id: 'poem', title: 'Write a poem', instructions: 'A short poem', role: 'poet' },
          { id: 'notes', title: 'Draft notes', instructions: 'Some notes', role: 'scribe' },
          { id: 'check', title: 'Check the poem', instructions: 'Look at it', role: 'reviewer' },
          { id: 'sing', title: 'Sing', instructions: 'La la', role: 'nobody' },
          { id: 'plain', title: 'Anything', instructions: 'Do it', role: 'writer' },
        ]),
        { match: { purpose: 'act' }, reply: { text: 'done' } },
      ],
    };
    const result = await stack.withWorker(script, async () => {
      await stack.client.submitTask({ taskId: 'routing', goal: 'route things', concurrency: 5 });
      return stack.client.result('routing');
    });
    expect(result.status).toBe('COMPLETED');
    const { rows } = await stack.pool.query(
      `SELECT subtask_id, role, role_requested, role_routed_by, role_fallback_reason FROM subtasks WHERE task_id = 'routing' ORDER BY subtask_id`,
    );
    expect(rows).toEqual([
      {
        subtask_id: 'check',
        role: 'generalist',
        role_requested: 'reviewer',
        role_routed_by: 'default',
        role_fallback_reason: 'role "reviewer@1.0.0" is suspended; using the default "generalist"',
      },
      {
        subtask_id: 'notes',
        role: 'writer',
        role_requested: 'scribe',
        role_routed_by: 'handles',
        role_fallback_reason: 'role "scribe@1.0.0" is deprecated; routed to "writer" by its handles pattern "draft*"',
      },
      { subtask_id: 'plain', role: 'writer', role_requested: 'writer', role_routed_by: 'planner', role_fallback_reason: null },
      {
        subtask_id: 'poem',
        role: 'writer',
        role_requested: 'poet',
        role_routed_by: 'handles',
        role_fallback_reason: 'role "poet" does not exist; routed to "writer" by its handles pattern "write*"',
      },
      {
        subtask_id: 'sing',
        role: 'generalist',
        role_requested: 'nobody',
        role_routed_by: 'default',
        role_fallback_reason: 'role "nobody" does not exist; using the default "generalist"',
      },
    ]);
  } finally {
    await stack.roles.repository.reinstate('reviewer', { actor: 'test', reason: 'test over' });
  }
});

test('each embodiment starts from nothing: one subtask\'s messages, tool results and answer never reach another\'s model input; the recorded digest is that of its injected context', async () => {
  const canary = `CANARY-${Math.random().toString(36).slice(2)}`;
  const script: ScriptInput = {
    rules: [
      planReply([
        { id: 'a', title: 'Keep a secret', instructions: `Remember ${canary}`, role: 'generalist' },
        { id: 'b', title: 'Say hello', instructions: 'Say hello', role: 'generalist' },
      ]),
      { match: { purpose: 'act', subtask: 'a', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.txt', content: `the secret is ${canary}-FILE` }) },
      { match: { purpose: 'act', subtask: 'a', turn: 1 }, reply: toolCall('workspace.read', { path: 'a.txt' }) },
      { match: { purpose: 'act', subtask: 'a' }, reply: { text: `I remember ${canary}-ANSWER` } },
      { match: { purpose: 'act', subtask: 'b' }, reply: { text: 'hello' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'isolation', goal: 'two unrelated things', concurrency: 2 });
    return stack.client.result('isolation');
  });
  expect(result.status).toBe('COMPLETED');
  const a = JSON.stringify(await modelInput('isolation', 'a'));
  const b = JSON.stringify(await modelInput('isolation', 'b'));
  // a's input really holds the canary in its task, its tool result and its own messages …
  expect(a).toContain(`the secret is ${canary}-FILE`);
  expect(a.split(canary).length - 1).toBeGreaterThanOrEqual(3);
  // … and b's holds none of it, in its transcript or in any payload of its workflow history.
  expect(b).toContain('Say hello');
  expect(b).not.toContain(canary);
  const bHistory = JSON.stringify(await historyOf(stack, subtaskWorkflowId('isolation', 'b')));
  expect(bHistory).not.toContain(Buffer.from(canary).toString('base64').slice(0, 12));

  // The digest recorded for b is the sha256 of the first three messages its model was given.
  const first = (await modelInput('isolation', 'b')).slice(0, 3);
  const digest = createHash('sha256').update(JSON.stringify(first)).digest('hex');
  expect(result.subtasks.find((s) => s.id === 'b')?.contextDigests).toEqual([digest]);
  const { rows } = await stack.pool.query(`SELECT context_digests FROM subtasks WHERE task_id = 'isolation' AND subtask_id = 'b'`);
  expect(rows).toEqual([{ context_digests: [digest] }]);
});

test('argument limits of a grant: a write outside the path globs is refused before it becomes an activity', async () => {
  await stack.roles.repository.publish(
    {
      name: 'notetaker',
      version: '1.0.0',
      description: 'Takes notes under notes/.',
      systemPrompt: 'You take notes.',
      tools: [{ tool: 'workspace.write', access: 'write', args: { path: { globs: ['notes/**'] } } }],
    },
    who,
  );
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'n', title: 'Take notes', instructions: 'Note things', role: 'notetaker' }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'src/evil.md', content: 'x' }) },
      { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.write', { path: 'notes/day.md', content: 'noted' }) },
      { match: { purpose: 'act' }, reply: { text: 'noted' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'globs', goal: 'notes' });
    return stack.client.result('globs');
  });
  expect(result.status).toBe('COMPLETED');
  expect(result.subtasks[0]?.deniedToolCalls).toBe(1);
  const events = await historyOf(stack, subtaskWorkflowId('globs', 'n'));
  expect(scheduledActivities(events).filter((a) => a === 'workspace.write')).toHaveLength(1);
  expect(localActivities(events)).toContain('recordToolDenied');
  expect(existsSync(path.join(stack.workspaceRoot, 'globs', 'notes', 'day.md'))).toBe(true);
  expect(existsSync(path.join(stack.workspaceRoot, 'globs', 'src', 'evil.md'))).toBe(false);
  expect(JSON.stringify(await modelInput('globs', 'n'))).toContain('(\\"src/evil.md\\") is outside notes/**');
});

test("a role's total token budget ends the embodiment with BudgetExceeded", async () => {
  await stack.roles.repository.publish(
    { name: 'frugal', version: '1.0.0', description: 'Spends little.', systemPrompt: 'Be brief.', tokenBudget: { context: 2_000, total: 50 } },
    who,
  );
  const script: ScriptInput = {
    rules: [planReply([{ id: 'f', title: 'Frugal work', instructions: 'Do it', role: 'frugal' }]), { match: { purpose: 'act' }, reply: { text: 'done' } }],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'budget', goal: 'spend' });
    return stack.client.result('budget');
  });
  expect(result.status).not.toBe('COMPLETED');
  expect(result.subtasks[0]?.error).toMatch(/BudgetExceeded: \d+ tokens used, the role's budget is 50/);
});

test('a tampered profile is never embodied: the subtask fails with RoleIntegrityError and no model call is made for it', async () => {
  const { rows: saved } = await stack.pool.query<{ ciphertext: Buffer }>(`SELECT ciphertext FROM role_versions WHERE name = 'reviewer' AND version = '1.0.0'`);
  await stack.pool.query(`UPDATE role_versions SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 255) WHERE name = 'reviewer'`);
  try {
    const script: ScriptInput = {
      rules: [planReply([{ id: 'r', title: 'Review', instructions: 'Review it', role: 'reviewer' }]), { match: { purpose: 'act' }, reply: { text: 'fine' } }],
    };
    const result = await stack.withWorker(script, async () => {
      await stack.client.submitTask({ taskId: 'tampered', goal: 'review' });
      return stack.client.result('tampered');
    });
    expect(result.status).not.toBe('COMPLETED');
    expect(result.subtasks[0]?.error).toContain('failed its integrity check');
    const { rows: acts } = await stack.pool.query(`SELECT 1 FROM model_calls WHERE task_id = 'tampered' AND purpose = 'act'`);
    expect(acts).toHaveLength(0);
    const { rows: audit } = await stack.pool.query(`SELECT data->>'role' AS role FROM audit_events WHERE task_id = 'tampered' AND kind = 'role.rejected'`);
    expect(audit).toEqual([{ role: 'reviewer@1.0.0' }]);
  } finally {
    await stack.pool.query(`UPDATE role_versions SET ciphertext = $1 WHERE name = 'reviewer' AND version = '1.0.0'`, [saved[0]!.ciphertext]);
  }
});
