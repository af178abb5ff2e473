import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  ChildWorkflowFailure,
  executeChild,
  isCancellation,
  patched,
  setCurrentDetails,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { CompensationOutcome, Plan, Subtask, SubtaskResult, TaskProgress, TaskRequest, TaskResult, UndoStep } from '../schemas';
import { oneLine, SEARCH_ATTRIBUTES, subtaskWorkflowId, TASK_SCOPE } from '../schemas/constants';
import { addUsage, ZERO_USAGE } from '../schemas/usage';
import { bookkeeping, compensations, modelsWith, type Bookkeeping } from './activityProfiles';
import { progressQuery } from './definitions';
import { errorMessage } from './errors';
import { executeSubtask } from './executeSubtask';

type Settled = { id: string; ok: true; result: SubtaskResult } | { id: string; ok: false; partial?: SubtaskResult; error: string; cancelled: boolean };

/**
 * The story of one task: decompose it into a plan, run each subtask as a child workflow once its
 * dependencies are done, and, if the task cannot be completed, roll back everything in reverse.
 */
export async function orchestrateTask(input: TaskRequest): Promise<TaskResult> {
  const progress: TaskProgress = { taskId: input.taskId, status: 'RUNNING', phase: 'planning', subtasks: [] };
  setHandler(progressQuery, () => progress);
  const { store, local } = bookkeeping();
  // Runs started before the Web UI readability change keep the search attributes their histories set.
  const readable = patched('web-ui-readability');
  const statusKey = readable ? SEARCH_ATTRIBUTES.taskStatus : SEARCH_ATTRIBUTES.status;
  const tag = (tenant: string): void =>
    upsertSearchAttributes([
      { key: statusKey, value: 'RUNNING' },
      { key: SEARCH_ATTRIBUTES.tenant, value: tenant },
      ...(readable ? [{ key: SEARCH_ATTRIBUTES.taskId, value: input.taskId }] : []),
    ]);
  /** What the Web UI shows as the run's current step (not part of the history's commands). */
  const show = (details: string): void => setCurrentDetails(details);
  show('validating the request');

  // 0. Validate the request (defaults applied) and record the task. Runs started before the
  //    bookkeeping patch had their input validated by the client, were tagged first and recorded after.
  let req: TaskRequest = input;
  if (local) {
    req = await startTask(store, input);
    tag(req.tenant);
  } else {
    tag(req.tenant);
    await store.recordTaskStarted({ taskId: req.taskId, workflowId: workflowInfo().workflowId, goal: req.goal, tenant: req.tenant });
  }

  const planner = modelsWith(`plan: ${oneLine(req.goal, 80)}`);
  const taskVerifier = modelsWith("verify the task's own acceptance criteria");

  // 1. Decompose. An unusable plan has already been replaced by one atomic subtask, with the reason.
  let plan: Plan = { subtasks: [] };
  let usage = ZERO_USAGE;
  const modelNames = new Set<string>();
  const finished: SubtaskResult[] = [];
  const failed: Extract<Settled, { ok: false }>[] = [];
  let failure: string | undefined;
  let verification: TaskResult['verification'];
  try {
    show(`planning: decomposing the goal into subtasks`);
    const planned = await planner.decompose({ taskId: req.taskId, goal: req.goal, maxSubtasks: req.maxSubtasks, tenant: req.tenant });
    plan = planned.plan;
    if (readable) upsertMemo({ planSize: plan.subtasks.length });
    usage = addUsage(usage, planned.usage);
    modelNames.add(planned.model);
    Object.assign(progress, { plan, planFallbackReason: planned.fallbackReason, phase: 'executing' });
    progress.subtasks = plan.subtasks.map((s) => ({
      id: s.id,
      title: s.title,
      role: s.role,
      state: 'pending',
      attempts: 0,
      latestStep: dependsText(s),
      workflowId: subtaskWorkflowId(req.taskId, s.id),
    }));

    // 2. Execute the DAG.
    for await (const settled of runPlan()) {
      if (settled.ok) finished.push(settled.result);
      else failed.push(settled);
    }
    if (failed.length > 0) failure = failed.map((f) => f.error).join('; ');

    // 3. The task's own acceptance criteria, over the combined result: failing them rolls everything back.
    if (failure === undefined && req.acceptanceCriteria?.length) {
      progress.phase = 'verifying';
      show(`verifying the task's ${req.acceptanceCriteria.length} acceptance criteria`);
      const verdict = await taskVerifier.verify({
        taskId: req.taskId,
        subtaskId: TASK_SCOPE,
        attempt: 1,
        criteria: req.acceptanceCriteria,
        output: finished.map((r) => `## ${r.id}\n${r.output}`).join('\n\n'),
        threshold: req.acceptanceThreshold ?? 0.7,
        tenant: req.tenant,
      });
      usage = addUsage(usage, verdict.usage);
      verdict.models.forEach((m) => modelNames.add(m));
      verification = { passed: verdict.passed, score: verdict.score, evidenceId: verdict.evidenceId, feedback: verdict.feedback };
      if (!verdict.passed) failure = `the task's acceptance criteria failed: ${verdict.feedback}`;
    }
  } catch (err) {
    failure = isCancellation(err) ? 'cancelled' : errorMessage(err);
  }
  const cancelled = CancellationScope.current().consideredCancelled;
  const subtaskResults = [...finished, ...failed.flatMap((f) => (f.partial ? [f.partial] : []))];
  for (const s of subtaskResults) {
    usage = addUsage(usage, s.usage);
    s.models.forEach((m) => modelNames.add(m));
  }

  // 4. Roll back on failure or cancellation: undo every registered step, newest first.
  let outcomes: CompensationOutcome[] = [];
  let status: TaskResult['status'] = 'COMPLETED';
  if (failure !== undefined || cancelled) {
    progress.phase = 'compensating';
    show(`compensating: ${failure ?? 'cancelled'}`);
    const stacks = [...finished.map((r) => r.undo), ...failed.map((f) => f.partial?.undo ?? [])];
    outcomes = await CancellationScope.nonCancellable(() => compensate(store, req.taskId, stacks));
    status = outcomes.every((o) => o.ok) ? 'COMPENSATED' : 'FAILED';
  }

  const result: TaskResult = {
    taskId: req.taskId,
    status,
    cancelled,
    plan,
    planFallbackReason: progress.planFallbackReason,
    subtasks: subtaskResults,
    usage,
    models: [...modelNames],
    compensations: outcomes,
    error: cancelled ? 'cancelled' : failure,
    ...(verification ? { verification } : {}),
  };
  progress.status = status;
  progress.phase = 'done';
  // MareRoles: every role version this task embodied, so runs can be found by role version.
  const roles = [...new Set(subtaskResults.filter((s) => s.roleVersion).map((s) => `${s.role}@${s.roleVersion}`))];
  show(`done: ${status}${result.error ? ` (${result.error})` : ''}`);
  upsertSearchAttributes([
    { key: statusKey, value: status },
    ...(roles.length && patched('role-version-search-attribute') ? [{ key: SEARCH_ATTRIBUTES.roles, value: roles }] : []),
  ]);
  await CancellationScope.nonCancellable(() => store.recordTaskFinished({ result }));
  return result;

  /**
   * Starts each subtask as soon as its dependencies are done, at most `concurrency` at a time, and
   * yields each outcome. After the first failure nothing new starts and running siblings are cancelled.
   */
  async function* runPlan(): AsyncGenerator<Settled> {
    const outputs = new Map<string, SubtaskResult>();
    const waiting = new Set(plan.subtasks.map((s) => s.id));
    const running = new Map<string, Promise<Settled>>();
    const scope = new CancellationScope();
    let stopped = false;
    while (running.size > 0 || (!stopped && waiting.size > 0)) {
      for (const s of plan.subtasks) {
        if (stopped || running.size >= req.concurrency) break;
        if (waiting.has(s.id) && s.dependsOn.every((d) => outputs.has(d))) {
          waiting.delete(s.id);
          running.set(s.id, scope.run(() => startSubtask(s, outputs)));
          setState(s.id, 'running', 'started');
        }
      }
      if (running.size === 0) break;
      const settled = await Promise.race(running.values());
      running.delete(settled.id);
      if (settled.ok) {
        outputs.set(settled.id, settled.result);
        setState(settled.id, 'completed', `verified (score ${settled.result.score.toFixed(2)})`, settled.result.attempts);
      } else {
        setState(settled.id, settled.cancelled ? 'cancelled' : 'failed', settled.error, settled.partial?.attempts);
        if (!stopped) {
          stopped = true;
          scope.cancel();
        }
      }
      yield settled;
    }
    for (const id of waiting) setState(id, 'skipped', 'not started: the task failed');
  }

  async function startSubtask(s: Subtask, outputs: Map<string, SubtaskResult>): Promise<Settled> {
    try {
      const result = await executeChild(executeSubtask, {
        workflowId: subtaskWorkflowId(req.taskId, s.id),
        staticSummary: oneLine(`${s.id}: ${s.title} [${s.role}]`),
        staticDetails: `**Subtask** \`${s.id}\` of task \`${req.taskId}\`: ${s.instructions}${s.dependsOn.length ? `\n\nAfter: ${s.dependsOn.join(', ')}` : ''}`,
        args: [
          {
            taskId: req.taskId,
            goal: req.goal,
            subtask: s,
            dependencies: s.dependsOn.map((d) => ({ id: d, title: titleOf(d), output: outputs.get(d)?.output ?? '' })),
            tenant: req.tenant,
          },
        ],
      });
      return { id: s.id, ok: true, result };
    } catch (err) {
      const partial = err instanceof ChildWorkflowFailure && err.cause instanceof ApplicationFailure ? (err.cause.details?.[0] as SubtaskResult | undefined) : undefined;
      return { id: s.id, ok: false, partial, error: partial?.error ? `${s.id}: ${partial.error}` : errorMessage(err), cancelled: isCancellation(err) || partial?.status === 'cancelled' };
    }
  }

  function setState(id: string, state: TaskProgress['subtasks'][number]['state'], latestStep: string, attempts?: number): void {
    const sp = progress.subtasks.find((p) => p.id === id);
    if (!sp) return;
    sp.state = state;
    sp.latestStep = latestStep;
    if (attempts !== undefined) sp.attempts = attempts;
    const count = (st: string): number => progress.subtasks.filter((p) => p.state === st).length;
    const running = progress.subtasks.filter((p) => p.state === 'running').map((p) => `${p.id} [${p.role}]`);
    show(`executing: ${count('completed')}/${progress.subtasks.length} subtasks done${running.length ? `; running ${running.join(', ')}` : ''}${count('failed') ? `; ${count('failed')} failed` : ''}`);
  }

  function titleOf(id: string): string {
    return plan.subtasks.find((s) => s.id === id)?.title ?? id;
  }
}

