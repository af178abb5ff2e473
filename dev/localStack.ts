import type { DataConverter } from '@temporalio/common';
import { NativeConnection } from '@temporalio/worker';
import type { Logger } from 'pino';
import { Pool } from 'pg';
import { createModelClient, modelConfigFromEnv, type ModelClient } from '../infra/models/model';
import { keyringFromEnv, type RoleKeyring } from '../infra/crypto/roleCrypto';
import { openRoleService } from '../infra/roles/bootstrap';
import type { Redactor } from '../infra/secrets';
import { loadToolsConfig } from '../activities/tools';
import { migrate } from '../infra/db/migrate';
import { assertPortFree } from './stack';
import { dataDir } from '../infra/paths';
import { redactUrl, resolveDatabase } from './postgres';
import { resolveTemporalCli, startTemporalDevServer } from './temporal';
import { createMareWorker, installRuntime, openWorkerServices, workspaceRootFromEnv } from '../workers/worker';
import { mareDataConverter, payloadKeyringFromEnv } from '../infra/crypto/payloadCodec';
import { codecTokenFromEnv, createCodecServer, DEFAULT_CODEC_PORT } from '../servers/codecServer';
import { listen } from '../servers/httpKit';
import { webUiLinks } from '../client/render';

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
  /** Where the payload encryption keys come from. */
  payloadKeys: string;
  /** The codec server the Web UI decodes payloads with (without its token). */
  codecUrl: string;
  /** The data converter clients of this stack use (payloads encrypted with the stack's keys). */
  dataConverter: DataConverter;
  /** Stops the worker, then the servers this stack started. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Starts everything `mare dev` and the demo need, printing as it goes. On any failure, whatever
 * was already started is stopped again.
 */
export async function startLocalStack(opts: { logger: Logger; redactor?: Redactor; print: (line: string) => void; port?: number; uiPort?: number; codecPort?: number }): Promise<LocalStack> {
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
    const payloadKeyring = payloadKeyringFromEnv({
      dataDir: dataDir(),
      generate: true,
      onGenerated: (file) => print(`payloads: no encryption key configured; generated one into ${file} (set MARE_PAYLOAD_KEYS or MARE_PAYLOAD_KEY_FILE in production)`),
    })!;
    const dataConverter = mareDataConverter(payloadKeyring);
    installRuntime(logger);
    const cli = await resolveTemporalCli((m) => print(`temporal: ${m}`));
    // The codec server first: the dev server's Web UI is started pointed at it.
    const uiPort = opts.uiPort ?? (opts.port ?? 7233) + 1000;
    const { token } = codecTokenFromEnv({ dataDir: dataDir(), generate: true });
    const codec = createCodecServer({ keyring: payloadKeyring, token, corsOrigins: [`http://localhost:${uiPort}`, `http://127.0.0.1:${uiPort}`], logger: logger.child({ component: 'codec-server' }) });
    const requestedCodecPort = opts.codecPort ?? DEFAULT_CODEC_PORT;
    if (requestedCodecPort !== 0) await assertPortFree(requestedCodecPort, 'Codec server', 'Stop it, or choose another port with --codec-port.');
    const { port: codecPort } = await listen(codec, requestedCodecPort, '127.0.0.1');
    stops.push(() => new Promise<void>((resolve) => codec.close(() => resolve())));
    const codecUrl = `http://127.0.0.1:${codecPort}`;
    // No --ui-codec-endpoint: it would carry the token on a command line, which every local user can read.
    const temporal = await startTemporalDevServer({ cliPath: cli, port: opts.port, uiPort, log: (m) => logger.debug(m) });
    stops.push(() => temporal.stop());
    const db = await resolveDatabase((m) => print(`postgres: ${m}`));
    stops.push(() => db.stop());
    const applied = await migrate(db.url);
    if (applied.length) print(`database: applied migrations ${applied.join(', ')}`);
    process.env.DATABASE_URL ??= db.url;

    const connection = await NativeConnection.connect({ address: temporal.address });
    const pool = new Pool({ connectionString: db.url, max: 10 });
    const roles = await openRoleService({ pool, keyring, logger });
    const services = await openWorkerServices({ pool, logger, toolsConfig, ...(opts.redactor ? { redactor: opts.redactor } : {}) });
    const worker = await createMareWorker({
      connection,
      namespace: temporal.namespace,
      payloadKeyring,
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
      payloadKeys: payloadKeyring.origin,
      codecUrl,
      dataConverter,
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
    `Payloads:       encrypted (AES-256-GCM), keys from ${stack.payloadKeys}`,
    `Codec server:   ${stack.codecUrl} (to decode in the Web UI, set its Codec Server endpoint to ${stack.codecUrl}/token/<token in MARE_CODEC_TOKEN or .mare/codec-token>)`,
    `Model:          ${stack.model.name}${stack.model.offline ? ' (offline scripted model)' : ''}`,
    'Web UI links:',
    ...webUiLinks(stack.uiUrl, stack.namespace).map((l) => `  ${l}`),
  ];
}
