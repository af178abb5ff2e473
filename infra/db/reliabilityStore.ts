import type { Pool } from 'pg';
import semver from 'semver';
import { DEFAULT_TENANT } from '../../core/constants';

/** A report asked for wrongly (an unreadable --since, a bad --limit): exit code 2 in the CLI. */
export class ReportUsageError extends Error {
  override readonly name = 'ReportUsageError';
}

/** How one embodiment ended. */
export type EmbodimentOutcome = 'completed' | 'failed' | 'cancelled' | 'escalated';

/** One finished embodiment: one run of one role version on one subtask. */
export interface EmbodimentRecord {
  /** The subtask workflow id plus the embodiment number: the same key is written once. */
  key: string;
  taskId: string;
  subtaskId: string;
  /** The task's tenant, whose supervisor counts this embodiment (default: "default"). */
  tenant?: string;
  role: string;
  roleVersion: string;
  /** Every model the embodiment called. */
  models: string[];
  outcome: EmbodimentOutcome;
  /** The verification score (0 when it never reached verification). */
  score: number;
  attempts: number;
  escalations: number;
  latencyMs: number;
  inputTokens: number;
  outputTokens: number;
  /** ISO timestamps. */
  startedAt: string;
  endedAt: string;
}

/** The enforcement actions the supervisor (or a person) can take on a role. */
export type EnforcementAction = 'warning' | 'throttle' | 'unthrottle' | 'suspend' | 'reinstate';

/** One enforcement decision, with why and on what evidence. */
export interface EnforcementRecord {
  /** Idempotency key: a retried write with the same key is a no-op (the first row stays). */
  key: string;
  role: string;
  /** The tenant it applies to; absent: every tenant. */
  tenant?: string;
  roleVersion?: string;
  action: EnforcementAction;
  reason: string;
  evidence: Record<string, unknown>;
  /** Who decided: the supervisor workflow id, or a person. */
  decidedBy: string;
  /** When it was decided (ISO); default: when it is written. */
  at?: string;
}

/** Records a finished embodiment once; returns whether this call wrote it (false: already there). */
export async function recordEmbodiment(pool: Pool, r: EmbodimentRecord): Promise<boolean> {
  const { rowCount } = await pool.query(
    `INSERT INTO embodiments (embodiment_key, task_id, subtask_id, role, role_version, models, outcome, score, attempts,
       escalations, latency_ms, input_tokens, output_tokens, started_at, ended_at, tenant)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
     ON CONFLICT (embodiment_key) DO NOTHING`,
    [
      r.key,
      r.taskId,
      r.subtaskId,
      r.role,
      r.roleVersion,
      r.models,
      r.outcome,
      r.score,
      r.attempts,
      r.escalations,
      // Durations measured with fractional milliseconds would not fit the int column.
      Math.round(r.latencyMs),
      r.inputTokens,
      r.outputTokens,
      r.startedAt,
      r.endedAt,
      r.tenant ?? DEFAULT_TENANT,
    ],
  );
  return rowCount === 1;
}

/** Records an enforcement action once per key; returns whether this call wrote it. */
export async function recordEnforcement(pool: Pool, r: EnforcementRecord): Promise<boolean> {
  const { rowCount } = await pool.query(
    `INSERT INTO enforcement_actions (action_key, role, role_version, action, reason, evidence, decided_by, at, tenant)
     VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE($8::timestamptz, now()), $9)
     ON CONFLICT (action_key) DO NOTHING`,
    [r.key, r.role, r.roleVersion ?? null, r.action, r.reason, JSON.stringify(r.evidence), r.decidedBy, r.at ?? null, r.tenant ?? null],
  );
  return rowCount === 1;
}

/**
 * Sets (a positive integer) or lifts (null) a role's cap on concurrent embodiments for one tenant.
 * Returns whether the cap changed: false when the role does not exist or already had that cap.
 */
