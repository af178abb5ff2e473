import { readFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { createModelClient } from '../infra/models/model';
import { TASK_QUEUES, taskWorkflowId, subtaskWorkflowId, type QueueKind } from '../core/constants';
import { createMareWorker, type MareWorker } from '../workers/worker';
import { deploymentFromEnv, DeploymentConfigError, setCurrentVersion } from '../workers/versioning';
import { queueTuningVar, workerTuningFromEnv } from '../workers/tuning';
import { builtinToolDeps, createTestStack, historyOf, type ScriptInput, type TestStack } from './helpers';
import { BUNDLE_PATH } from './paths';

let stack: TestStack;
const demoScript = JSON.parse(readFileSync(path.join(__dirname, '..', 'scripts', 'demo-script.json'), 'utf8')) as ScriptInput;

beforeAll(async () => {
  stack = await createTestStack();
});
afterAll(async () => {
  await stack?.teardown();
});

function workers(queues: QueueKind[], extra: { deployment?: { deploymentName: string; buildId: string } } = {}): Promise<MareWorker> {
  const model = createModelClient({ provider: 'scripted', modelId: stack.writeScript({ ...demoScript, delayMs: 0 }) });
  return createMareWorker({
    connection: stack.env.nativeConnection,
    workflowBundle: { code: readFileSync(BUNDLE_PATH, 'utf8') },
    queues,
    deps: { pool: stack.pool, model, roles: stack.roles, policies: stack.policies, ...builtinToolDeps(), workspaceRoot: stack.workspaceRoot, logger: pino({ level: 'silent' }) },
    shutdownGraceTime: '1 second',
    ...extra,
  });
}

/** Task queue of every scheduled activity in a history, by activity type. */
async function queuesOf(workflowId: string): Promise<Record<string, string[]>> {
  const byType: Record<string, string[]> = {};
  for (const e of await historyOf(stack, workflowId)) {
    const a = e.activityTaskScheduledEventAttributes;
    if (!a?.activityType?.name) continue;
    (byType[a.activityType.name] ??= []).push(a.taskQueue?.name ?? '');
  }
  return byType;
}

test('model calls and tool calls run on their own task queues; a worker serving only orchestration leaves them waiting until a models+tools worker comes', async () => {
  const orchestration = await workers(['orchestration']);
  await orchestration.runUntil(async () => {
    await stack.client.submitTask({ taskId: 'split', goal: 'Write a short guide to durable execution' });
    // The plan is a model call: nobody serves mare-models yet, so it waits, unstarted.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    const pending = (await stack.env.client.workflow.getHandle(taskWorkflowId('split')).describe()).raw.pendingActivities ?? [];
    expect(pending.map((p) => [p.activityType?.name, p.attempt, p.lastStartedTime ?? null])).toEqual([['decompose', 1, null]]);

    const rest = await workers(['models', 'tools']);
    const result = await rest.runUntil(() => stack.client.result('split'));
    expect(result.status).toBe('COMPLETED');
  });

  const task = await queuesOf(taskWorkflowId('split'));
  expect(task.decompose).toEqual([TASK_QUEUES.models]);
  // The draft's criteria include a judged one: its verifier makes model calls, on the models queue.
  // (The outline's are quick file checks, verified in a local activity of the orchestration worker.)
  const child = await queuesOf(subtaskWorkflowId('split', 'draft'));
  expect(new Set(child.callModel)).toEqual(new Set([TASK_QUEUES.models]));
  expect(new Set(child.verify)).toEqual(new Set([TASK_QUEUES.models]));
  expect(new Set(child['workspace.write'])).toEqual(new Set([TASK_QUEUES.tools]));
  expect((await queuesOf(subtaskWorkflowId('split', 'outline'))).verify).toBeUndefined();
}, 120_000);

test('with worker versioning a task and its subtasks are pinned to the build they started on', async () => {
  const v1 = { deploymentName: 'mare-test', buildId: 'build-1' };
  const versioned = await workers(['orchestration', 'models', 'tools'], { deployment: v1 });
  await versioned.runUntil(async () => {
    await setCurrentVersion(stack.env.connection, 'default', v1);
    await stack.client.submitTask({ taskId: 'pinned', goal: 'Write a short guide to durable execution' });
    expect((await stack.client.result('pinned')).status).toBe('COMPLETED');
  });
  const info = (await stack.env.client.workflow.getHandle(taskWorkflowId('pinned')).describe()).raw.workflowExecutionInfo?.versioningInfo;
  expect(info?.behavior).toBe(1); // VERSIONING_BEHAVIOR_PINNED
  expect(info?.deploymentVersion).toMatchObject(v1);
  const first = (await stack.client.result('pinned')).plan.subtasks[0]!.id;
  const child = (await stack.env.client.workflow.getHandle(subtaskWorkflowId('pinned', first)).describe()).raw.workflowExecutionInfo?.versioningInfo;
  expect(child?.behavior).toBe(1);
  expect(child?.deploymentVersion).toMatchObject(v1);
}, 120_000);

test('deployment and per-queue tuning come from the environment; half a version is a typed error', () => {
  expect(deploymentFromEnv({})).toBeUndefined();
  expect(deploymentFromEnv({ MARE_DEPLOYMENT_NAME: 'mare', MARE_BUILD_ID: '2026-12-03.1' })).toEqual({ deploymentName: 'mare', buildId: '2026-12-03.1' });
  expect(() => deploymentFromEnv({ MARE_BUILD_ID: 'b1' })).toThrow(DeploymentConfigError);
  expect(() => deploymentFromEnv({ MARE_DEPLOYMENT_NAME: 'mare', MARE_BUILD_ID: 'has space' })).toThrow(/MARE_BUILD_ID/);

  expect(queueTuningVar('MARE_MAX_TASK_QUEUE_ACTIVITIES_PER_SECOND', 'models')).toBe('MARE_MODELS_MAX_TASK_QUEUE_ACTIVITIES_PER_SECOND');
  const env = { MARE_MAX_ACTIVITIES: '50', MARE_MODELS_MAX_TASK_QUEUE_ACTIVITIES_PER_SECOND: '5' };
  expect(workerTuningFromEnv(env, 'models')).toEqual({ maxConcurrentActivityTaskExecutions: 50, maxTaskQueueActivitiesPerSecond: 5 });
  expect(workerTuningFromEnv(env, 'tools')).toEqual({ maxConcurrentActivityTaskExecutions: 50 });
  expect(() => workerTuningFromEnv({ MARE_TOOLS_MAX_ACTIVITIES: '0' }, 'tools')).toThrow(/MARE_TOOLS_MAX_ACTIVITIES/);
});
