import { readFileSync } from 'node:fs';
import path from 'node:path';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { DeterminismViolationError } from '@temporalio/workflow';
import { Worker } from '@temporalio/worker';
import { quietRuntime } from './helpers';
import { BUNDLE_PATH } from './paths';

beforeAll(quietRuntime);

// One recorded history per workflow type, from today's code (`npm run histories` re-records them).
// Until the first release (1.0) workflow code changes without patches and these are re-recorded
// (docs/changing-workflow-code.md); from then on, a history of each released version stays here.
const load = (file: string): unknown => JSON.parse(readFileSync(path.join(__dirname, 'histories', file), 'utf8'));
const workflowBundle = (): { code: string } => ({ code: readFileSync(BUNDLE_PATH, 'utf8') });

test.each([
  ['orchestrateTask.happy.json', 'mare-task-happy'],
  ['executeSubtask.draft.json', 'mare-task-happy--draft'],
  ['superviseRole.retiree.json', 'mare-role-supervisor-retiree'],
  // From the replay fault test: a subtask that waited for a person twice while queried every 50 ms,
  // evicted from a cache of 3 and moved across a SIGKILLed and a SIGTERMed worker.
  ['executeSubtask.query-load.json', 'mare-task-replay-04--publish'],
])('the recorded history %s replays against today\'s workflow code', async (file, workflowId) => {
  await expect(Worker.runReplayHistory({ workflowBundle: workflowBundle() }, load(file), workflowId)).resolves.toBeUndefined();
});

test('a history from code that scheduled different steps fails with DeterminismViolationError', async () => {
  // Same recording, but as if another version had scheduled another activity for the plan.
  const history = historyFromJSON(load('orchestrateTask.happy.json'));
  const scheduled = history.events?.find((e) => e.activityTaskScheduledEventAttributes)?.activityTaskScheduledEventAttributes;
  expect(scheduled?.activityType?.name).toBe('decompose');
  scheduled!.activityType!.name = 'decomposeV0';
  await expect(Worker.runReplayHistory({ workflowBundle: workflowBundle() }, history, 'mare-task-happy')).rejects.toThrow(DeterminismViolationError);
});

test('the subtask history that exposed the query race (pre-1.0 code, issue 14) does not replay: its patch marker came a workflow task late', async () => {
  // Recorded by the replay fault test on the code before workflowVersions(): a query answered while
  // loadRole ran let Core complete the task early, so patched('role-version-search-attribute') wrote
  // its marker in the next task. Any replay of such a run fails; today's code takes no decision there.
  const replay = Worker.runReplayHistory({ workflowBundle: workflowBundle() }, load('executeSubtask.pre-1.0-query-race.json'), 'mare-task-replay-00--draft');
  await expect(replay).rejects.toThrow(DeterminismViolationError);
  await expect(replay).rejects.toThrow(/patch marker|role-version-search-attribute/);
});