export async function setThrottle(pool: Pool, role: string, tenant: string, cap: number | null, reason: string): Promise<boolean> {
  if (cap !== null && !(Number.isInteger(cap) && cap >= 1)) throw new RangeError(`throttle cap must be a positive integer or null, not ${cap}`);
  if (cap === null) {
    const lifted = await pool.query(
      `UPDATE role_tenant_enforcement SET throttle_cap = NULL, throttled_at = NULL, throttle_reason = NULL, updated_at = now()
        WHERE role = $1 AND tenant = $2 AND throttle_cap IS NOT NULL`,
      [role, tenant],
    );
    return lifted.rowCount === 1;
  }
  // INSERT … SELECT from role_heads: an unknown role gets no row.
  const { rowCount } = await pool.query(
    `INSERT INTO role_tenant_enforcement (role, tenant, throttle_cap, throttled_at, throttle_reason)
       SELECT name, $2, $3::int, now(), $4 FROM role_heads WHERE name = $1
     ON CONFLICT (role, tenant) DO UPDATE
        SET throttle_cap = EXCLUDED.throttle_cap, throttled_at = EXCLUDED.throttled_at, throttle_reason = EXCLUDED.throttle_reason, updated_at = now()
      WHERE role_tenant_enforcement.throttle_cap IS DISTINCT FROM EXCLUDED.throttle_cap`,
    [role, tenant, cap, reason],
  );
  return rowCount === 1;
}

/** One role version's figures over the embodiments in the report's window. */
export interface ReliabilityRow {
  role: string;
  version: string;
  embodiments: number;
  completed: number;
  failed: number;
  cancelled: number;
  escalated: number;
  /** completed / embodiments, 0..1. */
  successRate: number;
  /** Verification scores; quartiles interpolated (percentile_cont). */
  score: { min: number; p25: number; p50: number; p75: number; max: number; mean: number };
  /** Latency percentiles in milliseconds, interpolated (percentile_cont). */
  latencyMs: { p50: number; p90: number; p99: number };
  meanAttempts: number;
  /** Escalations summed over the embodiments. */
  escalations: number;
  tokens: { input: number; output: number; total: number };
}

/** Filters of both reports: one role, and only what ended (happened) at or after `since`. */
export interface ReportFilter {
  role?: string;
  since?: Date;
}

interface AggregateRow {
  role: string;
  role_version: string;
  embodiments: number;
  completed: number;
  failed: number;
  cancelled: number;
  escalated: number;
  score_min: number;
  score_q: number[];
  score_max: number;
  score_mean: number;
  latency_q: number[];
  mean_attempts: number;
  escalations: string;
  input_tokens: string;
  output_tokens: string;
}

