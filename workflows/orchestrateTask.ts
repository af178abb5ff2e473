import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  CancelledFailure,
  ChildWorkflowFailure,
  executeChild,
  isCancellation,
  setCurrentDetails,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { CompensationOutcome, PendingApprovalNote, Plan, Subtask, SubtaskResult, TaskProgress, TaskRequest, TaskResult, UndoStep } from '../validation';
import { oneLine, SEARCH_ATTRIBUTES, subtaskWorkflowId, TASK_SCOPE } from '../core/constants';
import { attemptOfCallKey, toolCallTarget } from '../core/describe';
import { addUsage, ZERO_USAGE } from '../core/usage';
import { bookkeeping as store, compensations, modelsWith, verifierWith } from './activityProfiles';
import { progressQuery, subtaskApprovalsSignal, taskResultQuery } from './definitions';
import { errorMessage, failureType } from '../core/errors';
import { executeSubtask } from './executeSubtask';
import { workflowVersions } from './versions';

/**
 * A subtask's end. A failed one carries `headline`, the failure's message from the child run, which
 * names ids and types only (it is shown without the codec), and `error`, the whole story.
 */
type Settled = { id: string; ok: true; result: SubtaskResult } | { id: string; ok: false; partial?: SubtaskResult; error: string; headline: string; cancelled: boolean };

/**
 * The story of one task: decompose it into a plan, run each subtask as a child workflow once its
 * dependencies are done, and, if the task cannot be completed, roll back everything in reverse.
 */
export async function orchestrateTask(input: TaskRequest): Promise<TaskResult> {
  workflowVersions();
  const progress: TaskProgress = { taskId: input.taskId, status: 'RUNNING', phase: 'planning', subtasks: [] };
  const ended: { result?: TaskResult } = {};
  setHandler(progressQuery, () => progress);
  setHandler(taskResultQuery, () => ended.result);
  /** The run's current step, and what waits for a person, as the Web UI shows them on the task. */
  let currentStep = 'validating the request';
  const approvals = new Map<string, PendingApprovalNote[]>();
  const show = (details?: string): void => {
    if (details !== undefined) currentStep = details;
    const waiting = [...approvals.values()].flat();
    setCurrentDetails(waiting.length ? `${currentStep}\n\n**Waiting for a person:**\n${waiting.map((a) => `- approval \`${a.approvalId}\`: ${a.about}: ${a.reason}`).join('\n')}` : currentStep);
  };
  // A subtask's approvals that wait for a person show on the task too (MarePendingApproval, details).
  setHandler(subtaskApprovalsSignal, ({ subtaskId, pending }) => {
    if (pending.length) approvals.set(subtaskId, pending);
    else approvals.delete(subtaskId);
    const sp = progress.subtasks.find((p) => p.id === subtaskId);
    if (sp) sp.pendingApprovals = pending.map((a) => a.approvalId);
    upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.pendingApproval, value: [...approvals.values()].flat().map((a) => a.approvalId) }]);
    show();
  });
  show();

  // 0. Validate the request (defaults applied) and record the task.
  const req = await startTask(input);
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.taskStatus, value: 'RUNNING' },
    { key: SEARCH_ATTRIBUTES.tenant, value: req.tenant },
    { key: SEARCH_ATTRIBUTES.taskId, value: req.taskId },
  ]);

  const planner = modelsWith(`plan: ${oneLine(req.goal, 80)}`);
  const taskVerifier = verifierWith("verify the task's own acceptance criteria");

  // 1. Decompose. An unusable plan has already been replaced by one atomic subtask, with the reason.
  let plan: Plan = { subtasks: [] };
  let usage = ZERO_USAGE;
  const modelNames = new Set<string>();
  const finished: SubtaskResult[] = [];
  const failed: Extract<Settled, { ok: false }>[] = [];
  let failure: string | undefined;
  /** The failure in ids and types only: the run's failure message, shown without the codec. */
  let headline: string | undefined;
  let verification: TaskResult['verification'];
  try {
    show(`planning: decomposing the goal into subtasks`);
    const planned = await planner.decompose({ taskId: req.taskId, goal: req.goal, maxSubtasks: req.maxSubtasks, tenant: req.tenant });
    plan = planned.plan;
    upsertMemo({ planSize: plan.subtasks.length });
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
    if (failed.length > 0) {
      failure = failed.map((f) => f.error).join('; ');
      headline = failed.map((f) => f.headline).join('; ');
    }

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
      if (!verdict.passed) {
        failure = `the task's acceptance criteria failed: ${verdict.feedback}`;
        headline = `the task's acceptance criteria failed (score ${verdict.score.toFixed(2)})`;
      }
    }
  } catch (err) {
    failure = isCancellation(err) ? 'cancelled' : errorMessage(err);
    headline = isCancellation(err) ? 'cancelled' : failureType(err);
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
    outcomes = await CancellationScope.nonCancellable(() => compensate(req.taskId, stacks));
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
    { key: SEARCH_ATTRIBUTES.taskStatus, value: status },
    ...(roles.length ? [{ key: SEARCH_ATTRIBUTES.roles, value: roles }] : []),
    // Nothing of an ended task waits for a person any more.
    ...(approvals.size ? [{ key: SEARCH_ATTRIBUTES.pendingApproval, value: [] }] : []),
  ]);
  approvals.clear();
  await CancellationScope.nonCancellable(() => store(`record the task's end: ${status}`).recordTaskFinished({ result }));
  ended.result = result;
  return endRun(result, headline ?? 'cancelled');

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
      const failed = err instanceof ChildWorkflowFailure && err.cause instanceof ApplicationFailure ? err.cause : undefined;
      const partial = failed?.details?.[0] as SubtaskResult | undefined;
      return {
        id: s.id,
        ok: false,
        partial,
        error: partial?.error ? `${s.id}: ${partial.error}` : errorMessage(err),
        headline: failed?.message ?? `subtask ${s.id}: ${failureType(err)}`,
        cancelled: isCancellation(err) || partial?.status === 'cancelled',
      };
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

