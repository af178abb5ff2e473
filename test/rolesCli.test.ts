import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Pool } from 'pg';
import { keyringEnv, newKey, readKeyFile, writeKeyFile, type RoleKeyring } from '../infra/crypto/roleCrypto';
import { createTestDatabase, type TestDatabase } from './helpers';
import type { DocumentAuditRow } from '../infra/db/documentStore';

// `mare roles …` as users run it: the real CLI from dist/ (npm test builds it first), in a child
// process, against a database of this file's own. No Temporal server is needed for these commands.
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** process.env without anything that would point the CLI at a database, a key or a data dir. */
const SCRUBBED = ['DATABASE_URL', 'MARE_ROLE_KEYS', 'MARE_ROLE_ACTIVE_KEY', 'MARE_ROLE_KEY_FILE', 'MARE_DATA_DIR', 'MARE_ACTOR', 'MARE_DEBUG'];
const baseEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED.includes(k)));

/** Runs `mare <args>` with exactly `env` on top of the scrubbed environment. */
function mare(env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...baseEnv, ...env }, timeout: 90_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

/** Help text with commander's line wrapping undone. */
const flat = (text: string): string => text.replace(/\s+/g, ' ');

/** The `name@version` column of `roles list` output. */
const listed = (stdout: string): string[] => stdout.trim().split('\n').filter(Boolean).map((line) => line.split(/\s+/)[0]!);

/** The line of `roles list` output for one name@version. */
const lineOf = (stdout: string, ref: string): string | undefined => stdout.split('\n').find((line) => line.startsWith(`${ref} `));

let tmp: string;
let db: TestDatabase; // the main database: defaults published under db.keyring
const extraDatabases: TestDatabase[] = [];
let env: NodeJS.ProcessEnv;
const roles = (...args: string[]): Promise<Run> => mare(env, 'roles', ...args);

/** Environment for the CLI on a test database, with that database's keys. */
function envFor(target: TestDatabase, keyring: RoleKeyring = target.keyring): NodeJS.ProcessEnv {
  return { DATABASE_URL: target.databaseUrl, MARE_DATA_DIR: path.join(tmp, 'data'), MARE_ACTOR: 'cli-test', ...keyringEnv(keyring) };
}

async function freshDatabase(): Promise<TestDatabase> {
  const fresh = await createTestDatabase();
  extraDatabases.push(fresh);
  return fresh;
}

