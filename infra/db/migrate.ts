import path from 'node:path';
import { runner } from 'node-pg-migrate';
import { projectRoot } from '../paths';

/** Folder of the SQL migrations, read from the source tree (they are not compiled). */
export const MIGRATIONS_DIR = path.join(projectRoot(), 'db', 'migrations');

/** How long a process waits for another one's migration before giving up. */
const LOCK_WAIT_MS = 60_000;

/**
 * Applies pending migrations. Idempotent, and safe to run from several processes at once:
 * node-pg-migrate holds a PostgreSQL advisory lock while it runs, and fails at once when another
 * process holds it, so this waits and tries again (up to a minute) until the other one is done.
 */
export async function migrate(databaseUrl: string, log: (msg: string) => void = () => undefined): Promise<string[]> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let delay = 100; ; delay = Math.min(delay * 2, 2_000)) {
    try {
      return await migrateOnce(databaseUrl, log);
    } catch (err) {
      if (!(err instanceof Error && err.message.includes('Another migration is already running')) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

async function migrateOnce(databaseUrl: string, log: (msg: string) => void): Promise<string[]> {
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
