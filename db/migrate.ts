import path from 'node:path';
import { runner } from 'node-pg-migrate';
import { projectRoot } from '../scripts/stack/datadir';

/** Folder of the SQL migrations, read from the source tree (they are not compiled). */
export const MIGRATIONS_DIR = path.join(projectRoot(), 'db', 'migrations');

/**
 * Applies pending migrations. Idempotent, and safe to run from several processes at once:
 * node-pg-migrate holds a PostgreSQL advisory lock while it runs.
 */
export async function migrate(databaseUrl: string, log: (msg: string) => void = () => undefined): Promise<string[]> {
  const applied = await runner({
    databaseUrl,
    dir: MIGRATIONS_DIR,
    direction: 'up',
    migrationsTable: 'pgmigrations',
    count: Infinity,
    noLock: false,
    checkOrder: true,
    verbose: false,
    log,
    logger: { debug: () => undefined, info: log, warn: log, error: log },
  });
  return applied.map((m) => m.name);
}