/** Validates the request in an activity (zod stays out of workflow code) and records the task. */
async function startTask(store: Bookkeeping['store'], request: TaskRequest): Promise<TaskRequest> {
  try {
    return await store.startTask({ request, workflowId: workflowInfo().workflowId });
  } catch (err) {
    // A bad request fails the run with the validator's message, not as an activity failure.
    if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure && err.cause.type === 'InvalidTaskRequest') {
      throw ApplicationFailure.nonRetryable(err.cause.message, 'InvalidTaskRequest');
    }
    throw err;
  }
}

/** Runs the undo stacks newest first and records every outcome; a failed undo never stops the rest. */
async function compensate(store: Bookkeeping['store'], taskId: string, stacks: UndoStep[][]): Promise<CompensationOutcome[]> {
  const steps = stacks.flat().reverse();
  const outcomes: CompensationOutcome[] = [];
  for (const step of steps) {
    try {
      outcomes.push({ step, ok: true, detail: await compensations(`undo ${step.tool} of ${step.subtaskId}`).compensate(step) });
    } catch (err) {
      outcomes.push({ step, ok: false, detail: errorMessage(err) });
    }
  }
  await store.recordCompensations({ taskId, outcomes });
  return outcomes;
}

function dependsText(s: Subtask): string {
  return s.dependsOn.length ? `waiting for ${s.dependsOn.join(', ')}` : 'ready';
}
