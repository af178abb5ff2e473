import { ApplicationFailure } from '@temporalio/workflow';
import { toolGrants } from '../core/permissions';
import { evaluatePolicies } from '../core/policy';
import type { ChatMessage, ModelRequest, PolicyDecision, PolicyInput, RoleProfile } from '../validation';
import { bookkeeping as store, modelsWith } from './activityProfiles';
import type { Embodiment } from './embodiment';
import { runToolCall } from './toolMediation';

/** Model → tool calls → model … until a final answer or the role's iteration budget runs out. */
export async function agentLoop(run: Embodiment, role: RoleProfile, messages: ChatMessage[], attempt: number): Promise<string> {
  // The transcript lives in PostgreSQL; each call sends only the messages added since the last one.
  const transcriptId = `${run.workflowId}/a${attempt}`;
  let sent = 0;
  // The model sees the role's permitted tools only, and only those configured on the workers.
  const offered = toolGrants(role)
    .map((g) => g.tool)
    .filter((t) => run.catalog.tools.some((info) => info.name === t));
  for (let iteration = 1; iteration <= role.maxIterations; iteration++) {
    run.step(`attempt ${attempt}: model call ${iteration}`);
    const policy = await gateModelCall(run, role, messages, `${transcriptId}/i${iteration}/model`);
    const response = await modelsWith(`act: model call ${iteration} of attempt ${attempt} [${role.name}]`).callModel({
      ...(policy ? { policy } : {}),
      purpose: 'act',
      messages: messages.slice(sent),
      transcript: { id: transcriptId, offset: sent },
      tools: offered,
      ...(role.modelPreference ? { modelPreference: role.modelPreference } : {}),
      meta: { taskId: run.taskId, subtaskId: run.subtaskId, role: role.name, attempt },
    });
    sent = messages.length;
    run.count(response.usage, [response.model]);
    run.agentTokens += response.usage.inputTokens + response.usage.outputTokens;
    if (role.tokenBudget?.total !== undefined && run.agentTokens > role.tokenBudget.total) {
      throw ApplicationFailure.nonRetryable(`BudgetExceeded: ${run.agentTokens} tokens used, the role's budget is ${role.tokenBudget.total}`, 'BudgetExceeded');
    }
    if (response.kind === 'final') return response.text;

    messages.push({ role: 'assistant', content: response.text, toolCalls: response.calls });
    for (const [index, call] of response.calls.entries()) {
      const callKey = `${run.workflowId}/a${attempt}/i${iteration}/c${index}`;
      messages.push(await runToolCall(run, role, call, callKey, attempt));
    }
  }
  throw ApplicationFailure.nonRetryable(`BudgetExceeded: no final answer after ${role.maxIterations} model calls`, 'BudgetExceeded');
}

/**
 * Policies on the agent's model call: a deny ends the embodiment, an escalation waits for a
 * person. Returns an allowed decision for the model call's activity to record.
 */
async function gateModelCall(run: Embodiment, role: RoleProfile, messages: ChatMessage[], key: string): Promise<NonNullable<ModelRequest['policy']> | undefined> {
  const chars = messages.reduce((n, m) => n + m.content.length, 0);
  const policyInput: PolicyInput = {
    kind: 'model',
    target: role.modelPreference ?? 'default',
    role: role.name,
    tenant: run.tenant,
    estimatedCost: (Math.ceil(chars / 4) / 1000) * run.catalog.modelPricePer1kTokens,
    sensitivity: [...run.contextSensitivity].sort(),
  };
  const decision: PolicyDecision = evaluatePolicies(run.policies, policyInput);
  if (decision.decision === 'allow') return { key, target: policyInput.target, decision };
  await store(`record policy decision ${decision.decision}: model call of ${role.name}`).recordPolicyDecision({ taskId: run.taskId, subtaskId: run.subtaskId, key, kind: 'model', target: policyInput.target, decision });
  if (decision.decision === 'escalate') {
    run.step('waiting for approval of a model call');
    if ((await run.desk.request({ kind: 'model', target: policyInput.target, args: {}, callKey: key, about: `a model call (${policyInput.target})` }, decision)).allowed) return undefined;
  }
  throw ApplicationFailure.nonRetryable(`PolicyDenied: a model call was not allowed (${decision.policy ?? 'policy'}: ${decision.reason})`, 'PolicyDenied');
}
