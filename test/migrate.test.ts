import { readdirSync } from 'node:fs';
import { Client } from 'pg';
import { migrate, MIGRATIONS_DIR } from '../db/migrate';
import { ADMIN_DATABASE_URL } from './helpers';

const admin = async (sql: string): Promise<void> => {
  const c = new Client({ connectionString: ADMIN_DATABASE_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
};

test('four processes migrating one empty database at once: all succeed, each migration applied exactly once', async () => {
  const name = `mare_test_migrate_${process.pid}`;
  await admin(`DROP DATABASE IF EXISTS ${name}`);
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(ADMIN_DATABASE_URL);
  url.pathname = `/${name}`;
  try {
    // node-pg-migrate fails at once when another run holds its lock; migrate() waits for it instead.
    const applied = await Promise.all([1, 2, 3, 4].map(() => migrate(url.toString())));
    const expected = readdirSync(MIGRATIONS_DIR).map((f) => f.replace(/\.sql$/, '')).sort();
    expect(applied.flat().sort()).toEqual(expected);
    const c = new Client({ connectionString: url.toString() });
    await c.connect();
    const { rows } = await c.query<{ name: string }>('SELECT name FROM pgmigrations ORDER BY name');
    await c.end();
    expect(rows.map((r) => r.name)).toEqual(expected);
  } finally {
    await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  }
});
