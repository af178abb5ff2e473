import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  enforcementReport,
  parseSince,
  recordEmbodiment,
  recordEnforcement,
  reliabilityReport,
  ReportUsageError,
  setThrottle,
  type EmbodimentRecord,
  type EnforcementRecord,
  type ReliabilityRow,
} from '../infra/db/reliabilityStore';
import { createTestDatabase, type TestDatabase } from './helpers';

// Reliability metrics and enforcement actions on a real PostgreSQL database, and `mare report …`
// through the real CLI from dist/ (npm test builds it first).
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');

const NOW = Date.now();
const DAY = 86_400_000;
const ago = (ms: number): string => new Date(NOW - ms).toISOString();

let seq = 0;
/** An embodiment of `role@version` that ended `endedAgo` ms ago, with the given figures. */
function embodiment(
  role: string,
  roleVersion: string,
  outcome: EmbodimentRecord['outcome'],
  score: number,
  latencyMs: number,
  more: Partial<EmbodimentRecord> & { endedAgo?: number } = {},
): EmbodimentRecord {
  const { endedAgo = 60_000, ...rest } = more;
  const n = ++seq;
  return {
    key: `task-${n}/subtask-${n}/e1`,
    taskId: `task-${n}`,
    subtaskId: `s${n}`,
    role,
    roleVersion,
    models: ['scripted:test'],
    outcome,
    score,
    attempts: 1,
    escalations: 0,
    latencyMs,
    inputTokens: 100,
    outputTokens: 10,
    startedAt: ago(endedAgo + latencyMs),
    endedAt: ago(endedAgo),
    ...rest,
  };
}

/**
 * The planted set. writer@1.9.0 (ended 10 days ago): scores 0.2, 0.6, 0.8, 1.0 and latencies 100,
 * 200, 300, 1000; writer@1.10.0 (recent): scores 0.5, 0.9, 0.9, 0.95, 1.0 and latencies 10..50;
 * reviewer@2.0.0: one embodiment.
 */
const PLANTED: EmbodimentRecord[] = [
  embodiment('writer', '1.9.0', 'completed', 0.8, 300, { endedAgo: 10 * DAY, attempts: 2 }),
  embodiment('writer', '1.9.0', 'failed', 0.2, 1000, { endedAgo: 10 * DAY, attempts: 3 }),
  embodiment('writer', '1.9.0', 'completed', 1.0, 100, { endedAgo: 10 * DAY }),
  embodiment('writer', '1.9.0', 'escalated', 0.6, 200, { endedAgo: 10 * DAY, attempts: 2, escalations: 1 }),
  embodiment('writer', '1.10.0', 'completed', 0.9, 20),
  embodiment('writer', '1.10.0', 'completed', 1.0, 50),
  embodiment('writer', '1.10.0', 'cancelled', 0.5, 10, { escalations: 2 }),
  embodiment('writer', '1.10.0', 'completed', 0.95, 40),
  embodiment('writer', '1.10.0', 'completed', 0.9, 30, { inputTokens: 1000, outputTokens: 500 }),
  embodiment('reviewer', '2.0.0', 'completed', 0.75, 1234, { attempts: 1 }),
];

