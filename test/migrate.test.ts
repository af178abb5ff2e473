import { readdirSync } from 'node:fs';
import { Client } from 'pg';
import { migrate, MIGRATIONS_DIR } from '../infra/db/migrate';
import { createScratchDatabase } from '../infra/db/scratch';
import { ADMIN_DATABASE_URL } from './helpers';

test('four processes migrating one empty database at once: all succeed, each migration applied exactly once', async () => {
  const { url, drop } = await createScratchDatabase(ADMIN_DATABASE_URL, `mare_test_migrate_${process.pid}`);
  try {
    // node-pg-migrate fails at once when another run holds its lock; migrate() waits for it instead.
    const applied = await Promise.all([1, 2, 3, 4].map(() => migrate(url)));
    const expected = readdirSync(MIGRATIONS_DIR).map((f) => f.replace(/\.sql$/, '')).sort();
    expect(applied.flat().sort()).toEqual(expected);
    const c = new Client({ connectionString: url });
    await c.connect();
    const { rows } = await c.query<{ name: string }>('SELECT name FROM pgmigrations ORDER BY name');
    await c.end();
    expect(rows.map((r) => r.name)).toEqual(expected);
  } finally {
    await drop();
  }
});
