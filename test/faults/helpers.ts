import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import type { NativeConnection } from '@temporalio/worker';
import { temporal } from '@temporalio/proto';
import pino from 'pino';
import type { ModelClient } from '../../infra/models/model';
import type { TaskResult } from '../../validation';
import { subtaskWorkflowId, taskWorkflowId } from '../../core/constants';
import type { WorkerTuning } from '../../workers/tuning';
import { createMareWorker, type MareWorker } from '../../workers/worker';
import { builtinToolDeps, failureMessage, type TestStack } from '../helpers';
import { BUNDLE_PATH } from '../paths';

export type HistoryEvent = temporal.api.history.v1.IHistoryEvent;
const { TimeoutType } = temporal.api.enums.v1;

/** The real `mare` command, built by `npm run test:faults` before jest starts. */
export const CLI = path.join(__dirname, '..', '..', 'dist', 'cli', 'mare.js');

export function assertBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm run test:faults does)`);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value; throws with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 120_000, intervalMs = 100): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** A `mare worker` OS process started by a test. */
export interface WorkerProcess {
  identity: string;
  child: ChildProcess;
  pid: number;
  /** Everything the process wrote to stdout and stderr so far. */
  output(): string;
  /** Resolves when the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  isRunning(): boolean;
}

const started: WorkerProcess[] = [];

/**
 * Starts `mare worker` from dist/ as its own OS process (with the test bundle, so it does not
 * bundle at start) and resolves once it polls.
 */
export async function startWorkerProcess(opts: {
  identity: string;
  address: string;
  databaseUrl: string;
  /** MARE_ROLE_KEYS and MARE_ROLE_ACTIVE_KEY of the database's role keyring. */
  roleKeys: Record<string, string>;
  workspaceRoot: string;
  /** MARE_MODEL, e.g. `scripted:/path/script.json`. */
  model: string;
  env?: Record<string, string>;
}): Promise<WorkerProcess> {
  const child = spawn(process.execPath, [CLI, 'worker', '--identity', opts.identity], {
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: opts.address,
      TEMPORAL_NAMESPACE: 'default',
      DATABASE_URL: opts.databaseUrl,
      MARE_MODEL: opts.model,
      MARE_WORKSPACE_DIR: opts.workspaceRoot,
      MARE_WORKFLOW_BUNDLE: BUNDLE_PATH,
      MARE_LOG_LEVEL: 'info',
      ...opts.roleKeys,
      ...opts.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal, at: Date.now() })),
  );
  const proc: WorkerProcess = {
    identity: opts.identity,
    child,
    pid: child.pid ?? -1,
    output: () => output,
    exited,
    isRunning: () => child.exitCode === null && child.signalCode === null,
  };
  started.push(proc);
  let timer: NodeJS.Timeout | undefined;
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (output.includes('worker started')) resolve();
    };
    child.stdout?.on('data', check);
    void exited.then(({ code, signal }) => reject(new Error(`worker ${opts.identity} exited early (code ${code}, signal ${signal}):\n${output}`)));
    timer = setTimeout(() => reject(new Error(`worker ${opts.identity} did not start within 90 s:\n${output}`)), 90_000);
  }).finally(() => clearTimeout(timer));
  return proc;
}

/** SIGKILLs every worker process a test started that still runs (afterEach / afterAll). */
export async function killWorkerProcesses(): Promise<void> {
  for (const w of started.splice(0)) {
    if (w.isRunning()) {
      w.child.kill('SIGKILL');
      await w.exited;
    }
  }
}

/**
 * Runs an in-process worker with any model client and worker tuning against a test stack until `fn`
 * settles (TestStack.withWorker only takes a script).
 */
export async function withModelWorker<T>(
  stack: TestStack,
  opts: { model: ModelClient; tuning?: WorkerTuning; connection?: NativeConnection; identity?: string },
  fn: (worker: MareWorker) => Promise<T>,
): Promise<T> {
  const worker = await createMareWorker({
    connection: opts.connection ?? stack.env.nativeConnection,
    workflowBundle: { code: readFileSync(BUNDLE_PATH, 'utf8') },
    deps: { pool: stack.pool, model: opts.model, roles: stack.roles, policies: stack.policies, ...builtinToolDeps(), workspaceRoot: stack.workspaceRoot, logger: pino({ level: process.env.MARE_TEST_LOG_LEVEL ?? 'silent' }) },
    shutdownGraceTime: '1 second',
    ...(opts.identity ? { identity: opts.identity } : {}),
    ...(opts.tuning ? { tuning: opts.tuning } : {}),
  });
  return worker.runUntil(fn(worker));
}

/** A workflow's event history through any client. */
export async function historyFor(client: Client, workflowId: string): Promise<HistoryEvent[]> {
  return (await client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
}

/** The workflow ids of a task: its own and one per subtask of its plan. */
export function taskWorkflowIds(result: Pick<TaskResult, 'taskId' | 'plan'>): string[] {
  return [taskWorkflowId(result.taskId), ...result.plan.subtasks.map((s) => subtaskWorkflowId(result.taskId, s.id))];
}

/** One activity execution as history records it: its final attempt, who ran it, and how it ended. */
export interface ActivityRun {
  workflowId: string;
  activityId: string;
  type: string;
  attempt: number;
  identity: string;
  /** Why the previous attempt ended (timeout type or failure type), when attempt > 1. */
  lastFailure?: temporal.api.failure.v1.IFailure;
  outcome: 'completed' | 'failed' | 'timedOut' | 'canceled' | 'open';
  failure?: temporal.api.failure.v1.IFailure;
  scheduledAt: number;
  closedAt?: number;
}

const millis = (t: temporal.api.history.v1.IHistoryEvent['eventTime']): number =>
  t ? Number(t.seconds ?? 0) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : 0;

/** Every activity of a history with its last attempt and outcome. */
export function activityRuns(workflowId: string, events: HistoryEvent[]): ActivityRun[] {
  const runs = new Map<string, ActivityRun>();
  for (const e of events) {
    const id = String(e.eventId);
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) {
      runs.set(id, {
        workflowId,
        activityId: scheduled.activityId ?? '',
        type: scheduled.activityType?.name ?? '',
        attempt: 0,
        identity: '',
        outcome: 'open',
        scheduledAt: millis(e.eventTime),
      });
    }
    const startedAttrs = e.activityTaskStartedEventAttributes;
    if (startedAttrs) {
      const run = runs.get(String(startedAttrs.scheduledEventId));
      if (run) Object.assign(run, { attempt: startedAttrs.attempt ?? 0, identity: startedAttrs.identity ?? '', lastFailure: startedAttrs.lastFailure ?? undefined });
    }
    const close = (scheduledEventId: unknown, outcome: ActivityRun['outcome'], failure?: temporal.api.failure.v1.IFailure | null): void => {
      const run = runs.get(String(scheduledEventId));
      if (run) Object.assign(run, { outcome, failure: failure ?? undefined, closedAt: millis(e.eventTime) });
    };
    if (e.activityTaskCompletedEventAttributes) close(e.activityTaskCompletedEventAttributes.scheduledEventId, 'completed');
    if (e.activityTaskFailedEventAttributes) close(e.activityTaskFailedEventAttributes.scheduledEventId, 'failed', e.activityTaskFailedEventAttributes.failure);
    if (e.activityTaskTimedOutEventAttributes) close(e.activityTaskTimedOutEventAttributes.scheduledEventId, 'timedOut', e.activityTaskTimedOutEventAttributes.failure);
    if (e.activityTaskCanceledEventAttributes) close(e.activityTaskCanceledEventAttributes.scheduledEventId, 'canceled');
  }
  return [...runs.values()];
}

/** Failed workflow tasks of a history, with their cause and message. */
export function workflowTaskFailures(events: HistoryEvent[]): { cause: string; message: string }[] {
  return events.flatMap((e) => {
    const a = e.workflowTaskFailedEventAttributes;
    if (!a) return [];
    const cause = temporal.api.enums.v1.WorkflowTaskFailedCause[a.cause ?? 0] ?? String(a.cause);
    return [{ cause, message: failureMessage(a.failure) }];
  });
}

/** Timeout type name of a failure (e.g. TIMEOUT_TYPE_HEARTBEAT), if it is a timeout. */
export function timeoutTypeOf(failure: temporal.api.failure.v1.IFailure | undefined): string | undefined {
  const t = failure?.timeoutFailureInfo?.timeoutType;
  return t === undefined || t === null ? undefined : TimeoutType[t];
}

/** Millisecond timestamp of a history event. */
export function eventMillis(e: HistoryEvent): number {
  return millis(e.eventTime);
}
