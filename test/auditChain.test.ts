import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Client, Pool } from 'pg';
import { runner } from 'node-pg-migrate';
import { auditEventHash, GENESIS_HASH, verifyAuditChain, type AuditChainReport } from '../infra/db/auditChain';
import { audit } from '../infra/db/records';
import { migrate, MIGRATIONS_DIR } from '../infra/db/migrate';
import { createScratchDatabase } from '../infra/db/scratch';
import { ADMIN_DATABASE_URL, createTestDatabase, type TestDatabase } from './helpers';

// The hash-chained audit trail on a real PostgreSQL: the chain is kept by the database's trigger
// for every writer, and `verifyAuditChain` (TypeScript) recomputes the same hashes.
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

const baseEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !['DATABASE_URL', 'MARE_DEBUG'].includes(k)));

/** Runs the real `mare` binary with `env` on top of an environment without DATABASE_URL. */
function mare(env: NodeJS.ProcessEnv, ...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...baseEnv, ...env }, timeout: 90_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

interface ChainRow {
  id: string;
  chain_seq: string;
  event_key: string;
  prev_hash: string;
  hash: string;
}

async function chain(pool: Pool): Promise<ChainRow[]> {
  const { rows } = await pool.query<ChainRow>('SELECT id::text, chain_seq::text, event_key, prev_hash, hash FROM audit_events ORDER BY audit_events.chain_seq');
  return rows;
}

/** Asserts consecutive seqs from 1, each prev_hash the previous hash, and a verification that agrees. */
async function expectIntact(pool: Pool, n: number, pageSize?: number): Promise<void> {
  const rows = await chain(pool);
  expect(rows.map((r) => Number(r.chain_seq))).toEqual(Array.from({ length: n }, (_, i) => i + 1));
  rows.forEach((r, i) => expect(r.prev_hash).toBe(i === 0 ? GENESIS_HASH : rows[i - 1]!.hash));
  expect(await verifyAuditChain(pool, pageSize ? { pageSize } : {})).toEqual({ ok: true, events: n, head: rows.at(-1)?.hash ?? GENESIS_HASH });
}

/** Runs statements as superuser with triggers off (session_replication_role = replica): tampering. */
async function tamper(url: string, ...statements: [string, unknown[]?][]): Promise<void> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('SET session_replication_role = replica');
    for (const [sql, params] of statements) await c.query(sql, params);
  } finally {
    await c.end();
  }
}

/** One insert of a new event from its own connection, holding its transaction open for a moment. */
async function insertFromOwnConnection(url: string, key: string): Promise<number> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('BEGIN');
    const { rowCount } = await c.query(
      `INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ($1, 'concurrent', 'test.concurrent', $2) ON CONFLICT (event_key) DO NOTHING`,
      [key, JSON.stringify({ key })],
    );
    await c.query('SELECT pg_sleep(random() * 0.02)');
    await c.query('COMMIT');
    return rowCount ?? 0;
  } finally {
    await c.end();
  }
}

let db: TestDatabase;
let total = 0;

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  await db?.drop();
});

