import { randomUUID } from 'node:crypto';
import { Client, Connection, QueryNotRegisteredError, ServiceError, WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, WorkflowUpdateFailedError } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { z } from 'zod';
import {
  oneLine,
  SEARCH_ATTRIBUTES,
  TASK_QUEUE,
  TaskId,
  TaskRequest,
  taskWorkflowId,
  type ApprovalDecision,
  type ApprovalView,
  type SubtaskProgress,
  type TaskProgress,
  type TaskResult,
} from '../schemas';
import { approvalsQuery, decideApprovalUpdate, progressQuery, subtaskProgressQuery } from '../workflows/definitions';
import type { orchestrateTask } from '../workflows';
import { mareDataConverter, payloadKeyringFromEnv } from '../workers/payloadCodec';
import { tracingFromEnv } from '../workers/tracing';
import { dataDir } from '../scripts/stack/datadir';

/** What `submitTask` accepts: a TaskRequest whose taskId (the idempotency key) is optional. */
export const SubmitTaskInput = TaskRequest.extend({ taskId: TaskId.optional() });
export type SubmitTaskInput = z.input<typeof SubmitTaskInput>;

/** Bad input from the caller; nothing was started. */
export class InvalidTaskRequestError extends Error {
  override readonly name = 'InvalidTaskRequestError';
  constructor(readonly issues: z.core.$ZodIssue[]) {
    super(`invalid task request: ${issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  }
}

/** The Temporal server could not be reached. */
export class TemporalUnavailableError extends Error {
  override readonly name = 'TemporalUnavailableError';
  constructor(
    readonly address: string,
    cause: unknown,
  ) {
    super(
      `cannot reach Temporal at ${address} (${cause instanceof Error ? cause.message : String(cause)}): start a local stack with \`mare dev\`, or set TEMPORAL_ADDRESS`,
    );
  }
}

/** No task with that id. */
export class TaskNotFoundError extends Error {
  override readonly name = 'TaskNotFoundError';
  constructor(readonly taskId: string) {
    super(`no task with id "${taskId}"`);
  }
}

/** No approval with that id in the task. */
export class ApprovalNotFoundError extends Error {
  override readonly name = 'ApprovalNotFoundError';
  constructor(
    readonly taskId: string,
    readonly approvalId: string,
  ) {
    super(`task "${taskId}" has no approval "${approvalId}"`);
  }
}

/** The workflow refused the decision: the approval is no longer pending, or the decision is malformed. */
export class ApprovalRejectedError extends Error {
  override readonly name = 'ApprovalRejectedError';
}

/** A task as `getTask` sees it. */
export interface TaskView {
  taskId: string;
  workflowId: string;
  /** Temporal's execution status: RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED, TIMED_OUT… */
  execution: string;
  progress?: TaskProgress;
  result?: TaskResult;
}

/** One row of `listTasks`. */
export interface TaskSummary {
  taskId: string;
  workflowId: string;
  execution: string;
  status?: string;
  startTime: Date;
}

/**
 * Runs `fn` with a plain connection from @temporalio/envconfig (for operator calls such as search
 * attributes and worker deployments) and closes it after; an unreachable server is a TemporalUnavailableError.
 */
export async function withTemporalConnection<T>(fn: (connection: Connection, namespace: string) => Promise<T>): Promise<T> {
  const { connectionOptions, namespace = 'default' } = loadClientConnectConfig();
  let connection: Connection;
  try {
    connection = await Connection.connect(connectionOptions);
  } catch (err) {
    throw new TemporalUnavailableError(connectionOptions.address ?? 'localhost:7233', err);
  }
  try {
    return await fn(connection, namespace);
  } finally {
    await connection.close();
  }
}

/** The data converter of a client process: MARE's, encrypting with the environment's payload keys if there are any. */
export function dataConverterFromEnv(): DataConverter {
  return mareDataConverter(payloadKeyringFromEnv({ dataDir: dataDir() }));
}

/** The typed MARE client: submit, inspect, watch, cancel and list tasks. */
export class MareClient {
  constructor(
    readonly client: Client,
    readonly taskQueue = TASK_QUEUE,
    /** Runs after the connection closed (flushes the client's trace spans). */
    private readonly afterClose?: () => Promise<void>,
  ) {}

  /**
   * Connects with @temporalio/envconfig (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS, API key); payloads
   * are encrypted and decrypted with the payload keys of the environment (MARE_PAYLOAD_KEYS, …), if
   * any, and calls are traced when the OpenTelemetry variables say so (OTEL_EXPORTER_OTLP_ENDPOINT, …).
   */
  static async connect(): Promise<MareClient> {
    const { connectionOptions, namespace } = loadClientConnectConfig();
    const dataConverter = dataConverterFromEnv();
    // OpenTelemetry (workers/tracing.ts): the client's spans start the traces the workers continue.
    const tracing = tracingFromEnv(process.env, { serviceName: 'mare-client' });
    try {
      const connection = await Connection.connect(connectionOptions);
      const client = new Client({ connection, namespace, dataConverter, ...(tracing ? { interceptors: tracing.clientInterceptors } : {}) });
      return new MareClient(client, TASK_QUEUE, tracing ? () => tracing.shutdown() : undefined);
    } catch (err) {
      throw new TemporalUnavailableError(connectionOptions.address ?? 'localhost:7233', err);
    }
  }

