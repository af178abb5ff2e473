import { ActivityCancellationType, proxyActivities, proxyLocalActivities, type ActivityOptions, type RetryPolicy } from '@temporalio/workflow';
import type { BookkeepingActivities, CompensationActivities, ModelActivities, VerifyActivities } from '../activities';
import { oneLine, TASK_QUEUES } from '../core/constants';
import type { Criterion } from '../validation';
import type { ToolCallContext, ToolInfo, ToolResult } from '../validation/tools';

const STORE_RETRY: RetryPolicy = { initialInterval: '500 ms', maximumInterval: '10 seconds', maximumAttempts: 20 };

/** A bookkeeping step: returns the store's activities with `summary` as what the Web UI shows on the step. */
export type Bookkeeping = (summary: string) => BookkeepingActivities;

/**
 * Bookkeeping in PostgreSQL (quick, idempotent, retried for a while) as local activities: no
 * task-queue round trip and no events of their own, only a marker (`npm run bench` measured fewer
 * state transitions, more tasks/s and less worker CPU, see bench/TUNING.md).
 */
export const bookkeeping: Bookkeeping = (summary) =>
  proxyLocalActivities<BookkeepingActivities>({ startToCloseTimeout: '30 seconds', retry: STORE_RETRY, summary: oneLineSummary(summary) });

/** Model calls: long, heartbeating (a dead worker is noticed in 20 s), backoff for rate limits. */
const MODEL_OPTIONS: ActivityOptions = {
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '20 seconds',
  retry: { initialInterval: '2 seconds', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 6 },
  // Model calls (plan, act, verify) have a queue of their own, scaled and rate-limited apart.
  taskQueue: TASK_QUEUES.models,
};

/** Model calls (the planner's, the agent's) with a one-line summary the Web UI shows on the activity. */
export function modelsWith(summary: string): ModelActivities {
  return proxyActivities<ModelActivities>({ ...MODEL_OPTIONS, summary: oneLineSummary(summary) });
}

/**
 * Which criteria the verifier checks in a moment, without a model or a command: reads of the output,
 * the workspace and the recorded tool calls. Every kind is listed, so a new one must be classified.
 */
const QUICK_CRITERIA: Record<Criterion['kind'], boolean> = {
  output_contains: true,
  file_exists: true,
  file_contains: true,
  file_matches: true,
  json_schema: true,
  tool_result_field: true,
  judged: false, // a model call
  command_succeeds: false, // a sandboxed command, up to its time limit
};

/**
 * The verifier of `criteria`, with a one-line summary for the Web UI. Quick criteria only: a local
 * activity like the bookkeeping (its verdict and evidence id recorded in a marker, no task-queue
 * round trip: `npm run bench` measured the cost, bench/TUNING.md). Any judged or command criterion:
 * an activity on the models queue, with the model calls' options.
 */
export function verifierFor(criteria: readonly Criterion[], summary: string): VerifyActivities {
  if (criteria.every((c) => QUICK_CRITERIA[c.kind])) {
    return proxyLocalActivities<VerifyActivities>({ startToCloseTimeout: '1 minute', retry: STORE_RETRY, summary: oneLineSummary(summary) });
  }
  return proxyActivities<VerifyActivities>({ ...MODEL_OPTIONS, summary: oneLineSummary(summary) });
}

/** A tool's activity: MCP tools and the built-in workspace tools take the same arguments. */
type ToolCallFn = (ctx: ToolCallContext, args: Record<string, unknown>) => Promise<ToolResult>;

/**
 * The activity of one tool call, named after the tool, on the tools queue, with the tool's own time
 * limit and retries. A cancelled call is waited for, so its undo never races the side effect.
 */
export function toolCallActivity(tool: Pick<ToolInfo, 'name' | 'timeoutMs' | 'retry'>, summary: string): ToolCallFn {
  const acts = proxyActivities<Record<string, ToolCallFn>>({
    startToCloseTimeout: tool.timeoutMs,
    heartbeatTimeout: '20 seconds',
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: {
      maximumAttempts: tool.retry.maximumAttempts,
      initialInterval: tool.retry.initialIntervalMs,
      maximumInterval: tool.retry.maximumIntervalMs,
      backoffCoefficient: tool.retry.backoffCoefficient,
    },
    summary: oneLineSummary(summary),
    taskQueue: TASK_QUEUES.tools,
  });
  return acts[tool.name]!;
}

/** Undo steps: retried harder than anything else, since a failed undo needs a human. `summary`: what the Web UI shows. */
export function compensations(summary: string): CompensationActivities {
  return proxyActivities<CompensationActivities>({
    startToCloseTimeout: '1 minute',
    retry: { initialInterval: '1 second', maximumInterval: '30 seconds', maximumAttempts: 10 },
    summary: oneLineSummary(summary),
    taskQueue: TASK_QUEUES.tools,
  });
}

/** Summaries are single lines (the Web UI's column). */
function oneLineSummary(text: string): string {
  return oneLine(text, 200);
}