/** Expected figures, computed by hand (percentile_cont: linear interpolation at (n - 1) * p). */
const WRITER_1_9: Omit<ReliabilityRow, 'role' | 'version'> = {
  embodiments: 4,
  completed: 2,
  failed: 1,
  cancelled: 0,
  escalated: 1,
  successRate: 0.5,
  // sorted 0.2 0.6 0.8 1.0: p25 at 0.75 → 0.5; p50 at 1.5 → 0.7; p75 at 2.25 → 0.85
  score: { min: 0.2, p25: 0.5, p50: 0.7, p75: 0.85, max: 1.0, mean: 0.65 },
  // sorted 100 200 300 1000: p50 at 1.5 → 250; p90 at 2.7 → 790; p99 at 2.97 → 979
  latencyMs: { p50: 250, p90: 790, p99: 979 },
  meanAttempts: 2,
  escalations: 1,
  tokens: { input: 400, output: 40, total: 440 },
};
const WRITER_1_10: Omit<ReliabilityRow, 'role' | 'version'> = {
  embodiments: 5,
  completed: 4,
  failed: 0,
  cancelled: 1,
  escalated: 0,
  successRate: 0.8,
  // sorted 0.5 0.9 0.9 0.95 1.0: p25 at 1 → 0.9; p50 at 2 → 0.9; p75 at 3 → 0.95
  score: { min: 0.5, p25: 0.9, p50: 0.9, p75: 0.95, max: 1.0, mean: 0.85 },
  // sorted 10 20 30 40 50: p50 at 2 → 30; p90 at 3.6 → 46; p99 at 3.96 → 49.6
  latencyMs: { p50: 30, p90: 46, p99: 49.6 },
  meanAttempts: 1,
  escalations: 2,
  tokens: { input: 1400, output: 540, total: 1940 },
};
const REVIEWER_2: Omit<ReliabilityRow, 'role' | 'version'> = {
  embodiments: 1,
  completed: 1,
  failed: 0,
  cancelled: 0,
  escalated: 0,
  successRate: 1,
  score: { min: 0.75, p25: 0.75, p50: 0.75, p75: 0.75, max: 0.75, mean: 0.75 },
  latencyMs: { p50: 1234, p90: 1234, p99: 1234 },
  meanAttempts: 1,
  escalations: 0,
  tokens: { input: 100, output: 10, total: 110 },
};

/** Deep equality with floating-point figures compared to 9 decimals. */
function expectRow(actual: ReliabilityRow | undefined, role: string, version: string, expected: Omit<ReliabilityRow, 'role' | 'version'>): void {
  expect(actual).toBeDefined();
  const round = (v: unknown): unknown =>
    typeof v === 'number' ? Math.round(v * 1e9) / 1e9 : v && typeof v === 'object' ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, round(x)])) : v;
  expect(round(actual)).toEqual(round({ role, version, ...expected }));
}

const refs = (rows: ReliabilityRow[]): string[] => rows.map((r) => `${r.role}@${r.version}`);

function enforcement(key: string, role: string, action: EnforcementRecord['action'], at: string, more: Partial<EnforcementRecord> = {}): EnforcementRecord {
  return { key, role, action, reason: `${action} ${role}`, evidence: { successRate: 0.4, window: 20 }, decidedBy: `supervisor-${role}`, at, ...more };
}

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

