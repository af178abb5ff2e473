import { Context } from '@temporalio/activity';
import type { ModelRequest, ModelResponse } from '../schemas';
import type { ActivityDeps } from './deps';
import { activityKey } from './idempotency';
import { classifyModelError } from './model';

const HEARTBEAT_EVERY_MS = 5_000;

/**
 * Calls the model inside an activity: heartbeats while waiting, aborts on cancellation, classifies
 * errors, and records the call's token usage once (keyed by the activity, so retries don't double it).
 */
export async function callModelWithHeartbeat(
  { model, pool }: Pick<ActivityDeps, 'model' | 'pool'>,
  req: ModelRequest & { goal?: string },
): Promise<ModelResponse> {
  const ctx = Context.current();
  const timer = setInterval(() => ctx.heartbeat(), HEARTBEAT_EVERY_MS);
  let response: ModelResponse;
  try {
    response = await model.generate(req, ctx.cancellationSignal);
  } catch (err) {
    throw classifyModelError(err);
  } finally {
    clearInterval(timer);
  }
  await pool.query(
    `INSERT INTO model_calls (call_key, task_id, subtask_id, purpose, model, offline, input_tokens, output_tokens)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (call_key) DO NOTHING`,
    [activityKey(), req.meta.taskId, req.meta.subtaskId ?? null, req.purpose, response.model, response.offline, response.usage.inputTokens, response.usage.outputTokens],
  );
  return response;
}

/** The agent loop's model call. Token usage travels back in the response and is summed per task. */
export function createModelActivities(deps: ActivityDeps) {
  return {
    async callModel(req: ModelRequest): Promise<ModelResponse> {
      const response = await callModelWithHeartbeat(deps, req);
      const { logger } = deps;
      logger.debug({ model: response.model, kind: response.kind, usage: response.usage, subtask: req.meta.subtaskId }, 'model call');
      return response;
    },
  };
}
