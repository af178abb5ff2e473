import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  CancelledFailure,
  ChildWorkflowFailure,
  executeChild,
  isCancellation,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { CompensationOutcome, Plan, Subtask, SubtaskResult, TaskRequest, TaskResult, TokenUsage, UndoStep } from '../validation';
import { oneLine, SEARCH_ATTRIBUTES, subtaskWorkflowId, TASK_SCOPE } from '../core/constants';
import { attemptOfCallKey, toolCallTarget } from '../core/describe';
import { addUsage, ZERO_USAGE } from '../core/usage';
import { bookkeeping as store, compensations, modelsWith, verifierFor } from './activityProfiles';
import { errorMessage, failureType } from '../core/errors';
import { executeSubtask } from './executeSubtask';
import { TaskBoard } from './taskBoard';
import { workflowVersions } from './versions';

/**
 * A subtask's end. A failed one carries `headline`, the failure's message from the child run, which
 * names ids and types only (it is shown without the codec), and `error`, the whole story.
 */
type Settled = { id: string; ok: true; result: SubtaskResult } | { id: string; ok: false; partial?: SubtaskResult; error: string; headline: string; cancelled: boolean };

/** What a task has done so far, step by step: the plan, the subtasks' ends, the tokens spent, and why it failed (if it did). */
interface Work {
  plan: Plan;
  usage: TokenUsage;
  models: Set<string>;
  finished: SubtaskResult[];
  failed: Extract<Settled, { ok: false }>[];
  failure?: string;
  /** The failure in ids and types only: the run's failure message, shown without the codec. */
  headline?: string;
  verification?: TaskResult['verification'];
}

/**
 * The story of one task: decompose it into a plan, run each subtask as a child workflow once its
 * dependencies are done, and, if the task cannot be completed, roll back everything in reverse.
 */
export async function orchestrateTask(input: TaskRequest): Promise<TaskResult> {
  workflowVersions();
  const board = new TaskBoard(input.taskId);

  // 0. Validate the request (defaults applied) and record the task.
  const req = await startTask(input);
  const running = [
    { key: SEARCH_ATTRIBUTES.taskStatus, value: 'RUNNING' },
    { key: SEARCH_ATTRIBUTES.tenant, value: req.tenant },
    { key: SEARCH_ATTRIBUTES.taskId, value: req.taskId },
  ] as const;
  // MareClient starts the run with them already (no event, no visibility update); any other start gets them here.
  const given = workflowInfo().typedSearchAttributes;
  if (!running.every(({ key, value }) => given.get(key) === value)) upsertSearchAttributes([...running]);

  const work: Work = { plan: { subtasks: [] }, usage: ZERO_USAGE, models: new Set(), finished: [], failed: [] };
  try {
    // 1. Decompose. An unusable plan has already been replaced by one atomic subtask, with the reason.
    await decompose(board, req, work);
    // 2. Execute the DAG.
    await runPlan(board, req, work);
    // 3. The task's own acceptance criteria, over the combined result: failing them rolls everything back.
    if (work.failure === undefined && req.acceptanceCriteria?.length) await verifyTask(board, req, work);
  } catch (err) {
    work.failure = isCancellation(err) ? 'cancelled' : errorMessage(err);
    work.headline = isCancellation(err) ? 'cancelled' : failureType(err);
  }
  const cancelled = CancellationScope.current().consideredCancelled;
  const subtasks = [...work.finished, ...work.failed.flatMap((f) => (f.partial ? [f.partial] : []))];
  for (const s of subtasks) {
    work.usage = addUsage(work.usage, s.usage);
    s.models.forEach((m) => work.models.add(m));
  }

  // 4. Roll back on failure or cancellation: undo every registered step, newest first.
  let outcomes: CompensationOutcome[] = [];
  if (work.failure !== undefined || cancelled) {
    board.progress.phase = 'compensating';
    board.show(`compensating: ${work.failure ?? 'cancelled'}`);
    const stacks = [...work.finished.map((r) => r.undo), ...work.failed.map((f) => f.partial?.undo ?? [])];
    outcomes = await CancellationScope.nonCancellable(() => compensate(req.taskId, stacks));
  }
  const status: TaskResult['status'] = work.failure === undefined && !cancelled ? 'COMPLETED' : outcomes.every((o) => o.ok) ? 'COMPENSATED' : 'FAILED';

  // 5. Record the task's end; the run ends as the task did.
  const result: TaskResult = {
    taskId: req.taskId,
    status,
    cancelled,
    plan: work.plan,
    planFallbackReason: board.progress.planFallbackReason,
    subtasks,
    usage: work.usage,
    models: [...work.models],
    compensations: outcomes,
    error: cancelled ? 'cancelled' : work.failure,
    ...(work.verification ? { verification: work.verification } : {}),
  };
  await finish(board, result);
  return endRun(result, work.headline ?? 'cancelled');
}

/** Validates the request in an activity (zod stays out of workflow code) and records the task. */
async function startTask(request: TaskRequest): Promise<TaskRequest> {
  try {
    return await store(`validate and record task ${request.taskId}`).startTask({ request, workflowId: workflowInfo().workflowId });
  } catch (err) {
    // A bad request fails the run with the validator's message, not as an activity failure.
    if (err instanceof ActivityFailure && err.cause instanceof ApplicationFailure && err.cause.type === 'InvalidTaskRequest') {
      // A start that said RUNNING (search attributes given at start) must not keep saying it.
      if (workflowInfo().typedSearchAttributes.get(SEARCH_ATTRIBUTES.taskStatus)) upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.taskStatus, value: 'FAILED' }]);
      throw ApplicationFailure.nonRetryable(err.cause.message, 'InvalidTaskRequest');
    }
    throw err;
  }
}

