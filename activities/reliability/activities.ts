import { Context } from '@temporalio/activity';
import { TASK_QUEUE, supervisorWorkflowId, type TokenUsage } from '../../schemas';
import type { EnforcementDecision, OutcomeReport } from '../../schemas/supervisor';
import type { ActivityDeps } from '../deps';
import { RoleNotFoundError, RoleRepositoryError } from '../roles/repository';
import { recordEnforcementMetric } from '../metrics';
import { audit } from '../store';
import { recordEmbodiment, recordEnforcement, setThrottle, type EmbodimentOutcome } from './store';

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

/** Reliability records of finished embodiments, and enforcement by the role supervisors. */
export function createReliabilityActivities(deps: ActivityDeps) {
  const { pool } = deps;
  return {
    /**
     * Stores one reliability row per embodiment (once per key) and signals each outcome to its
     * role's supervisor, starting the supervisor if it is not running (signal-with-start).
     */
    async recordEmbodiments(input: { taskId: string; subtaskId: string; workflowId: string; models: string[]; escalations: number; embodiments: EmbodimentReport[] }): Promise<void> {
      const client = Context.current().client;
      for (const [i, e] of input.embodiments.entries()) {
        const key = `${input.workflowId}#${i + 1}`;
        const latencyMs = Math.max(0, Date.parse(e.endedAt) - Date.parse(e.startedAt));
        await recordEmbodiment(pool, {
          key,
          taskId: input.taskId,
          subtaskId: input.subtaskId,
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
          workflowId: supervisorWorkflowId(e.role),
          taskQueue: TASK_QUEUE,
          args: [{ role: e.role }],
          signal: 'embodimentOutcome',
          signalArgs: [report],
        });
      }
    },

    /** Carries out a supervisor's decision on its role and records it with its reason and evidence. */
    async enforce(input: EnforcementDecision & { key: string; role: string; roleVersion?: string; decidedBy: string; throttleCap: number | null }): Promise<void> {
      const who = { actor: input.decidedBy, reason: input.reason };
      try {
        if (input.action === 'suspend') await deps.roles.repository.suspend(input.role, who);
        if (input.action === 'reinstate') await deps.roles.repository.reinstate(input.role, who);
      } catch (err) {
        // Already in that state (a person did it first, or this is a retry): the record still lands.
        if (!(err instanceof RoleRepositoryError || err instanceof RoleNotFoundError)) throw err;
      }
      if (input.action === 'throttle' || input.action === 'unthrottle') await setThrottle(pool, input.role, input.action === 'throttle' ? input.throttleCap : null, input.reason);
      await recordEnforcement(pool, { key: input.key, role: input.role, roleVersion: input.roleVersion, action: input.action, reason: input.reason, evidence: input.evidence, decidedBy: input.decidedBy });
      await audit(pool, `role:${input.role}`, `enforcement.${input.action}`, { role: input.role, reason: input.reason, decidedBy: input.decidedBy }, input.key);
      recordEnforcementMetric(input.role, input.action);
      deps.logger.warn({ role: input.role, action: input.action, reason: input.reason }, 'role enforcement');
    },
  };
}