describe('on PostgreSQL', () => {
  test('recordEmbodiment writes a key once: a retried write is a no-op and the first row stays', async () => {
    const first = embodiment('probe', '1.0.0', 'completed', 0.9, 42);
    expect(await recordEmbodiment(db.pool, first)).toBe(true);
    expect(await recordEmbodiment(db.pool, first)).toBe(false);
    expect(await recordEmbodiment(db.pool, { ...first, outcome: 'failed', score: 0 })).toBe(false);
    const { rows } = await db.pool.query<{ outcome: string; score: number; models: string[]; latency_ms: number; started_at: Date; ended_at: Date }>(
      'SELECT outcome, score, models, latency_ms, started_at, ended_at FROM embodiments WHERE embodiment_key = $1',
      [first.key],
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]).toEqual({ outcome: 'completed', score: 0.9, models: ['scripted:test'], latency_ms: 42, started_at: new Date(first.startedAt), ended_at: new Date(first.endedAt) });
    // Fractional milliseconds are rounded; an unknown outcome is refused by the table.
    expect(await recordEmbodiment(db.pool, { ...embodiment('probe', '1.0.0', 'completed', 1, 0), latencyMs: 12.6 })).toBe(true);
    await expect(recordEmbodiment(db.pool, { ...embodiment('probe', '1.0.0', 'completed', 1, 1), outcome: 'lost' as never })).rejects.toThrow(/check constraint/);
    await db.pool.query("DELETE FROM embodiments WHERE role = 'probe'");
  });

  test('reliabilityReport: exact counts, success rates, score and latency percentiles, in role then semver order', async () => {
    expect(await reliabilityReport(db.pool)).toEqual([]);
    for (const e of PLANTED) await recordEmbodiment(db.pool, e);
    const rows = await reliabilityReport(db.pool);
    // 1.9.0 before 1.10.0: semver order, not text order.
    expect(refs(rows)).toEqual(['reviewer@2.0.0', 'writer@1.9.0', 'writer@1.10.0']);
    expectRow(rows[0], 'reviewer', '2.0.0', REVIEWER_2);
    expectRow(rows[1], 'writer', '1.9.0', WRITER_1_9);
    expectRow(rows[2], 'writer', '1.10.0', WRITER_1_10);
  });

  test('reliabilityReport filters: --role, --since (by end time), both, and a window with nothing in it', async () => {
    const writer = await reliabilityReport(db.pool, { role: 'writer' });
    expect(refs(writer)).toEqual(['writer@1.9.0', 'writer@1.10.0']);
    expectRow(writer[0], 'writer', '1.9.0', WRITER_1_9);

    const lastWeek = await reliabilityReport(db.pool, { since: new Date(NOW - 7 * DAY) });
    expect(refs(lastWeek)).toEqual(['reviewer@2.0.0', 'writer@1.10.0']);
    expectRow(lastWeek[1], 'writer', '1.10.0', WRITER_1_10);

    expect(refs(await reliabilityReport(db.pool, { role: 'writer', since: new Date(NOW - 7 * DAY) }))).toEqual(['writer@1.10.0']);
    expect(refs(await reliabilityReport(db.pool, { role: 'writer', since: new Date(NOW - 11 * DAY) }))).toEqual(['writer@1.9.0', 'writer@1.10.0']);
    expect(await reliabilityReport(db.pool, { since: new Date(NOW + DAY) })).toEqual([]);
    expect(await reliabilityReport(db.pool, { role: 'nobody' })).toEqual([]);
  });

  test('enforcement actions: idempotent by key, append-only, listed newest first with filters and a limit', async () => {
    expect(await enforcementReport(db.pool)).toEqual([]);
    const planted = [
      enforcement('sup-writer/1', 'writer', 'warning', ago(3 * DAY), { roleVersion: '1.9.0' }),
      enforcement('sup-writer/2', 'writer', 'throttle', ago(2 * DAY), { roleVersion: '1.9.0', evidence: { successRate: 0.3, cap: 1, failures: ['t1/s1', 't2/s2'] } }),
      enforcement('sup-reviewer/1', 'reviewer', 'suspend', ago(DAY)),
      enforcement('sup-writer/3', 'writer', 'unthrottle', ago(60_000), { roleVersion: '1.9.0', decidedBy: 'alice' }),
    ];
    for (const e of planted) expect(await recordEnforcement(db.pool, e)).toBe(true);
    // A retried write, even with other content, keeps the first row.
    expect(await recordEnforcement(db.pool, { ...planted[0]!, reason: 'changed', action: 'suspend' })).toBe(false);

    const all = await enforcementReport(db.pool);
    expect(all.map((r) => r.key)).toEqual(['sup-writer/3', 'sup-reviewer/1', 'sup-writer/2', 'sup-writer/1']);
    expect(all[2]).toMatchObject({
      role: 'writer',
      roleVersion: '1.9.0',
      action: 'throttle',
      reason: 'throttle writer',
      evidence: { successRate: 0.3, cap: 1, failures: ['t1/s1', 't2/s2'] },
      decidedBy: 'supervisor-writer',
      at: new Date(planted[1]!.at!),
    });
    expect(all[1]).toMatchObject({ role: 'reviewer', roleVersion: null, action: 'suspend' });
    expect(all[3]).toMatchObject({ action: 'warning', reason: 'warning writer' });

    expect((await enforcementReport(db.pool, { role: 'writer' })).map((r) => r.key)).toEqual(['sup-writer/3', 'sup-writer/2', 'sup-writer/1']);
    expect((await enforcementReport(db.pool, { since: new Date(NOW - 36 * 3_600_000) })).map((r) => r.key)).toEqual(['sup-writer/3', 'sup-reviewer/1']);
    expect((await enforcementReport(db.pool, { limit: 2 })).map((r) => r.key)).toEqual(['sup-writer/3', 'sup-reviewer/1']);
    expect((await enforcementReport(db.pool, { role: 'writer', since: new Date(NOW - 36 * 3_600_000), limit: 5 })).map((r) => r.key)).toEqual(['sup-writer/3']);

    // Without an explicit time the row gets the time it is written; it is then the newest.
    const before = Date.now();
    expect(await recordEnforcement(db.pool, { key: 'sup-writer/4', role: 'writer', action: 'reinstate', reason: 'better', evidence: {}, decidedBy: 'supervisor-writer' })).toBe(true);
    const after = Date.now();
    const [newest] = await enforcementReport(db.pool, { limit: 1 });
    expect(newest).toMatchObject({ key: 'sup-writer/4', evidence: {} });
    // Bracketed by the write itself, however long it took (one clock; a second of slack for rounding).
    expect(newest!.at.getTime()).toBeGreaterThanOrEqual(before - 1000);
    expect(newest!.at.getTime()).toBeLessThanOrEqual(after + 1000);

    await expect(db.pool.query("UPDATE enforcement_actions SET reason = 'rewritten' WHERE action_key = 'sup-writer/1'")).rejects.toThrow(/append-only/);
    await expect(db.pool.query("DELETE FROM enforcement_actions WHERE action_key = 'sup-writer/1'")).rejects.toThrow(/append-only/);
    await expect(db.pool.query('TRUNCATE enforcement_actions')).rejects.toThrow(/append-only/);
    await expect(recordEnforcement(db.pool, { ...planted[0]!, key: 'bad', action: 'fire' as never })).rejects.toThrow(/check constraint/);
    expect(await enforcementReport(db.pool)).toHaveLength(5);
  });

  test("setThrottle sets and lifts a cap on an existing role for one tenant, reporting whether it changed; other tenants keep theirs", async () => {
    const head = async (tenant = 'acme'): Promise<{ throttle_cap: number | null; throttled_at: Date | null; throttle_reason: string | null }> => {
      const { rows } = await db.pool.query<{ throttle_cap: number | null; throttled_at: Date | null; throttle_reason: string | null }>(
        "SELECT throttle_cap, throttled_at, throttle_reason FROM role_tenant_enforcement WHERE role = 'generalist' AND tenant = $1",
        [tenant],
      );
      return rows[0] ?? { throttle_cap: null, throttled_at: null, throttle_reason: null };
    };
    expect(await head()).toEqual({ throttle_cap: null, throttled_at: null, throttle_reason: null });
    expect(await setThrottle(db.pool, 'generalist', 'acme', null, 'nothing to lift')).toBe(false);
    expect(await setThrottle(db.pool, 'generalist', 'acme', 2, 'success rate 40% over 20 embodiments')).toBe(true);
    const throttled = await head();
    expect(throttled).toMatchObject({ throttle_cap: 2, throttle_reason: 'success rate 40% over 20 embodiments' });
    expect(throttled.throttled_at).toBeInstanceOf(Date);
    expect(await head('globex')).toEqual({ throttle_cap: null, throttled_at: null, throttle_reason: null });
    expect(await setThrottle(db.pool, 'generalist', 'acme', 2, 'again')).toBe(false);
    expect((await head()).throttle_reason).toBe('success rate 40% over 20 embodiments');
    expect(await setThrottle(db.pool, 'generalist', 'acme', 1, 'worse')).toBe(true);
    expect(await head()).toMatchObject({ throttle_cap: 1, throttle_reason: 'worse' });
    expect(await setThrottle(db.pool, 'generalist', 'acme', null, 'recovered')).toBe(true);
    expect(await head()).toEqual({ throttle_cap: null, throttled_at: null, throttle_reason: null });
    expect(await setThrottle(db.pool, 'no-such-role', 'acme', 1, 'x')).toBe(false);
    await expect(setThrottle(db.pool, 'generalist', 'acme', 0, 'x')).rejects.toThrow(RangeError);
    await expect(db.pool.query("UPDATE role_tenant_enforcement SET throttle_cap = 0 WHERE role = 'generalist'")).rejects.toThrow(/check constraint/);
  });
});

