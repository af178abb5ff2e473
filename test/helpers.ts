import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, type WorkerOptions } from '@temporalio/worker';
import type { temporal } from '@temporalio/proto';
import { Pool } from 'pg';
import pino, { type Logger } from 'pino';
import { createModelClient } from '../infra/models/model';
import type { ModelScript } from '../infra/models/scripted';
import { openPolicyService } from '../infra/policies/bootstrap';
import type { PolicyService } from '../infra/policies/policyService';
import { keyringEnv, newKey, type RoleKeyring } from '../infra/crypto/roleCrypto';
import { openRoleService } from '../infra/roles/bootstrap';
import type { RoleService } from '../infra/roles/roleService';
import { createRedactor } from '../infra/secrets';
import { ToolCatalog } from '../activities/tools';
import { ToolsConfig } from '../validation/toolConfig';
import { MareClient } from '../client/client';
import { migrate } from '../infra/db/migrate';
import { createScratchDatabase } from '../infra/db/scratch';
import { SEARCH_ATTRIBUTES, TASK_QUEUE } from '../core/constants';
import { resolveTemporalCli } from '../dev/temporal';
import { createMareWorker, type MareWorker } from '../workers/worker';
import { mareDataConverter } from '../infra/crypto/payloadCodec';
import type { Keyring } from '../infra/crypto/keyring';
import { BUNDLE_PATH, LOCAL_POSTGRES_URL } from './paths';

/** The PostgreSQL server tests create their databases on (globalSetup sets DATABASE_URL). */
export const ADMIN_DATABASE_URL = process.env.DATABASE_URL ?? LOCAL_POSTGRES_URL;

export type ScriptInput = Omit<Partial<ModelScript>, 'rules'> & { rules: unknown[] };

/** One test file's world: a real Temporal dev server, a fresh migrated database, a workspace root. */
export interface TestStack {
  env: TestWorkflowEnvironment;
  client: MareClient;
  pool: Pool;
  databaseUrl: string;
  /** The role service workers of this stack share, and its keyring. */
  roles: RoleService;
  keyring: RoleKeyring;
  /** MARE_ROLE_KEYS and MARE_ROLE_ACTIVE_KEY for `mare` processes the test starts. */
  roleKeysEnv: Record<string, string>;
  workspaceRoot: string;
  dir: string;
  /** The policy service workers of this stack share. */
  policies: PolicyService;
  /**
   * Starts an in-process worker whose offline model follows `script` (with MCP tools from
   * `toolsConfig`, if given); stops it, and its MCP connections, after `fn`.
   */
  withWorker<T>(script: ScriptInput, fn: (worker: MareWorker) => Promise<T>, opts?: { toolsConfig?: unknown; logger?: Logger; interceptors?: WorkerOptions['interceptors'] }): Promise<T>;
  /** Writes a model script to a file and returns its path. */
  writeScript(script: ScriptInput): string;
  teardown(): Promise<void>;
}

/**
 * Starts the real Temporal dev server (the resolved CLI binary) and creates a migrated database.
 * `dbFilename` keeps the server's state in that SQLite file; `payloadKeyring` encrypts payloads
 * (the stack's client and workers use it).
 */
