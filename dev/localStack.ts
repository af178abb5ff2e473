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
import type { Keyring } from '../infra/crypto/keyring';
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
  /** Where the payload encryption keys come from; undefined with encryption off (MARE_PAYLOAD_KEYS=none). */
  payloadKeys: string | undefined;
  /** The codec server the Web UI decodes payloads with (without its token); none without payload encryption. */
  codecUrl: string | undefined;
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
    // Generated on first start, unless MARE_PAYLOAD_KEYS=none switches payload encryption off.
    const payloadKeyring = payloadKeyringFromEnv({
      dataDir: dataDir(),
      generate: true,
      onGenerated: (file) => print(`payloads: no encryption key configured; generated one into ${file} (set MARE_PAYLOAD_KEYS or MARE_PAYLOAD_KEY_FILE in production)`),
    });
    const dataConverter = mareDataConverter(payloadKeyring);
    installRuntime(logger);
    const cli = await resolveTemporalCli((m) => print(`temporal: ${m}`));
    // The codec server first: the dev server's Web UI is started pointed at it.
    const uiPort = opts.uiPort ?? (opts.port ?? 7233) + 1000;
    const codecUrl = payloadKeyring ? await startCodecServer(payloadKeyring, { logger, uiPort, codecPort: opts.codecPort, stops }) : undefined;
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
      ...(payloadKeyring ? { payloadKeyring } : {}),
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
      payloadKeys: payloadKeyring?.origin,
      codecUrl,
      dataConverter,
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** Serves the codec for the Web UI on 127.0.0.1 (the stack's stop closes it); returns its URL. */
async function startCodecServer(keyring: Keyring, opts: { logger: Logger; uiPort: number; codecPort: number | undefined; stops: (() => Promise<void>)[] }): Promise<string> {
  const { token } = codecTokenFromEnv({ dataDir: dataDir(), generate: true });
  const codec = createCodecServer({ keyring, token, corsOrigins: [`http://localhost:${opts.uiPort}`, `http://127.0.0.1:${opts.uiPort}`], logger: opts.logger.child({ component: 'codec-server' }) });
  const requested = opts.codecPort ?? DEFAULT_CODEC_PORT;
  if (requested !== 0) await assertPortFree(requested, 'Codec server', 'Stop it, or choose another port with --codec-port.');
  const { port } = await listen(codec, requested, '127.0.0.1');
  opts.stops.push(() => new Promise<void>((resolve) => codec.close(() => resolve())));
  return `http://127.0.0.1:${port}`;
}

/** The lines `mare dev` and the demo print about the stack. */
export function describeStack(stack: LocalStack): string[] {
  return [
    `Temporal gRPC:  ${stack.address} (namespace ${stack.namespace})`,
    `Temporal UI:    ${stack.uiUrl}`,
    `Database:       ${redactUrl(stack.databaseUrl)}${stack.embeddedDatabase ? ' (embedded, data in .mare/postgres)' : ' (DATABASE_URL)'}`,
    `Role keys:      ${stack.roleKeys}`,
    ...(stack.payloadKeys && stack.codecUrl
      ? [
          `Payloads:       encrypted (AES-256-GCM), keys from ${stack.payloadKeys}`,
          `Codec server:   ${stack.codecUrl} (to decode in the Web UI, set its Codec Server endpoint to ${stack.codecUrl}/token/<token in MARE_CODEC_TOKEN or .mare/codec-token>)`,
        ]
      : ['Payloads:       not encrypted (MARE_PAYLOAD_KEYS=none): Temporal stores them as plain JSON; no codec server']),
    `Model:          ${stack.model.name}${stack.model.offline ? ' (offline scripted model)' : ''}`,
    'Web UI links:',
    ...webUiLinks(stack.uiUrl, stack.namespace).map((l) => `  ${l}`),
  ];
}
