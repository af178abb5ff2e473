import { NativeConnection } from '@temporalio/worker';
import type { Logger } from 'pino';
import { Pool } from 'pg';
import { createModelClient, modelConfigFromEnv, type ModelClient } from '../activities/model';
import { keyringFromEnv, openRoleService, type RoleKeyring } from '../activities/roles';
import { loadToolsConfig } from '../activities/tools';
import { migrate } from '../db/migrate';
import { dataDir } from '../scripts/stack/datadir';
import { redactUrl, resolveDatabase } from '../scripts/stack/postgres';
import { resolveTemporalCli, startTemporalDevServer } from '../scripts/stack/temporal';
import { createMareWorker, installRuntime, openWorkerServices, workspaceRootFromEnv } from '../workers/worker';

/** A running local stack: Temporal dev server, PostgreSQL, migrations applied, one worker. */
export interface LocalStack {
  address: string;
  uiUrl: string;
  namespace: string;
  databaseUrl: string;
  embeddedDatabase: boolean;
  model: ModelClient;
  /** Where the role encryption keys come from. */
  roleKeys: string;
  /** Stops the worker, then the servers this stack started. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Starts everything `mare dev` and the demo need, printing as it goes. On any failure, whatever
 * was already started is stopped again.
 */
export async function startLocalStack(opts: { logger: Logger; print: (line: string) => void; port?: number; uiPort?: number }): Promise<LocalStack> {
  const { logger, print } = opts;
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async (): Promise<void> => {
    while (stops.length) await stops.pop()?.().catch((err: unknown) => logger.error({ err }, 'stop failed'));
  };
  try {
    const model = createModelClient(modelConfigFromEnv());
    const toolsConfig = loadToolsConfig();
    const keyring: RoleKeyring = keyringFromEnv({
      dataDir: dataDir(),
      generate: true,
      onGenerated: (file) => print(`roles: no encryption key configured; generated one into ${file} (set MARE_ROLE_KEYS or MARE_ROLE_KEY_FILE in production)`),
    });
    installRuntime(logger);
    const cli = await resolveTemporalCli((m) => print(`temporal: ${m}`));
    const temporal = await startTemporalDevServer({ cliPath: cli, port: opts.port, uiPort: opts.uiPort, log: (m) => logger.debug(m) });
    stops.push(() => temporal.stop());
    const db = await resolveDatabase((m) => print(`postgres: ${m}`));
    stops.push(() => db.stop());
    const applied = await migrate(db.url);
    if (applied.length) print(`database: applied migrations ${applied.join(', ')}`);
    process.env.DATABASE_URL ??= db.url;

    const connection = await NativeConnection.connect({ address: temporal.address });
    const pool = new Pool({ connectionString: db.url, max: 10 });
    const roles = await openRoleService({ pool, keyring, logger });
    const services = await openWorkerServices({ pool, logger, toolsConfig });
    const worker = await createMareWorker({
      connection,
      namespace: temporal.namespace,
      deps: { pool, model, roles, workspaceRoot: workspaceRootFromEnv(), logger, tools: services.tools, policies: services.policies, redactor: services.redactor },
    });
    const running = worker.run();
    stops.push(async () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await running;
      await connection.close();
      await services.close();
      await roles.close();
      await pool.end();
    });
    return {
      address: temporal.address,
      uiUrl: temporal.uiUrl,
      namespace: temporal.namespace,
      databaseUrl: db.url,
      embeddedDatabase: db.embedded,
      model,
      roleKeys: keyring.origin,
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** The lines `mare dev` and the demo print about the stack. */
export function describeStack(stack: LocalStack): string[] {
  return [
    `Temporal gRPC:  ${stack.address} (namespace ${stack.namespace})`,
    `Temporal UI:    ${stack.uiUrl}`,
    `Database:       ${redactUrl(stack.databaseUrl)}${stack.embeddedDatabase ? ' (embedded, data in .mare/postgres)' : ' (DATABASE_URL)'}`,
    `Role keys:      ${stack.roleKeys}`,
    `Model:          ${stack.model.name}${stack.model.offline ? ' (offline scripted model)' : ''}`,
  ];
}
