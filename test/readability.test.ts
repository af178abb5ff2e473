import { execFile } from 'node:child_process';
import path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { resolveTemporalCli } from '../scripts/stack/temporal';
import { SEARCH_ATTRIBUTES, subtaskWorkflowId, taskWorkflowId } from '../schemas';
import { createTestStack, historyOf, planReply, toolCall, type ScriptInput, type TestStack } from './helpers';

let stack: TestStack;
const CLI = path.join(__dirname, '..', 'dist', 'client', 'cli.js');

beforeAll(async () => {
  stack = await createTestStack();
});

afterAll(async () => {
  await stack?.teardown();
});

/** The Web UI's view of a run: its summary, details and current details. */
async function metadataOf(workflowId: string): Promise<{ summary?: string; details?: string; current?: string }> {
  const handle = stack.env.client.workflow.getHandle(workflowId);
  const description = await handle.describe();
  const meta = await handle.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
  return { summary: await description.staticSummary(), details: await description.staticDetails(), current: meta.currentDetails };
}

test('runs are readable in the Web UI: summaries, details, current details, activity and timer summaries, search attributes and memo found by a visibility query', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'notes', title: 'Write the notes', instructions: 'Write notes.md', role: 'writer' }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'notes.md', content: '# Notes' }) },
      { match: { purpose: 'act' }, reply: { text: 'wrote the notes' } },
    ],
  };
  const goal = 'Write the release notes for version 2, with a section on upgrades and one on known issues';
  await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'readable', goal, tenant: 'acme' });
    await stack.client.result('readable');
    const task = await metadataOf(taskWorkflowId('readable'));
    expect(task.summary).toBe(goal);
    expect(task.details).toContain('**Task** `readable` (tenant `acme`)');
    expect(task.current).toBe('done: COMPLETED');
    const child = await metadataOf(subtaskWorkflowId('readable', 'notes'));
    expect(child.summary).toBe('notes: Write the notes [writer]');
    expect(child.details).toContain('Write notes.md');
    expect(child.current).toBe('writer@1.0.0 · attempt 1: verified (score 1.00)');
  });

  const list = async (query: string) => {
    const found = [];
    for await (const wf of stack.env.client.workflow.list({ query })) found.push(wf);
    return found;
  };
  // The task and its subtask both carry the task id and the role version.
  const both = await list(`${SEARCH_ATTRIBUTES.taskId.name} = 'readable' AND ${SEARCH_ATTRIBUTES.roles.name} = 'writer@1.0.0'`);
  expect(both.map((w) => w.workflowId).sort()).toEqual([taskWorkflowId('readable'), subtaskWorkflowId('readable', 'notes')].sort());
  const [task] = await list(`${SEARCH_ATTRIBUTES.taskId.name} = 'readable' AND ${SEARCH_ATTRIBUTES.taskStatus.name} = 'COMPLETED' AND ${SEARCH_ATTRIBUTES.tenant.name} = 'acme'`);
  expect(task?.workflowId).toBe(taskWorkflowId('readable'));
  expect(task?.memo).toEqual({ goal, tenant: 'acme', planSize: 1 });

  const events = await historyOf(stack, subtaskWorkflowId('readable', 'notes'));
  const summaries = events
    .filter((e) => e.activityTaskScheduledEventAttributes)
    .map((e) => Buffer.from(e.userMetadata?.summary?.data ?? []).toString())
    .map((s) => (s ? (JSON.parse(s) as string) : ''));
  expect(summaries).toEqual(['act: model call 1 of attempt 1 [writer]', 'workspace.write for role writer', 'act: model call 2 of attempt 1 [writer]', 'verify attempt 1 [writer]']);
  const parent = await historyOf(stack, taskWorkflowId('readable'));
  const decompose = parent.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'decompose');
  expect(JSON.parse(Buffer.from(decompose?.userMetadata?.summary?.data ?? []).toString())).toBe(`plan: ${goal.slice(0, 79)}…`);
});

test('an approval deadline is a timer with a summary', async () => {
  await stack.policies.repository.publish(
    { schemaVersion: 1, name: 'ask', version: '1.0.0', rules: [{ id: 'ask-writes', when: { targets: ['workspace.write'] }, decision: 'escalate', reason: 'writes need a person', approval: { timeoutSeconds: 1, onTimeout: 'deny' } }] },
    { actor: 'test' },
  );
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'w', title: 'Write', instructions: 'Write', role: 'writer' }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'x.md', content: 'x' }) },
      { match: { purpose: 'act' }, reply: { text: 'gave up' } },
    ],
  };
  await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'timer-summary', goal: 'a write that waits' });
    await stack.client.result('timer-summary');
  });
  await stack.policies.repository.disable('ask', { actor: 'test', reason: 'done' });
  const events = await historyOf(stack, subtaskWorkflowId('timer-summary', 'w'));
  const timer = events.find((e) => e.timerStartedEventAttributes);
  expect(JSON.parse(Buffer.from(timer?.userMetadata?.summary?.data ?? []).toString())).toBe('approval w-1: deadline, then deny');
  expect(events.some((e) => e.timerFiredEventAttributes)).toBe(true);
});

test('mare setup registers the search attributes a cluster lacks, and only those', async () => {
  const cli = await resolveTemporalCli();
  const bare = await TestWorkflowEnvironment.createLocal({ server: { executable: { type: 'existing-path', path: cli }, searchAttributes: [] } });
  try {
    const run = (): Promise<{ code: number; stdout: string; stderr: string }> =>
      new Promise((resolve) => {
        execFile(process.execPath, [CLI, 'setup', '--json'], { env: { ...process.env, TEMPORAL_ADDRESS: bare.address, TEMPORAL_NAMESPACE: 'default' } }, (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        );
      });
    const first = await run();
    expect(first.code).toBe(0);
    const names = Object.values(SEARCH_ATTRIBUTES).map((k) => k.name).sort();
    expect((JSON.parse(first.stdout) as { added: string[] }).added.sort()).toEqual(names);
    const second = await run();
    expect(JSON.parse(second.stdout)).toMatchObject({ added: [], existing: expect.arrayContaining(names) });
    const listed = await bare.connection.operatorService.listSearchAttributes({ namespace: 'default' });
    expect(Object.keys(listed.customAttributes ?? {})).toEqual(expect.arrayContaining(names));
  } finally {
    await bare.teardown();
  }
});
