import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Client } from 'pg';
import { dataDir } from '../infra/paths';
import { startEmbeddedPostgres } from '../dev/postgres';
import { resolveTemporalCli } from '../dev/temporal';
import { bundleMareWorkflows } from '../workers/worker';
import { BUNDLE_PATH, LOCAL_POSTGRES_URL } from './paths';

const say = (msg: string): void => void process.stderr.write(`[mare test] ${msg}\n`);

/**
 * Runs once before all test files: makes sure the Temporal CLI is there, that a PostgreSQL server
 * is reachable (DATABASE_URL, the local server, or else an embedded one for this run), and bundles
 * the workflows once for every test file.
 */
export default async function globalSetup(): Promise<void> {
  // Test workers run without payload encryption (test/codec.test.ts passes its keys explicitly): the
  // `mare` processes tests start must not pick up the key `npm start` generated into .mare/.
  process.env.MARE_PAYLOAD_KEYS = 'none';
  await resolveTemporalCli(say);
  if (!process.env.DATABASE_URL) {
    if (await reachable(LOCAL_POSTGRES_URL)) {
      process.env.DATABASE_URL = LOCAL_POSTGRES_URL;
    } else {
      say(`no PostgreSQL at ${LOCAL_POSTGRES_URL} and no DATABASE_URL: starting an embedded one for this run`);
      const pg = await startEmbeddedPostgres({ dataDir: path.join(dataDir(), 'test'), port: 0, database: 'postgres', log: say });
      (globalThis as { __marePostgres?: { stop(): Promise<void> } }).__marePostgres = pg;
      // Test files run in workers forked after this point, so they inherit the variable.
      process.env.DATABASE_URL = pg.url;
    }
  }
  const code = await bundleMareWorkflows(quietLogger);
  mkdirSync(path.dirname(BUNDLE_PATH), { recursive: true });
  writeFileSync(BUNDLE_PATH, code);
}

async function reachable(url: string): Promise<boolean> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  try {
    await client.connect();
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

const noop = (): void => undefined;
const quietLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: (m: string) => say(m), log: noop };
