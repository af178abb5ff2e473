import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { Client } from 'pg';
import { startEmbeddedPostgres } from '../dev/postgres';
import { resolveTemporalCli, startTemporalDevServer, MARE_SEARCH_ATTRIBUTES } from '../dev/temporal';

// The local stack that `npm start` and `mare dev` run, started for real.
const STACK_JS = path.join(__dirname, '..', 'dist', 'dev', 'postgres.js');
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'mare-stack-'));
  chmodSync(dir, 0o755); // mkdtemp's 0700 would keep the normal-user test out
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function query(url: string, sql: string): Promise<Record<string, unknown>[]> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql)).rows as Record<string, unknown>[];
  } finally {
    await client.end();
  }
}

test(`embedded PostgreSQL starts as uid ${process.getuid?.() ?? '?'}, keeps its data across a restart and stops`, async () => {
  const dataDir = path.join(dir, 'self');
  const first = await startEmbeddedPostgres({ dataDir, port: 0 });
  await query(first.url, 'CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)');
  await first.stop();
  const second = await startEmbeddedPostgres({ dataDir, port: 0 });
  try {
    expect(await query(second.url, 'SELECT n FROM kept')).toEqual([{ n: 42 }]);
    // it runs as a database superuser named postgres, whatever host user started it
    expect(await query(second.url, 'SELECT current_user AS u')).toEqual([{ u: 'postgres' }]);
  } finally {
    await second.stop();
  }
  await expect(query(second.url, 'SELECT 1')).rejects.toThrow();
});

// As root the test above ran PostgreSQL inside a user namespace; here the non-root path runs too.
if (process.getuid?.() === 0) {
  test('embedded PostgreSQL also starts for a normal user (nobody), without touching host users', async () => {
    const passwd = readFileSync('/etc/passwd', 'utf8');
    const dataDir = path.join(dir, 'nobody');
    mkdirSync(dataDir, { recursive: true });
    chownSync(dataDir, 65534, 65534);
    const script = `require(${JSON.stringify(STACK_JS)}).startEmbeddedPostgres({ dataDir: ${JSON.stringify(dataDir)}, port: 0 })
      .then(async (pg) => { const { Client } = require('pg'); const c = new Client({ connectionString: pg.url }); await c.connect();
        const r = await c.query('SELECT 1 AS one'); await c.end(); await pg.stop(); console.log(JSON.stringify({ uid: process.getuid(), rows: r.rows })); })
      .catch((e) => { console.error(e.message); process.exit(1); })`;
    const out = await new Promise<string>((resolve, reject) =>
      execFile('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script], { cwd: path.join(__dirname, '..') }, (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout),
      ),
    );
    expect(JSON.parse(out.trim().split('\n').pop() ?? '{}')).toEqual({ uid: 65534, rows: [{ one: 1 }] });
    expect(existsSync(path.join(dataDir, 'postgres', 'PG_VERSION'))).toBe(true);
    expect(readFileSync('/etc/passwd', 'utf8')).toBe(passwd);
  });
}

test('the Temporal dev server starts with its SQLite file, registers MARE search attributes, and stops', async () => {
  const cliPath = await resolveTemporalCli();
  const dbFile = path.join(dir, 'temporal.sqlite');
  const server = await startTemporalDevServer({ cliPath, dbFile, port: 0, uiPort: 0, logFile: path.join(dir, 'temporal.log') });
  try {
    const connection = await Connection.connect({ address: server.address });
    try {
      const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
      expect(Object.keys(customAttributes)).toEqual(expect.arrayContaining(Object.keys(MARE_SEARCH_ATTRIBUTES)));
    } finally {
      await connection.close();
    }
    const ui = await fetch(server.uiUrl);
    expect(ui.status).toBe(200);
  } finally {
    await server.stop();
  }
  expect(existsSync(dbFile)).toBe(true);
});