/**
 * The run ends as the task did, so the Web UI, `temporal workflow list` and the "Failed" count tell
 * the truth: COMPLETED returns the result; COMPENSATED and FAILED fail the run (TaskCompensated,
 * TaskFailed) with the result in the details; a cancelled task ends cancelled (the `result` query
 * has its result). The message names ids, statuses, counts and types only.
 */
function endRun(result: TaskResult, why: string): TaskResult {
  if (result.status === 'COMPLETED') return result;
  const undone = result.compensations.filter((o) => o.ok).length;
  const message = `task ${result.taskId} ${result.cancelled ? 'cancelled' : result.status}: ${why}; ${undone} of ${result.compensations.length} undo steps done`;
  if (result.cancelled) throw new CancelledFailure(message);
  throw ApplicationFailure.create({ type: result.status === 'COMPENSATED' ? 'TaskCompensated' : 'TaskFailed', message, nonRetryable: true, details: [result] });
}

/** Validates the request in an activity (zod stays out of workflow code) and records the task. */
async function startTask(request: TaskRequest): Promise<TaskRequest> {
  try {
    return await store(`validate and record task ${request.taskId}`).startTask({ request, workflowId: workflowInfo().workflowId });
  } catch (err) {
    // A bad request fails the run with the validator's message, not as an activity failure.
    if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure && err.cause.type === 'InvalidTaskRequest') {
      throw ApplicationFailure.nonRetryable(err.cause.message, 'InvalidTaskRequest');
    }
    throw err;
  }
}

/** Runs the undo stacks newest first and records every outcome; a failed undo never stops the rest. */
async function compensate(taskId: string, stacks: UndoStep[][]): Promise<CompensationOutcome[]> {
  const steps = stacks.flat().reverse();
  const outcomes: CompensationOutcome[] = [];
  for (const step of steps) {
    const target = toolCallTarget(step.args);
    const attempt = attemptOfCallKey(step.callKey);
    // `undo workspace.write changelog/summary.md (summary, a2): restore` in the Web UI.
    const summary = `undo ${step.tool}${target ? ` ${target}` : ''} (${step.subtaskId}${attempt ? `, a${attempt}` : ''}): restore`;
    try {
      outcomes.push({ step, ok: true, detail: await compensations(summary).compensate(step) });
    } catch (err) {
      outcomes.push({ step, ok: false, detail: errorMessage(err) });
    }
  }
  await store(`record ${outcomes.length} compensation outcome(s)`).recordCompensations({ taskId, outcomes });
  return outcomes;
}

function dependsText(s: Subtask): string {
  return s.dependsOn.length ? `waiting for ${s.dependsOn.join(', ')}` : 'ready';
}
