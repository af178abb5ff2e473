import type { Command } from 'commander';
import type { Pool } from 'pg';
import {
  enforcementReport,
  parseSince,
  reliabilityReport,
  ReportUsageError,
  type EnforcementRow,
  type ReliabilityRow,
} from '../infra/db/reliabilityStore';
import { withDatabase, type Action, type Print } from './commandKit';


/** Opens DATABASE_URL (migrated) for one command. */
function withDb<T>(fn: (pool: Pool) => Promise<T>): Promise<T> {
  return withDatabase('reports read the PostgreSQL database workers use', fn, (m) => new ReportUsageError(m));
}

/** Lines of a table whose columns are as wide as their widest cell; `right` columns are right-aligned. */
function table(header: string[], rows: string[][], right: ReadonlySet<number>): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (right.has(i) ? c.padStart(widths[i]!) : i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

const fixed = (n: number, digits = 2): string => n.toFixed(digits);
const ms = (n: number): string => String(Math.round(n));

function reliabilityTable(rows: ReliabilityRow[]): string[] {
  return table(
    ['role@version', 'n', 'success', 'score p25/p50/p75', 'latency p50/p90/p99 ms', 'attempts', 'escalations'],
    rows.map((r) => [
      `${r.role}@${r.version}`,
      String(r.embodiments),
      `${fixed(r.successRate * 100, 1)}%`,
      [r.score.p25, r.score.p50, r.score.p75].map((s) => fixed(s)).join('/'),
      [r.latencyMs.p50, r.latencyMs.p90, r.latencyMs.p99].map(ms).join('/'),
      fixed(r.meanAttempts),
      String(r.escalations),
    ]),
    new Set([1, 2, 5, 6]),
  );
}

/** Evidence as one line, cut so the table stays readable (--json has it whole). */
function evidenceText(evidence: Record<string, unknown>): string {
  const text = JSON.stringify(evidence);
  return text.length > 80 ? `${text.slice(0, 79)}…` : text;
}

function enforcementTable(rows: EnforcementRow[]): string[] {
  return table(
    ['at', 'role', 'action', 'decided by', 'reason', 'evidence'],
    rows.map((r) => [r.at.toISOString(), r.roleVersion ? `${r.role}@${r.roleVersion}` : r.role, r.action, r.decidedBy, r.reason, evidenceText(r.evidence)]),
    new Set(),
  );
}

function limitOf(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new ReportUsageError(`--limit "${text}" must be a positive integer`);
  return n;
}

/** `mare report …`: reliability per role version and the enforcement log, from DATABASE_URL. */
export function registerReportCommands(program: Command, action: Action, print: Print): void {
  const report = program.command('report').description('reports from the PostgreSQL database on DATABASE_URL: reliability per role version, enforcement actions');
  const when = 'a duration back from now (30m, 24h, 7d, 2w) or an ISO date or time (2026-05-01, 2026-05-01T12:00:00Z)';

  report
    .command('reliability')
    .description('per role version: embodiments, success rate, verification score quartiles, latency percentiles, mean attempts, escalations')
    .option('--role <name>', 'only this role')
    .option('--since <when>', `only embodiments that ended at or after <when>: ${when}`)
    .option('--json', 'print as JSON (with min/max/mean scores, outcome counts and tokens)')
    .action(
      action(async (opts: { role?: string; since?: string; json?: boolean }) => {
        const filter = { ...(opts.role ? { role: opts.role } : {}), ...(opts.since !== undefined ? { since: parseSince(opts.since) } : {}) };
        const rows = await withDb((pool) => reliabilityReport(pool, filter));
        if (opts.json) return print(JSON.stringify(rows, null, 2));
        if (!rows.length) return print('no embodiments recorded');
        reliabilityTable(rows).forEach((l) => print(l));
      }),
    );

  report
    .command('enforcement')
    .description('enforcement actions (warning, throttle, unthrottle, suspend, reinstate) with their reason and evidence, newest first')
    .option('--role <name>', 'only this role')
    .option('--since <when>', `only actions decided at or after <when>: ${when}`)
    .option('--limit <n>', 'at most n actions', '50')
    .option('--json', 'print as JSON')
    .action(
      action(async (opts: { role?: string; since?: string; limit?: string; json?: boolean }) => {
        const limit = limitOf(opts.limit);
        const filter = { ...(opts.role ? { role: opts.role } : {}), ...(opts.since !== undefined ? { since: parseSince(opts.since) } : {}), ...(limit ? { limit } : {}) };
        const rows = await withDb((pool) => enforcementReport(pool, filter));
        if (opts.json) return print(JSON.stringify(rows, null, 2));
        if (!rows.length) return print('no enforcement actions recorded');
        enforcementTable(rows).forEach((l) => print(l));
      }),
    );
}