function writeJson(name: string, content: unknown): string {
  const file = path.join(tmp, name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return file;
}

interface VersionRow {
  name: string;
  version: string;
  checksum: string;
  key_id: string;
  published_by: string;
  deprecated_at: Date | null;
  deprecated_reason: string | null;
}

async function versionRow(pool: Pool, name: string, version: string): Promise<VersionRow | undefined> {
  const { rows } = await pool.query<VersionRow>(
    'SELECT name, version, checksum, key_id, published_by, deprecated_at, deprecated_reason FROM role_versions WHERE name = $1 AND version = $2',
    [name, version],
  );
  return rows[0];
}

async function head(pool: Pool, name: string): Promise<{ latest: string; suspended_at: Date | null; suspended_reason: string | null } | undefined> {
  const { rows } = await pool.query<{ latest: string; suspended_at: Date | null; suspended_reason: string | null }>(
    'SELECT latest, suspended_at, suspended_reason FROM role_heads WHERE name = $1',
    [name],
  );
  return rows[0];
}

type AuditRow = Omit<DocumentAuditRow, 'at'>;

async function audit(pool: Pool, where = 'TRUE', params: unknown[] = []): Promise<AuditRow[]> {
  const { rows } = await pool.query<AuditRow>(`SELECT actor, action, name, version, reason, detail FROM role_audit WHERE ${where} ORDER BY id`, params);
  return rows;
}

async function count(pool: Pool, table: 'role_versions' | 'role_audit' | 'role_heads'): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${table}`);
  return Number(rows[0]!.n);
}

const WRITER_V2_PROMPT = 'You are a technical writer, version two: shorter documents.';
const writerV2 = { name: 'writer', version: '1.1.0', extends: 'writer@1.0.0', systemPrompt: WRITER_V2_PROMPT, maxIterations: 10 };
const defaultWriter = (): unknown => JSON.parse(readFileSync(path.join(__dirname, '..', 'reps', 'writer', '1.0.0', 'profile.json'), 'utf8'));

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  tmp = mkdtempSync(path.join(tmpdir(), 'mare-roles-cli-'));
  db = await createTestDatabase();
  env = envFor(db);
});

afterAll(async () => {
  for (const d of [db, ...extraDatabases]) await d?.drop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('roles --help lists every subcommand; publish and rotate-key help explain immutability and the two key sources', async () => {
  const [top, publish, rotate] = await Promise.all([mare({}, 'roles', '--help'), mare({}, 'roles', 'publish', '--help'), mare({}, 'roles', 'rotate-key', '--help')]);
  expect(top.code).toBe(0);
  for (const cmd of ['list', 'show', 'publish', 'diff', 'deprecate', 'rollback', 'suspend', 'reinstate', 'history', 'import', 'export', 'rotate-key']) {
    expect(top.stdout).toMatch(new RegExp(`^  ${cmd} `, 'm'));
  }
  expect(flat(top.stdout)).toContain('MARE_ROLE_KEYS or MARE_ROLE_KEY_FILE');

  expect(publish.code).toBe(0);
  expect(flat(publish.stdout)).toContain('a published name@version never changes');
  for (const opt of ['--by <actor>', '--reason <text>']) expect(publish.stdout).toContain(opt);

  expect(rotate.code).toBe(0);
  const rotateHelp = flat(rotate.stdout);
  expect(rotateHelp).toContain('With a key file (MARE_ROLE_KEY_FILE or the default), a new key is generated into it first and made active');
  expect(rotateHelp).toContain('old keys stay so old rows still decrypt');
  expect(rotateHelp).toContain('With MARE_ROLE_KEYS, list the new key there and name it in MARE_ROLE_ACTIVE_KEY');
  expect(rotateHelp).toContain('--reason <text> why, for the audit trail (default: "key rotation")');
});

test('publish: a valid profile is stored, encrypted and audited; a second publish and invalid files are refused and insert nothing', async () => {
  const file = writeJson('writer-1.1.0.json', writerV2);
  const ok = await roles('publish', file, '--by', 'alice', '--reason', 'why');
  expect(ok).toMatchObject({ code: 0, stderr: '' });
  const row = await versionRow(db.pool, 'writer', '1.1.0');
  expect(row).toMatchObject({ published_by: 'alice', key_id: db.keyring.activeKeyId, deprecated_at: null });
  expect(ok.stdout.trim()).toBe(`published writer@1.1.0 (checksum ${row!.checksum.slice(0, 12)}…), now latest`);
  expect((await head(db.pool, 'writer'))?.latest).toBe('1.1.0');
  expect(await audit(db.pool, "action = 'publish' AND name = 'writer' AND version = '1.1.0'")).toEqual([
    expect.objectContaining({ actor: 'alice', reason: 'why', detail: expect.objectContaining({ checksum: row!.checksum, extends: 'writer@1.0.0' }) as unknown }),
  ]);

  const before = { versions: await count(db.pool, 'role_versions'), audit: await count(db.pool, 'role_audit') };
  const again = await roles('publish', file);
  expect(again.code).toBe(2);
  expect(again.stderr).toContain('mare: writer@1.1.0 is already published');
  expect(again.stderr).toContain('immutable');

  // Three things wrong at once: every one is named, each on its own line.
  const bad = writeJson('bad.json', {
    name: 'scribe',
    version: '1.x',
    color: 'blue',
    description: 'd',
    systemPrompt: 's',
    tools: [{ tool: 'workspace.*', access: 'read' }],
  });
  const invalid = await roles('publish', bad);
  expect(invalid.code).toBe(2);
  const lines = invalid.stderr.split('\n');
  expect(lines[0]).toBe('mare: invalid role profile scribe@1.x:');
  expect(lines).toEqual(
    expect.arrayContaining([
      expect.stringMatching(/^ {2}version: must be a semantic version/),
      expect.stringMatching(/^ {2}tools\[0\]\.tool: wildcard tool grants are not allowed/),
      '  color: unknown field',
    ]),
  );

  const notJson = writeJson('not-json.json', '{ "name": "writer", ');
  const garbled = await roles('publish', notJson);
  expect(garbled.code).toBe(2);
  expect(garbled.stderr).toContain(`mare: cannot read ${notJson}:`);
  expect(garbled.stderr).toMatch(/JSON/);

  const missing = path.join(tmp, 'no-such-profile.json');
  const absent = await roles('publish', missing);
  expect(absent.code).toBe(2);
  expect(absent.stderr).toContain(`mare: cannot read ${missing}: ENOENT`);

  expect(await versionRow(db.pool, 'scribe', '1.x')).toBeUndefined();
  expect(await count(db.pool, 'role_versions')).toBe(before.versions);
  expect(await count(db.pool, 'role_audit')).toBe(before.audit);
});

test('list: latest versions by default, --json, --name glob, --tool and --all-versions', async () => {
  const [plain, json, byName, byTool, all] = await Promise.all([
    roles('list'),
    roles('list', '--json'),
    roles('list', '--name', 'rev*'),
    roles('list', '--tool', 'workspace.write'),
    roles('list', '--all-versions'),
  ]);
  for (const r of [plain, json, byName, byTool, all]) expect(r).toMatchObject({ code: 0, stderr: '' });

  expect(listed(plain.stdout)).toEqual(['generalist@1.0.0', 'reviewer@1.0.0', 'writer@1.1.0']);
  expect(lineOf(plain.stdout, 'writer@1.1.0')).toMatch(/\blatest\b.*workspace\.write\(write\)/);

  const parsed = JSON.parse(json.stdout) as { name: string; version: string; latest: boolean; checksum: string; profile: { name: string; version: string; systemPrompt: string } }[];
  expect(parsed.map((r) => `${r.name}@${r.version}`)).toEqual(['generalist@1.0.0', 'reviewer@1.0.0', 'writer@1.1.0']);
  for (const r of parsed) {
    expect(r.latest).toBe(true);
    expect(r.profile).toMatchObject({ name: r.name, version: r.version });
  }
  expect(parsed.find((r) => r.name === 'writer')?.profile.systemPrompt).toBe(WRITER_V2_PROMPT);

  expect(listed(byName.stdout)).toEqual(['reviewer@1.0.0']);
  expect(listed(byTool.stdout)).toEqual(['generalist@1.0.0', 'writer@1.1.0']);
  expect(listed(all.stdout)).toEqual(['generalist@1.0.0', 'reviewer@1.0.0', 'writer@1.0.0', 'writer@1.1.0']);
  expect(lineOf(all.stdout, 'writer@1.0.0')).toMatch(/^writer@1\.0\.0\s+-\s/);
});

test('show: latest, an exact version, a range, --json and --source; an unknown role is exit 2', async () => {
  const [latest, exact, range, json, source, missing] = await Promise.all([
    roles('show', 'writer'),
    roles('show', 'writer@1.0.0'),
    roles('show', 'writer@^1.0.0'),
    roles('show', 'writer', '--json'),
    roles('show', 'writer@1.1.0', '--source', '--json'),
    roles('show', 'nosuch'),
  ]);
  const v2 = (await versionRow(db.pool, 'writer', '1.1.0'))!;
  expect(latest.code).toBe(0);
  expect(latest.stdout.split('\n')[0]).toBe('writer@1.1.0  latest');
  expect(latest.stdout).toContain(`checksum ${v2.checksum}, key ${db.keyring.activeKeyId}`);
  expect(latest.stdout).toContain('by alice');
  expect(exact.stdout.split('\n')[0]).toBe('writer@1.0.0  -');
  expect(range.stdout.split('\n')[0]).toBe('writer@1.1.0  latest');

  expect(json.code).toBe(0);
  const shown = JSON.parse(json.stdout) as { checksum: string; keyId: string; latest: boolean; profile: { version: string; extends: string; maxIterations: number; tools: { tool: string }[] } };
  expect(shown).toMatchObject({ checksum: v2.checksum, keyId: db.keyring.activeKeyId, latest: true });
  // resolved: inherits writer@1.0.0's tools, overrides what 1.1.0 sets
  expect(shown.profile).toMatchObject({ version: '1.1.0', extends: 'writer@1.0.0', maxIterations: 10 });
  expect(shown.profile.tools.map((t) => t.tool)).toEqual(['workspace.read', 'workspace.write', 'workspace.list']);
  // --source: exactly what was published
  expect((JSON.parse(source.stdout) as { profile: unknown }).profile).toEqual(writerV2);

  expect(missing.code).toBe(2);
  expect(missing.stderr.trim()).toBe('mare: no role nosuch@latest');
});

test('diff: the fields that differ between two versions, as text and as JSON', async () => {
  const [text, json, same] = await Promise.all([
    roles('diff', 'writer@1.0.0', 'writer@1.1.0'),
    roles('diff', 'writer@1.0.0', 'writer@1.1.0', '--json'),
    roles('diff', 'writer@1.0.0', 'writer@1.0.0'),
  ]);
  const original = defaultWriter() as { systemPrompt: string };
  expect(text.code).toBe(0);
  expect(text.stdout).toContain(`systemPrompt:\n  - ${JSON.stringify(original.systemPrompt)}\n  + ${JSON.stringify(WRITER_V2_PROMPT)}\n`);
  expect(text.stdout).toContain('maxIterations:\n  - 8\n  + 10\n');
  expect(text.stdout).toContain('version:\n  - "1.0.0"\n  + "1.1.0"\n');
  expect(text.stdout).not.toMatch(/^tools:/m); // inherited unchanged
  expect(text.stdout).toContain('extends:\n  - null\n  + "writer@1.0.0"\n');

  const diffs = JSON.parse(json.stdout) as { field: string; a?: unknown; b?: unknown }[];
  expect(Array.isArray(diffs)).toBe(true);
  expect(diffs.map((d) => d.field).sort()).toEqual(['extends', 'maxIterations', 'systemPrompt', 'version']);
  expect(diffs).toEqual(
    expect.arrayContaining([
      { field: 'version', a: '1.0.0', b: '1.1.0' },
      { field: 'systemPrompt', a: original.systemPrompt, b: WRITER_V2_PROMPT },
      { field: 'maxIterations', a: 8, b: 10 },
    ]),
  );
  expect(diffs.find((d) => d.field === 'extends')?.b).toBe('writer@1.0.0');

  expect(same.stdout.trim()).toBe('no differences');
});

test('deprecate: ranges skip the version, list flags a deprecated latest; --reason is required; a bare name is refused', async () => {
  const noReason = await roles('deprecate', 'writer@1.1.0');
  expect(noReason.code).not.toBe(0);
  expect(noReason.stderr).toContain("required option '--reason <text>' not specified");
  const bareName = await roles('deprecate', 'writer', '--reason', 'x');
  expect(bareName.code).toBe(2);
  expect(bareName.stderr.trim()).toBe('mare: say which version: writer@<version>');
  expect((await versionRow(db.pool, 'writer', '1.1.0'))?.deprecated_at).toBeNull();
  expect((await versionRow(db.pool, 'writer', '1.0.0'))?.deprecated_at).toBeNull();

  const ok = await roles('deprecate', 'writer@1.1.0', '--reason', 'superseded');
  expect(ok).toMatchObject({ code: 0, stdout: 'deprecated writer@1.1.0\n' });
  const row = await versionRow(db.pool, 'writer', '1.1.0');
  expect(row?.deprecated_at).toBeInstanceOf(Date);
  expect(row?.deprecated_reason).toBe('superseded');
  // no --by: the actor is $MARE_ACTOR
  expect(await audit(db.pool, "action = 'deprecate'")).toEqual([expect.objectContaining({ actor: 'cli-test', name: 'writer', version: '1.1.0', reason: 'superseded' })]);

  const [list, allVersions, withDeprecated, range, twice, unknown] = await Promise.all([
    roles('list'),
    roles('list', '--all-versions'),
    roles('list', '--all-versions', '--include-deprecated'),
    roles('show', 'writer@^1.0.0'),
    roles('deprecate', 'writer@1.1.0', '--reason', 'again'),
    roles('deprecate', 'writer@9.9.9', '--reason', 'x'),
  ]);
  expect(list.code).toBe(0);
  // A deprecated latest is still writer's latest: listed and flagged, not hidden.
  expect(lineOf(list.stdout, 'writer@1.1.0')).toMatch(/\blatest,deprecated\b/);
  expect(allVersions.stdout).not.toContain('writer@1.1.0');
  expect(allVersions.stdout).toContain('writer@1.0.0');
  expect(lineOf(withDeprecated.stdout, 'writer@1.1.0')).toMatch(/\blatest,deprecated\b/);
  expect(range.stdout.split('\n')[0]).toBe('writer@1.0.0  -');
  expect(twice.code).toBe(2);
  expect(twice.stderr.trim()).toBe('mare: writer@1.1.0 is already deprecated');
  expect(unknown.code).toBe(2);
  expect(unknown.stderr.trim()).toBe('mare: no role writer@9.9.9');
});

test('rollback: latest moves back in role_heads; with nothing earlier it is exit 2 and changes nothing', async () => {
  const ok = await roles('rollback', 'writer', '--reason', 'bad release', '--by', 'bob');
  expect(ok).toMatchObject({ code: 0, stderr: '' });
  expect(ok.stdout.trim()).toBe('writer: latest is now 1.0.0 (was 1.1.0)');
  expect((await head(db.pool, 'writer'))?.latest).toBe('1.0.0');
  expect(await audit(db.pool, "action = 'rollback'")).toEqual([
    expect.objectContaining({ actor: 'bob', name: 'writer', version: '1.0.0', reason: 'bad release', detail: { from: '1.1.0', to: '1.0.0' } }),
  ]);
  expect(lineOf((await roles('list')).stdout, 'writer@1.0.0')).toMatch(/\blatest\b/);

  const auditRows = await count(db.pool, 'role_audit');
  const again = await roles('rollback', 'writer', '--reason', 'again');
  expect(again.code).toBe(2);
  expect(again.stderr.trim()).toBe('mare: writer@1.0.0 has no earlier (non-deprecated) version to roll back to');
  expect((await head(db.pool, 'writer'))?.latest).toBe('1.0.0');
  expect(await count(db.pool, 'role_audit')).toBe(auditRows);

  const unknown = await roles('rollback', 'nosuch', '--reason', 'x');
  expect(unknown.code).toBe(2);
  expect(unknown.stderr.trim()).toBe('mare: no role nosuch');
});

test('suspend and reinstate set and clear role_heads.suspended_at', async () => {
  const suspended = await roles('suspend', 'reviewer', '--reason', 'under audit');
  expect(suspended).toMatchObject({ code: 0, stdout: 'suspended reviewer\n' });
  expect(await head(db.pool, 'reviewer')).toMatchObject({ suspended_at: expect.any(Date) as unknown, suspended_reason: 'under audit' });
  const [list, show] = await Promise.all([roles('list'), roles('show', 'reviewer')]);
  expect(lineOf(list.stdout, 'reviewer@1.0.0')).toMatch(/\blatest,suspended\b/);
  expect(show.stdout).toMatch(/^suspended \S+: under audit$/m);

  const reinstated = await roles('reinstate', 'reviewer', '--reason', 'audit done');
  expect(reinstated).toMatchObject({ code: 0, stdout: 'reinstated reviewer\n' });
  expect(await head(db.pool, 'reviewer')).toMatchObject({ suspended_at: null, suspended_reason: null });
  expect(lineOf((await roles('list')).stdout, 'reviewer@1.0.0')).not.toContain('suspended');
  expect((await audit(db.pool, "name = 'reviewer' AND action IN ('suspend', 'reinstate')")).map((r) => [r.action, r.reason])).toEqual([
    ['suspend', 'under audit'],
    ['reinstate', 'audit done'],
  ]);

  const notSuspended = await roles('reinstate', 'reviewer', '--reason', 'again');
  expect(notSuspended).toMatchObject({ code: 2, stderr: 'mare: reviewer is not suspended\n' });

  const unknown = await roles('suspend', 'nosuch', '--reason', 'x');
  expect(unknown.code).toBe(2);
  expect(unknown.stderr.trim()).toBe('mare: no role nosuch');
});

test("history: a role's audit trail as text and JSON, and the whole repository's", async () => {
  const [text, json, all] = await Promise.all([roles('history', 'writer'), roles('history', 'writer', '--json'), roles('history')]);
  expect(text.code).toBe(0);
  const rows = text.stdout
    .trim()
    .split('\n')
    .map((line) => /^\d{4}-\d\d-\d\dT\S+Z\s+(\S+)\s+(\S+)\s+(\S+)\s*(.*)$/.exec(line)?.slice(1));
  expect(rows).toEqual([
    ['mare', 'publish', 'writer@1.0.0', 'bundled default roles'],
    ['alice', 'publish', 'writer@1.1.0', 'why'],
    ['cli-test', 'deprecate', 'writer@1.1.0', 'superseded'],
    ['bob', 'rollback', 'writer@1.0.0', 'bad release'],
  ]);

  expect(json.code).toBe(0);
  const parsed = JSON.parse(json.stdout) as { at: string; actor: string; action: string; name: string; version: string; reason: string; detail: object }[];
  expect(parsed.map((r) => [r.action, r.version])).toEqual([
    ['publish', '1.0.0'],
    ['publish', '1.1.0'],
    ['deprecate', '1.1.0'],
    ['rollback', '1.0.0'],
  ]);
  expect(parsed.every((r) => r.name === 'writer' && !Number.isNaN(Date.parse(r.at)))).toBe(true);
  expect(parsed[3]!.detail).toEqual({ from: '1.1.0', to: '1.0.0' });

  expect(all.stdout).toMatch(/\ssuspend\s+reviewer\s+under audit$/m);
  expect(all.stdout).toMatch(/\spublish\s+generalist@1\.0\.0\s/m);
});

test('export writes the seed layout (refusing a non-empty directory); import publishes it into another database, once', async () => {
  const dir = path.join(tmp, 'export');
  const exported = await roles('export', dir);
  expect(exported).toMatchObject({ code: 0, stderr: '' });
  expect(exported.stdout.trim()).toBe(`exported 4 versions of 3 roles to ${dir}`);
  const index = JSON.parse(readFileSync(path.join(dir, 'index.json'), 'utf8')) as { schemaVersion: number; roles: Record<string, { latest: string; versions: string[] }> };
  expect(index.roles).toEqual({
    generalist: { latest: '1.0.0', versions: ['1.0.0'] },
    reviewer: { latest: '1.0.0', versions: ['1.0.0'] },
    writer: { latest: '1.0.0', versions: ['1.0.0', '1.1.0'] }, // after the rollback
  });
  const read = (...parts: string[]): Record<string, unknown> => JSON.parse(readFileSync(path.join(dir, ...parts), 'utf8')) as Record<string, unknown>;
  expect(read('writer', '1.0.0', 'profile.json')).toEqual(defaultWriter());
  expect(read('writer', '1.1.0', 'profile.json')).toEqual(writerV2);
  const v1 = (await versionRow(db.pool, 'writer', '1.0.0'))!;
  const v2 = (await versionRow(db.pool, 'writer', '1.1.0'))!;
  expect(read('writer', '1.0.0', 'metadata.json')).toMatchObject({ name: 'writer', version: '1.0.0', checksum: v1.checksum, latest: true, deprecated: null });
  expect(read('writer', '1.1.0', 'metadata.json')).toMatchObject({ checksum: v2.checksum, publishedBy: 'alice', latest: false, deprecated: { reason: 'superseded' } });

  const filesBefore = readdirSync(dir).sort();
  const intoFull = await roles('export', dir);
  expect(intoFull.code).toBe(2);
  expect(intoFull.stderr.trim()).toBe(`mare: ${dir} is not empty; export into a new or empty directory`);
  expect(readdirSync(dir).sort()).toEqual(filesBefore);

  // A second database: it has the defaults (under its own key) but not writer@1.1.0.
  const other = await freshDatabase();
  const otherEnv = envFor(other);
  expect(await versionRow(other.pool, 'writer', '1.1.0')).toBeUndefined();
  const imported = await mare(otherEnv, 'roles', 'import', dir, '--by', 'carol');
  expect(imported).toMatchObject({ code: 0, stderr: '' });
  expect(imported.stdout.trim()).toBe('published 1 (writer@1.1.0), unchanged 3, deprecated 1');
  const copy = await versionRow(other.pool, 'writer', '1.1.0');
  expect(copy).toMatchObject({ checksum: v2.checksum, key_id: other.keyring.activeKeyId, deprecated_reason: 'superseded', published_by: 'carol' });
  expect(copy?.deprecated_at).toBeInstanceOf(Date);
  // The export was made after a rollback: latest follows its index, not the highest version.
  expect((await head(other.pool, 'writer'))?.latest).toBe('1.0.0');
  expect(await audit(other.pool, "action = 'publish' AND version = '1.1.0'")).toEqual([
    expect.objectContaining({ actor: 'carol', name: 'writer', reason: `import from ${dir}` }),
  ]);
  const shown = await mare(otherEnv, 'roles', 'show', 'writer@1.1.0', '--source', '--json');
  expect((JSON.parse(shown.stdout) as { profile: unknown }).profile).toEqual(writerV2);

  const versions = await count(other.pool, 'role_versions');
  const again = await mare(otherEnv, 'roles', 'import', dir);
  expect(again).toMatchObject({ code: 0, stderr: '' });
  expect(again.stdout.trim()).toBe('published 0 (none), unchanged 4, deprecated 0');
  const asJson = await mare(otherEnv, 'roles', 'import', dir, '--json');
  expect(JSON.parse(asJson.stdout)).toEqual({
    published: [],
    unchanged: expect.arrayContaining(['generalist@1.0.0', 'reviewer@1.0.0', 'writer@1.0.0', 'writer@1.1.0']) as unknown,
    skipped: [],
    deprecated: [],
  });
  expect(await count(other.pool, 'role_versions')).toBe(versions);
});

test('rotate-key with a key file: a new key is added to the file and made active, and every row is re-encrypted under it', async () => {
  const target = await freshDatabase();
  const keyFile = path.join(tmp, 'keys', 'role-keys.json');
  writeKeyFile(keyFile, target.keyring); // the key the database's rows are encrypted under
  const oldId = target.keyring.activeKeyId;
  const fileEnv: NodeJS.ProcessEnv = { DATABASE_URL: target.databaseUrl, MARE_DATA_DIR: path.join(tmp, 'data-keyfile'), MARE_ROLE_KEY_FILE: keyFile };

  // The CLI reads its key from the file (no MARE_ROLE_KEYS in its environment) …
  const published = await mare(fileEnv, 'roles', 'publish', writeJson('writer-for-rotation.json', writerV2));
  expect(published.code).toBe(0);
  expect((await versionRow(target.pool, 'writer', '1.1.0'))?.key_id).toBe(oldId);

  // … and rotate-key adds a key to it.
  const rotated = await mare(fileEnv, 'roles', 'rotate-key', '--by', 'ops');
  expect(rotated).toMatchObject({ code: 0, stderr: '' });
  const newId = /^generated key (\S+) into (.+)$/m.exec(rotated.stdout)?.[1];
  expect(rotated.stdout).toContain(`generated key ${newId} into ${keyFile}\n`);
  expect(newId).toBeDefined();
  expect(newId).not.toBe(oldId);
  expect(rotated.stdout).toContain(`re-encrypted 4 role versions under key ${newId}`);

  const after = readKeyFile(keyFile);
  expect(after.activeKeyId).toBe(newId);
  expect([...after.keys.keys()].sort()).toEqual([oldId, newId].sort());
  expect(after.keys.get(oldId)?.equals(target.keyring.keys.get(oldId)!)).toBe(true);
  expect(statSync(keyFile).mode & 0o777).toBe(0o600);

  const { rows } = await target.pool.query<{ key_id: string; n: string }>('SELECT key_id, count(*) AS n FROM role_versions GROUP BY key_id');
  expect(rows).toEqual([{ key_id: newId, n: '4' }]);
  expect(await audit(target.pool, "action = 'rotate-key'")).toEqual([
    expect.objectContaining({ actor: 'ops', reason: 'key rotation', detail: { keyId: newId, rotated: 4 } }),
  ]);

  const list = await mare(fileEnv, 'roles', 'list');
  expect(list.code).toBe(0);
  expect(listed(list.stdout)).toEqual(['generalist@1.0.0', 'reviewer@1.0.0', 'writer@1.1.0']);
  // The old key alone no longer opens anything: the rows really were re-encrypted.
  const oldOnly = await mare(envFor(target), 'roles', 'list');
  expect(oldOnly.code).toBe(2);
  expect(oldOnly.stderr).toContain(`is encrypted under key "${newId}", which is not in this process's keyring`);
});

