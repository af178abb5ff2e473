import { randomUUID } from 'node:crypto';
import {
  Client,
  Connection,
  QueryNotRegisteredError,
  ServiceError,
  WorkflowExecutionAlreadyStartedError,
  WorkflowFailedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type WorkflowHandle,
} from '@temporalio/client';
import { ApplicationFailure, CancelledFailure, type DataConverter, type QueryDefinition } from '@temporalio/common';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { z } from 'zod';
import {
  TaskId,
  type TaskRequest,
  TaskRequestFields,
  checkText,
  type ApprovalDecision,
  type ApprovalView,
  type SubtaskProgress,
  type TaskProgress,
  type TaskResult,
} from '../validation';
import { oneLine, SEARCH_ATTRIBUTES, TASK_QUEUE, taskWorkflowId } from '../core/constants';
import { approvalsQuery, decideApprovalUpdate, progressQuery, subtaskProgressQuery, taskResultQuery } from '../workflows/definitions';
import type { orchestrateTask } from '../workflows';
import { signApproval } from '../infra/crypto/approvalSigning';
import { EncryptionCodec, mareDataConverter, payloadKeyringFromEnv } from '../infra/crypto/payloadCodec';
import type { Keyring } from '../infra/crypto/keyring';
import { tracingFromEnv } from '../infra/tracing';
import { dataDir } from '../infra/paths';

/** What `submitTask` accepts: a TaskRequest whose taskId (the idempotency key) is optional. */
export const SubmitTaskInput = TaskRequestFields.extend({ taskId: TaskId.optional() }).superRefine(checkText);
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

/**
 * A query of a run failed for another reason than "no such run" or "no such query handler": the
 * run could not answer (it cannot replay, its worker is gone, the query timed out). Never read as
 * "nothing there".
 */
