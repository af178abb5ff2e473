import { Context } from '@temporalio/activity';
import type { MetricMeter } from '@temporalio/common';

/**
 * MARE's own metrics, through the SDK's metric meter: they are exported with the Temporal Runtime's
 * (Prometheus on MARE_METRICS_BIND) under the same `temporal_`-free names. Outside an activity (or
 * without telemetry) the SDK's meter is a no-op, so recording never fails a step.
 */
function meter(): MetricMeter | undefined {
  try {
    return Context.current().metricMeter;
  } catch {
    return undefined; // not in an activity
  }
}

/** Tokens and estimated cost of one model call, per role, model and purpose. */
export function recordModelMetrics(m: { role: string; model: string; purpose: string; inputTokens: number; outputTokens: number; costUsd: number }): void {
  const mm = meter();
  if (!mm) return;
  const tags = { role: m.role, model: m.model, purpose: m.purpose };
  const tokens = mm.createCounter('mare_model_tokens', 'tokens', 'Model tokens by role, model, purpose and direction');
  tokens.add(m.inputTokens, { ...tags, direction: 'input' });
  tokens.add(m.outputTokens, { ...tags, direction: 'output' });
  // Counters take integers: the estimated cost is counted in micro-dollars.
  mm.createCounter('mare_model_cost_microusd', 'micro-USD', 'Estimated model cost by role and model (tokens × modelPricePer1kTokens)').add(Math.round(m.costUsd * 1e6), tags);
}

/** One verification verdict: its composite score and whether it passed. */
export function recordVerificationMetrics(v: { role: string; score: number; passed: boolean }): void {
  const mm = meter();
  if (!mm) return;
  mm.createHistogram('mare_verification_score', 'float', '', 'Composite verification scores by role').record(v.score, { role: v.role });
  mm.createCounter('mare_verifications', '', 'Verifications by role and outcome').add(1, { role: v.role, outcome: v.passed ? 'passed' : 'failed' });
}

/** An undo step carried out. */
export function recordCompensationMetric(tool: string): void {
  meter()?.createCounter('mare_compensations', '', 'Undo steps run, by tool').add(1, { tool });
}

/** Approvals requested and decided (pending = requested − decided). */
export function recordApprovalMetric(event: 'requested' | 'approved' | 'denied' | 'timed_out'): void {
  meter()?.createCounter('mare_approvals', '', 'Approvals by event: requested, approved, denied, timed_out').add(1, { event });
}

/** A role supervisor's enforcement action. */
export function recordEnforcementMetric(role: string, action: string): void {
  meter()?.createCounter('mare_enforcement_actions', '', 'Enforcement actions by role and action').add(1, { role, action });
}
