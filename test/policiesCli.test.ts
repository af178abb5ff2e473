import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Pool } from 'pg';
import { createTestDatabase, type TestDatabase } from './helpers';
import type { DocumentAuditRow } from '../infra/db/documentStore';

// `mare policies …` as users run it: the real CLI from dist/ (npm test builds it first), in a child
// process, against a database of this file's own. No Temporal server is needed for these commands.
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** process.env without anything that would point the CLI at a database or name the actor. */
const SCRUBBED = ['DATABASE_URL', 'MARE_DATA_DIR', 'MARE_ACTOR', 'MARE_DEBUG'];
const baseEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED.includes(k)));

/** Runs `mare <args>` with exactly `env` on top of the scrubbed environment. */
function mare(env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...baseEnv, ...env }, timeout: 90_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

let tmp: string;
let db: TestDatabase;
let env: NodeJS.ProcessEnv;
const policies = (...args: string[]): Promise<Run> => mare(env, 'policies', ...args);

/** Help text with commander's line wrapping undone. */
const flat = (text: string): string => text.replace(/\s+/g, ' ');

/** The `name@version` column of `policies list` output. */
const listed = (stdout: string): string[] => stdout.trim().split('\n').filter(Boolean).map((line) => line.split(/\s+/)[0]!);

function writeJson(name: string, content: unknown): string {
  const file = path.join(tmp, name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return file;
}

type AuditRow = Omit<DocumentAuditRow, 'at'>;

async function audit(pool: Pool, where = 'TRUE', params: unknown[] = []): Promise<AuditRow[]> {
  const { rows } = await pool.query<AuditRow>(`SELECT actor, action, name, version, reason, detail FROM policy_audit WHERE ${where} ORDER BY id`, params);
  return rows;
}

async function count(pool: Pool, table: 'policy_versions' | 'policy_heads' | 'policy_audit'): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
  return Number(rows[0]!.n);
}

async function head(pool: Pool, name: string): Promise<{ latest: string; disabled_at: Date | null; disabled_reason: string | null } | undefined> {
  const { rows } = await pool.query<{ latest: string; disabled_at: Date | null; disabled_reason: string | null }>(
    'SELECT latest, disabled_at, disabled_reason FROM policy_heads WHERE name = $1',
    [name],
  );
  return rows[0];
}

const costGuard = (version: string, minEstimatedCost = 1): Record<string, unknown> => ({
  schemaVersion: 1,
  name: 'cost-guard',
  version,
  description: 'Expensive calls need a person.',
  rules: [
    {
      id: 'expensive',
      when: { minEstimatedCost },
      decision: 'escalate',
      reason: `calls estimated at $${minEstimatedCost} or more need approval`,
      approval: { timeoutSeconds: 900 },
    },
  ],
});

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  tmp = mkdtempSync(path.join(tmpdir(), 'mare-policies-cli-'));
  db = await createTestDatabase();
  env = { DATABASE_URL: db.databaseUrl, MARE_DATA_DIR: path.join(tmp, 'data'), MARE_ACTOR: 'cli-test' };
});

