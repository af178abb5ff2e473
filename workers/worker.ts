import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { WorkerDeploymentVersion } from '@temporalio/common';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { Logger } from 'pino';
import { Pool } from 'pg';
import { createActivities, type ActivityDeps } from '../activities';
import { AtRest } from '../infra/crypto/atRest';
import { createMcpToolActivities } from '../activities/tools';
import { createModelClient, modelConfigFromEnv } from '../infra/models/model';
import { openPolicyService } from '../infra/policies/bootstrap';
import type { PolicyService } from '../infra/policies/policyService';
import { keyringFromEnv } from '../infra/crypto/roleCrypto';
import { openRoleService } from '../infra/roles/bootstrap';
import { createRedactor, type Redactor } from '../infra/secrets';
import { loadToolsConfig, ToolCatalog } from '../activities/tools';
import type { ToolsConfig } from '../validation/toolConfig';
import { migrate } from '../infra/db/migrate';
import { QUEUE_KINDS, TASK_QUEUES, type QueueKind } from '../core/constants';
import { dataDir } from '../infra/paths';
import { parseBind, startHealthServer } from './health';
import { LogContextInterceptor } from './logContext';
import { workerTuningFromEnv, type WorkerTuning } from './tuning';
import { deploymentFromEnv, deploymentOptions } from './versioning';
import { TRACING_WORKFLOW_INTERCEPTOR_MODULE, tracingFromEnv } from '../infra/tracing';
import { approverPublicKeys } from '../infra/crypto/approvalSigning';
import { FAILURE_CONVERTER_PATH, mareDataConverter, payloadKeyringFromEnv } from '../infra/crypto/payloadCodec';
import { NondeterminismMonitor, runLookupVia } from './workflowTaskFailures';
import type { Keyring } from '../infra/crypto/keyring';

/** Knobs a deployment may set; everything else comes from the environment. */
export interface MareWorkerOptions {
  connection: NativeConnection;
  namespace?: string;
  /** The task queues to serve, by kind (default all: orchestration, models, tools). */
  queues?: readonly QueueKind[];
  /** Another name for the orchestration queue (tests and the bench run isolated queues). */
  taskQueue?: string;
  deps: ActivityDeps;
  /** A pre-built bundle (tests build one and share it); otherwise workflows are bundled from source. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  identity?: string;
  shutdownGraceTime?: WorkerOptions['shutdownGraceTime'];
  /** Cache, slot and poller sizes and rate limits (see workers/tuning.ts), for every queue or per queue kind. */
  tuning?: WorkerTuning | ((kind: QueueKind) => WorkerTuning);
  /** SDK interceptors (tests use them to inject faults such as a lost activity completion). */
  interceptors?: WorkerOptions['interceptors'];
  /** Payload encryption: the payload keyring (workers/payloadCodec.ts); none leaves payloads as JSON. */
  payloadKeyring?: Keyring;
  /** Worker versioning (workers/versioning.ts): this worker's deployment version; workflows default to pinned. */
  deployment?: WorkerDeploymentVersion;
}

/**
 * The SDK workers of one process, one per task queue it serves, run and stopped together: if one
 * fails, the others are shut down too.
 */
export class MareWorker {
  constructor(readonly workers: ReadonlyMap<QueueKind, Worker>) {}

  /** Runs every worker until SIGINT/SIGTERM (or shutdown()) and their grace time. */
  async run(): Promise<void> {
    await Promise.all(
      [...this.workers.values()].map((w) =>
        w.run().catch((err: unknown) => {
          this.shutdown();
          throw err;
        }),
      ),
    );
  }

  /** Runs the workers until `fnOrPromise` settles, then shuts them down; returns its value. */
  async runUntil<T>(fnOrPromise: Promise<T> | (() => Promise<T>)): Promise<T> {
    const workers = [...this.workers.values()];
    const nest = (i: number): Promise<T> => {
      const w = workers[i];
      if (!w) return typeof fnOrPromise === 'function' ? fnOrPromise() : fnOrPromise;
      return w.runUntil(() => nest(i + 1));
    };
    return nest(0);
  }

  shutdown(): void {
    for (const w of this.workers.values()) if (w.getState() === 'RUNNING') w.shutdown();
  }

  /** RUNNING while every worker runs; otherwise the state of the first one that does not. */
  getState(): ReturnType<Worker['getState']> {
    return [...this.workers.values()].map((w) => w.getState()).find((state) => state !== 'RUNNING') ?? 'RUNNING';
  }
}

/**
 * Creates MARE's workers: on the orchestration queue the workflows and their bookkeeping (local
 * activities), on the models and tools queues the model and tool activities. Each registers every
 * activity, so one process serving any subset of queues needs no other wiring.
 */
