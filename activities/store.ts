import { ApplicationFailure } from '@temporalio/common';
import { z } from 'zod';
import { storableText, TaskRequest, type ApprovalView, type CompensationOutcome, type SubtaskResult, type TaskResult } from '../validation';
import { audit, recordPolicyDecision, writeAudited, type AuditEvent, type PolicyDecisionRecord } from '../infra/db/records';
import type { ActivityDeps } from './deps';
import { activityKey } from './idempotency';
import { recordApprovalMetric } from './metrics';

/** Bookkeeping activities: every write is keyed so a retried activity never writes twice. */
export function createStoreActivities({ pool, redactor, logger }: ActivityDeps) {
  async function recordTask(input: { taskId: string; workflowId: string; goal: string; tenant: string }): Promise<void> {
    await writeAudited(
      pool,
      `INSERT INTO tasks (task_id, workflow_id, goal, tenant, status) VALUES ($1, $2, $3, $4, 'RUNNING')
       ON CONFLICT (task_id) DO NOTHING`,
      [input.taskId, input.workflowId, redactor.redact(input.goal), input.tenant],
      { taskId: input.taskId, kind: 'task.started', data: { goal: redactor.redact(input.goal), tenant: input.tenant }, key: activityKey() },
    );
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

    async recordToolDenied(input: {
      taskId: string;
      subtaskId: string;
      callKey: string;
      tool: string;
      args: Record<string, unknown>;
      role: string;
      /** Why (runs started before reasons were passed: the role had no grant). */
      reason?: string;
    }): Promise<void> {
      const reason = redactor.redact(input.reason ?? `role ${input.role} has no grant for ${input.tool}`);
      // Never the arguments: a call is often denied because they hold a secret (tool_calls keeps them redacted).
      logger.info({ taskId: input.taskId, subtaskId: input.subtaskId, callKey: input.callKey, tool: input.tool, role: input.role, reason }, 'tool call denied');
      await pool.query(
        `INSERT INTO tool_calls (call_key, task_id, subtask_id, tool, args, status, detail)
         VALUES ($1, $2, $3, $4, $5, 'denied', $6) ON CONFLICT (call_key) DO NOTHING`,
        [input.callKey, input.taskId, input.subtaskId, input.tool, JSON.stringify(storableText(redactor.redactDeep(input.args))), reason],
      );
      await audit(pool, input.taskId, 'tool.denied', { subtaskId: input.subtaskId, tool: input.tool, role: input.role, ...(input.reason ? { reason } : {}) }, activityKey());
    },

    /** Records a policy decision that did not ride along with its call (a denial or an escalation). */
    async recordPolicyDecision(input: PolicyDecisionRecord): Promise<void> {
      await recordPolicyDecision(pool, redactor, input, activityKey());
    },

    /** Records a pending approval; returns its view with the arguments redacted, for the workflow's query. */
    async recordApprovalRequested(input: { view: ApprovalView; callKey: string }): Promise<ApprovalView> {
      const view: ApprovalView = { ...input.view, args: redactor.redactDeep(input.view.args), reason: redactor.redact(input.view.reason) };
      await pool.query(
        `INSERT INTO approvals (task_id, approval_id, subtask_id, workflow_id, call_key, kind, target, args, reason, policy, status, deadline)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'pending', $11) ON CONFLICT (task_id, approval_id) DO NOTHING`,
        [view.taskId, view.approvalId, view.subtaskId, view.workflowId, input.callKey, view.kind, view.target, JSON.stringify(storableText(view.args)), view.reason, view.policy ?? null, view.deadline],
      );
      recordApprovalMetric('requested');
      await audit(pool, view.taskId, 'approval.requested', { approvalId: view.approvalId, subtaskId: view.subtaskId, kind: view.kind, target: view.target, policy: view.policy, deadline: view.deadline }, activityKey());
      return view;
    },

    /** Records how an approval was decided: by a person, or by the policy's default at the deadline. */
    async recordApprovalDecided(input: { taskId: string; approvalId: string; status: ApprovalView['status']; by: string; reason: string }): Promise<void> {
      await pool.query(
        `UPDATE approvals SET status = $3, decided_by = $4, decision_reason = $5, decided_at = now() WHERE task_id = $1 AND approval_id = $2 AND status = 'pending'`,
        [input.taskId, input.approvalId, input.status, redactor.redact(input.by), redactor.redact(input.reason)],
      );
      if (input.status !== 'pending') recordApprovalMetric(input.status);
      await audit(pool, input.taskId, 'approval.decided', { approvalId: input.approvalId, status: input.status, by: redactor.redact(input.by), reason: redactor.redact(input.reason) }, activityKey());
    },

    async recordSubtask({ taskId, result }: { taskId: string; result: SubtaskResult }): Promise<void> {
      await writeAudited(
        pool,
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
          redactor.redact(storableText(result.output)), // model-written: PostgreSQL cannot hold NUL
          result.evidenceIds,
          JSON.stringify(result.usage),
          result.error == null ? null : redactor.redact(storableText(result.error)),
          result.roleRequested ?? null,
          result.roleRoutedBy ?? null,
          result.roleFallbackReason == null ? null : redactor.redact(result.roleFallbackReason),
          result.roleSource ?? null,
          result.roleChecksum ?? null,
          result.contextDigests ?? null,
        ],
        subtaskEvent(taskId, result),
      );
    },

    async recordCompensations({ taskId, outcomes }: { taskId: string; outcomes: CompensationOutcome[] }): Promise<void> {
      for (const [seq, o] of outcomes.entries()) {
        await pool.query(
          `INSERT INTO compensations (task_id, seq, call_key, subtask_id, tool, ok, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (task_id, call_key) DO UPDATE SET seq = EXCLUDED.seq, ok = EXCLUDED.ok, detail = EXCLUDED.detail`,
          [taskId, seq, o.step.callKey, o.step.subtaskId, o.step.tool, o.ok, redactor.redact(o.detail)],
        );
      }
      await audit(pool, taskId, 'task.compensated', { steps: outcomes.length, failed: outcomes.filter((o) => !o.ok).length }, activityKey());
    },

    async recordTaskFinished({ result: raw }: { result: TaskResult }): Promise<void> {
      // Display only: the task's result is read from Temporal; the row is for people and reports.
      const result = redactor.redactDeep(raw);
      await writeAudited(
        pool,
        `UPDATE tasks SET status = $2, result = $3, plan = $4, plan_fallback_reason = $5, evidence_id = $6, updated_at = now() WHERE task_id = $1`,
        [result.taskId, result.status, JSON.stringify(storableText(result)), JSON.stringify(storableText(result.plan)), result.planFallbackReason ?? null, result.verification?.evidenceId ?? null],
        { taskId: result.taskId, kind: 'task.finished', data: { status: result.status, cancelled: result.cancelled, error: result.error && redactor.redact(result.error) }, key: activityKey() },
      );
    },
  };
}

/** The audit event of a subtask's end: it names the exact role version and the digest of what the role was given. */
function subtaskEvent(taskId: string, result: SubtaskResult): AuditEvent {
  const role = result.roleVersion ? `${result.role}@${result.roleVersion}` : result.role;
  return { taskId, kind: `subtask.${result.status}`, data: { subtaskId: result.id, role, contextDigests: result.contextDigests ?? [], attempts: result.attempts, score: result.score }, key: activityKey() };
}