describe('the chain kept by the database', () => {
  test('events written through audit() are chained from the genesis hash and verify', async () => {
    const start = Number((await db.pool.query<{ n: string }>('SELECT count(*) AS n FROM audit_events')).rows[0]!.n);
    expect(start).toBe(0);
    await audit(db.pool, 'task-1', 'task.started', { goal: 'write "docs"\nwith é, ✓ and 🚀', tenant: 'default' }, 'wf-1:1');
    await audit(db.pool, 'task-1', 'task.planned', { subtasks: [{ id: 'a', dependsOn: [] }], n: 1.5e3, nested: { z: 1, a: [true, null] } }, 'wf-1:2');
    await audit(db.pool, 'task-1', 'task.finished', { status: 'COMPLETED' }, 'wf-1:3');
    total = 3;
    const rows = await chain(db.pool);
    expect(rows.map((r) => r.event_key)).toEqual(['wf-1:1:task.started', 'wf-1:2:task.planned', 'wf-1:3:task.finished']);
    expect(rows[0]!.prev_hash).toBe(GENESIS_HASH);
    for (const r of rows) expect(r.hash).toMatch(/^[0-9a-f]{64}$/);
    await expectIntact(db.pool, total);
  });

  test('the TypeScript hash is byte-identical to the SQL one for awkward values and timestamps', async () => {
    // data as JSON text: jsonb keeps numbers JS cannot represent, and reorders and respaces keys
    const awkward: [string, string, string, string, string][] = [
      ['odd:1', 'task:with:colons\nand newline', 'kind.ü', '{"k:ey": "v\\u0001\\t\\"\\\\", "emoji": "👩‍💻", "big": 12345678901234567890, "small": 1e-7, "empty": {}, "a": 1.50}', '2024-02-29 23:59:59.999999+00'],
      ['odd:2', 'ταυτότητα', 'x', '[1, "two", {"three": 3}]', '1999-12-31 19:00:00.000001-05'],
      ['odd:3', '', '', '"just a string"', '0044-03-15 12:00:00+00 BC'],
      ['odd:4', 't', 'k', 'null', 'infinity'],
      ['odd:5', 't', 'k', '0', '-infinity'],
      ['odd:6', 't', 'k', 'true', '12345-06-07 08:09:10.5+00'],
    ];
    for (const [key, taskId, kind, data, at] of awkward) {
      await db.pool.query('INSERT INTO audit_events (event_key, task_id, kind, data, at) VALUES ($1, $2, $3, $4, $5)', [key, taskId, kind, data, at]);
    }
    total += awkward.length;
    await expectIntact(db.pool, total);

    // The SQL definition, recomputed by hand for one row from its text values.
    const { rows } = await db.pool.query<{ chain_seq: string; prev_hash: string; event_key: string; task_id: string; kind: string; data: string; at: string; hash: string }>(
      `SELECT chain_seq::text, prev_hash, event_key, task_id, kind, data::text AS data, mare_audit_time(at) AS at, hash FROM audit_events WHERE event_key = 'odd:1'`,
    );
    const r = rows[0]!;
    expect(r.at).toBe('2024-02-29T23:59:59.999999Z');
    expect(auditEventHash({ chainSeq: r.chain_seq, prevHash: r.prev_hash, eventKey: r.event_key, taskId: r.task_id, kind: r.kind, data: r.data, at: r.at })).toBe(r.hash);
  });

  test('a duplicate event_key (ON CONFLICT DO NOTHING) neither consumes nor corrupts the chain', async () => {
    await audit(db.pool, 'task-1', 'task.started', { goal: 'a retried activity' }, 'wf-1:1');
    const { rowCount } = await db.pool.query(
      `INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ('wf-1:3:task.finished', 'task-1', 'task.finished', '{}') ON CONFLICT (event_key) DO NOTHING`,
    );
    expect(rowCount).toBe(0);
    await expectIntact(db.pool, total);
    await audit(db.pool, 'task-2', 'task.started', { goal: 'next' }, 'wf-2:1');
    total += 1;
    await expectIntact(db.pool, total);
  });

  test('a plain duplicate insert fails and leaves the chain intact; a multi-row insert chains each row', async () => {
    await expect(db.pool.query(`INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ('wf-2:1:task.started', 't', 'k', '{}')`)).rejects.toThrow(/duplicate key/);
    await db.pool.query(`INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ('multi:1', 't', 'k', '{"i":1}'), ('multi:2', 't', 'k', '{"i":2}'), ('multi:3', 't', 'k', '{"i":3}')`);
    total += 3;
    await expectIntact(db.pool, total);
  });

  test('values a writer supplies for chain_seq, prev_hash and hash are replaced by the trigger', async () => {
    await db.pool.query(`INSERT INTO audit_events (event_key, task_id, kind, data, chain_seq, prev_hash, hash) VALUES ('forged', 't', 'k', '{}', 999, 'x', 'y')`);
    total += 1;
    await expectIntact(db.pool, total);
  });

  test('50 concurrent inserts from separate connections make one unbroken chain with consecutive seqs', async () => {
    const inserted = await Promise.all(Array.from({ length: 50 }, (_, i) => insertFromOwnConnection(db.databaseUrl, `concurrent:${i}`)));
    expect(inserted).toEqual(Array(50).fill(1));
    total += 50;
    await expectIntact(db.pool, total);
  });

  test('concurrent duplicates of the same keys: one row per key, the skipped inserts leave no gap', async () => {
    const keys = Array.from({ length: 20 }, (_, i) => `raced:${i % 10}`);
    const inserted = await Promise.all(keys.map((k) => insertFromOwnConnection(db.databaseUrl, k)));
    expect(inserted.reduce((a, b) => a + b, 0)).toBe(10);
    total += 10;
    await expectIntact(db.pool, total);
  });

  test('verification pages through the table (page sizes that do and do not divide the count)', async () => {
    await expectIntact(db.pool, total, 7);
    await expectIntact(db.pool, total, total);
    await expectIntact(db.pool, total, 1);
  });

  test('UPDATE, DELETE and TRUNCATE are refused', async () => {
    await expect(db.pool.query(`UPDATE audit_events SET data = '{"x":1}' WHERE chain_seq = 2`)).rejects.toThrow('audit_events is append-only');
    await expect(db.pool.query('UPDATE audit_events SET hash = hash')).rejects.toThrow('audit_events is append-only');
    await expect(db.pool.query('DELETE FROM audit_events WHERE chain_seq = 2')).rejects.toThrow('audit_events is append-only');
    await expect(db.pool.query('TRUNCATE audit_events')).rejects.toThrow('audit_events is append-only');
    await expectIntact(db.pool, total);
  });
});

