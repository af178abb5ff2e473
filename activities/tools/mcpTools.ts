import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Pool } from 'pg';
import { storableText, textProblems, type ToolCallContext, type ToolResult, type UndoStep } from '../../validation';
import { TOOL_OUTPUT_HISTORY_LIMIT } from '../../core/constants';
import { atRestOf, type AtRest } from '../../infra/crypto/atRest';
import { expandArgs } from '../blobRefs';
import type { ActivityDeps } from '../deps';
import { sha256 } from '../../infra/crypto/digest';
import { activityKey } from '../idempotency';
import { McpUnavailableError } from '../../infra/mcp/hub';
import { detectSensitivity } from '../../infra/secrets';
import { audit, putBlob, recordPolicyDecision } from '../../infra/db/records';
import type { McpToolEntry } from '../../infra/tools/catalog';

const HEARTBEAT_EVERY_MS = 5_000;

/**
 * One activity per configured MCP tool, named after it (`fs.write_file`): a call reuses the result
 * an earlier attempt recorded, snapshots what the configured undo needs before a write, heartbeats
 * while the server works, and records the call (arguments redacted) once.
 */
export function createMcpToolActivities(deps: ActivityDeps): Record<string, (ctx: ToolCallContext, args: unknown) => Promise<ToolResult>> {
  const activities: Record<string, (ctx: ToolCallContext, args: unknown) => Promise<ToolResult>> = {};
  for (const name of deps.tools.mcpToolNames()) {
    activities[name] = (ctx, args) => runMcpTool(deps, name, ctx, args);
  }
  return activities;
}

async function runMcpTool(deps: ActivityDeps, name: string, ctx: ToolCallContext, rawArgs: unknown): Promise<ToolResult> {
  const { pool, tools, redactor } = deps;
  const atRest = atRestOf(deps);
  const entry = tools.mcpTool(name);
  if (!entry) throw ApplicationFailure.nonRetryable(`tool ${name} is not configured on this worker`, 'ToolNotConfigured');
  const activity = Context.current();
  // Derived from the workflow and activity ids: the same on every retry of this call.
  const idempotencyKey = activityKey();

  const earlier = await pool.query<{ result: unknown }>('SELECT result FROM tool_calls WHERE call_key = $1 AND result IS NOT NULL', [ctx.callKey]);
  if (earlier.rows[0]) return atRest.openJson<ToolResult>(earlier.rows[0].result);

  const args = (await expandArgs(pool, rawArgs, atRest)) as Record<string, unknown>;
  if (ctx.policy) await recordPolicyDecision(pool, redactor, { taskId: ctx.taskId, subtaskId: ctx.subtaskId, key: ctx.callKey, kind: 'tool', target: name, decision: ctx.policy }, activityKey());
  const dirty = textProblems(args);
  const heartbeat = setInterval(() => activity.heartbeat(), HEARTBEAT_EVERY_MS);
  let result: ToolResult;
  try {
    // NUL or a lone surrogate in the arguments: a tool error for the model; the server never sees them.
    if (dirty.length) result = { ok: false, content: `invalid arguments for ${name}: ${dirty.map((p) => `${p.path.join('.') || '(arguments)'}: ${p.message}`).join('; ')}` };
    else {
      if (entry.toolConfig.undo) await snapshotForUndo(deps, entry, ctx, args);
      const callArgs = entry.toolConfig.idempotencyKeyArg ? { ...args, [entry.toolConfig.idempotencyKeyArg]: idempotencyKey } : args;
      const out = await tools.hub.callTool(entry.server, entry.tool, callArgs, {
        timeoutMs: entry.toolConfig.timeoutMs ?? entry.serverConfig.timeoutMs,
        signal: activity.cancellationSignal,
        idempotencyKey,
        onProgress: () => activity.heartbeat(),
      });
      // Tool output is stored in PostgreSQL, which cannot hold NUL.
      result = await toolResult(pool, atRest, storableText(out.text), !out.isError);
    }
  } catch (err) {
    if (activity.cancellationSignal.aborted) throw activity.cancellationSignal.reason ?? err;
    if (err instanceof McpUnavailableError) throw ApplicationFailure.retryable(redactor.redact(err.message), 'ToolUnavailable');
    throw err;
  } finally {
    clearInterval(heartbeat);
  }
  result.sensitivity = detectSensitivity(result.content, redactor);
  await pool.query(
    `INSERT INTO tool_calls (call_key, task_id, subtask_id, tool, args, status, detail, attempts, idempotency_key, result)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (call_key) DO UPDATE SET attempts = GREATEST(tool_calls.attempts, EXCLUDED.attempts), result = EXCLUDED.result,
       status = EXCLUDED.status, detail = EXCLUDED.detail`,
    [
      ctx.callKey,
      ctx.taskId,
      ctx.subtaskId,
      name,
      JSON.stringify(storableText(redactor.redactDeep(args))),
      result.ok ? 'ok' : 'error',
      redactor.redact(result.content.slice(0, 500)),
      activity.info.attempt,
      idempotencyKey,
      atRest.sealJson(result),
    ],
  );
  return result;
}

