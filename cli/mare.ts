#!/usr/bin/env node
import { Command } from 'commander';
import { Pool } from 'pg';
import { migrate } from '../infra/db/migrate';
import { ApprovalNotFoundError, ApprovalRejectedError, MareClient, InvalidTaskRequestError, TaskNotFoundError, TemporalUnavailableError, withTemporalConnection } from '../client/client';
import { describeStack, startLocalStack } from '../dev/localStack';
import { formatResult, OFFLINE_NOTICE, progressLines, WEB_UI_COLUMNS } from '../client/render';
import { runDemo } from '../dev/demo';
import { positiveInt, UsageError } from './commandKit';
import { registerRoleCommands } from './rolesCommand';
import { registerPolicyCommands } from './policiesCommand';
import { registerApprovalCommands } from './approvalsCommand';
import { registerSupervisorCommands } from './supervisorCommand';
import { registerAuditCommands } from './auditCommand';
import { registerReportCommands } from './reportCommand';
import { registerDoctorCommand } from './doctorCommand';
import { registerKeyCommands } from './keysCommand';
import { ApiKeyError, ApiKeyStore } from '../infra/db/apiKeys';
import { MIN_API_KEY_LENGTH, serveApi } from '../servers/api';
import { CodecTokenError, codecTokenFromEnv, DEFAULT_CODEC_PORT, serveCodec } from '../servers/codecServer';
import { ReportUsageError } from '../infra/db/reliabilityStore';
import { PolicyNotFoundError, PolicyRepositoryError, PolicyValidationError } from '../infra/db/policyRepository';
import { RoleDirectoryError } from '../infra/roles/directory';
import { RoleIntegrityError, RoleKeyError, UnknownRoleKeyError } from '../infra/crypto/roleCrypto';
import { RoleNotFoundError, RoleRepositoryError } from '../infra/db/roleRepository';
import { RoleValidationError } from '../validation/roleProfile';
import { createRedactor, SecretsConfigError } from '../infra/secrets';
import { loadToolsConfig, ToolsConfigError } from '../activities/tools';
import { registerSearchAttributes } from '../dev/temporal';
import { createLogger, processRedactor } from '../workers/logger';
import { parseBind } from '../workers/health';
import { DeploymentConfigError, deploymentFromEnv, setCurrentVersion } from '../workers/versioning';
import { PayloadIntegrityError, PayloadKeyError, payloadKeyringFromEnv } from '../infra/crypto/payloadCodec';
import { dataDir } from '../infra/paths';
import { runWorkerFromEnv, writeWorkflowBundle } from '../workers/worker';
import { type TaskProgress } from '../validation';
import { QUEUE_KINDS, type QueueKind } from '../core/constants';

const print = (line = ''): void => void process.stdout.write(`${line}\n`);

/** `--queues models,tools` → the queue kinds, each known and named once. */
function parseQueues(list: string): QueueKind[] {
  const kinds = list.split(',').map((k) => k.trim()).filter(Boolean);
  const unknown = kinds.filter((k) => !(QUEUE_KINDS as string[]).includes(k));
  if (unknown.length || !kinds.length) throw new UsageError(`--queues: ${unknown.length ? `unknown kind "${unknown.join('", "')}"` : 'empty'}; use a comma-separated subset of ${QUEUE_KINDS.join(', ')}`);
  return [...new Set(kinds)] as QueueKind[];
}


/** Errors that are the user's to fix: one clear line, exit code 2 (TemporalUnavailableError: 1). */
const KNOWN_ERRORS = [
  InvalidTaskRequestError,
  TaskNotFoundError,
  TemporalUnavailableError,
  ApprovalNotFoundError,
  ApprovalRejectedError,
  ToolsConfigError,
  SecretsConfigError,
  RoleValidationError,
  RoleRepositoryError,
  RoleNotFoundError,
  RoleDirectoryError,
  RoleKeyError,
  RoleIntegrityError,
  UnknownRoleKeyError,
  PolicyValidationError,
  PolicyRepositoryError,
  PolicyNotFoundError,
  UsageError,
  ReportUsageError,
  PayloadKeyError,
  PayloadIntegrityError,
  CodecTokenError,
  DeploymentConfigError,
  ApiKeyError,
];