test('rotate-key with MARE_ROLE_KEYS re-encrypts under MARE_ROLE_ACTIVE_KEY and writes no key file', async () => {
  const { id, key } = newKey();
  const both: RoleKeyring = { activeKeyId: id, keys: new Map([...db.keyring.keys, [id, key]]), origin: 'test' };
  const bothEnv = envFor(db, both);
  const versions = await count(db.pool, 'role_versions');

  const rotated = await mare(bothEnv, 'roles', 'rotate-key', '--reason', 'yearly');
  expect(rotated).toMatchObject({ code: 0, stderr: '' });
  expect(rotated.stdout).not.toContain('generated key');
  expect(rotated.stdout.trim()).toBe(`re-encrypted ${versions} role versions under key ${id}`);
  const { rows } = await db.pool.query<{ key_id: string }>('SELECT DISTINCT key_id FROM role_versions');
  expect(rows).toEqual([{ key_id: id }]);
  expect(await audit(db.pool, "action = 'rotate-key'")).toEqual([expect.objectContaining({ actor: 'cli-test', reason: 'yearly', detail: { keyId: id, rotated: versions } })]);
  expect(existsSync(path.join(String(bothEnv.MARE_DATA_DIR), 'role-keys.json'))).toBe(false);

  expect((await mare(bothEnv, 'roles', 'show', 'writer@1.1.0')).code).toBe(0);
  const oldOnly = await roles('list');
  expect(oldOnly.code).toBe(2);
  expect(oldOnly.stderr).toContain(`key "${id}"`);
  env = bothEnv; // for anything after this test
});

test('without a key or without DATABASE_URL the CLI says what to set', async () => {
  const emptyDataDir = path.join(tmp, 'empty-data');
  mkdirSync(emptyDataDir);
  const noKey = await mare({ DATABASE_URL: db.databaseUrl, MARE_DATA_DIR: emptyDataDir }, 'roles', 'list');
  expect(noKey.code).toBe(2);
  expect(noKey.stderr).toContain('mare: no role encryption key: set MARE_ROLE_KEYS or MARE_ROLE_KEY_FILE');
  expect(noKey.stdout).toBe('');
  expect(readdirSync(emptyDataDir)).toEqual([]); // nothing generated behind the user's back

  const noDatabase = await mare({ MARE_DATA_DIR: emptyDataDir, ...keyringEnv(db.keyring) }, 'roles', 'list');
  expect(noDatabase.code).toBe(2);
  expect(noDatabase.stderr).toContain('mare: DATABASE_URL is not set');
});
