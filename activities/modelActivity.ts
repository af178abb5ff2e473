import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Pool } from 'pg';
import { storableText, type ChatMessage, type ModelRequest, type ModelResponse } from '../validation';
import { atRestOf, type AtRest } from '../infra/crypto/atRest';
import { compactToolCalls, expandMessages } from './blobRefs';
import type { ActivityDeps } from './deps';
import { activityKey } from './idempotency';
import { McpUnavailableError } from '../infra/mcp/hub';
import { recordModelMetrics } from './metrics';
import { checkSystemModelCall, SYSTEM_CALLER } from './policy/gate';
import { classifyModelError } from '../infra/models/model';
import { detectSensitivity } from '../infra/secrets';
import { allowedDecisionStatement, chained, recordPolicyDecision, type Statement } from '../infra/db/records';
import type { ToolDescriptor } from '../infra/tools/catalog';

const HEARTBEAT_EVERY_MS = 5_000;

/**
 * Calls the model inside an activity: heartbeats while waiting, aborts on cancellation, classifies
 * errors, and records the call's token usage once. `callIndex` tells apart several calls made by one
 * activity (the verifier judges each criterion), so a retry never records a call twice.
 */
export async function callModelWithHeartbeat(
  deps: Pick<ActivityDeps, 'model' | 'pool' | 'policies' | 'redactor' | 'tools' | 'atRest'>,
  req: ModelRequest & { goal?: string; toolSpecs?: ToolDescriptor[] },
  callIndex = 0,
  /** A write to make in the transcript's statement (the call's allowed policy decision). */
  alongside?: Statement,
): Promise<ModelResponse> {
  const ctx = Context.current();
  await checkSystemModelCall(deps, req, `${activityKey()}:${callIndex}`);
  const { model, pool } = deps;
  const atRest = atRestOf(deps);
  const messages = await expandMessages(pool, req.transcript ? await appendTranscript(pool, atRest, req.transcript, req.messages, alongside) : req.messages, atRest);
  const timer = setInterval(() => ctx.heartbeat(), HEARTBEAT_EVERY_MS);
  let response: ModelResponse;
  try {
    response = await model.generate({ ...req, messages }, ctx.cancellationSignal);
  } catch (err) {
    // A call aborted because the activity was cancelled (the worker shutting down after its grace
    // time, or the workflow cancelling it) is not a model error: rethrow the cancellation itself.
    if (ctx.cancellationSignal.aborted) throw ctx.cancellationSignal.reason ?? err;
    throw classifyModelError(err);
  } finally {
    clearInterval(timer);
  }
  await pool.query(
    `INSERT INTO model_calls (call_key, task_id, subtask_id, purpose, model, offline, input_tokens, output_tokens)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (call_key) DO NOTHING`,
    [`${activityKey()}:${callIndex}`, req.meta.taskId, req.meta.subtaskId ?? null, req.purpose, response.model, response.offline, response.usage.inputTokens, response.usage.outputTokens],
  );
  const tokens = response.usage.inputTokens + response.usage.outputTokens;
  recordModelMetrics({
    role: req.meta.role ?? (req.purpose === 'act' ? 'unknown' : SYSTEM_CALLER[req.purpose]),
    model: response.model,
    purpose: req.purpose,
    inputTokens: response.usage.inputTokens,
    outputTokens: response.usage.outputTokens,
    costUsd: (tokens / 1000) * deps.tools.config.modelPricePer1kTokens,
  });
  return response;
}

/**
 * Stores the new messages of a transcript at their positions, sealed (a retry writes the same rows,
 * so it is a no-op), and returns the transcript up to and including them, opened: ONE statement
 * (the earlier messages read back, the new ones inserted), since it runs on every model call.
 */
async function appendTranscript(pool: Pool, atRest: AtRest, transcript: { id: string; offset: number }, added: ChatMessage[], alongside?: Statement): Promise<ChatMessage[]> {
  const sealed = added.map((message) => atRest.sealJson(storableText(message))); // jsonb cannot hold NUL
  const append: Statement = {
    sql: `WITH added AS (
       INSERT INTO transcript_messages (transcript_id, seq, message)
       SELECT $1, $2 + ord::int - 1, m::jsonb FROM unnest($3::text[]) WITH ORDINALITY AS t(m, ord)
       ON CONFLICT (transcript_id, seq) DO NOTHING)
     SELECT message FROM transcript_messages WHERE transcript_id = $1 AND seq < $2 ORDER BY seq`,
    params: [transcript.id, transcript.offset, sealed],
  };
  const statement = alongside ? chained(alongside, append) : append;
  const { rows } = await pool.query<{ message: unknown }>(statement.sql, statement.params);
  if (rows.length !== transcript.offset) {
    throw ApplicationFailure.nonRetryable(`transcript ${transcript.id} has ${rows.length} earlier messages, expected ${transcript.offset}`, 'TranscriptIncomplete');
  }
  // The new messages as a read would return them (opened, or redacted without a payload keyring).
  return [...rows, ...sealed.map((s) => ({ message: JSON.parse(s) as unknown }))].map((r) => atRest.openJson<ChatMessage>(r.message));
}

/** The agent loop's model call. Long tool-call arguments (file contents) go back to history as blob references. */
export function createModelActivities(deps: ActivityDeps) {
  return {
    async callModel(req: ModelRequest): Promise<ModelResponse> {
      let toolSpecs;
      try {
        toolSpecs = await deps.tools.describe(req.tools);
      } catch (err) {
        if (err instanceof McpUnavailableError) throw ApplicationFailure.retryable(deps.redactor.redact(err.message), 'ToolUnavailable');
        throw err;
      }
      const decision = req.policy && req.meta.subtaskId ? { taskId: req.meta.taskId, subtaskId: req.meta.subtaskId, key: req.policy.key, kind: 'model' as const, target: req.policy.target, decision: req.policy.decision } : undefined;
      // An allowed decision's row rides along with the transcript's statement; any other is written (and audited) first.
      const allowed = req.transcript ? allowedDecisionStatement(deps.redactor, decision) : undefined;
      if (decision && !allowed) await recordPolicyDecision(deps.pool, deps.redactor, decision, activityKey());
      const response = await callModelWithHeartbeat(deps, { ...req, toolSpecs }, 0, allowed);
      deps.logger.debug({ model: response.model, kind: response.kind, usage: response.usage, subtask: req.meta.subtaskId }, 'model call');
      if (response.kind !== 'tool_calls') return response;
      // What the model put in the arguments is checked here, where the secrets are known; policies see the result.
      const calls = response.calls.map((call) => {
        const sensitivity = detectSensitivity(call.args, deps.redactor);
        return sensitivity.length ? { ...call, sensitivity } : call;
      });
      return { ...response, calls: await compactToolCalls(deps.pool, calls, atRestOf(deps)) };
    },
  };
}
