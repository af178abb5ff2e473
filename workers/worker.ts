import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { Logger } from 'pino';
import { Pool } from 'pg';
import { createActivities, type ActivityDeps } from '../activities';
import { createMcpToolActivities } from '../activities/tools';
import { createModelClient, modelConfigFromEnv } from '../activities/model';
import { openPolicyService, type PolicyService } from '../activities/policy';
import { keyringFromEnv, openRoleService } from '../activities/roles';
import { createRedactor, type Redactor } from '../activities/secrets';
import { loadToolsConfig, ToolCatalog } from '../activities/tools';
import type { ToolsConfig } from '../schemas/toolConfig';
import { migrate } from '../db/migrate';
import { TASK_QUEUE } from '../schemas';
import { dataDir } from '../scripts/stack/datadir';
import { parseBind, startHealthServer } from './health';
import { LogContextInterceptor } from './logContext';
import { workerTuningFromEnv, type WorkerTuning } from './tuning';

/** Knobs a deployment may set; everything else comes from the environment. */
export interface MareWorkerOptions {
  connection: NativeConnection;
  namespace?: string;
  taskQueue?: string;
  deps: ActivityDeps;
  /** A pre-built bundle (tests build one and share it); otherwise workflows are bundled from source. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  identity?: string;
  shutdownGraceTime?: WorkerOptions['shutdownGraceTime'];
  /** Cache, slot and poller sizes (see workers/tuning.ts); unset fields keep the SDK's defaults. */
  tuning?: WorkerTuning;
  /** SDK interceptors (tests use them to inject faults such as a lost activity completion). */
  interceptors?: WorkerOptions['interceptors'];
}

/** Creates a worker that runs MARE's workflows and activities on one task queue. */
export async function createMareWorker(opts: MareWorkerOptions): Promise<Worker> {
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace ?? 'default',
    taskQueue: opts.taskQueue ?? TASK_QUEUE,
    ...(opts.workflowBundle ? { workflowBundle: opts.workflowBundle } : { workflowsPath: require.resolve('../workflows') }),
    activities: { ...createMcpToolActivities(opts.deps), ...createActivities(opts.deps) },
    ...(opts.identity ? { identity: opts.identity } : {}),
    interceptors: {
      ...opts.interceptors,
      activity: [() => ({ inbound: new LogContextInterceptor() }), ...(opts.interceptors?.activity ?? [])],
    },
    ...opts.tuning,
    // Gives in-flight activities time to finish on SIGTERM; the default of 0 would cut them off.
    shutdownGraceTime: opts.shutdownGraceTime ?? '20 seconds',
  });
}

/** The services a worker's activities share besides the role service: tools, policies, redaction. */
export interface WorkerServices {
  tools: ToolCatalog;
  policies: PolicyService;
  redactor: Redactor;
  close(): Promise<void>;
}

/**
 * Opens the tool catalog (MCP servers are connected on first use), the policy service (the bundled
 * default policy published on first start) and the redactor (the configuration's secret patterns
 * and the environment's secrets).
 */
export async function openWorkerServices(opts: { pool: Pool; logger?: Logger; toolsConfig: ToolsConfig; redactor?: Redactor }): Promise<WorkerServices> {
  const tools = new ToolCatalog(opts.toolsConfig, opts.logger);
  const policies = await openPolicyService({ pool: opts.pool, ...(opts.logger ? { logger: opts.logger } : {}) });
  return {
    tools,
    policies,
    redactor: opts.redactor ?? createRedactor(opts.toolsConfig.secrets),
    async close() {
      await Promise.all([tools.close(), policies.close()]);
    },
  };
}

/** Bundles MARE's workflows once into `file` (for MARE_WORKFLOW_BUNDLE); returns the absolute path. */
export async function writeWorkflowBundle(file: string, logger?: Parameters<typeof bundleWorkflowCode>[0]['logger']): Promise<string> {
  const { code } = await bundleWorkflowCode({ workflowsPath: require.resolve('../workflows'), ...(logger ? { logger } : {}) });
  const out = path.resolve(file);
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, code);
  return out;
}

