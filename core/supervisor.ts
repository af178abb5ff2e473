// Zod-free on purpose: the role supervisor workflow imports values from this module.

/** The lifecycle of a role's supervisor for one tenant (seed 004 §2.1). */
export type SupervisorPhase = 'Init' | 'Ready' | 'Active' | 'Suspended' | 'Retiring' | 'Terminated';

/** One finished embodiment, as the supervisor receives it. */
export interface OutcomeReport {
  /** The embodiment's key (its reliability row), so a repeated signal counts once. */
  key: string;
  roleVersion: string;
  outcome: 'completed' | 'failed' | 'cancelled' | 'escalated';
  score: number;
  latencyMs: number;
  /** ISO time the embodiment ended. */
  endedAt: string;
}

/** When the supervisor warns, throttles, suspends and reinstates. */
export interface SupervisorSettings {
  /** Outcomes kept in the rolling window. */
  windowSize: number;
  /** Outcomes needed before any decision. */
  minSamples: number;
  /** Success rate below which the role is suspended (the router sends its subtasks to the fallback). */
  suspendBelow: number;
  /** Success rate below which the role is throttled. */
  throttleBelow: number;
  /** Success rate at or above which a throttle is lifted. */
  unthrottleAt: number;
  /** Embodiments of a throttled role that may run at once. */
  throttleCap: number;
  /** Consecutive failures that produce a warning. */
  failureStreak: number;
  /** Standard deviations from the window's mean latency or score that count as an anomaly. */
  anomalySigmas: number;
  /** Seconds a suspension lasts before the supervisor reinstates the role by itself. */
  coolDownSeconds: number;
  /** History length after which the supervisor continues as new (Temporal also suggests it). */
  maxHistoryEvents: number;
}

export const SUPERVISOR_DEFAULTS: SupervisorSettings = {
  windowSize: 20,
  minSamples: 5,
  suspendBelow: 0.5,
  throttleBelow: 0.8,
  unthrottleAt: 0.9,
  throttleCap: 1,
  failureStreak: 3,
  anomalySigmas: 3,
  coolDownSeconds: 900,
  maxHistoryEvents: 5_000,
};

/** An enforcement decision. */
export interface EnforcementDecision {
  action: 'warning' | 'throttle' | 'unthrottle' | 'suspend' | 'reinstate';
  reason: string;
  /** What it was based on: the window's figures and the outcome that triggered it. */
  evidence: Record<string, unknown>;
}

/** What the supervisor carries across continue-as-new, and shows through its query. */
export interface SupervisorState {
  role: string;
  /** The tenant whose embodiments it counts: its throttle and suspension apply to that tenant only. */
  tenant: string;
  phase: SupervisorPhase;
  settings: SupervisorSettings;
  /** The rolling window, oldest first (cancelled embodiments are not counted). */
  window: OutcomeReport[];
  /** Keys of recent outcomes, to drop a repeated signal. */
  seen: string[];
  throttleCap: number | null;
  /** ISO time the suspension's cool-down ends. */
  suspendedUntil?: string;
  /** Embodiments holding a slot of a throttled role (workflow ids), and those waiting for one. */
  holders: string[];
  queue: string[];
  /** Recent decisions, newest last. */
  actions: (EnforcementDecision & { at: string; decidedBy: string })[];
  /** Numbers every enforcement so its record is written once, across continue-as-new. */
  actionSeq: number;
  outcomesSeen: number;
  runs: number;
}

/** A window's figures: size, success rate, mean and spread of score and latency. */
export function windowStats(window: OutcomeReport[]): { n: number; successRate: number; meanScore: number; sdScore: number; meanLatencyMs: number; sdLatencyMs: number } {
  const n = window.length;
  const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
  const sd = (xs: number[], m: number): number => (xs.length > 1 ? Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1)) : 0);
  const scores = window.map((o) => o.score);
  const latencies = window.map((o) => o.latencyMs);
  const meanScore = mean(scores);
  const meanLatencyMs = mean(latencies);
  return {
    n,
    successRate: n ? window.filter((o) => o.outcome === 'completed').length / n : 1,
    meanScore,
    sdScore: sd(scores, meanScore),
    meanLatencyMs,
    sdLatencyMs: sd(latencies, meanLatencyMs),
  };
}

/**
 * The supervisor's decisions on one new outcome (pure and deterministic): anomalies against the
 * window before it, then, over the window with it, suspension, throttling, lifting a throttle, or
 * a warning after a streak of failures.
 */
export function decide(state: Pick<SupervisorState, 'window' | 'throttleCap' | 'phase' | 'settings'>, outcome: OutcomeReport): { window: OutcomeReport[]; decisions: EnforcementDecision[] } {
  const s = state.settings;
  const decisions: EnforcementDecision[] = [];
  if (outcome.outcome === 'cancelled') return { window: state.window, decisions };
  const before = windowStats(state.window);
  if (before.n >= s.minSamples) {
    if (before.sdLatencyMs > 0 && outcome.latencyMs > before.meanLatencyMs + s.anomalySigmas * before.sdLatencyMs) {
      decisions.push({
        action: 'warning',
        reason: `anomaly: latency ${outcome.latencyMs} ms is more than ${s.anomalySigmas} standard deviations above the window's mean ${Math.round(before.meanLatencyMs)} ms`,
        evidence: { outcome, baseline: before },
      });
    }
    if (before.sdScore > 0 && outcome.score < before.meanScore - s.anomalySigmas * before.sdScore) {
      decisions.push({
        action: 'warning',
        reason: `anomaly: score ${outcome.score.toFixed(2)} is more than ${s.anomalySigmas} standard deviations below the window's mean ${before.meanScore.toFixed(2)}`,
        evidence: { outcome, baseline: before },
      });
    }
  }
  const window = [...state.window, outcome].slice(-s.windowSize);
  const after = windowStats(window);
  if (after.n < s.minSamples || state.phase === 'Suspended') return { window, decisions };
  const figures = { outcome, window: after };
  const rate = `success rate ${(after.successRate * 100).toFixed(0)}% over the last ${after.n} embodiments`;
  if (after.successRate < s.suspendBelow) {
    decisions.push({ action: 'suspend', reason: `${rate} is below ${s.suspendBelow * 100}%`, evidence: figures });
  } else if (state.throttleCap === null && after.successRate < s.throttleBelow) {
    decisions.push({ action: 'throttle', reason: `${rate} is below ${s.throttleBelow * 100}%: at most ${s.throttleCap} at once`, evidence: figures });
  } else if (state.throttleCap !== null && after.successRate >= s.unthrottleAt) {
    decisions.push({ action: 'unthrottle', reason: `${rate} is back at or above ${s.unthrottleAt * 100}%`, evidence: figures });
  } else {
    const streak = window.slice(-s.failureStreak);
    if (streak.length === s.failureStreak && streak.every((o) => o.outcome !== 'completed') && outcome.outcome !== 'completed') {
      decisions.push({ action: 'warning', reason: `${s.failureStreak} embodiments in a row did not complete`, evidence: figures });
    }
  }
  return { window, decisions };
}