/** Text for the model, with long output stored in PostgreSQL and referenced. */
async function toolResult(pool: Pool, atRest: AtRest, content: string, ok: boolean): Promise<ToolResult> {
  if (content.length <= TOOL_OUTPUT_HISTORY_LIMIT) return { ok, content };
  const ref = await putBlob(pool, content, atRest);
  return { ok, content: `${content.slice(0, TOOL_OUTPUT_HISTORY_LIMIT)}\n[truncated: ${content.length} characters in all, stored as blob ${ref}]`, contentRef: ref };
}

/** Reads what the call may change through the configured snapshot tool, once per call key. */
async function snapshotForUndo(deps: ActivityDeps, entry: McpToolEntry, ctx: ToolCallContext, args: Record<string, unknown>): Promise<void> {
  const undo = entry.toolConfig.undo!;
  // A retry after a crash must not snapshot the call's own effect: the first snapshot stands.
  const { rowCount } = await deps.pool.query('SELECT 1 FROM tool_snapshots WHERE call_key = $1', [ctx.callKey]);
  if (rowCount) return;
  const out = await deps.tools.hub.callTool(entry.server, undo.snapshot.tool, fillTemplate(undo.snapshot.args, { args, callKey: ctx.callKey }), {
    timeoutMs: entry.serverConfig.timeoutMs,
  });
  await deps.pool.query(
    `INSERT INTO tool_snapshots (call_key, task_id, tool, existed, content) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (call_key) DO NOTHING`,
    [ctx.callKey, ctx.taskId, entry.name, !out.isError, out.isError ? null : atRestOf(deps).sealText(storableText(out.text))],
  );
}

/**
 * Undoes one MCP tool call from its snapshot: `restore` when something was there, `remove` when
 * the call created it. Idempotent: restoring twice leaves the same state; a snapshot that was never
 * taken means the call never ran.
 */
export async function undoMcpCall(deps: ActivityDeps, entry: McpToolEntry, step: UndoStep): Promise<string> {
  const undo = entry.toolConfig.undo;
  if (!undo) throw ApplicationFailure.nonRetryable(`no undo is configured for tool ${entry.name}`, 'NoUndoKnown');
  const { rows } = await deps.pool.query<{ existed: boolean; content: string | null }>('SELECT existed, content FROM tool_snapshots WHERE call_key = $1', [step.callKey]);
  const snap = rows[0];
  let detail: string;
  if (!snap) {
    detail = `nothing to undo: ${entry.name} never ran`;
  } else {
    const atRest = atRestOf(deps);
    const args = (await expandArgs(deps.pool, step.args, atRest)) as Record<string, unknown>;
    const action = snap.existed ? undo.restore : undo.remove;
    if (!action) throw ApplicationFailure.nonRetryable(`${entry.name} created something and its undo has no "remove" step`, 'NoUndoKnown');
    let out;
    try {
      out = await deps.tools.hub.callTool(entry.server, action.tool, fillTemplate(action.args, { args, snapshot: atRest.openNullable(snap.content) ?? '', callKey: step.callKey }), {
        timeoutMs: entry.serverConfig.timeoutMs,
      });
    } catch (err) {
      if (err instanceof McpUnavailableError) throw ApplicationFailure.retryable(deps.redactor.redact(err.message), 'ToolUnavailable');
      throw err;
    }
    if (out.isError) throw ApplicationFailure.retryable(`undo of ${entry.name} with ${entry.server}.${action.tool} failed: ${deps.redactor.redact(out.text.slice(0, 300))}`, 'UndoFailed');
    detail = `${snap.existed ? 'restored' : 'removed'} with ${entry.server}.${action.tool}: ${deps.redactor.redact(out.text.slice(0, 200))}`;
  }
  await audit(deps.pool, step.taskId, 'compensation.applied', { callKey: step.callKey, tool: entry.name, detail }, activityKey());
  return detail;
}

/**
 * Fills `{{args.name}}`, `{{snapshot}}` and `{{key}}` into undo arguments: a string that is exactly
 * one placeholder takes the value as it is; placeholders inside longer strings are replaced as text.
 */
export function fillTemplate(template: Record<string, unknown>, values: { args: Record<string, unknown>; snapshot?: string; callKey: string }): Record<string, unknown> {
  const lookup = (expr: string): unknown => {
    if (expr === 'snapshot') return values.snapshot ?? '';
    if (expr === 'key') return sha256(values.callKey).slice(0, 12);
    if (expr.startsWith('args.')) return values.args[expr.slice(5)];
    throw ApplicationFailure.nonRetryable(`unknown placeholder {{${expr}}} in an undo configuration`, 'NoUndoKnown');
  };
  const fill = (value: unknown): unknown => {
    if (typeof value === 'string') {
      const whole = /^\{\{\s*([\w.]+)\s*\}\}$/.exec(value);
      if (whole) return lookup(whole[1]!);
      return value.replace(/\{\{\s*([\w.]+)\s*\}\}/g, (_m, expr: string) => {
        const v = lookup(expr);
        return typeof v === 'string' ? v : JSON.stringify(v);
      });
    }
    if (Array.isArray(value)) return value.map(fill);
    if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fill(v)]));
    return value;
  };
  return fill(template) as Record<string, unknown>;
}
