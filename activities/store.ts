import { ApplicationFailure } from '@temporalio/common';
import type { Pool } from 'pg';
import { z } from 'zod';
import { TaskRequest, type CompensationOutcome, type SubtaskResult, type TaskResult } from '../schemas';
import type { ActivityDeps } from './deps';
import { activityKey, sha256 } from './idempotency';

/** Stores content once under its sha256 and returns the digest. */
export async function putBlob(pool: Pool, content: string): Promise<string> {
  const hash = sha256(content);
  await pool.query('INSERT INTO blobs (hash, content, size) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING', [
    hash,
    content,
    Buffer.byteLength(content),
  ]);
  return hash;
}

/** Appends an audit event at most once per activity execution (retries reuse the key). */
export async function audit(pool: Pool, taskId: string, kind: string, data: unknown, key = activityKey()): Promise<void> {
  await pool.query(
    'INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ($1, $2, $3, $4) ON CONFLICT (event_key) DO NOTHING',
    [`${key}:${kind}`, taskId, kind, JSON.stringify(data)],
  );
}

/** Bookkeeping activities: every write is keyed so a retried activity never writes twice. */
export function createStoreActivities({ pool }: ActivityDeps) {
  async function recordTask(input: { taskId: string; workflowId: string; goal: string; tenant: string }): Promise<void> {
    await pool.query(
      `INSERT INTO tasks (task_id, workflow_id, goal, tenant, status) VALUES ($1, $2, $3, $4, 'RUNNING')
       ON CONFLICT (task_id) DO NOTHING`,
      [input.taskId, input.workflowId, input.goal, input.tenant],
    );
    await audit(pool, input.taskId, 'task.started', { goal: input.goal, tenant: input.tenant });
  }

  return {
    /**
     * The first step of a task: validates the request (defaults applied) and records the task.
     * A bad request is a non-retryable InvalidTaskRequest naming each field; nothing is written.
     */
    async startTask(input: { request: unknown; workflowId: string }): Promise<TaskRequest> {
      const parsed = TaskRequest.safeParse(input.request);
      if (!parsed.success) {
        throw ApplicationFailure.nonRetryable(`invalid TaskRequest: ${z.prettifyError(parsed.error)}`, 'InvalidTaskRequest');
      }
      const req = parsed.data;
      await recordTask({ taskId: req.taskId, workflowId: input.workflowId, goal: req.goal, tenant: req.tenant });
      return req;
    },

    /** Records a task started before the bookkeeping patch (its workflow validated the request). */
    async recordTaskStarted(input: { taskId: string; workflowId: string; goal: string; tenant: string }): Promise<void> {
      await recordTask(input);
    },

    async recordToolDenied(input: {
      taskId: string;
      subtaskId: string;
      callKey: string;
      tool: string;
      args: Record<string, unknown>;
      role: string;
    }): Promise<void> {
      await pool.query(
        `INSERT INTO tool_calls (call_key, task_id, subtask_id, tool, args, status, detail)
         VALUES ($1, $2, $3, $4, $5, 'denied', $6) ON CONFLICT (call_key) DO NOTHING`,
        [input.callKey, input.taskId, input.subtaskId, input.tool, JSON.stringify(input.args), `role ${input.role} has no grant for ${input.tool}`],
      );
      await audit(pool, input.taskId, 'tool.denied', { subtaskId: input.subtaskId, tool: input.tool, role: input.role });
    },

    async recordSubtask({ taskId, result }: { taskId: string; result: SubtaskResult }): Promise<void> {
      await pool.query(
        `INSERT INTO subtasks (task_id, subtask_id, role, role_version, status, attempts, score, output, evidence_ids, usage, error,
           role_requested, role_routed_by, role_fallback_reason, role_source, role_checksum, context_digests)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (task_id, subtask_id) DO UPDATE SET role = EXCLUDED.role, role_version = EXCLUDED.role_version,
           status = EXCLUDED.status, attempts = EXCLUDED.attempts, score = EXCLUDED.score, output = EXCLUDED.output,
           evidence_ids = EXCLUDED.evidence_ids, usage = EXCLUDED.usage, error = EXCLUDED.error,
           role_requested = EXCLUDED.role_requested, role_routed_by = EXCLUDED.role_routed_by,
           role_fallback_reason = EXCLUDED.role_fallback_reason, role_source = EXCLUDED.role_source,
           role_checksum = EXCLUDED.role_checksum, context_digests = EXCLUDED.context_digests, updated_at = now()`,
        [
          taskId,
          result.id,
          result.role,
          result.roleVersion,
          result.status,
          result.attempts,
          result.score,
          result.output,
          result.evidenceIds,
          JSON.stringify(result.usage),
          result.error ?? null,
          result.roleRequested ?? null,
          result.roleRoutedBy ?? null,
          result.roleFallbackReason ?? null,
          result.roleSource ?? null,
          result.roleChecksum ?? null,
          result.contextDigests ?? null,
        ],
      );
      // The audit trail names the exact role version and the digest of what it was given.
      await audit(pool, taskId, `subtask.${result.status}`, {
        subtaskId: result.id,
        role: result.roleVersion ? `${result.role}@${result.roleVersion}` : result.role,
        contextDigests: result.contextDigests ?? [],
        attempts: result.attempts,
        score: result.score,
      });
    },

    async recordCompensations({ taskId, outcomes }: { taskId: string; outcomes: CompensationOutcome[] }): Promise<void> {
      for (const [seq, o] of outcomes.entries()) {
        await pool.query(
          `INSERT INTO compensations (task_id, seq, call_key, subtask_id, tool, ok, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (task_id, call_key) DO UPDATE SET seq = EXCLUDED.seq, ok = EXCLUDED.ok, detail = EXCLUDED.detail`,
          [taskId, seq, o.step.callKey, o.step.subtaskId, o.step.tool, o.ok, o.detail],
        );
      }
      await audit(pool, taskId, 'task.compensated', { steps: outcomes.length, failed: outcomes.filter((o) => !o.ok).length });
    },

    async recordTaskFinished({ result }: { result: TaskResult }): Promise<void> {
      await pool.query(
        `UPDATE tasks SET status = $2, result = $3, plan = $4, plan_fallback_reason = $5, updated_at = now() WHERE task_id = $1`,
        [result.taskId, result.status, JSON.stringify(result), JSON.stringify(result.plan), result.planFallbackReason ?? null],
      );
      await audit(pool, result.taskId, 'task.finished', { status: result.status, cancelled: result.cancelled, error: result.error });
    },
  };
}
