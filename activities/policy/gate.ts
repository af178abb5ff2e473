import { ApplicationFailure } from '@temporalio/common';
import type { ModelRequest, PolicyInput } from '../../validation';
import { evaluatePolicies } from '../../core/policy';
import type { ActivityDeps } from '../deps';
import { detectSensitivity } from '../../infra/secrets';
import { recordPolicyDecision } from '../../infra/db/records';
import { activityKey } from '../idempotency';

/** The role name policies see for the model calls MARE makes itself. */
export const SYSTEM_CALLER = { plan: 'planner', judge: 'verifier' } as const;

/**
 * Policies on a model call made inside an activity (the planner's, the verifier's judge): the
 * agent's own calls are decided in workflow code, where an escalation can wait for a person. Here
 * an escalation cannot wait, so anything but `allow` refuses the call with PolicyDenied.
 */
export async function checkSystemModelCall(deps: Pick<ActivityDeps, 'pool' | 'policies' | 'redactor' | 'tools'>, req: ModelRequest, key: string): Promise<void> {
  if (req.purpose === 'act') return;
  const text = req.messages.map((m) => m.content).join('\n');
  const input: PolicyInput = {
    kind: 'model',
    target: req.modelPreference ?? 'default',
    role: SYSTEM_CALLER[req.purpose],
    tenant: req.meta.tenant ?? 'default',
    estimatedCost: (Math.ceil(text.length / 4) / 1000) * deps.tools.config.modelPricePer1kTokens,
    sensitivity: detectSensitivity(text, deps.redactor),
  };
  const decision = evaluatePolicies(await deps.policies.active(), input);
  await recordPolicyDecision(deps.pool, deps.redactor, { taskId: req.meta.taskId, subtaskId: req.meta.subtaskId ?? '(plan)', key, kind: 'model', target: input.target, decision }, activityKey());
  if (decision.decision === 'allow') return;
  const why = decision.decision === 'deny' ? 'denied' : "escalated, and only an agent's own calls can wait for a person";
  throw ApplicationFailure.nonRetryable(
    deps.redactor.redact(`PolicyDenied: the ${input.role}'s model call was ${why} (${decision.policy ?? 'policy'}: ${decision.reason})`),
    'PolicyDenied',
  );
}