export async function createMareWorker(opts: MareWorkerOptions): Promise<MareWorker> {
  // Content stored in PostgreSQL is sealed under the same keys as the payloads Temporal stores, and
  // runs pin the approvers' keys of this worker's payload keyring: their approvals then need a signature.
  const deps: ActivityDeps = {
    ...opts.deps,
    atRest: opts.deps.atRest ?? new AtRest(opts.deps.redactor, opts.payloadKeyring),
    ...(opts.payloadKeyring && !opts.deps.approverKeys ? { approverKeys: approverPublicKeys(opts.payloadKeyring) } : {}),
  };
  const activities = { ...createMcpToolActivities(deps), ...createActivities(deps) };
  nondeterminism?.useLookup(runLookupVia(opts.connection, opts.namespace ?? 'default'));
  const dataConverter = mareDataConverter(opts.payloadKeyring);
  const optionsFor = (kind: QueueKind): WorkerOptions => {
    const orchestration = kind === 'orchestration';
    return {
      connection: opts.connection,
      namespace: opts.namespace ?? 'default',
      taskQueue: orchestration && opts.taskQueue ? opts.taskQueue : TASK_QUEUES[kind],
      ...(orchestration ? (opts.workflowBundle ? { workflowBundle: opts.workflowBundle } : { workflowsPath: WORKFLOWS_PATH, bundlerOptions: { preloadModules: [...SHARED_WORKFLOW_MODULES] } }) : {}),
      dataConverter,
      activities,
      ...(opts.identity ? { identity: opts.identity } : {}),
      interceptors: {
        ...opts.interceptors,
        activity: [() => ({ inbound: new LogContextInterceptor() }), ...(opts.interceptors?.activity ?? [])],
        // Bundling at start needs the trace-context module here; a prebuilt bundle already carries it.
        ...(orchestration && !opts.workflowBundle ? { workflowModules: [TRACING_WORKFLOW_INTERCEPTOR_MODULE, ...(opts.interceptors?.workflowModules ?? [])] } : {}),
      },
      ...(opts.deployment ? { workerDeploymentOptions: deploymentOptions(opts.deployment) } : {}),
      ...(typeof opts.tuning === 'function' ? opts.tuning(kind) : opts.tuning),
      // Gives in-flight activities time to finish on SIGTERM; the default of 0 would cut them off.
      shutdownGraceTime: opts.shutdownGraceTime ?? '20 seconds',
    };
  };
  const workers = new Map<QueueKind, Worker>();
  try {
    for (const kind of opts.queues ?? QUEUE_KINDS) workers.set(kind, await Worker.create(optionsFor(kind)));
  } catch (err) {
    // A worker created but never run still holds the connection: run it down before giving up.
    await Promise.all([...workers.values()].map((w) => w.runUntil(Promise.resolve()).catch(() => undefined)));
    throw err;
  }
  return new MareWorker(workers);
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

const WORKFLOWS_PATH = require.resolve('../workflows');

/**
 * Modules of the workflow code that hold no per-run state, loaded ONCE per workflow thread and
 * shared by every run instead of initialised again for each one (the SDK's reusable V8 context gives
 * each run its own copy of every other module): `core/patterns.ts` with RE2 and
 * `core/approvalSignature.ts` with Ed25519, the bulk of the bundle besides the SDK, whose set-up
 * every run paid in time and heap while most runs never match a pattern or verify a signature
 * (`npm run bench`, bench/TUNING.md). Our modules and not the libraries themselves: the bundler
 * drops a bare preload of a package that declares no side effects. The SDK deep-freezes shared
 * modules; the tests run every pattern and signature path through workflows on them.
 */
export const SHARED_WORKFLOW_MODULES = [require.resolve('../core/patterns'), require.resolve('../core/approvalSignature')] as const;

/**
 * Bundles MARE's workflow code with its failure converter and the trace-context interceptor (a
 * worker given a prebuilt bundle uses the bundle's, so every bundle carries both; tracing itself is
 * switched on per process by the environment).
 */
export async function bundleMareWorkflows(logger?: Parameters<typeof bundleWorkflowCode>[0]['logger']): Promise<string> {
  const { code } = await bundleWorkflowCode({
    workflowsPath: WORKFLOWS_PATH,
    failureConverterPath: FAILURE_CONVERTER_PATH,
    workflowInterceptorModules: [TRACING_WORKFLOW_INTERCEPTOR_MODULE],
    preloadModules: [...SHARED_WORKFLOW_MODULES],
    ...(logger ? { logger } : {}),
  });
  return code;
}

/** Bundles MARE's workflows once into `file` (for MARE_WORKFLOW_BUNDLE); returns the absolute path. */
export async function writeWorkflowBundle(file: string, logger?: Parameters<typeof bundleWorkflowCode>[0]['logger']): Promise<string> {
  const code = await bundleMareWorkflows(logger);
  const out = path.resolve(file);
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, code);
  return out;
}

