import { InvalidArgumentError } from 'commander';
import { Pool } from 'pg';
import { migrate } from '../infra/db/migrate';

/** Prints one line of a command's output. */
export type Print = (line?: string) => void;

/** Wraps a command body so known errors become one clear line and an exit code (client/cli.ts). */
export type Action = <A extends unknown[]>(fn: (...args: A) => Promise<void>) => (...args: A) => Promise<void>;

/** A command used wrongly (missing DATABASE_URL, unreadable file, missing version): exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** commander parser for options that take a positive integer. */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

/**
 * Opens DATABASE_URL (migrated first) for one command and closes it after. Without DATABASE_URL:
 * `missing` (default a UsageError) saying what the commands `purpose`.
 */
export async function withDatabase<T>(purpose: string, fn: (pool: Pool) => Promise<T>, missing: (message: string) => Error = (m) => new UsageError(m)): Promise<T> {
  const url = process.env.DATABASE_URL;
  if (!url) throw missing(`DATABASE_URL is not set: ${purpose} (\`mare dev\` prints it)`);
  await migrate(url);
  const pool = new Pool({ connectionString: url, max: 2 });
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}