afterAll(async () => {
  await db?.drop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('policies --help lists every subcommand; publish help explains immutability and the options', async () => {
  const [top, publish, rollback] = await Promise.all([mare({}, 'policies', '--help'), mare({}, 'policies', 'publish', '--help'), mare({}, 'policies', 'rollback', '--help')]);
  expect(top.code).toBe(0);
  for (const cmd of ['list', 'show', 'publish', 'history', 'rollback', 'disable', 'enable']) expect(top.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
  expect(flat(top.stdout)).toContain('allow / deny / escalate');
  expect(publish.code).toBe(0);
  expect(flat(publish.stdout)).toContain('a published name@version never changes');
  for (const opt of ['--actor <name>', '--reason <text>']) expect(publish.stdout).toContain(opt);
  expect(rollback.code).toBe(0);
  expect(rollback.stdout).toContain('--reason <text>');
});

test('list and show: the bundled default policy is there from the first command, as text and as JSON', async () => {
  const list = await policies('list');
  expect(list).toMatchObject({ code: 0, stderr: '' });
  expect(listed(list.stdout)).toEqual(['default@1.0.0']);
  expect(list.stdout).toMatch(/^default@1\.0\.0\s+latest\s+1 rule\s+Bundled with MARE/m);

  const json = await policies('list', '--json');
  expect(json.code).toBe(0);
  const parsed = JSON.parse(json.stdout) as { name: string; version: string; latest: boolean; disabled: unknown; publishedBy: string; checksum: string; document: { rules: unknown[] } }[];
  expect(parsed).toEqual([
    expect.objectContaining({ name: 'default', version: '1.0.0', latest: true, disabled: null, publishedBy: 'mare (bundled)', checksum: expect.stringMatching(/^[0-9a-f]{64}$/) }),
  ]);
  expect(parsed[0]!.document.rules).toEqual([expect.objectContaining({ id: 'no-secrets-in-tool-args', decision: 'deny', when: { kinds: ['tool'], sensitivity: ['secret'] } })]);

  const show = await policies('show', 'default');
  expect(show).toMatchObject({ code: 0, stderr: '' });
  expect(show.stdout).toMatch(/^default@1\.0\.0 {2}latest\nchecksum [0-9a-f]{64}, published \S+ by mare \(bundled\)\n\{/);
  expect(show.stdout).toContain('"id": "no-secrets-in-tool-args"');
  const showJson = JSON.parse((await policies('show', 'default@1.0.0', '--json')).stdout) as { checksum: string; document: { name: string } };
  expect(showJson).toMatchObject({ name: 'default', version: '1.0.0', checksum: parsed[0]!.checksum, document: { name: 'default' } });

  const missing = await policies('show', 'nope');
  expect(missing.code).toBe(2);
  expect(missing.stderr.trim()).toBe('mare: no policy nope');
});

test('publish stores the document and audits it; show by version and range; a second publish of the same version is refused', async () => {
  const first = await policies('publish', writeJson('cost-1.json', costGuard('1.0.0')), '--reason', 'budget');
  expect(first).toMatchObject({ code: 0, stderr: '' });
  expect(first.stdout.trim()).toMatch(/^published cost-guard@1\.0\.0 \(checksum [0-9a-f]{12}…\), now latest$/);
  const second = await policies('publish', writeJson('cost-2.json', costGuard('1.1.0', 5)), '--actor', 'dana');
  expect(second.code).toBe(0);
  const lower = await policies('publish', writeJson('cost-0.json', costGuard('0.9.0')));
  expect(lower.stdout).toContain('published cost-guard@0.9.0');
  expect(lower.stdout).toContain('not latest (a higher version is)');

  expect((await head(db.pool, 'cost-guard'))?.latest).toBe('1.1.0');
  expect(await audit(db.pool, "name = 'cost-guard'")).toEqual([
    expect.objectContaining({ actor: 'cli-test', action: 'publish', version: '1.0.0', reason: 'budget' }),
    expect.objectContaining({ actor: 'dana', action: 'publish', version: '1.1.0', reason: null }),
    expect.objectContaining({ actor: 'cli-test', action: 'publish', version: '0.9.0' }),
  ]);

  const exact = JSON.parse((await policies('show', 'cost-guard@1.0.0', '--json')).stdout) as { latest: boolean; document: { rules: { approval: unknown }[] } };
  expect(exact.latest).toBe(false);
  expect(exact.document.rules[0]!.approval).toEqual({ timeoutSeconds: 900, onTimeout: 'deny' });
  expect(JSON.parse((await policies('show', 'cost-guard@~1.0.0', '--json')).stdout)).toMatchObject({ version: '1.0.0' });
  expect(JSON.parse((await policies('show', 'cost-guard@^1.0.0', '--json')).stdout)).toMatchObject({ version: '1.1.0', latest: true });
  expect(listed((await policies('list')).stdout)).toEqual(['cost-guard@1.1.0', 'default@1.0.0']);

  const versions = await count(db.pool, 'policy_versions');
  const again = await policies('publish', writeJson('cost-1-again.json', costGuard('1.0.0', 2)));
  expect(again.code).toBe(2);
  expect(again.stderr).toContain('mare: cost-guard@1.0.0 is already published with different content');
  expect(await count(db.pool, 'policy_versions')).toBe(versions);
});

test('a bad file is refused with every field named and exit code 2, and nothing is inserted', async () => {
  const before = await Promise.all([count(db.pool, 'policy_versions'), count(db.pool, 'policy_heads'), count(db.pool, 'policy_audit')]);
  const bad = {
    ...costGuard('2.0.0'),
    owner: 'me',
    rules: [
      { id: 'Bad_Id', when: { args: { url: { pattern: '(unclosed' } }, minEstimatedCost: -1 }, decision: 'deny', reason: 'r', approval: { timeoutSeconds: 60 } },
      { id: 'Bad_Id', when: {}, decision: 'allow', reason: '' },
    ],
  };
  const refused = await policies('publish', writeJson('bad.json', bad));
  expect(refused.code).toBe(2);
  expect(refused.stdout).toBe('');
  const lines = refused.stderr.trim().split('\n');
  expect(lines[0]).toBe('mare: invalid policy cost-guard@2.0.0:');
  expect(lines.slice(1)).toEqual(
    expect.arrayContaining([
      '  owner: unknown field',
      expect.stringMatching(/^ {2}rules\[0\]\.id: must be lower-case letters/),
      expect.stringMatching(/^ {2}rules\[0\]\.when\.args\.url\.pattern: ".*" is not a pattern MARE can run in linear time/),
      '  rules[0].when.minEstimatedCost: must be at least 0',
      '  rules[1].reason: must not be empty',
    ]),
  );

  const approvalOnDeny = await policies('publish', writeJson('deny-approval.json', { ...costGuard('2.0.0'), rules: [{ ...(costGuard('2.0.0').rules as object[])[0], decision: 'deny' }] }));
  expect(approvalOnDeny.code).toBe(2);
  expect(approvalOnDeny.stderr).toContain('  rules[0].approval: only an "escalate" rule waits for approval (this rule says "deny")');

  const notJson = await policies('publish', writeJson('not-json.json', '{ "name": '));
  expect(notJson.code).toBe(2);
  expect(notJson.stderr).toMatch(/^mare: cannot read .*not-json\.json: /);
  const noFile = await policies('publish', path.join(tmp, 'missing.json'));
  expect(noFile.code).toBe(2);
  expect(noFile.stderr).toContain('missing.json: ENOENT');

  expect(await Promise.all([count(db.pool, 'policy_versions'), count(db.pool, 'policy_heads'), count(db.pool, 'policy_audit')])).toEqual(before);
});

test('rollback, disable and enable change the head, need a reason where it matters, and are audited', async () => {
  const noReason = await policies('rollback', 'cost-guard');
  expect(noReason.code).not.toBe(0);
  expect(noReason.stderr).toContain("required option '--reason <text>' not specified");

  const rolled = await policies('rollback', 'cost-guard', '--reason', 'too strict', '--actor', 'erin');
  expect(rolled).toMatchObject({ code: 0, stderr: '' });
  expect(rolled.stdout.trim()).toBe('cost-guard: latest is now 1.0.0 (was 1.1.0)');
  expect((await head(db.pool, 'cost-guard'))?.latest).toBe('1.0.0');
  const again = await policies('rollback', 'cost-guard', '--reason', 'again');
  expect(again.code).toBe(0);
  const nothing = await policies('rollback', 'cost-guard', '--reason', 'once more');
  expect(nothing.code).toBe(2);
  expect(nothing.stderr.trim()).toBe('mare: cost-guard@0.9.0 has no earlier version to roll back to');
  expect((await policies('rollback', 'nope', '--reason', 'x')).stderr.trim()).toBe('mare: no policy nope');

  expect((await policies('disable', 'cost-guard')).stderr).toContain("required option '--reason <text>' not specified");
  const disabled = await policies('disable', 'cost-guard', '--reason', 'incident 12');
  expect(disabled).toMatchObject({ code: 0, stdout: 'disabled cost-guard\n' });
  expect(await head(db.pool, 'cost-guard')).toMatchObject({ disabled_reason: 'incident 12' });
  expect((await policies('list')).stdout).toMatch(/^cost-guard@0\.9\.0\s+latest,disabled\s/m);
  const shown = JSON.parse((await policies('show', 'cost-guard', '--json')).stdout) as { disabled: { reason: string } };
  expect(shown.disabled.reason).toBe('incident 12');
  const twice = await policies('disable', 'cost-guard', '--reason', 'again');
  expect(twice.code).toBe(2);
  expect(twice.stderr.trim()).toBe('mare: cost-guard is already disabled');

  const enabled = await policies('enable', 'cost-guard', '--by', 'frank');
  expect(enabled).toMatchObject({ code: 0, stdout: 'enabled cost-guard\n' });
  expect((await head(db.pool, 'cost-guard'))?.disabled_at).toBeNull();
  expect((await policies('enable', 'cost-guard')).stderr.trim()).toBe('mare: cost-guard is not disabled');

  expect(await audit(db.pool, "name = 'cost-guard' AND action <> 'publish'")).toEqual([
    expect.objectContaining({ actor: 'erin', action: 'rollback', version: '1.0.0', reason: 'too strict', detail: { from: '1.1.0', to: '1.0.0' } }),
    expect.objectContaining({ actor: 'cli-test', action: 'rollback', version: '0.9.0', reason: 'again', detail: { from: '1.0.0', to: '0.9.0' } }),
    expect.objectContaining({ actor: 'cli-test', action: 'disable', version: '0.9.0', reason: 'incident 12' }),
    expect.objectContaining({ actor: 'frank', action: 'enable', version: '0.9.0', reason: null }),
  ]);
});

test('history shows who changed what and why, for one policy or all, as text and as JSON', async () => {
  const text = await policies('history', 'cost-guard');
  expect(text).toMatchObject({ code: 0, stderr: '' });
  const lines = text.stdout.trim().split('\n');
  expect(lines.map((l) => l.split(/\s+/).slice(1, 4).join(' '))).toEqual([
    'cli-test publish cost-guard@1.0.0',
    'dana publish cost-guard@1.1.0',
    'cli-test publish cost-guard@0.9.0',
    'erin rollback cost-guard@1.0.0',
    'cli-test rollback cost-guard@0.9.0',
    'cli-test disable cost-guard@0.9.0',
    'frank enable cost-guard@0.9.0',
  ]);
  expect(lines[3]).toMatch(/too strict$/);

  const all = JSON.parse((await policies('history', '--json')).stdout) as { actor: string; action: string; name: string; at: string }[];
  expect(all).toHaveLength(await count(db.pool, 'policy_audit'));
  expect(all[0]).toMatchObject({ actor: 'mare (bundled)', action: 'publish', name: 'default' });
  expect(Number.isNaN(Date.parse(all[0]!.at))).toBe(false);
});

test('without DATABASE_URL the CLI says what to set', async () => {
  const run = await mare({ MARE_DATA_DIR: path.join(tmp, 'data') }, 'policies', 'list');
  expect(run.code).toBe(2);
  expect(run.stdout).toBe('');
  expect(run.stderr).toContain('mare: DATABASE_URL is not set: policy commands work on the PostgreSQL database workers use');
});
