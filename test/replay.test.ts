import { readFileSync } from 'node:fs';
import path from 'node:path';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { DeterminismViolationError } from '@temporalio/workflow';
import { Worker } from '@temporalio/worker';
import { quietRuntime } from './helpers';
import { BUNDLE_PATH } from './paths';

beforeAll(quietRuntime);

// The current ones (one per workflow type) are recorded with `npm run histories`; re-record
// only on purpose. The v1 ones come from code before bookkeeping became local activities (the
// `bookkeeping-as-local-activities` patch), the v2 ones from code before MCP tools, policies and
// approvals (the `tools-policies-approvals` patch), the v3 ones from code before verification gates
// and reliability records (the `verification-gates` patch), the v4 ones from code before the Web UI
// readability change (the `web-ui-readability` patch), the v5 ones from code before model and tool
// calls got their own task queues (the `task-queues-by-kind` patch): they must keep replaying for
// runs started back then.
const load = (file: string): unknown => JSON.parse(readFileSync(path.join(__dirname, 'histories', file), 'utf8'));
const workflowBundle = (): { code: string } => ({ code: readFileSync(BUNDLE_PATH, 'utf8') });

test.each([
  ['orchestrateTask.happy.json', 'mare-task-happy'],
  ['executeSubtask.draft.json', 'mare-task-happy--draft'],
  ['superviseRole.retiree.json', 'mare-role-supervisor-retiree'],
  ['orchestrateTask.happy.v5-web-ui.json', 'mare-task-happy'],
  ['executeSubtask.draft.v5-web-ui.json', 'mare-task-happy--draft'],
  ['orchestrateTask.happy.v4-gates.json', 'mare-task-happy'],
  ['executeSubtask.draft.v4-gates.json', 'mare-task-happy--draft'],
  ['orchestrateTask.happy.v3-tools-policies.json', 'mare-task-happy'],
  ['executeSubtask.draft.v3-tools-policies.json', 'mare-task-happy--draft'],
  ['orchestrateTask.happy.v2-builtin-tools.json', 'mare-task-happy'],
  ['executeSubtask.draft.v2-builtin-tools.json', 'mare-task-happy--draft'],
  ['orchestrateTask.happy.v1-remote-bookkeeping.json', 'mare-task-happy'],
  ['executeSubtask.draft.v1-remote-bookkeeping.json', 'mare-task-happy--draft'],
])('the recorded history %s replays against today\'s workflow code', async (file, workflowId) => {
  await expect(Worker.runReplayHistory({ workflowBundle: workflowBundle() }, load(file), workflowId)).resolves.toBeUndefined();
});

test('a history from code that scheduled different steps fails with DeterminismViolationError', async () => {
  // Same recording, but as if an older version had called another activity first.
  const history = historyFromJSON(load('orchestrateTask.happy.v1-remote-bookkeeping.json'));
  const scheduled = history.events?.find((e) => e.activityTaskScheduledEventAttributes)?.activityTaskScheduledEventAttributes;
  expect(scheduled?.activityType?.name).toBe('recordTaskStarted');
  scheduled!.activityType!.name = 'recordTaskStartedV0';
  await expect(Worker.runReplayHistory({ workflowBundle: workflowBundle() }, history, 'mare-task-happy')).rejects.toThrow(DeterminismViolationError);
});
