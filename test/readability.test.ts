import { execFile } from 'node:child_process';
import path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { resolveTemporalCli } from '../dev/temporal';
import { SEARCH_ATTRIBUTES, subtaskWorkflowId, taskWorkflowId } from '../core/constants';
import { webUiLinks } from '../client/render';
import { createTestStack, historyOf, planReply, toolCall, type ScriptInput, type TestStack } from './helpers';

let stack: TestStack;
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');

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
  const summaries = events.filter((e) => e.activityTaskScheduledEventAttributes).map(summaryOf);
  expect(summaries).toEqual(['act: model call 1 of attempt 1 [writer]', 'workspace.write notes.md [writer] a1', 'act: model call 2 of attempt 1 [writer]']);
  const parent = await historyOf(stack, taskWorkflowId('readable'));
  const decompose = parent.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'decompose');
  expect(summaryOf(decompose)).toBe(`plan: ${goal.slice(0, 79)}…`);
  // Every bookkeeping step (a local activity, recorded as a marker) says what it did.
  const markers = (history: typeof events): string[] => history.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity').map(summaryOf);
  expect(markers(parent)).toEqual(['validate and record task readable', "record the task's end: COMPLETED"]);
  // (its criteria are quick checks, so the verifier is a local activity too)
  expect(markers(events)).toEqual(['embody writer for notes: role, tools, policies', 'verify attempt 1 [writer]', 'record subtask notes: completed, 1 embodiment(s)']);
});

/** The one-line summary the Web UI shows on an event (activity, marker, timer). */
function summaryOf(e: { userMetadata?: { summary?: { data?: Uint8Array | null } | null } | null } | undefined): string {
  const data = e?.userMetadata?.summary?.data;
  return data?.length ? (JSON.parse(Buffer.from(data).toString()) as string) : '';
}

test('undo steps name the call they undo: tool, target, subtask and attempt', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'w', title: 'Write', instructions: 'Write', role: 'writer', acceptanceCriteria: [{ kind: 'file_contains', path: 'changelog/summary.md', text: 'IMPOSSIBLE' }] }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'changelog/summary.md', content: 'x' }) },
      { match: { purpose: 'act' }, reply: { text: 'wrote it' } },
    ],
  };
  const result = await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'undo-names', goal: 'an edit that is rolled back' });
    return stack.client.result('undo-names');
  });
  expect(result.status).toBe('COMPENSATED');
  const undo = (await historyOf(stack, taskWorkflowId('undo-names'))).filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'compensate').map(summaryOf);
  expect(undo).toEqual(['undo workspace.write changelog/summary.md (w, a2): restore', 'undo workspace.write changelog/summary.md (w, a1): restore']);
});

test('a task waiting for a person says so on the task: MarePendingApproval, current details and the deadline timer name the tool, target and reason', async () => {
  await stack.policies.repository.publish(
    { schemaVersion: 1, name: 'ask', version: '1.0.0', rules: [{ id: 'ask-writes', when: { targets: ['workspace.write'] }, decision: 'escalate', reason: 'writes need a person', approval: { timeoutSeconds: 600, onTimeout: 'deny' } }] },
    { actor: 'test' },
  );
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'w', title: 'Write', instructions: 'Write', role: 'writer' }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'x.md', content: 'x' }) },
      { match: { purpose: 'act' }, reply: { text: 'gave up' } },
    ],
  };
  const taskRun = taskWorkflowId('timer-summary');
  const pendingOnTask = async (): Promise<string[]> => {
    const { searchAttributes } = await stack.env.client.workflow.getHandle(taskRun).describe();
    return (searchAttributes?.[SEARCH_ATTRIBUTES.pendingApproval.name] as string[] | undefined) ?? [];
  };
  await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'timer-summary', goal: 'a write that waits' });
    // Waits on state: the task's own run shows the subtask's pending approval.
    for (let i = 0; i < 600 && !(await pendingOnTask()).includes('w-1'); i++) await new Promise((r) => setTimeout(r, 100));
    expect(await pendingOnTask()).toEqual(['w-1']);
    const found: string[] = [];
    for await (const wf of stack.env.client.workflow.list({ query: `${SEARCH_ATTRIBUTES.pendingApproval.name} = 'w-1' AND WorkflowType = 'orchestrateTask'` })) found.push(wf.workflowId);
    expect(found).toEqual([taskRun]);
    expect((await metadataOf(taskRun)).current).toContain('approval `w-1`: workspace.write x.md: writes need a person');
    await stack.client.decideApproval('timer-summary', { approvalId: 'w-1', decision: 'deny', reason: 'not now', by: 'tester' });
    await stack.client.result('timer-summary');
    expect((await metadataOf(taskRun)).current).not.toContain('Waiting for a person');
  });
  await stack.policies.repository.disable('ask', { actor: 'test', reason: 'done' });
  expect(await pendingOnTask()).toEqual([]);
  const events = await historyOf(stack, subtaskWorkflowId('timer-summary', 'w'));
  const timer = events.find((e) => e.timerStartedEventAttributes);
  expect(summaryOf(timer)).toBe('approval w-1: workspace.write x.md: writes need a person; deadline, then deny');
  expect(events.some((e) => e.timerCanceledEventAttributes)).toBe(true);
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

test('mare dev prints ready-made Web UI links: tasks, tasks that did not complete, pending approvals, and the columns to add', () => {
  const links = webUiLinks('http://127.0.0.1:8233/', 'default');
  const query = (line: string | undefined): string => decodeURIComponent(new URL(line!.split(/\s+/).at(-1)!).searchParams.get('query') ?? '');
  expect(links[0]).toMatch(/^Tasks: +http:\/\/127\.0\.0\.1:8233\/namespaces\/default\/workflows\?query=/);
  expect(query(links[0])).toBe("WorkflowType = 'orchestrateTask'");
  expect(query(links[1])).toBe("WorkflowType = 'orchestrateTask' AND MareTaskStatus IN ('COMPENSATED', 'FAILED')");
  expect(query(links[2])).toBe("MarePendingApproval IS NOT NULL AND ExecutionStatus = 'Running'");
  expect(links[3]).toContain('MareTaskStatus, MareTaskId, MareRoles, MarePendingApproval');
});