describe('parseSince', () => {
  const now = new Date('2026-05-10T12:00:00.000Z');

  test.each([
    ['30m', '2026-05-10T11:30:00.000Z'],
    ['24h', '2026-05-09T12:00:00.000Z'],
    ['7d', '2026-05-03T12:00:00.000Z'],
    ['2w', '2026-04-26T12:00:00.000Z'],
    [' 90 m ', '2026-05-10T10:30:00.000Z'],
    ['2026-05-01', '2026-05-01T00:00:00.000Z'],
    ['2026-05-01T08:15:00Z', '2026-05-01T08:15:00.000Z'],
    ['2026-05-01T08:15:30.250+02:00', '2026-05-01T06:15:30.250Z'],
    ['2024-02-29', '2024-02-29T00:00:00.000Z'],
  ])('%j → %s', (text, expected) => {
    expect(parseSince(text, now).toISOString()).toBe(expected);
  });

  test('a time without an offset is local time', () => {
    expect(parseSince('2026-05-01T08:15', now).getTime()).toBe(new Date(2026, 4, 1, 8, 15).getTime());
  });

  test.each(['', 'yesterday', '7', 'd', '0d', '-1d', '7y', '1.5h', '3 days', '2026-13-01', '2026-02-30', '2025-02-29', '2026-05-01T25:00', '2026-05-01T10:61Z', '05/01/2026', '2026-5-1'])(
    '%j is a ReportUsageError',
    (text) => {
      expect(() => parseSince(text, now)).toThrow(ReportUsageError);
    },
  );

  test('the message says what is accepted', () => {
    expect(() => parseSince('yesterday')).toThrow('--since "yesterday" is neither a duration (30m, 24h, 7d, 2w) nor an ISO date or time (2026-05-01, 2026-05-01T12:00:00Z)');
  });
});