/** Runs a command body, turning known errors into one clear line (exit code 2; 1 for anything else). */
function action<A extends unknown[]>(fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      const known = KNOWN_ERRORS.some((type) => err instanceof type);
      const message =
        err instanceof RoleValidationError
          ? `invalid role profile ${err.role}:\n${err.problems.map((p) => `  ${p.field}: ${p.message}`).join('\n')}`
          : err instanceof PolicyValidationError
            ? `invalid policy ${err.policy}:\n${err.problems.map((p) => `  ${p.field}: ${p.message}`).join('\n')}`
            : err instanceof Error
              ? err.message
              : String(err);
      process.stderr.write(`mare: ${message}\n`);
      if (!known && process.env.MARE_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
      process.exitCode = known && !(err instanceof TemporalUnavailableError) ? 2 : 1;
    }
  };
}

const program = new Command('mare')
  .description(
    'MARE: durable orchestration of LLM agents on Temporal.\nCommands that talk to Temporal connect like the Temporal CLI: TEMPORAL_ADDRESS (default localhost:7233), TEMPORAL_NAMESPACE (default "default"), TEMPORAL_API_KEY, the TLS variables and profiles of temporal.toml, or the flags below, which override them.',
  )
  // The Temporal CLI's flag names; they set the environment @temporalio/envconfig reads.
  .option('--address <host:port>', 'Temporal frontend address (TEMPORAL_ADDRESS)')
  .option('--namespace <name>', 'Temporal namespace (TEMPORAL_NAMESPACE)')
  .option('--api-key <key>', 'API key, e.g. for Temporal Cloud; turns TLS on (TEMPORAL_API_KEY)')
  .option('--profile <name>', 'profile of the Temporal config file (TEMPORAL_PROFILE)')
  .hook('preAction', (command) => {
    const flags = command.opts<{ address?: string; namespace?: string; apiKey?: string; profile?: string }>();
    if (flags.address) process.env.TEMPORAL_ADDRESS = flags.address;
    if (flags.namespace) process.env.TEMPORAL_NAMESPACE = flags.namespace;
    if (flags.apiKey) process.env.TEMPORAL_API_KEY = flags.apiKey;
    if (flags.profile) process.env.TEMPORAL_PROFILE = flags.profile;
  })
  .showHelpAfterError();

program
  .command('dev')
  .description('start a local stack: Temporal dev server (SQLite in .mare/), PostgreSQL (DATABASE_URL or embedded), a codec server for the Web UI, one worker, payloads encrypted; Ctrl-C stops it all')
  .option('--port <port>', 'Temporal gRPC port', positiveInt, 7233)
  .option('--ui-port <port>', 'Temporal Web UI port', positiveInt, 8233)
  .option('--codec-port <port>', 'port of the codec server the Web UI decrypts payloads with', positiveInt, DEFAULT_CODEC_PORT)
  .action(
    action(async (opts: { port: number; uiPort: number; codecPort: number }) => {
      // One redactor for the log lines and for what the worker stores: the same secrets everywhere.
      const redactor = processRedactor();
      const logger = createLogger('mare-dev', { redactor, pretty: process.env.MARE_LOG_PRETTY ? process.env.MARE_LOG_PRETTY !== '0' : process.stdout.isTTY });
      const stack = await startLocalStack({ logger, redactor, print, port: opts.port, uiPort: opts.uiPort, codecPort: opts.codecPort });
      describeStack(stack).forEach((l) => print(l));
      if (stack.model.offline) print(OFFLINE_NOTICE);
      print('Workers running on task queues mare-tasks, mare-models and mare-tools. Press Ctrl-C to stop.');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      print('stopping…');
      await stack.stop();
      print('stopped.');
    }),
  );