/** The workspace root: MARE_WORKSPACE_DIR, else `<data dir>/workspaces`. */
export function workspaceRootFromEnv(): string {
  return process.env.MARE_WORKSPACE_DIR ?? path.join(dataDir(), 'workspaces');
}

/** Routes the Temporal Runtime's logs through pino and, when asked, exposes Prometheus metrics. */
export function installRuntime(logger: Logger, metricsBind = process.env.MARE_METRICS_BIND): void {
  Runtime.install({
    logger: new DefaultLogger('INFO', ({ level, message, meta }) => {
      const fn = level === 'ERROR' ? logger.error : level === 'WARN' ? logger.warn : level === 'INFO' ? logger.info : logger.debug;
      fn.call(logger, meta ?? {}, message);
    }),
    telemetryOptions: metricsBind ? { metrics: { prometheus: { bindAddress: metricsBind } } } : undefined,
  });
}

/**
 * `mare worker`: connects with @temporalio/envconfig (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS and
 * API-key variables), migrates the database at DATABASE_URL, and runs until SIGINT/SIGTERM.
 * MARE_WORKFLOW_BUNDLE loads a prebuilt workflow bundle (`mare bundle`) instead of bundling at start;
 * the tuning variables of workers/tuning.ts size caches, slots and pollers. Role profiles are
 * decrypted with MARE_ROLE_KEYS or MARE_ROLE_KEY_FILE (or the local stack's generated key file).
 */
export async function runWorkerFromEnv(logger: Logger, opts: { identity?: string; toolsConfig?: ToolsConfig; redactor?: Redactor } = {}): Promise<void> {
  const databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) throw new Error('DATABASE_URL is not set: the worker needs PostgreSQL (`mare dev` sets it for you)');
  const tuning = workerTuningFromEnv();
  if (process.env.MARE_HEALTH_BIND) parseBind(process.env.MARE_HEALTH_BIND); // a bad value stops the worker before it connects
  const bundlePath = process.env.MARE_WORKFLOW_BUNDLE;
  if (bundlePath && !existsSync(bundlePath)) {
    throw new Error(`MARE_WORKFLOW_BUNDLE=${bundlePath} does not exist: write it with \`mare bundle ${bundlePath}\` (after every code change), or unset it`);
  }
  const keyring = keyringFromEnv({ dataDir: dataDir() });
  const toolsConfig = opts.toolsConfig ?? loadToolsConfig();
  installRuntime(logger);
  // Idempotent and under an advisory lock, so several workers starting at once are fine.
  const applied = await migrate(databaseUrl);
  if (applied.length) logger.info({ applied }, 'database migrated');
  const { connectionOptions, namespace } = loadClientConnectConfig();
  const model = createModelClient(modelConfigFromEnv());
  const pool = new Pool({ connectionString: databaseUrl, max: 10 });
  const roles = await openRoleService({ pool, keyring, logger });
  const services = await openWorkerServices({ pool, logger, toolsConfig, ...(opts.redactor ? { redactor: opts.redactor } : {}) });
  const connection = await NativeConnection.connect(connectionOptions);
  try {
    const worker = await createMareWorker({
      connection,
      namespace,
      ...(opts.identity ? { identity: opts.identity } : {}),
      ...(bundlePath ? { workflowBundle: { codePath: bundlePath } } : {}),
      tuning,
      deps: { pool, model, roles, workspaceRoot: workspaceRootFromEnv(), logger, tools: services.tools, policies: services.policies, redactor: services.redactor },
    });
    const health = process.env.MARE_HEALTH_BIND ? await startHealthServer({ bind: process.env.MARE_HEALTH_BIND, worker, pool, logger }) : undefined;
    logger.info(
      { taskQueue: TASK_QUEUE, mcpTools: services.tools.mcpToolNames(), roleKeys: keyring.origin, namespace: namespace ?? 'default', model: model.name, offline: model.offline, tuning, workflowBundle: bundlePath ?? 'bundled at start' },
      'worker started',
    );
    try {
      // worker.run() resolves after SIGINT/SIGTERM (the SDK installs those handlers) and the grace time.
      await worker.run();
    } finally {
      health?.close();
    }
  } finally {
    await connection.close();
    await services.close();
    await roles.close();
    await pool.end();
  }
}