describe('tampering (as superuser, triggers off) is found at the exact event', () => {
  const SEQ = 5;
  interface FullRow {
    id: string;
    event_key: string;
    task_id: string;
    kind: string;
    /** data::text and at::text: exact, so a restored row hashes as before */
    data: string;
    at: string;
    chain_seq: string;
    prev_hash: string;
    hash: string;
  }
  let original: FullRow;
  let next: FullRow;
  const rowAt = async (seq: number): Promise<FullRow> =>
    (await db.pool.query<FullRow>('SELECT id::text, event_key, task_id, kind, data::text, at::text, chain_seq::text, prev_hash, hash FROM audit_events WHERE chain_seq = $1', [seq])).rows[0]!;
  const broken = (report: AuditChainReport): { chainSeq: number; id: number; reason: string } => {
    if (report.ok) throw new Error('expected a broken chain');
    return report.brokenAt;
  };

  beforeAll(async () => {
    original = await rowAt(SEQ);
    next = await rowAt(SEQ + 1);
  });

  afterEach(async () => {
    // Restore the original rows exactly (triggers off), and check that the chain is whole again.
    await tamper(db.databaseUrl, ['DELETE FROM audit_events WHERE chain_seq IN ($1, $2)', [SEQ, SEQ + 1]], ...[original, next].map(
      (r): [string, unknown[]] => [
        'INSERT INTO audit_events (id, event_key, task_id, kind, data, at, chain_seq, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)',
        [r.id, r.event_key, r.task_id, r.kind, r.data, r.at, r.chain_seq, r.prev_hash, r.hash],
      ],
    ));
    await expectIntact(db.pool, total);
  });

  test('an edited row: its content no longer matches its hash', async () => {
    await tamper(db.databaseUrl, [`UPDATE audit_events SET data = '{"status":"FAILED"}' WHERE chain_seq = $1`, [SEQ]]);
    const report = await verifyAuditChain(db.pool, { pageSize: 3 });
    expect(broken(report)).toEqual({ chainSeq: SEQ, id: Number(original.id), reason: 'content does not match its hash (edited)' });
    expect(report.events).toBe(SEQ);
  });

  test('an edited timestamp (by one microsecond) or task id is found too', async () => {
    await tamper(db.databaseUrl, [`UPDATE audit_events SET at = at + interval '1 microsecond' WHERE chain_seq = $1`, [SEQ]]);
    expect(broken(await verifyAuditChain(db.pool))).toMatchObject({ chainSeq: SEQ, reason: 'content does not match its hash (edited)' });
    await tamper(db.databaseUrl, [`UPDATE audit_events SET at = $2, task_id = 'someone-else' WHERE chain_seq = $1`, [SEQ, original.at]]);
    expect(broken(await verifyAuditChain(db.pool))).toMatchObject({ chainSeq: SEQ, reason: 'content does not match its hash (edited)' });
  });

  test('a deleted middle row: the gap is named at the event after it', async () => {
    await tamper(db.databaseUrl, ['DELETE FROM audit_events WHERE chain_seq = $1', [SEQ]]);
    const report = await verifyAuditChain(db.pool);
    expect(broken(report)).toEqual({
      chainSeq: SEQ + 1,
      id: Number(next.id),
      reason: `event #${SEQ} is missing (deleted): chain_seq goes from ${SEQ - 1} to ${SEQ + 1}`,
    });
    expect(report.events).toBe(SEQ);
  });

  test('a row rewritten with a consistent hash: the next event’s prev_hash no longer links to it', async () => {
    await tamper(db.databaseUrl, [
      `UPDATE audit_events SET data = '{"status":"FAILED"}', hash = mare_audit_hash(chain_seq, prev_hash, event_key, task_id, kind, '{"status":"FAILED"}'::jsonb, at) WHERE chain_seq = $1`,
      [SEQ],
    ]);
    const report = await verifyAuditChain(db.pool);
    expect(broken(report)).toEqual({ chainSeq: SEQ + 1, id: Number(next.id), reason: `prev_hash does not match the hash of event #${SEQ}: the link was rewritten` });
  });

  test('the mare binary: intact (exit 0), broken (exit 1), --json, list, and no DATABASE_URL (exit 2)', async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
    const env = { DATABASE_URL: db.databaseUrl };

    const intact = await mare(env, 'audit', 'verify');
    expect(intact).toMatchObject({ code: 0, stdout: `audit trail intact: ${total} events\n` });
    const intactJson = await mare(env, 'audit', 'verify', '--json');
    expect(intactJson.code).toBe(0);
    expect(JSON.parse(intactJson.stdout)).toEqual({ ok: true, events: total, head: (await chain(db.pool)).at(-1)!.hash });

    const list = await mare(env, 'audit', 'list', '--task', 'task-1', '--limit', '2');
    expect(list.code).toBe(0);
    expect(list.stdout.trim().split('\n').map((l) => l.split(/\s+/).filter(Boolean))).toEqual([
      ['#2', expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/), 'task-1', 'task.planned'],
      ['#3', expect.stringMatching(/Z$/), 'task-1', 'task.finished'],
    ]);
    const listJson = await mare(env, 'audit', 'list', '--json', '--limit', '1');
    expect(JSON.parse(listJson.stdout)).toEqual([expect.objectContaining({ seq: total, taskId: 'concurrent', kind: 'test.concurrent' })]);

    await tamper(db.databaseUrl, [`UPDATE audit_events SET data = '{"status":"FAILED"}' WHERE chain_seq = $1`, [SEQ]]);
    const broke = await mare(env, 'audit', 'verify');
    expect(broke).toMatchObject({ code: 1, stdout: `audit trail broken at event #${SEQ} (id ${original.id}): content does not match its hash (edited)\n` });
    const brokeJson = await mare(env, 'audit', 'verify', '--json');
    expect(brokeJson.code).toBe(1);
    expect(JSON.parse(brokeJson.stdout)).toEqual({ ok: false, events: SEQ, brokenAt: { chainSeq: SEQ, id: Number(original.id), reason: 'content does not match its hash (edited)' } });

    const noDb = await mare({}, 'audit', 'verify');
    expect(noDb.code).toBe(2);
    expect(noDb.stderr).toContain('DATABASE_URL is not set');
  });
});