program
  .command('worker')
  .description(
    'run workers on the task queues mare-tasks (workflows, bookkeeping), mare-models (model calls) and mare-tools (tool calls), or a subset: ' +
      'migrates DATABASE_URL (required), connects to Temporal from TEMPORAL_ADDRESS/TEMPORAL_NAMESPACE (TLS and API-key variables too), stops on SIGINT/SIGTERM after a grace time',
  )
  .option('--identity <name>', 'worker identity shown in the Web UI')
  .option('--queues <kinds>', `comma-separated queue kinds to serve: ${QUEUE_KINDS.join(', ')} (MARE_WORKER_QUEUES)`, process.env.MARE_WORKER_QUEUES ?? QUEUE_KINDS.join(','))
  .action(
    action(async (opts: { identity?: string; queues: string }) => {
      const queues = parseQueues(opts.queues);
      // The tools configuration's secret patterns are redacted from the worker's log lines too.
      const toolsConfig = loadToolsConfig();
      const redactor = createRedactor(toolsConfig.secrets);
      await runWorkerFromEnv(createLogger('mare-worker', { redactor }), { ...(opts.identity ? { identity: opts.identity } : {}), queues, toolsConfig, redactor });
    }),
  );

program
  .command('setup')
  .description("register MARE's custom search attributes on a Temporal cluster's namespace (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS and API-key variables); `mare dev` does this for its own server")
  .option('--json', 'print what was added and what was already there as JSON')
  .action(
    action(async (opts: { json?: boolean }) => {
      await withTemporalConnection(async (connection, namespace) => {
        const { added, existing } = await registerSearchAttributes(connection, namespace);
        if (opts.json) return print(JSON.stringify({ namespace, added, existing }));
        print(`namespace ${namespace}: ${added.length ? `registered ${added.join(', ')}` : 'nothing to register'}${existing.length ? `; already there: ${existing.join(', ')}` : ''}`);
        print(`In the Web UI's workflow list, add the columns ${WEB_UI_COLUMNS.join(', ')} (Configure Columns), and filter with e.g. WorkflowType = 'orchestrateTask' or MarePendingApproval IS NOT NULL.`);
      });
    }),
  );

program
  .command('deployment')
  .description('worker versioning: make a build the current version of its deployment (new tasks start on it; open tasks stay on theirs)')
  .command('set-current')
  .description('make MARE_DEPLOYMENT_NAME/MARE_BUILD_ID (or the options) the current version; waits up to 30 s for its workers to poll')
  .option('--deployment-name <name>', 'deployment name (MARE_DEPLOYMENT_NAME)', process.env.MARE_DEPLOYMENT_NAME)
  .option('--build-id <id>', 'build id (MARE_BUILD_ID)', process.env.MARE_BUILD_ID)
  .action(
    action(async (opts: { deploymentName?: string; buildId?: string }) => {
      const version = deploymentFromEnv({ MARE_DEPLOYMENT_NAME: opts.deploymentName, MARE_BUILD_ID: opts.buildId });
      if (!version) throw new UsageError('name the version: --deployment-name and --build-id (or MARE_DEPLOYMENT_NAME and MARE_BUILD_ID)');
      await withTemporalConnection(async (connection, namespace) => {
        await setCurrentVersion(connection, namespace, version);
        print(`${version.deploymentName}.${version.buildId} is the current version of deployment ${version.deploymentName} (namespace ${namespace})`);
      });
    }),
  );

program
  .command('bundle')
  .description('write the workflow bundle to a file, for workers started with MARE_WORKFLOW_BUNDLE=<file> (skips bundling at start)')
  .argument('<file>', 'where to write the bundle, e.g. dist/workflow-bundle.js')
  .action(
    action(async (file: string) => {
      print(`wrote ${await writeWorkflowBundle(file)}`);
    }),
  );

