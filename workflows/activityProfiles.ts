import { ActivityCancellationType, patched, proxyActivities, proxyLocalActivities, type ActivityOptions, type RetryPolicy } from '@temporalio/workflow';
import type { createActivities } from '../activities';
import { TASK_QUEUES } from '../schemas/constants';

type Activities = ReturnType<typeof createActivities>;

const STORE_RETRY: RetryPolicy = { initialInterval: '500 ms', maximumInterval: '10 seconds', maximumAttempts: 20 };

/** Bookkeeping in PostgreSQL: quick, idempotent, retried for a while. */
const remoteStore = proxyActivities<Activities>({ startToCloseTimeout: '30 seconds', retry: STORE_RETRY });

/** The same bookkeeping as local activities: no task-queue round trip, no events of its own. */
const localStore = proxyLocalActivities<Activities>({ startToCloseTimeout: '30 seconds', retry: STORE_RETRY });

/** The bookkeeping steps of one run, and whether they run as local activities. */
export interface Bookkeeping {
  store: typeof remoteStore;
  local: boolean;
}

/**
 * The bookkeeping a workflow uses. Runs started by this code use local activities, and validate
 * their request in the first of them (`npm run bench` measured fewer state transitions, more
 * tasks/s and less worker CPU, see bench/TUNING.md); runs started before keep the regular
 * activities their histories recorded. Call once, before the first step.
 */
export function bookkeeping(): Bookkeeping {
  const local = patched('bookkeeping-as-local-activities');
  return { store: local ? localStore : remoteStore, local };
}

/** Model calls: long, heartbeating (a dead worker is noticed in 20 s), backoff for rate limits. */
const MODEL_OPTIONS: ActivityOptions = {
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '20 seconds',
  retry: { initialInterval: '2 seconds', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 6 },
};

/**
 * The task queue of a kind of work. Runs started by this code send model calls and tool calls to
 * their own queues, so each can be scaled and rate-limited apart; runs started before keep
 * scheduling everything on the workflow's queue, as their histories recorded.
 */
export function queueOf(kind: 'models' | 'tools'): { taskQueue?: string } {
  return patched('task-queues-by-kind') ? { taskQueue: TASK_QUEUES[kind] } : {};
}

/** Model calls (and the verifier) with a one-line summary the Web UI shows on the activity. */
export function modelsWith(summary: string): ReturnType<typeof proxyActivities<Activities>> {
  return proxyActivities<Activities>({ ...MODEL_OPTIONS, summary, ...queueOf('models') });
}

/** Tool calls: a cancelled call is waited for, so its undo never races the side effect. */
const TOOL_OPTIONS: ActivityOptions = {
  startToCloseTimeout: '2 minutes',
  heartbeatTimeout: '20 seconds',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: { initialInterval: '1 second', maximumInterval: '20 seconds', maximumAttempts: 5 },
};

/** The built-in tools' activities, on the tools queue. */
export function builtinTools(): ReturnType<typeof proxyActivities<Activities>> {
  return proxyActivities<Activities>({ ...TOOL_OPTIONS, ...queueOf('tools') });
}

/** Undo steps: retried harder than anything else, since a failed undo needs a human. `summary`: what the Web UI shows. */
export function compensations(summary: string): Pick<ReturnType<typeof proxyActivities<Activities>>, 'compensate'> {
  return proxyActivities<Activities>({
    startToCloseTimeout: '1 minute',
    retry: { initialInterval: '1 second', maximumInterval: '30 seconds', maximumAttempts: 10 },
    summary,
    ...queueOf('tools'),
  });
}
