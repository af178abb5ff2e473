import { APPROVAL_DEFAULTS } from './constants';
import { globMatches, patternFound, UnsafePatternError } from './patterns';
import type { LoadedPolicy, PolicyArgCondition, PolicyCondition, PolicyDecision, PolicyInput, PolicyRule, PolicyVerdict } from '../validation/policy';

/** The decision when no rule of any policy matches the call. */
export const NO_RULE_MATCHED = 'no policy rule matched';

const STRICTNESS: Record<PolicyVerdict, number> = { allow: 0, escalate: 1, deny: 2 };

function argMatches(args: Record<string, unknown> | undefined, name: string, cond: PolicyArgCondition): boolean {
  if (!args || !Object.hasOwn(args, name)) return false;
  const value = args[name];
  if (value === undefined) return false;
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  if (cond.globs && !cond.globs.some((g) => globMatches(g, text))) return false;
  if (cond.pattern !== undefined && !patternFound(cond.pattern, text)) return false;
  if (cond.equals !== undefined && value !== cond.equals) return false;
  return true;
}

/** Whether every field present in `when` matches the call; an empty condition matches every call. */
export function conditionMatches(when: PolicyCondition, input: PolicyInput): boolean {
  if (when.kinds && !when.kinds.includes(input.kind)) return false;
  if (when.targets && !when.targets.some((g) => globMatches(g, input.target))) return false;
  if (when.roles && !when.roles.includes(input.role)) return false;
  if (when.tenants && !when.tenants.includes(input.tenant)) return false;
  if (when.minEstimatedCost !== undefined && !(input.estimatedCost >= when.minEstimatedCost)) return false;
  if (when.sensitivity && !when.sensitivity.some((s) => input.sensitivity.includes(s))) return false;
  for (const [name, cond] of Object.entries(when.args ?? {})) {
    if (!argMatches(input.args, name, cond)) return false;
  }
  return true;
}

/**
 * Whether a rule applies. A pattern RE2 cannot run (a policy stored before patterns were checked
 * for linear time) fails closed: a deny or escalate rule applies, an allow rule does not.
 */
function ruleApplies(rule: PolicyRule, input: PolicyInput): boolean {
  try {
    return conditionMatches(rule.when, input);
  } catch (err) {
    if (err instanceof UnsafePatternError) return rule.decision !== 'allow';
    throw err;
  }
}

function decisionOf(policy: LoadedPolicy, rule: PolicyRule): PolicyDecision {
  return {
    decision: rule.decision,
    reason: rule.reason,
    policy: `${policy.name}@${policy.version}`,
    rule: rule.id,
    ...(rule.decision === 'escalate'
      ? {
          approval: {
            timeoutSeconds: rule.approval?.timeoutSeconds ?? APPROVAL_DEFAULTS.timeoutSeconds,
            onTimeout: rule.approval?.onTimeout ?? APPROVAL_DEFAULTS.onTimeout,
          },
        }
      : {}),
  };
}

/**
 * The decision of the policies in force on one tool or model call. Pure and deterministic, so it
 * runs in workflow code on the pinned policy set: policies are taken in name order, the first
 * matching rule of each is that policy's verdict, and the strictest verdict wins (deny > escalate >
 * allow; on a tie, the policy first by name). No matching rule anywhere allows the call.
 */
export function evaluatePolicies(policies: readonly LoadedPolicy[], input: PolicyInput): PolicyDecision {
  // Code-point order, not localeCompare: the same on every worker whatever its locale.
  const ordered = [...policies].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let best: PolicyDecision | undefined;
  for (const policy of ordered) {
    const rule = policy.document.rules.find((r) => ruleApplies(r, input));
    if (!rule) continue;
    if (!best || STRICTNESS[rule.decision] > STRICTNESS[best.decision]) best = decisionOf(policy, rule);
    if (best.decision === 'deny') break;
  }
  return best ?? { decision: 'allow', reason: NO_RULE_MATCHED };
}
