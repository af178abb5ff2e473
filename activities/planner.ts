import { atomicPlan, DEFAULT_ROLE, storableText, validatePlan, type Plan, type TokenUsage } from '../validation';
import type { ActivityDeps } from './deps';
import { createRoleActivities } from './roles/activities';
import { audit } from '../infra/db/records';
import { activityKey } from './idempotency';
import { callModelWithHeartbeat } from './modelActivity';

/** What decompose returns: a valid plan, and the reason when it is the atomic fallback. */
export interface Decomposition {
  plan: Plan;
  fallbackReason?: string;
  usage: TokenUsage;
  model: string;
}

const PLAN_FORMAT = `Reply with JSON only, of this shape:
{"subtasks":[{"id":"kebab-id","title":"…","instructions":"…","role":"<role name>","dependsOn":["other-id"],
"acceptanceCriteria":[{"kind":"file_exists","path":"…"} | {"kind":"file_contains","path":"…","text":"…"} |
{"kind":"file_matches","path":"…","pattern":"regex"} | {"kind":"output_contains","text":"…"} | {"kind":"judged","rubric":"…"} |
{"kind":"json_schema","schema":{…},"path":"optional file"} | {"kind":"tool_result_field","tool":"server.tool","field":"a.b","equals":"optional"} |
{"kind":"command_succeeds","command":"…","args":["…"],"timeoutSeconds":60}]}]}
The dependencies must form a DAG.`;

/** The MAP router's first step: the model decomposes the task into a validated DAG of subtasks. */
export function createPlannerActivities(deps: ActivityDeps) {
  const roles = createRoleActivities(deps);
  return {
    async decompose(input: { taskId: string; goal: string; maxSubtasks: number; tenant?: string }): Promise<Decomposition> {
      const available = await roles.listRoles();
      const response = await callModelWithHeartbeat(deps, {
        purpose: 'plan',
        goal: input.goal,
        tools: [],
        meta: { taskId: input.taskId, ...(input.tenant ? { tenant: input.tenant } : {}) },
        messages: [
          {
            role: 'system',
            content: `You are MARE's planner. Decompose the task into at most ${input.maxSubtasks} subtasks, each done by one role.\nRoles:\n${available
              .map((r) => `- ${r.name}: ${r.description} (tools: ${r.tools.join(', ') || 'none'})`)
              .join('\n')}\n${PLAN_FORMAT}`,
          },
          { role: 'user', content: input.goal },
        ],
      });
      const checked = validatePlan(response.text, input.maxSubtasks);
      const result: Decomposition = checked.ok
        ? { plan: checked.plan, usage: response.usage, model: response.model }
        : { plan: atomicPlan(input.goal, DEFAULT_ROLE), fallbackReason: checked.reason, usage: response.usage, model: response.model };
      await deps.pool.query('UPDATE tasks SET plan = $2, plan_fallback_reason = $3, updated_at = now() WHERE task_id = $1', [
        input.taskId,
        JSON.stringify(deps.redactor.redactDeep(storableText(result.plan))), // model-written text: PostgreSQL cannot hold NUL
        result.fallbackReason === undefined ? null : deps.redactor.redact(storableText(result.fallbackReason)),
      ]);
      await audit(deps.pool, input.taskId, 'task.planned', {
        subtasks: result.plan.subtasks.map((s) => s.id),
        fallbackReason: result.fallbackReason === undefined ? undefined : deps.redactor.redact(result.fallbackReason),
        model: response.model,
        offline: response.offline,
      }, activityKey());
      return result;
    },
  };
}
