/**
 * The bare-Temporal arms of `npm run bench`: the same shape as MARE's work with no MARE code.
 * B0 is one no-op activity per workflow; B1 is a parent with M children of K no-op activities.
 */
import { executeChild, proxyActivities, workflowInfo } from '@temporalio/workflow';
import type { BareActivities, BareChildInput, BareTaskInput } from './bareTypes';

const { noop } = proxyActivities<BareActivities>({ startToCloseTimeout: '10 minutes' });

/** B0: the box's ceiling, one workflow with one no-op activity. */
export async function b0Task(payload: string): Promise<string> {
  return noop({ payload, resultBytes: payload.length, delayMs: 0, jitterMs: 0 });
}

/** B1: a parent that runs M children at once, like MARE's orchestrateTask runs a plan. */
export async function b1Task(input: BareTaskInput): Promise<string[]> {
  const parent = workflowInfo().workflowId;
  return Promise.all(
    Array.from({ length: input.subtasks }, (_, i) =>
      executeChild(b1Subtask, { workflowId: `${parent}--s${i}`, args: [{ ...input.child, index: i }] }),
    ),
  );
}

/** B1's child: K no-op activities in sequence, like MARE's model → tool → model loop. */
export async function b1Subtask(input: BareChildInput): Promise<string> {
  let last = '';
  for (const step of input.steps) {
    last = await noop({ payload: input.activityPayload, resultBytes: input.activityResultBytes, delayMs: step.delayMs, jitterMs: step.jitterMs });
  }
  return last.slice(0, input.resultBytes);
}