/** The planner's plan, shown on the board with every subtask pending. */
async function decompose(board: TaskBoard, req: TaskRequest, work: Work): Promise<void> {
  board.show(`planning: decomposing the goal into subtasks`);
  const planned = await modelsWith(`plan: ${oneLine(req.goal, 80)}`).decompose({ taskId: req.taskId, goal: req.goal, maxSubtasks: req.maxSubtasks, tenant: req.tenant });
  const plan = (work.plan = planned.plan);
  upsertMemo({ planSize: plan.subtasks.length });
  work.usage = addUsage(work.usage, planned.usage);
  work.models.add(planned.model);
  Object.assign(board.progress, { plan, planFallbackReason: planned.fallbackReason, phase: 'executing' });
  board.progress.subtasks = plan.subtasks.map((s) => ({
    id: s.id,
    title: s.title,
    role: s.role,
    state: 'pending',
    attempts: 0,
    latestStep: dependsText(s),
    workflowId: subtaskWorkflowId(req.taskId, s.id),
  }));
}

/**
 * Starts each subtask as soon as its dependencies are done, at most `concurrency` at a time, and
 * keeps each outcome. After the first failure nothing new starts and running siblings are cancelled.
 */
async function runPlan(board: TaskBoard, req: TaskRequest, work: Work): Promise<void> {
  const { plan } = work;
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
        running.set(s.id, scope.run(() => startSubtask(req, plan, s, outputs)));
        board.setState(s.id, 'running', 'started');
      }
    }
    if (running.size === 0) break;
    const settled = await Promise.race(running.values());
    running.delete(settled.id);
    if (settled.ok) {
      outputs.set(settled.id, settled.result);
      board.setState(settled.id, 'completed', `verified (score ${settled.result.score.toFixed(2)})`, settled.result.attempts);
      work.finished.push(settled.result);
    } else {
      board.setState(settled.id, settled.cancelled ? 'cancelled' : 'failed', settled.error, settled.partial?.attempts);
      if (!stopped) {
        stopped = true;
        scope.cancel();
      }
      work.failed.push(settled);
    }
  }
  for (const id of waiting) board.setState(id, 'skipped', 'not started: the task failed');
  if (work.failed.length > 0) {
    work.failure = work.failed.map((f) => f.error).join('; ');
    work.headline = work.failed.map((f) => f.headline).join('; ');
  }
}

/** One subtask as a child workflow, given the outputs of the subtasks it depends on. */
async function startSubtask(req: TaskRequest, plan: Plan, s: Subtask, outputs: Map<string, SubtaskResult>): Promise<Settled> {
  const titleOf = (id: string): string => plan.subtasks.find((p) => p.id === id)?.title ?? id;
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

/** The task's own acceptance criteria, verified over the combined output of its subtasks. */
async function verifyTask(board: TaskBoard, req: TaskRequest, work: Work): Promise<void> {
  const criteria = req.acceptanceCriteria ?? [];
  board.progress.phase = 'verifying';
  board.show(`verifying the task's ${criteria.length} acceptance criteria`);
  const verdict = await verifierFor(criteria, "verify the task's own acceptance criteria").verify({
    taskId: req.taskId,
    subtaskId: TASK_SCOPE,
    attempt: 1,
    criteria,
    output: work.finished.map((r) => `## ${r.id}\n${r.output}`).join('\n\n'),
    threshold: req.acceptanceThreshold ?? 0.7,
    tenant: req.tenant,
  });
  work.usage = addUsage(work.usage, verdict.usage);
  verdict.models.forEach((m) => work.models.add(m));
  work.verification = { passed: verdict.passed, score: verdict.score, evidenceId: verdict.evidenceId, feedback: verdict.feedback };
  if (!verdict.passed) {
    work.failure = `the task's acceptance criteria failed: ${verdict.feedback}`;
    work.headline = `the task's acceptance criteria failed (score ${verdict.score.toFixed(2)})`;
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

/** The task's end on the board, in its search attributes and in the store; the `result` query answers from here on. */
async function finish(board: TaskBoard, result: TaskResult): Promise<void> {
  board.progress.status = result.status;
  board.progress.phase = 'done';
  // MareRoles: every role version this task embodied, so runs can be found by role version.
  const roles = [...new Set(result.subtasks.filter((s) => s.roleVersion).map((s) => `${s.role}@${s.roleVersion}`))];
  board.show(`done: ${result.status}${result.error ? ` (${result.error})` : ''}`);
  const hadApprovals = board.clearApprovals();
  upsertSearchAttributes([
    { key: SEARCH_ATTRIBUTES.taskStatus, value: result.status },
    ...(roles.length ? [{ key: SEARCH_ATTRIBUTES.roles, value: roles }] : []),
    // Nothing of an ended task waits for a person any more.
    ...(hadApprovals ? [{ key: SEARCH_ATTRIBUTES.pendingApproval, value: [] }] : []),
  ]);
  await CancellationScope.nonCancellable(() => store(`record the task's end: ${result.status}`).recordTaskFinished({ result }));
  board.ended = result;
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

function dependsText(s: Subtask): string {
  return s.dependsOn.length ? `waiting for ${s.dependsOn.join(', ')}` : 'ready';
}