describe('the migration', () => {
  test('chains events written before it in id order, and its down migration removes the chain', async () => {
    const { url, drop } = await createScratchDatabase(ADMIN_DATABASE_URL, `mare_test_audit_backfill_${process.pid}`);
    const c = new Client({ connectionString: url });
    try {
      const migrateTo = (timestamp: number): Promise<unknown> =>
        runner({ databaseUrl: url, dir: MIGRATIONS_DIR, direction: 'up', count: timestamp, timestamp: true, migrationsTable: 'pgmigrations', log: () => undefined });
      await migrateTo(1700000000003);
      await c.connect();
      for (let i = 1; i <= 12; i++) {
        await c.query('INSERT INTO audit_events (event_key, task_id, kind, data, at) VALUES ($1, $2, $3, $4, $5)', [
          `old:${i}`,
          `task-${i % 3}`,
          'task.started',
          JSON.stringify({ i, text: 'é' }),
          // out of time order on purpose: the chain follows id
          new Date(Date.UTC(2025, 0, 1, 0, 0, 60 - i)),
        ]);
      }
      await migrate(url);
      const rows = (await c.query<{ event_key: string; chain_seq: string }>('SELECT event_key, chain_seq::text FROM audit_events ORDER BY id')).rows;
      expect(rows.map((r) => [r.event_key, Number(r.chain_seq)])).toEqual(Array.from({ length: 12 }, (_, i) => [`old:${i + 1}`, i + 1]));
      const pool = new Pool({ connectionString: url, max: 2 });
      try {
        await expectIntact(pool, 12);
        await c.query(`INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ('new', 't', 'k', '{}')`);
        await expectIntact(pool, 13);
      } finally {
        await pool.end();
      }

      // The down migration, on its own, inside a transaction rolled back afterwards.
      const sql = readFileSync(path.join(MIGRATIONS_DIR, '1700000000004_audit_chain.sql'), 'utf8');
      const down = sql.slice(sql.indexOf('-- Down Migration'));
      await c.query('BEGIN');
      await c.query(down);
      const { rows: columns } = await c.query<{ column_name: string }>(`SELECT column_name FROM information_schema.columns WHERE table_name = 'audit_events' ORDER BY ordinal_position`);
      expect(columns.map((r) => r.column_name)).toEqual(['id', 'event_key', 'task_id', 'kind', 'data', 'at']);
      await c.query(`UPDATE audit_events SET kind = 'k2' WHERE event_key = 'new'`);
      await c.query('ROLLBACK');
    } finally {
      await c.end().catch(() => undefined);
      await drop();
    }
  });
});
