import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { TaskRequest, type TokenUsage } from '../../validation';
import { DEFAULT_TENANT, TASK_QUEUE, supervisorWorkflowId } from '../../core/constants';
import type { EnforcementDecision, OutcomeReport } from '../../core/supervisor';
import type { ActivityDeps } from '../deps';
import { RoleNotFoundError, RoleRepositoryError } from '../../infra/db/roleRepository';
import { recordEnforcementMetric } from '../metrics';
import { audit } from '../../infra/db/records';
import { recordEmbodiment, recordEnforcement, setThrottle, type EmbodimentOutcome } from '../../infra/db/reliabilityStore';

/** One embodiment of a subtask, as the workflow reports it when the subtask ends. */
export interface EmbodimentReport {
  role: string;
  version: string;
  outcome: EmbodimentOutcome;
  attempts: number;
  score: number;
  startedAt: string;
  endedAt: string;
  usage: TokenUsage;
}

/** The embodiments of one subtask, reported when it ends. */
export interface EmbodimentsReport {
  taskId: string;
  subtaskId: string;
  workflowId: string;
  tenant?: string;
  models: string[];
  escalations: number;
  embodiments: EmbodimentReport[];
}

/** Reliability records of finished embodiments, and enforcement by the role supervisors. */
export function createReliabilityActivities(deps: ActivityDeps) {
  const { pool } = deps;
  return {
    /**
     * Stores one reliability row per embodiment (once per key) and signals each outcome to the
     * supervisor of its role for the task's tenant, starting it if it is not running (signal-with-start).
     */
    async recordEmbodiments(input: EmbodimentsReport): Promise<void> {
      const client = Context.current().client;
      const tenant = checkTenant(input.tenant);
      for (const [i, e] of input.embodiments.entries()) {
        const key = `${input.workflowId}#${i + 1}`;
        const latencyMs = Math.max(0, Date.parse(e.endedAt) - Date.parse(e.startedAt));
        await recordEmbodiment(pool, {
          key,
          taskId: input.taskId,
          subtaskId: input.subtaskId,
          tenant,
          role: e.role,
          roleVersion: e.version,
          models: input.models,
          outcome: e.outcome,
          score: e.score,
          attempts: e.attempts,
          escalations: e.outcome === 'escalated' ? 1 : 0,
          latencyMs,
          inputTokens: e.usage.inputTokens,
          outputTokens: e.usage.outputTokens,
          startedAt: e.startedAt,
          endedAt: e.endedAt,
        });
        const report: OutcomeReport = { key, roleVersion: e.version, outcome: e.outcome, score: e.score, latencyMs, endedAt: e.endedAt };
        await client.workflow.signalWithStart('superviseRole', {
          workflowId: supervisorWorkflowId(e.role, tenant),
          taskQueue: TASK_QUEUE,
          args: [{ role: e.role, tenant }],
          signal: 'embodimentOutcome',
          signalArgs: [report],
        });
      }
    },

    /**
     * Carries out a supervisor's decision on its role for its tenant (never for every tenant: that
     * is an operator's decision) and records it with its reason and evidence.
     */
    async enforce(input: EnforcementDecision & { key: string; role: string; tenant?: string; roleVersion?: string; decidedBy: string; throttleCap: number | null }): Promise<void> {
      const tenant = checkTenant(input.tenant);
      const who = { actor: input.decidedBy, reason: input.reason };
      try {
        if (input.action === 'suspend') await deps.roles.repository.suspend(input.role, who, tenant);
        if (input.action === 'reinstate') await deps.roles.repository.reinstate(input.role, who, tenant);
      } catch (err) {
        // Already in that state (a person did it first, or this is a retry): the record still lands.
        if (!(err instanceof RoleRepositoryError || err instanceof RoleNotFoundError)) throw err;
      }
      if (input.action === 'throttle' || input.action === 'unthrottle') await setThrottle(pool, input.role, tenant, input.action === 'throttle' ? input.throttleCap : null, input.reason);
      await recordEnforcement(pool, { key: input.key, role: input.role, tenant, roleVersion: input.roleVersion, action: input.action, reason: input.reason, evidence: input.evidence, decidedBy: input.decidedBy });
      await audit(pool, `role:${input.role}`, `enforcement.${input.action}`, { role: input.role, tenant, reason: input.reason, decidedBy: input.decidedBy }, input.key);
      recordEnforcementMetric(input.role, input.action);
      deps.logger.warn({ role: input.role, tenant, action: input.action, reason: input.reason }, 'role enforcement');
    },
  };
}

/** A tenant as a task names it (the task schema's format), or the default; anything else is refused, not retried. */
function checkTenant(tenant: string | undefined): string {
  if (tenant === undefined) return DEFAULT_TENANT;
  if (!TaskRequest.shape.tenant.safeParse(tenant).success) throw ApplicationFailure.nonRetryable(`tenant ${JSON.stringify(tenant)} is not a valid tenant name`, 'InvalidTenant');
  return tenant;
}