program
  .command('run')
  .description('submit a task; with --wait, show live progress and the result')
  .argument('<goal>', 'what the task should achieve')
  .option('--id <taskId>', 'task id and idempotency key: the same id never starts a second run')
  .option('--concurrency <n>', 'subtasks run at once', positiveInt, 4)
  .option('--tenant <tenant>', 'tenant the task belongs to', 'default')
  .option('--wait', 'wait for the result, printing the plan and progress')
  .option('--json', 'print the result (or, without --wait, the task id) as JSON')
  .action(
    action(async (goal: string, opts: { id?: string; concurrency: number; tenant: string; wait?: boolean; json?: boolean }) => {
      const client = await MareClient.connect();
      try {
        const { taskId, workflowId } = await client.submitTask({ taskId: opts.id, goal, concurrency: opts.concurrency, tenant: opts.tenant });
        if (!opts.wait) {
          print(opts.json ? JSON.stringify({ taskId, workflowId }) : `submitted task ${taskId} (workflow ${workflowId})`);
          return;
        }
        if (!opts.json) {
          print(`task ${taskId} (workflow ${workflowId})`);
          let prev: TaskProgress | undefined;
          for await (const p of client.watchTask(taskId)) {
            progressLines(prev, p).forEach((l) => print(l));
            prev = p;
          }
        }
        const result = await client.result(taskId);
        print(opts.json ? JSON.stringify(result, null, 2) : formatResult(result));
        if (result.status !== 'COMPLETED') process.exitCode = 1;
      } finally {
        await client.close();
      }
    }),
  );

program
  .command('status')
  .description('show a task: its progress while running, its result once done')
  .argument('<taskId>')
  .option('--json', 'print as JSON')
  .action(
    action(async (taskId: string, opts: { json?: boolean }) => {
      const client = await MareClient.connect();
      try {
        const view = await client.getTask(taskId);
        if (opts.json) return print(JSON.stringify(view, null, 2));
        print(`task ${view.taskId}: workflow ${view.workflowId} is ${view.execution}`);
        if (view.progress) progressLines(undefined, view.progress).forEach((l) => print(l));
        if (view.result) print(formatResult(view.result));
      } finally {
        await client.close();
      }
    }),
  );

program
  .command('list')
  .description('list recent tasks, newest first')
  .option('--limit <n>', 'how many', positiveInt, 20)
  .option('--json', 'print as JSON')
  .action(
    action(async (opts: { limit: number; json?: boolean }) => {
      const client = await MareClient.connect();
      try {
        const tasks = await client.listTasks({ limit: opts.limit });
        if (opts.json) return print(JSON.stringify(tasks, null, 2));
        if (!tasks.length) return print('no tasks');
        for (const t of tasks) print(`${t.startTime.toISOString()}  ${(t.status ?? t.execution).padEnd(11)} ${t.taskId}`);
      } finally {
        await client.close();
      }
    }),
  );

program
  .command('cancel')
  .description('cancel a task: what it did is rolled back; it ends COMPENSATED, or FAILED if an undo step failed')
  .argument('<taskId>')
  .action(
    action(async (taskId: string) => {
      const client = await MareClient.connect();
      try {
        await client.cancelTask(taskId);
        print(`cancellation requested for task ${taskId}`);
      } finally {
        await client.close();
      }
    }),
  );

program
  .command('demo')
  .description('start the local stack, run the demo task (plan, roles, file tools, verification), print it all, then stop (what `npm start` runs)')
  .option('--keep', 'keep the stack running after the demo, to browse the run in the Web UI; Ctrl-C stops it')
  .option('--port <port>', 'Temporal gRPC port', positiveInt, 7233)
  .option('--ui-port <port>', 'Temporal Web UI port', positiveInt, 8233)
  .option('--codec-port <port>', 'port of the codec server the Web UI decrypts payloads with', positiveInt, DEFAULT_CODEC_PORT)
  .action(
    action(async (opts: { keep?: boolean; port: number; uiPort: number; codecPort: number }) => {
      const completed = await runDemo({ print, keep: opts.keep ?? false, port: opts.port, uiPort: opts.uiPort, codecPort: opts.codecPort });
      if (!completed) process.exitCode = 1;
    }),
  );

