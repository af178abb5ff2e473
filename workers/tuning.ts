import { z } from 'zod';

/**
 * Worker tuning: the knobs `npm run bench` measured, read from the environment. Every field is
 * optional; an unset one keeps MARE's default (see DEFAULT_TUNING), which is what the
 * performance page (docs/operations/performance.md) was measured with.
 */
export const WorkerTuning = z.strictObject({
  /** Workflows kept in the sticky cache; size it to the number of open workflows (tasks + running subtasks). */
  maxCachedWorkflows: z.number().int().min(0).optional(),
  /** Workflow tasks processed at once (capped at maxCachedWorkflows by the SDK). */
  maxConcurrentWorkflowTaskExecutions: z.number().int().min(2).optional(),
  /** Activities running at once; model and tool calls mostly wait on I/O. */
  maxConcurrentActivityTaskExecutions: z.number().int().min(1).optional(),
  /** Local activities (MARE's bookkeeping steps) running at once. */
  maxConcurrentLocalActivityExecutions: z.number().int().min(1).optional(),
  /** Concurrent long polls for workflow tasks. */
  maxConcurrentWorkflowTaskPolls: z.number().int().min(2).optional(),
  /** Concurrent long polls for activity tasks. */
  maxConcurrentActivityTaskPolls: z.number().int().min(1).optional(),
  /** Share of workflow-task polls on the shared queue (new workflows, e.g. child starts) vs. the sticky queue. */
  nonStickyToStickyPollRatio: z.number().gt(0).max(1).optional(),
  /** Activities this worker starts per second (e.g. to stay under a model provider's rate limit). */
  maxActivitiesPerSecond: z.number().gt(0).optional(),
  /** Activities the whole task queue starts per second, across every worker (the server enforces it). */
  maxTaskQueueActivitiesPerSecond: z.number().gt(0).optional(),
});
export type WorkerTuning = z.infer<typeof WorkerTuning>;

/** Which environment variable sets which field. */
export const TUNING_ENV: Record<keyof WorkerTuning, string> = {
  maxCachedWorkflows: 'MARE_MAX_CACHED_WORKFLOWS',
  maxConcurrentWorkflowTaskExecutions: 'MARE_MAX_WORKFLOW_TASKS',
  maxConcurrentActivityTaskExecutions: 'MARE_MAX_ACTIVITIES',
  maxConcurrentLocalActivityExecutions: 'MARE_MAX_LOCAL_ACTIVITIES',
  maxConcurrentWorkflowTaskPolls: 'MARE_WORKFLOW_TASK_POLLERS',
  maxConcurrentActivityTaskPolls: 'MARE_ACTIVITY_TASK_POLLERS',
  nonStickyToStickyPollRatio: 'MARE_NON_STICKY_POLL_RATIO',
  maxActivitiesPerSecond: 'MARE_MAX_ACTIVITIES_PER_SECOND',
  maxTaskQueueActivitiesPerSecond: 'MARE_MAX_TASK_QUEUE_ACTIVITIES_PER_SECOND',
};

/** MARE's defaults: the SDK's own, since none of the changes tried in bench/TUNING.md paid off on 2 cores. */
export const DEFAULT_TUNING: WorkerTuning = {};

/** Thrown for a tuning variable that is not a valid number; names the variable. */
export class InvalidTuningError extends Error {
  override readonly name = 'InvalidTuningError';
}

/** A tuning variable for the worker of one queue kind: MARE_MAX_ACTIVITIES → MARE_MODELS_MAX_ACTIVITIES. */
export function queueTuningVar(name: string, kind: string): string {
  return name.replace(/^MARE_/, `MARE_${kind.toUpperCase()}_`);
}

/**
 * Reads the tuning variables; unset ones fall back to DEFAULT_TUNING. With `kind`, a variable of
 * that queue (e.g. MARE_MODELS_MAX_TASK_QUEUE_ACTIVITIES_PER_SECOND for the model provider's rate
 * limit) overrides the general one for that queue's worker.
 */
export function workerTuningFromEnv(env: NodeJS.ProcessEnv = process.env, kind?: string): WorkerTuning {
  const raw: Record<string, number> = {};
  const names: Record<string, string> = {};
  for (const [field, general] of Object.entries(TUNING_ENV)) {
    const specific = kind ? queueTuningVar(general, kind) : undefined;
    const name = specific && env[specific]?.trim() ? specific : general;
    names[field] = name;
    const value = env[name]?.trim();
    if (!value) continue;
    const n = Number(value);
    if (!Number.isFinite(n)) throw new InvalidTuningError(`${name}="${value}" is not a number`);
    raw[field] = n;
  }
  const parsed = WorkerTuning.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = String(issue?.path[0] ?? '') as keyof WorkerTuning;
    throw new InvalidTuningError(`${names[field] ?? field}: ${issue?.message ?? 'invalid'}`);
  }
  return { ...DEFAULT_TUNING, ...parsed.data };
}