export async function createTestStack(opts: { dbFilename?: string; payloadKeyring?: Keyring } = {}): Promise<TestStack> {
  quietRuntime();
  const cli = await resolveTemporalCli();
  const env = await TestWorkflowEnvironment.createLocal({
    server: {
      executable: { type: 'existing-path', path: cli },
      searchAttributes: Object.values(SEARCH_ATTRIBUTES),
      ...(opts.dbFilename ? { dbFilename: opts.dbFilename } : {}),
    },
  });
  const { pool, databaseUrl, roles, policies, keyring, drop } = await createTestDatabase();
  const dir = mkdtempSync(path.join(tmpdir(), 'mare-test-'));
  const workspaceRoot = path.join(dir, 'workspaces');
  const bundle = { code: readFileSync(BUNDLE_PATH, 'utf8') };
  const logger = pino({ level: process.env.MARE_TEST_LOG_LEVEL ?? 'silent' });
  let scripts = 0;

  const writeScript = (script: ScriptInput): string => {
    const file = path.join(dir, `script-${++scripts}.json`);
    writeFileSync(file, JSON.stringify(script));
    return file;
  };

  return {
    env,
    client: new MareClient(
      opts.payloadKeyring ? new Client({ connection: env.connection, dataConverter: mareDataConverter(opts.payloadKeyring) }) : env.client,
      TASK_QUEUE,
    ),
    pool,
    databaseUrl,
    roles,
    policies,
    keyring,
    roleKeysEnv: keyringEnv(keyring),
    workspaceRoot,
    dir,
    writeScript,
    async withWorker(script, fn, workerOpts = {}) {
      const model = createModelClient({ provider: 'scripted', modelId: writeScript(script) });
      const toolsConfig = ToolsConfig.parse(workerOpts.toolsConfig ?? {});
      const tools = new ToolCatalog(toolsConfig);
      const redactor = createRedactor(toolsConfig.secrets);
      try {
        const worker = await createMareWorker({
          connection: env.nativeConnection,
          workflowBundle: bundle,
          deps: { pool, model, roles, policies, tools, redactor, workspaceRoot, logger: workerOpts.logger ?? logger },
          shutdownGraceTime: '1 second',
          ...(opts.payloadKeyring ? { payloadKeyring: opts.payloadKeyring } : {}),
          ...(workerOpts.interceptors ? { interceptors: workerOpts.interceptors } : {}),
        });
        return await worker.runUntil(fn(worker));
      } finally {
        await tools.close();
      }
    },
    async teardown() {
      await env.teardown();
      await drop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A key of its own for each test database. */
export function testKeyring(): RoleKeyring {
  const { id, key } = newKey();
  return { activeKeyId: id, keys: new Map([[id, key]]), origin: 'test' };
}

/** A test database: pool, URL, its role service (default roles published), policy service and keyring. */
export interface TestDatabase {
  pool: Pool;
  databaseUrl: string;
  roles: RoleService;
  policies: PolicyService;
  keyring: RoleKeyring;
  drop(): Promise<void>;
}

/** A fresh, migrated database of its own on the test PostgreSQL server; `drop` removes it. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const dbName = `mare_test_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
  const { url: databaseUrl, drop } = await createScratchDatabase(ADMIN_DATABASE_URL, dbName);
  await migrate(databaseUrl);
  const pool = new Pool({ connectionString: databaseUrl, max: 10 });
  // drop() terminates connections that pool.end() has not closed yet; idle clients report that as
  // a pool 'error', which without a listener would fail the test file. Query errors still reach callers.
  pool.on('error', () => undefined);
  const keyring = testKeyring();
  const roles = await openRoleService({ pool, keyring });
  const policies = await openPolicyService({ pool });
  return {
    pool,
    databaseUrl,
    roles,
    policies,
    keyring,
    async drop() {
      await roles.close();
      await policies.close();
      await pool.end();
      await drop();
    },
  };
}

/** The event history of a workflow, for assertions on what actually became an activity. */
export async function historyOf(stack: TestStack, workflowId: string): Promise<temporal.api.history.v1.IHistoryEvent[]> {
  const history = await stack.env.client.workflow.getHandle(workflowId).fetchHistory();
  return history.events ?? [];
}

/** Activity types scheduled in a history, in order. */
export function scheduledActivities(events: temporal.api.history.v1.IHistoryEvent[]): string[] {
  return events.flatMap((e) => (e.activityTaskScheduledEventAttributes?.activityType?.name ? [e.activityTaskScheduledEventAttributes.activityType.name] : []));
}

/** Decoded JSON payloads of an activity type's inputs (scheduled) or results (completed), in order. */
export function activityPayloads(events: temporal.api.history.v1.IHistoryEvent[], activityType: string, which: 'input' | 'result'): string[] {
  const scheduledIds = new Set(
    events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === activityType).map((e) => String(e.eventId)),
  );
  const decode = (p: temporal.api.common.v1.IPayloads | null | undefined): string => (p?.payloads ?? []).map((x) => Buffer.from(x.data ?? []).toString()).join('\n');
  return which === 'input'
    ? events.filter((e) => scheduledIds.has(String(e.eventId))).map((e) => decode(e.activityTaskScheduledEventAttributes?.input))
    : events
        .filter((e) => scheduledIds.has(String(e.activityTaskCompletedEventAttributes?.scheduledEventId)))
        .map((e) => decode(e.activityTaskCompletedEventAttributes?.result));
}

/** Every payload in a history, decoded, for "this content never entered history" assertions. */
export function allPayloadText(events: temporal.api.history.v1.IHistoryEvent[]): string {
  // protobufjs's toJSON has already turned payload bytes into base64 by the time the replacer sees them
  return JSON.stringify(events, (k, v: unknown) => (k === 'data' && typeof v === 'string' ? Buffer.from(v, 'base64').toString() : v));
}

/** A plan reply for the scripted planner. */
export function planReply(subtasks: unknown[]): { match: { purpose: 'plan' }; reply: { text: string } } {
  return { match: { purpose: 'plan' }, reply: { text: JSON.stringify({ subtasks }) } };
}

/** A tool-call reply for the scripted model. */
export function toolCall(name: string, args: Record<string, unknown>): { toolCalls: { name: string; args: Record<string, unknown> }[] } {
  return { toolCalls: [{ name, args }] };
}

/** Keeps the SDK's own logs to warnings and errors (once per process: the Runtime is global). */
export function quietRuntime(): void {
  try {
    Runtime.install({ logger: new DefaultLogger((process.env.MARE_TEST_SDK_LOG_LEVEL as 'WARN' | undefined) ?? 'ERROR') });
  } catch {
    // already installed by an earlier test file in this jest worker
  }
}

/** Activity types run as local activities (recorded as markers) in a history, in order. */
export function localActivities(events: temporal.api.history.v1.IHistoryEvent[]): string[] {
  return events.flatMap((e) => {
    const m = e.markerRecordedEventAttributes;
    if (m?.markerName !== 'core_local_activity') return [];
    const data = m.details?.data?.payloads?.[0]?.data;
    if (!data) return [];
    const raw = typeof data === 'string' ? Buffer.from(data, 'base64').toString() : Buffer.from(data).toString();
    return [(JSON.parse(raw) as { activity_type: string }).activity_type];
  });
}

/** Tool catalog (built-in tools only) and redactor for tests that build activity deps by hand. */
export function builtinToolDeps(): { tools: ToolCatalog; redactor: ReturnType<typeof createRedactor> } {
  const config = ToolsConfig.parse({});
  return { tools: new ToolCatalog(config), redactor: createRedactor(config.secrets) };
}

/**
 * Writes a workflow's history (as the Temporal CLI exports it) to test/histories/<file> when
 * MARE_RECORD_HISTORIES is set (`npm run histories`); the replay test replays every file there.
 */
export async function recordHistory(stack: TestStack, file: string, workflowId: string): Promise<void> {
  if (!process.env.MARE_RECORD_HISTORIES) return;
  const cli = await resolveTemporalCli();
  const json = execFileSync(cli, ['workflow', 'show', '--address', stack.env.address, '--workflow-id', workflowId, '--output', 'json'], { encoding: 'utf8' });
  writeFileSync(path.join(__dirname, 'histories', file), json);
}

/**
 * A history failure's message: MARE's failure converter moves it into the encoded attributes
 * (workers/failureConverter.ts), so read it from there (payloads of these tests are not encrypted).
 */
export function failureMessage(failure: temporal.api.failure.v1.IFailure | null | undefined): string {
  if (!failure) return '';
  if (failure.encodedAttributes) {
    const attrs = defaultPayloadConverter.fromPayload<{ message?: string }>(failure.encodedAttributes);
    if (typeof attrs?.message === 'string') return attrs.message;
  }
  return failure.message ?? '';
}

/** A TCP port free on 127.0.0.1 right now (for servers a test starts). */
export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Sums a Prometheus metric's samples whose labels contain every given label; NaN when there is none. */
export function metricSample(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    found = true;
    total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return found ? total : NaN;
}