/** The workspace root: MARE_WORKSPACE_DIR, else `<data dir>/workspaces`. */
export function workspaceRootFromEnv(): string {
  return process.env.MARE_WORKSPACE_DIR ?? path.join(dataDir(), 'workspaces');
}

/** The installed Runtime's non-determinism monitor (workers/workflowTaskFailures.ts), if installRuntime ran. */
let nondeterminism: NondeterminismMonitor | undefined;

/**
 * Routes the Temporal Runtime's logs, Core's warnings included, through pino, watches them for
 * non-deterministic workflow tasks, and, when asked, exposes Prometheus metrics.
 */
export function installRuntime(logger: Logger, metricsBind = process.env.MARE_METRICS_BIND): NondeterminismMonitor {
  const monitor = new NondeterminismMonitor(logger, () => Runtime.instance().metricMeter);
  Runtime.install({
    logger: new DefaultLogger('INFO', (entry) => {
      const { level, message, meta } = entry;
      const fn = level === 'ERROR' ? logger.error : level === 'WARN' ? logger.warn : level === 'INFO' ? logger.info : logger.debug;
      fn.call(logger, meta ?? {}, message);
      monitor.observe(entry);
    }),
    telemetryOptions: {
      // Forwarded rather than printed: Core's "Failing workflow task" is how a TMPRL1100 non-determinism shows.
      logging: { forward: {}, filter: { core: 'WARN', other: 'ERROR' } },
      ...(metricsBind ? { metrics: { prometheus: { bindAddress: metricsBind } } } : {}),
    },
  });
  nondeterminism = monitor;
  return monitor;
}

/**
 * `mare worker`: connects with @temporalio/envconfig (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS and
 * API-key variables), migrates the database at DATABASE_URL, and runs until SIGINT/SIGTERM.
 * MARE_WORKFLOW_BUNDLE loads a prebuilt workflow bundle (`mare bundle`) instead of bundling at start;
 * the tuning variables of workers/tuning.ts size caches, slots and pollers (per queue with
 * MARE_MODELS_… / MARE_TOOLS_… / MARE_ORCHESTRATION_…); MARE_DEPLOYMENT_NAME and MARE_BUILD_ID turn
 * worker versioning on. Role profiles are decrypted with MARE_ROLE_KEYS or MARE_ROLE_KEY_FILE (or the
 * local stack's generated key file); payloads with MARE_PAYLOAD_KEYS, if set.
 */
export async function runWorkerFromEnv(
  logger: Logger,
  opts: { identity?: string; toolsConfig?: ToolsConfig; redactor?: Redactor; queues?: readonly QueueKind[] } = {},
): Promise<void> {
  const databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) throw new Error('DATABASE_URL is not set: the worker needs PostgreSQL (`mare dev` sets it for you)');
  const queues = opts.queues ?? QUEUE_KINDS;
  const tuning = Object.fromEntries(queues.map((kind) => [kind, workerTuningFromEnv(process.env, kind)])) as Record<QueueKind, WorkerTuning>;
  const deployment = deploymentFromEnv();
  const tracing = tracingFromEnv();
  if (process.env.MARE_HEALTH_BIND) parseBind(process.env.MARE_HEALTH_BIND); // a bad value stops the worker before it connects
  const bundlePath = process.env.MARE_WORKFLOW_BUNDLE;
  if (bundlePath && !existsSync(bundlePath)) {
    throw new Error(`MARE_WORKFLOW_BUNDLE=${bundlePath} does not exist: write it with \`mare bundle ${bundlePath}\` (after every code change), or unset it`);
  }
  const keyring = keyringFromEnv({ dataDir: dataDir() });
  const payloadKeyring = payloadKeyringFromEnv({ dataDir: dataDir() });
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
      queues,
      tuning: (kind) => tuning[kind],
      ...(deployment ? { deployment } : {}),
      ...(payloadKeyring ? { payloadKeyring } : {}),
      ...(tracing ? { interceptors: tracing.workerInterceptors } : {}),
      deps: { pool, model, roles, workspaceRoot: workspaceRootFromEnv(), logger, tools: services.tools, policies: services.policies, redactor: services.redactor },
    });
    const health = process.env.MARE_HEALTH_BIND ? await startHealthServer({ bind: process.env.MARE_HEALTH_BIND, worker, pool, logger }) : undefined;
    logger.info(
      { taskQueues: queues.map((kind) => TASK_QUEUES[kind]), deployment: deployment ?? 'unversioned', mcpTools: services.tools.mcpToolNames(), roleKeys: keyring.origin, payloadEncryption: payloadKeyring?.origin ?? 'off (no payload key)', tracing: tracing?.config ?? 'off', namespace: namespace ?? 'default', model: model.name, offline: model.offline, tuning, workflowBundle: bundlePath ?? 'bundled at start' },
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
    // After worker.run(): the last activity spans have ended by then.
    await tracing?.shutdown();
    await services.close();
    await roles.close();
    await pool.end();
  }
}