  /** Closes the underlying connection. */
  async close(): Promise<void> {
    await this.client.connection.close();
    await this.afterClose?.();
  }

  /**
   * Starts a task, or returns the existing one when its taskId was used before: the task id is the
   * idempotency key and at most one run ever starts for it. Input is validated before anything starts.
   */
  async submitTask(input: SubmitTaskInput): Promise<{ taskId: string; workflowId: string }> {
    const parsed = SubmitTaskInput.safeParse(input);
    if (!parsed.success) throw new InvalidTaskRequestError(parsed.error.issues);
    const request: TaskRequest = { ...parsed.data, taskId: parsed.data.taskId ?? randomUUID() };
    const workflowId = taskWorkflowId(request.taskId);
    try {
      await this.client.workflow.start<typeof orchestrateTask>('orchestrateTask', {
        taskQueue: this.taskQueue,
        workflowId,
        args: [request],
        // What the Web UI shows for the run: the goal as its summary, the request's settings as details.
        staticSummary: oneLine(request.goal, 200),
        staticDetails: [
          `**Task** \`${request.taskId}\` (tenant \`${request.tenant}\`)`,
          `**Goal:** ${request.goal.length > 2_000 ? `${request.goal.slice(0, 2_000)}…` : request.goal}`,
          `concurrency ${request.concurrency}, at most ${request.maxSubtasks} subtasks, ${request.acceptanceCriteria?.length ?? 0} task-level criteria`,
        ].join('\n\n'),
        memo: { goal: request.goal, tenant: request.tenant },
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.taskId, value: request.taskId },
          { key: SEARCH_ATTRIBUTES.tenant, value: request.tenant },
        ],
        workflowIdConflictPolicy: 'USE_EXISTING',
        workflowIdReusePolicy: 'REJECT_DUPLICATE',
      });
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    }
    return { taskId: request.taskId, workflowId };
  }

  /** The task's execution status, its live progress while running, and its result once done. */
  async getTask(taskId: string): Promise<TaskView> {
    const handle = this.client.workflow.getHandle<typeof orchestrateTask>(taskWorkflowId(checkId(taskId)));
    let execution: string;
    try {
      execution = (await handle.describe()).status.name;
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) throw new TaskNotFoundError(taskId);
      throw err;
    }
    const view: TaskView = { taskId, workflowId: handle.workflowId, execution };
    if (execution === 'RUNNING') view.progress = await this.progress(taskId);
    else if (execution === 'COMPLETED') view.result = await handle.result();
    return view;
  }

  /** The parent's progress, with live detail from each running subtask's own query. */
  async progress(taskId: string): Promise<TaskProgress> {
    const handle = this.client.workflow.getHandle(taskWorkflowId(taskId));
    const progress = await handle.query(progressQuery);
    progress.subtasks = await Promise.all(
      progress.subtasks.map(async (s): Promise<SubtaskProgress> => {
        if (s.state !== 'running') return s;
        try {
          return { ...(await this.client.workflow.getHandle(s.workflowId).query(subtaskProgressQuery)), workflowId: s.workflowId };
        } catch {
          return s; // the child may not have started its first task yet
        }
      }),
    );
    return progress;
  }

  /** Yields the task's progress whenever it changes, until the task ends; then yields nothing more. */
  async *watchTask(taskId: string, opts: { intervalMs?: number; outageToleranceMs?: number } = {}): AsyncGenerator<TaskProgress> {
    const handle = this.client.workflow.getHandle(taskWorkflowId(checkId(taskId)));
    let last = '';
    for (;;) {
      const running = (await ridingOutages(() => handle.describe(), opts.outageToleranceMs)).status.name === 'RUNNING';
      const progress = await this.progress(taskId).catch(() => undefined);
      const text = JSON.stringify(progress);
      if (progress && text !== last) {
        last = text;
        yield progress;
      }
      if (!running) return;
      await new Promise((r) => setTimeout(r, opts.intervalMs ?? 500));
    }
  }

  /** Waits for the task to end and returns its result, riding out Temporal outages (see ridingOutages). */
  async result(taskId: string, opts: { outageToleranceMs?: number } = {}): Promise<TaskResult> {
    const handle = this.client.workflow.getHandle<typeof orchestrateTask>(taskWorkflowId(checkId(taskId)));
    return ridingOutages(() => handle.result(), opts.outageToleranceMs);
  }

  /** Requests cancellation; the task rolls back what it did and ends COMPENSATED. */
  async cancelTask(taskId: string): Promise<void> {
    try {
      await this.client.workflow.getHandle(taskWorkflowId(checkId(taskId))).cancel();
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) throw new TaskNotFoundError(taskId);
      throw err;
    }
  }

  /** Every approval of a task (pending and decided), from its subtasks' `approvals` queries. */
  async approvals(taskId: string): Promise<ApprovalView[]> {
    const handle = this.client.workflow.getHandle(taskWorkflowId(checkId(taskId)));
    let progress: TaskProgress;
    try {
      progress = await handle.query(progressQuery);
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) throw new TaskNotFoundError(taskId);
      throw err;
    }
    const started = progress.subtasks.filter((s) => s.state !== 'pending' && s.state !== 'skipped');
    const lists = await Promise.all(
      started.map((s) =>
        this.client.workflow
          .getHandle(s.workflowId)
          .query(approvalsQuery)
          .catch((err: unknown) => {
            // Runs from before approvals existed, or not started yet; anything else (a timeout) is not "no approvals".
            if (err instanceof QueryNotRegisteredError || err instanceof WorkflowNotFoundError) return [] as ApprovalView[];
            throw err;
          }),
      ),
    );
    return lists.flat();
  }

  /** Approvals waiting for a person in every running task (visibility: `MarePendingApproval`). */
  async pendingApprovals(): Promise<ApprovalView[]> {
    const out: ApprovalView[] = [];
    const query = `${SEARCH_ATTRIBUTES.pendingApproval.name} IS NOT NULL AND ExecutionStatus = 'Running'`;
    for await (const wf of this.client.workflow.list({ query })) {
      const views = await this.client.workflow
        .getHandle(wf.workflowId)
        .query(approvalsQuery)
        .catch(() => [] as ApprovalView[]);
      out.push(...views.filter((v) => v.status === 'pending'));
    }
    return out;
  }

  /**
   * Approves or denies a pending approval through the `decideApproval` update. `updateId` makes a
   * retried decision idempotent: the same id twice has one effect and returns the same answer.
   */
  async decideApproval(taskId: string, decision: ApprovalDecision, opts: { updateId?: string } = {}): Promise<ApprovalView> {
    const view = (await this.approvals(taskId)).find((a) => a.approvalId === decision.approvalId);
    if (!view) throw new ApprovalNotFoundError(taskId, decision.approvalId);
    try {
      return await this.client.workflow.getHandle(view.workflowId).executeUpdate(decideApprovalUpdate, {
        args: [decision],
        updateId: opts.updateId ?? `${decision.approvalId}:${decision.decision}:${randomUUID()}`,
      });
    } catch (err) {
      if (err instanceof WorkflowUpdateFailedError) throw new ApprovalRejectedError(`approval ${decision.approvalId}: ${err.cause?.message ?? err.message}`);
      throw err;
    }
  }

  /** Recent tasks, newest first, from Temporal's visibility store. */
  async listTasks(opts: { limit?: number } = {}): Promise<TaskSummary[]> {
    const out: TaskSummary[] = [];
    for await (const wf of this.client.workflow.list({ query: `WorkflowType = 'orchestrateTask'` })) {
      const status = wf.searchAttributes?.MareTaskStatus ?? wf.searchAttributes?.MareStatus;
      out.push({
        taskId: wf.workflowId.replace(/^mare-task-/, ''),
        workflowId: wf.workflowId,
        execution: wf.status.name,
        status: Array.isArray(status) ? String(status[0]) : undefined,
        startTime: wf.startTime,
      });
      if (out.length >= (opts.limit ?? 20)) break;
    }
    return out;
  }
}

/**
 * Calls `fn` until it gets an answer, for as long as the server stays unreachable for at most
 * `toleranceMs` (default 10 minutes): tasks carry on through an outage, so waiting for them does too.
 */
async function ridingOutages<T>(fn: () => Promise<T>, toleranceMs = 600_000): Promise<T> {
  let outageSince: number | undefined;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!isUnavailable(err)) throw err;
      outageSince ??= Date.now();
      if (Date.now() - outageSince > toleranceMs) throw err;
      await new Promise((r) => setTimeout(r, 1_000));
    }
  }
}

/** The server could not be reached (gRPC UNAVAILABLE), as opposed to an answer that says no. */
function isUnavailable(err: unknown): boolean {
  return err instanceof ServiceError && (err.cause as { code?: number } | undefined)?.code === GRPC_UNAVAILABLE;
}
const GRPC_UNAVAILABLE = 14;

function checkId(taskId: string): string {
  const parsed = TaskId.safeParse(taskId);
  if (!parsed.success) throw new InvalidTaskRequestError(parsed.error.issues);
  return parsed.data;
}