describe('mare report (the real binary)', () => {
  interface Run {
    code: number;
    stdout: string;
    stderr: string;
  }
  const baseEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !['DATABASE_URL', 'MARE_DEBUG'].includes(k)));
  const mare = (env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> =>
    new Promise((resolve) => {
      execFile(process.execPath, [CLI, ...args], { env: { ...baseEnv, ...env }, timeout: 90_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
      );
    });
  let cliDb: TestDatabase;
  const report = (...args: string[]): Promise<Run> => mare({ DATABASE_URL: cliDb.databaseUrl }, 'report', ...args);

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
    cliDb = await createTestDatabase();
  });

  afterAll(async () => {
    await cliDb?.drop();
  });

  test('empty database: both reports say nothing is recorded; --json prints []', async () => {
    const [rel, enf, relJson, enfJson] = await Promise.all([report('reliability'), report('enforcement'), report('reliability', '--json'), report('enforcement', '--json')]);
    expect(rel).toMatchObject({ code: 0, stdout: 'no embodiments recorded\n' });
    expect(enf).toMatchObject({ code: 0, stdout: 'no enforcement actions recorded\n' });
    expect(JSON.parse(relJson.stdout)).toEqual([]);
    expect(JSON.parse(enfJson.stdout)).toEqual([]);
  });

  test('reliability: an aligned table per role version, --role and --since filters, and --json', async () => {
    for (const e of PLANTED) await recordEmbodiment(cliDb.pool, e);
    const table = await report('reliability');
    expect(table.code).toBe(0);
    expect(table.stderr).toBe('');
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines).toEqual([
      'role@version    n  success  score p25/p50/p75  latency p50/p90/p99 ms  attempts  escalations',
      'reviewer@2.0.0  1   100.0%  0.75/0.75/0.75     1234/1234/1234              1.00            0',
      'writer@1.9.0    4    50.0%  0.50/0.70/0.85     250/790/979                 2.00            1',
      'writer@1.10.0   5    80.0%  0.90/0.90/0.95     30/46/50                    1.00            2',
    ]);

    const recent = await report('reliability', '--role', 'writer', '--since', '7d');
    expect(recent.stdout.trimEnd().split('\n').map((l) => l.split(/\s+/)[0])).toEqual(['role@version', 'writer@1.10.0']);

    const json = await report('reliability', '--role', 'writer', '--json');
    expect(json.code).toBe(0);
    const rows = JSON.parse(json.stdout) as ReliabilityRow[];
    expect(refs(rows)).toEqual(['writer@1.9.0', 'writer@1.10.0']);
    expectRow(rows[0], 'writer', '1.9.0', WRITER_1_9);
    expectRow(rows[1], 'writer', '1.10.0', WRITER_1_10);

    const future = await report('reliability', '--since', new Date(NOW + DAY).toISOString());
    expect(future).toMatchObject({ code: 0, stdout: 'no embodiments recorded\n' });
  });

  test('enforcement: newest first with reason and evidence, filters, --limit and --json', async () => {
    await recordEnforcement(cliDb.pool, enforcement('a', 'writer', 'warning', '2026-01-01T10:00:00.000Z', { roleVersion: '1.9.0', reason: 'success rate 55%' }));
    await recordEnforcement(cliDb.pool, enforcement('b', 'writer', 'throttle', '2026-01-02T10:00:00.000Z', { roleVersion: '1.9.0', reason: 'success rate 40%', evidence: { cap: 1 } }));
    await recordEnforcement(cliDb.pool, enforcement('c', 'reviewer', 'suspend', '2026-01-03T10:00:00.000Z', { reason: 'verification fraud', decidedBy: 'alice', evidence: { note: 'x'.repeat(200) } }));

    const table = await report('enforcement');
    expect(table.code).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^at\s+role\s+action\s+decided by\s+reason\s+evidence$/);
    expect(lines.slice(1).map((l) => l.split(/\s{2,}/).slice(0, 5))).toEqual([
      ['2026-01-03T10:00:00.000Z', 'reviewer', 'suspend', 'alice', 'verification fraud'],
      ['2026-01-02T10:00:00.000Z', 'writer@1.9.0', 'throttle', 'supervisor-writer', 'success rate 40%'],
      ['2026-01-01T10:00:00.000Z', 'writer@1.9.0', 'warning', 'supervisor-writer', 'success rate 55%'],
    ]);
    expect(lines[2]).toMatch(/ \{"cap":1\}$/);
    // Long evidence is cut in the table and whole in --json.
    expect(lines[1]).toMatch(/…$/);
    expect(lines[1]!.length).toBeLessThan(200);

    const writer = await report('enforcement', '--role', 'writer', '--limit', '1');
    expect(writer.stdout.trimEnd().split('\n')).toHaveLength(2);
    expect(writer.stdout).toContain('throttle');

    const since = await report('enforcement', '--since', '2026-01-02');
    expect(since.stdout.trimEnd().split('\n')).toHaveLength(3);
    expect(since.stdout).not.toContain('warning');

    const json = await report('enforcement', '--json');
    const rows = JSON.parse(json.stdout) as Array<Record<string, unknown>>;
    expect(rows.map((r) => r.key)).toEqual(['c', 'b', 'a']);
    expect(rows[0]).toMatchObject({ role: 'reviewer', roleVersion: null, action: 'suspend', reason: 'verification fraud', decidedBy: 'alice', at: '2026-01-03T10:00:00.000Z', evidence: { note: 'x'.repeat(200) } });
  });

  test('a bad --since or --limit exits 2 with one clear line; no DATABASE_URL exits 2 too', async () => {
    const [since, enfSince, limit, noDb] = await Promise.all([
      report('reliability', '--since', 'last tuesday'),
      report('enforcement', '--since', '2026-02-30'),
      report('enforcement', '--limit', '0'),
      mare({}, 'report', 'reliability'),
    ]);
    expect(since).toMatchObject({
      code: 2,
      stdout: '',
      stderr: 'mare: --since "last tuesday" is neither a duration (30m, 24h, 7d, 2w) nor an ISO date or time (2026-05-01, 2026-05-01T12:00:00Z)\n',
    });
    expect(enfSince.code).toBe(2);
    expect(enfSince.stderr).toContain('--since "2026-02-30" is neither');
    expect(limit).toMatchObject({ code: 2, stderr: 'mare: --limit "0" must be a positive integer\n' });
    expect(noDb.code).toBe(2);
    expect(noDb.stderr).toContain('DATABASE_URL is not set');
  });

  test('report --help lists both commands and their options', async () => {
    const [top, rel, enf] = await Promise.all([mare({}, 'report', '--help'), mare({}, 'report', 'reliability', '--help'), mare({}, 'report', 'enforcement', '--help')]);
    expect(top.stdout).toMatch(/^ {2}reliability /m);
    expect(top.stdout).toMatch(/^ {2}enforcement /m);
    for (const opt of ['--role <name>', '--since <when>', '--json']) expect(rel.stdout).toContain(opt);
    for (const opt of ['--role <name>', '--since <when>', '--limit <n>', '--json']) expect(enf.stdout).toContain(opt);
  });
});