/** Orders versions by semver (1.9.0 before 1.10.0); a version that is not semver sorts as text after those that are. */
function compareVersions(a: string, b: string): number {
  const va = semver.valid(a);
  const vb = semver.valid(b);
  if (va && vb) return semver.compare(va, vb);
  if (va || vb) return va ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Success rate, score distribution, latency percentiles, attempts and tokens per role version. */
export async function reliabilityReport(pool: Pool, filter: ReportFilter = {}): Promise<ReliabilityRow[]> {
  const { rows } = await pool.query<AggregateRow>(
    `SELECT role, role_version,
            count(*)::int AS embodiments,
            (count(*) FILTER (WHERE outcome = 'completed'))::int AS completed,
            (count(*) FILTER (WHERE outcome = 'failed'))::int AS failed,
            (count(*) FILTER (WHERE outcome = 'cancelled'))::int AS cancelled,
            (count(*) FILTER (WHERE outcome = 'escalated'))::int AS escalated,
            min(score) AS score_min,
            percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY score) AS score_q,
            max(score) AS score_max,
            avg(score) AS score_mean,
            percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY latency_ms) AS latency_q,
            avg(attempts)::float8 AS mean_attempts,
            sum(escalations) AS escalations,
            sum(input_tokens) AS input_tokens,
            sum(output_tokens) AS output_tokens
       FROM embodiments
      WHERE ($1::text IS NULL OR role = $1) AND ($2::timestamptz IS NULL OR ended_at >= $2)
      GROUP BY role, role_version`,
    [filter.role ?? null, filter.since ?? null],
  );
  return rows
    .map((r): ReliabilityRow => {
      const input = Number(r.input_tokens);
      const output = Number(r.output_tokens);
      return {
        role: r.role,
        version: r.role_version,
        embodiments: r.embodiments,
        completed: r.completed,
        failed: r.failed,
        cancelled: r.cancelled,
        escalated: r.escalated,
        successRate: r.completed / r.embodiments,
        score: { min: r.score_min, p25: r.score_q[0]!, p50: r.score_q[1]!, p75: r.score_q[2]!, max: r.score_max, mean: r.score_mean },
        latencyMs: { p50: r.latency_q[0]!, p90: r.latency_q[1]!, p99: r.latency_q[2]! },
        meanAttempts: r.mean_attempts,
        escalations: Number(r.escalations),
        tokens: { input, output, total: input + output },
      };
    })
    .sort((a, b) => (a.role < b.role ? -1 : a.role > b.role ? 1 : compareVersions(a.version, b.version)));
}

/** One stored enforcement action. */
export interface EnforcementRow {
  id: number;
  key: string;
  role: string;
  roleVersion: string | null;
  action: EnforcementAction;
  reason: string;
  evidence: Record<string, unknown>;
  decidedBy: string;
  at: Date;
}

/** Enforcement actions, newest first (at most `limit`, when given). */
export async function enforcementReport(pool: Pool, filter: ReportFilter & { limit?: number } = {}): Promise<EnforcementRow[]> {
  const { rows } = await pool.query<{
    id: string;
    action_key: string;
    role: string;
    role_version: string | null;
    action: EnforcementAction;
    reason: string;
    evidence: Record<string, unknown>;
    decided_by: string;
    at: Date;
  }>(
    `SELECT id, action_key, role, role_version, action, reason, evidence, decided_by, at
       FROM enforcement_actions
      WHERE ($1::text IS NULL OR role = $1) AND ($2::timestamptz IS NULL OR at >= $2)
      ORDER BY at DESC, id DESC
      LIMIT $3`,
    [filter.role ?? null, filter.since ?? null, filter.limit ?? null],
  );
  return rows.map((r) => ({
    id: Number(r.id),
    key: r.action_key,
    role: r.role,
    roleVersion: r.role_version,
    action: r.action,
    reason: r.reason,
    evidence: r.evidence,
    decidedBy: r.decided_by,
    at: r.at,
  }));
}

const DURATION_MS: Record<string, number> = { m: 60_000, h: 3_600_000, d: 86_400_000, w: 7 * 86_400_000 };
const ISO_DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?$/;

/**
 * Reads a `--since`: a duration back from `now` (`30m`, `24h`, `7d`, `2w`) or an ISO date or date
 * and time (`2026-05-01`, `2026-05-01T12:00:00Z`; a date alone is midnight UTC, a time without an
 * offset is local time). Anything else is a ReportUsageError.
 */
export function parseSince(text: string, now: Date = new Date()): Date {
  const value = text.trim();
  const duration = /^(\d+)\s*([mhdw])$/i.exec(value);
  if (duration) {
    const amount = Number(duration[1]);
    const ms = amount * DURATION_MS[duration[2]!.toLowerCase()]!;
    if (amount < 1 || !Number.isSafeInteger(ms)) throw new ReportUsageError(`--since "${text}": a duration must be a positive whole number of m, h, d or w`);
    return new Date(now.getTime() - ms);
  }
  const iso = ISO_DATE_TIME.exec(value);
  if (iso) {
    const [, y, mo, d, h = '0', mi = '0', s = '0'] = iso;
    // Date.parse rolls 2026-02-30 over into March; a date that is not on the calendar is refused instead.
    const calendar = new Date(Date.UTC(Number(y), Number(mo) - 1, Number(d)));
    const onCalendar = calendar.getUTCFullYear() === Number(y) && calendar.getUTCMonth() === Number(mo) - 1 && calendar.getUTCDate() === Number(d);
    const at = Date.parse(value.replace(' ', 'T'));
    if (onCalendar && Number(h) < 24 && Number(mi) < 60 && Number(s) < 60 && !Number.isNaN(at)) return new Date(at);
  }
  throw new ReportUsageError(`--since "${text}" is neither a duration (30m, 24h, 7d, 2w) nor an ISO date or time (2026-05-01, 2026-05-01T12:00:00Z)`);
}