program
  .command('api')
  .description(
    'serve the HTTP API (tasks, progress events, approvals, health, OpenAPI at /v1/openapi.json); connects to Temporal like the client commands; stops on SIGINT/SIGTERM. ' +
      'Keys: those of `mare keys` in DATABASE_URL (each bound to a tenant and scopes), and MARE_API_KEY if set (the operator\'s bootstrap key: admin scope, every tenant); at least one is needed',
  )
  .option('--port <port>', 'port to listen on', positiveInt, 8080)
  .option('--host <host>', 'address to listen on', '127.0.0.1')
  .action(
    action(async (opts: { port: number; host: string }) => {
      const apiKey = process.env.MARE_API_KEY || undefined;
      if (!apiKey && !process.env.DATABASE_URL) {
        throw new UsageError(
          `no API keys: set DATABASE_URL (keys made with \`mare keys create\`) and/or MARE_API_KEY (an operator key of at least ${MIN_API_KEY_LENGTH} characters, e.g. \`openssl rand -hex 32\`)`,
        );
      }
      if (apiKey && apiKey.length < MIN_API_KEY_LENGTH) throw new UsageError(`MARE_API_KEY is too short (${apiKey.length} characters): use at least ${MIN_API_KEY_LENGTH}`);
      const serve = async (keys?: ApiKeyStore): Promise<void> => {
        if (!keys) print('API keys: MARE_API_KEY only (DATABASE_URL is not set, so keys of `mare keys` are not accepted)');
        const client = await MareClient.connect();
        try {
          await serveApi({ client, apiKey, keys, logger: createLogger('mare-api'), port: opts.port, host: opts.host, print });
        } finally {
          await client.close();
        }
      };
      const url = process.env.DATABASE_URL;
      if (!url) return serve();
      await migrate(url);
      // One short query per request: a few connections are enough.
      const pool = new Pool({ connectionString: url, max: 5 });
      pool.on('error', (err) => process.stderr.write(`mare api: idle database connection failed: ${err.message}\n`));
      try {
        await serve(new ApiKeyStore(pool));
      } finally {
        await pool.end();
      }
    }),
  );

program
  .command('codec-server')
  .description(
    "serve Temporal's remote codec (POST /encode, /decode) for the Web UI and the CLI with MARE's payload keys (MARE_PAYLOAD_KEYS or MARE_PAYLOAD_KEY_FILE); " +
      'every call needs the token (from MARE_CODEC_TOKEN, the file MARE_CODEC_TOKEN_FILE or <data dir>/codec-token; never a command-line argument, which other users can read), ' +
      'as a bearer token or as the path prefix /token/<token>; answers only requests whose Host is a loopback name, the bound address or an --allowed-host; stops on SIGINT/SIGTERM',
  )
  .option('--bind <host:port>', 'address to listen on (MARE_CODEC_BIND)', process.env.MARE_CODEC_BIND ?? `127.0.0.1:${DEFAULT_CODEC_PORT}`)
  .option('--cors-origin <origins>', 'comma-separated browser origins allowed to call, i.e. the Web UI (MARE_CODEC_CORS_ORIGIN)', process.env.MARE_CODEC_CORS_ORIGIN ?? '')
  .option('--allowed-host <hosts>', 'comma-separated host names clients reach the server by, besides loopback and the bound address (MARE_CODEC_ALLOWED_HOSTS)', process.env.MARE_CODEC_ALLOWED_HOSTS ?? '')
  .action(
    action(async (opts: { bind: string; corsOrigin: string; allowedHost: string }) => {
      const { host, port } = parseBind(opts.bind, '--bind');
      const keyring = payloadKeyringFromEnv({ dataDir: dataDir() });
      if (!keyring) throw new PayloadKeyError('no payload key: set MARE_PAYLOAD_KEYS ("id:base64key,…") or MARE_PAYLOAD_KEY_FILE (or run `mare dev` once, which generates one)');
      const { token } = codecTokenFromEnv({ dataDir: dataDir() });
      const corsOrigins = opts.corsOrigin.split(',').map((o) => o.trim()).filter(Boolean);
      const allowedHosts = opts.allowedHost.split(',').map((h) => h.trim()).filter(Boolean);
      await serveCodec({ keyring, token, corsOrigins, allowedHosts, logger: createLogger('mare-codec'), host, port, print });
    }),
  );

registerRoleCommands(program, action, print);
registerPolicyCommands(program, action, print);
registerApprovalCommands(program, action, print);
registerSupervisorCommands(program, action, print);
registerAuditCommands(program, action, print);
registerReportCommands(program, action, print);
registerDoctorCommand(program, action, print);
registerKeyCommands(program, action, print);

// Exit explicitly once a command is done: the SDK's native runtime can keep the event loop alive.
void program.parseAsync(process.argv).then(() => process.exit());