export class WorkflowQueryFailedError extends Error {
  override readonly name = 'WorkflowQueryFailedError';
  constructor(
    readonly workflowId: string,
    readonly query: string,
    cause: unknown,
  ) {
    super(`the ${query} query of ${workflowId} failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/** The failure types a task's run ends with when the task ended COMPENSATED or FAILED; the TaskResult is in their details. */
export const TASK_OUTCOME_FAILURES = ['TaskCompensated', 'TaskFailed'] as const;

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
        // The run's first search attributes, so it need not upsert them itself (orchestrateTask checks).
        typedSearchAttributes: [
          { key: SEARCH_ATTRIBUTES.taskStatus, value: 'RUNNING' },
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
    else if (execution === 'FAILED' || execution === 'CANCELLED') {
      // A run that ended without a TaskResult (an invalid request) has none to show.
      view.result = await handle.result().then(
        () => undefined,
        (err: unknown) => this.endedResult(handle, err),
      );
    }
    return view;
  }

  /** The parent's progress, with live detail from each running subtask's own query. */
  async progress(taskId: string): Promise<TaskProgress> {
    const workflowId = taskWorkflowId(taskId);
    const progress = await this.query(workflowId, progressQuery);
    if (!progress) throw new TaskNotFoundError(taskId);
    progress.subtasks = await Promise.all(
      progress.subtasks.map(async (s): Promise<SubtaskProgress> => {
        if (s.state !== 'running') return s;
        // A child that has not started yet, or has just ended, has no live detail: its line stays.
        const live = await this.query(s.workflowId, subtaskProgressQuery);
        return live ? { ...live, workflowId: s.workflowId } : s;
      }),
    );
    return progress;
  }

  /**
   * Queries one run: undefined when the run or the handler does not exist; any other failure is a
   * WorkflowQueryFailedError (a run that cannot replay answers no query, and must not look empty).
   */
  private async query<T>(workflowId: string, def: QueryDefinition<T>): Promise<T | undefined> {
    try {
      return await this.client.workflow.getHandle(workflowId).query(def);
    } catch (err) {
      if (err instanceof WorkflowNotFoundError || err instanceof QueryNotRegisteredError) return undefined;
      throw new WorkflowQueryFailedError(workflowId, def.name, err);
    }
  }

  /**
   * The TaskResult of a run that ended failed or cancelled (`err` is what `result()` threw): from the
   * TaskCompensated/TaskFailed failure's details, or, for a cancelled task, from its `result` query
   * (a WorkflowQueryFailedError when no worker answers). Undefined for a run that ended without
   * one (an invalid request, a terminated run).
   */
  private async endedResult(handle: WorkflowHandle, err: unknown): Promise<TaskResult | undefined> {
    if (!(err instanceof WorkflowFailedError)) throw err;
    const cause = err.cause;
    if (cause instanceof ApplicationFailure && (TASK_OUTCOME_FAILURES as readonly unknown[]).includes(cause.type) && cause.details?.[0]) {
      return cause.details[0] as TaskResult;
    }
    if (cause instanceof CancelledFailure) return this.query(handle.workflowId, taskResultQuery);
    return undefined;
  }

  /** Yields the task's progress whenever it changes, until the task ends; then yields nothing more. */
  async *watchTask(taskId: string, opts: { intervalMs?: number; outageToleranceMs?: number } = {}): AsyncGenerator<TaskProgress> {
    const handle = this.client.workflow.getHandle(taskWorkflowId(checkId(taskId)));
    let last = '';
    let failingSince: number | undefined;
    for (;;) {
      const running = (await ridingOutages(() => handle.describe(), opts.outageToleranceMs)).status.name === 'RUNNING';
      // A query that fails while a worker restarts is skipped; one that keeps failing is an error.
      const progress = await this.progress(taskId).then(
        (p) => ((failingSince = undefined), p),
        (err: unknown) => {
          if (!(err instanceof WorkflowQueryFailedError) || !running) return undefined;
          failingSince ??= Date.now();
          if (Date.now() - failingSince > (opts.outageToleranceMs ?? 600_000)) throw err;
          return undefined;
        },
      );
      const text = JSON.stringify(progress);
      if (progress && text !== last) {
        last = text;
        yield progress;
      }
      if (!running) return;
      await new Promise((r) => setTimeout(r, opts.intervalMs ?? 500));
    }
  }

  /**
   * Waits for the task to end and returns its TaskResult, whatever its status (a COMPENSATED, FAILED
   * or cancelled task ends its run failed or cancelled, with the result attached), riding out
   * Temporal outages (see ridingOutages). A run that ended without a result (an invalid request, a
   * terminated run) throws Temporal's WorkflowFailedError.
   */
  async result(taskId: string, opts: { outageToleranceMs?: number } = {}): Promise<TaskResult> {
    const handle = this.client.workflow.getHandle<typeof orchestrateTask>(taskWorkflowId(checkId(taskId)));
    return ridingOutages(
      () =>
        handle.result().catch(async (err: unknown) => {
          const result = await this.endedResult(handle, err);
          if (!result) throw err;
          return result;
        }),
      opts.outageToleranceMs,
    );
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
    const progress = await this.query(taskWorkflowId(checkId(taskId)), progressQuery);
    if (!progress) throw new TaskNotFoundError(taskId);
    const started = progress.subtasks.filter((s) => s.state !== 'pending' && s.state !== 'skipped');
    // A subtask not started yet has none; a failing query is an error, never "no approvals".
    const lists = await Promise.all(started.map(async (s) => (await this.query(s.workflowId, approvalsQuery)) ?? []));
    return lists.flat();
  }

  /** Approvals waiting for a person in every running task (visibility: `MarePendingApproval`). */
  async pendingApprovals(): Promise<ApprovalView[]> {
    const out: ApprovalView[] = [];
    const query = `${SEARCH_ATTRIBUTES.pendingApproval.name} IS NOT NULL AND ExecutionStatus = 'Running'`;
    for await (const wf of this.client.workflow.list({ query })) {
      // Task runs carry their subtasks' approvals in MarePendingApproval too; the approvals live on the subtasks.
      if (wf.type !== 'executeSubtask') continue;
      const views = (await this.query(wf.workflowId, approvalsQuery)) ?? [];
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
      // With a payload keyring, the decision is signed with the approvers' key the workflow verifies.
      const keyring = this.payloadKeyring();
      const { signature: _unsigned, ...fields } = decision;
      return await this.client.workflow.getHandle(view.workflowId).executeUpdate(decideApprovalUpdate, {
        args: [keyring ? signApproval(keyring, fields) : fields],
        updateId: opts.updateId ?? `${decision.approvalId}:${decision.decision}:${randomUUID()}`,
      });
    } catch (err) {
      if (err instanceof WorkflowUpdateFailedError) throw new ApprovalRejectedError(`approval ${decision.approvalId}: ${err.cause?.message ?? err.message}`);
      throw err;
    }
  }

  /** The payload keyring of this client's data converter, if it encrypts. */
  private payloadKeyring(): Keyring | undefined {
    const codec = this.client.options.loadedDataConverter.payloadCodecs.find((c): c is EncryptionCodec => c instanceof EncryptionCodec);
    return codec?.keyring;
  }

  /** Recent tasks, newest first, from Temporal's visibility store. */
  async listTasks(opts: { limit?: number } = {}): Promise<TaskSummary[]> {
    const out: TaskSummary[] = [];
    for await (const wf of this.client.workflow.list({ query: `WorkflowType = 'orchestrateTask'` })) {
      const status = wf.searchAttributes?.MareTaskStatus;
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
