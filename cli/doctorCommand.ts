import type { Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { decodeOptionalFailureToOptionalError } from '@temporalio/common/lib/internal-non-workflow';
import { temporal } from '@temporalio/proto';
import type { Command } from 'commander';
import { MareClient } from '../client/client';
import { positiveInt, type Action, type Print } from './commandKit';

/** The workflow types `mare doctor` looks at without --all. */
export const MARE_WORKFLOW_TYPES = ['orchestrateTask', 'executeSubtask', 'superviseRole'] as const;

/** A running workflow run whose last workflow task failed: it makes no progress until someone acts. */
export interface StuckRun {
  workflowId: string;
  workflowType: string;
  runId: string;
  /** The attempt of the workflow task now pending (Temporal retries a failed task, forever). */
  attempts: number;
  /** The WorkflowTaskFailedCause name (NON_DETERMINISTIC_ERROR, WORKFLOW_WORKER_UNHANDLED_FAILURE…), or TIMED_OUT. */
  cause: string;
  /** The failure's message, decoded through the client's data converter (decrypted with payload keys). */
  message: string;
  /** The failure's type, when it is an ApplicationFailure that has one. */
  failureType?: string;
  /** When the last failure was recorded. */
  failedAt?: string;
}

const { EventType, WorkflowTaskFailedCause } = temporal.api.enums.v1;
// A signal or update arriving while the task ran, or a reset: the next attempt starts afresh, nothing is stuck.
const TRANSIENT_CAUSES = new Set<number>([WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND, WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW]);
// Reading back past this many events without finding the last task's outcome is not worth it.
const MAX_EVENTS_READ = 2_000;

function causeName(cause: number | null | undefined): string {
  return (WorkflowTaskFailedCause[cause ?? 0] ?? 'WORKFLOW_TASK_FAILED_CAUSE_UNSPECIFIED').replace(/^WORKFLOW_TASK_FAILED_CAUSE_/, '');
}

function timeOf(ts: temporal.api.history.v1.IHistoryEvent['eventTime']): string | undefined {
  return ts?.seconds != null ? new Date(Number(ts.seconds) * 1000 + Math.floor((ts.nanos ?? 0) / 1e6)).toISOString() : undefined;
}

/**
 * The outcome of a run's latest workflow tasks, read newest-first: its last WorkflowTaskFailed
 * event when no task completed after it, and how many tasks timed out since the last completion.
 */
async function lastTaskFailure(client: Client, execution: { workflowId: string; runId: string }): Promise<{ failed?: temporal.api.history.v1.IHistoryEvent; timedOut: number }> {
  let nextPageToken: Uint8Array | undefined;
  let read = 0;
  let timedOut = 0;
  do {
    const page = await client.workflowService.getWorkflowExecutionHistoryReverse({ namespace: client.options.namespace, execution, maximumPageSize: 100, ...(nextPageToken ? { nextPageToken } : {}) });
    for (const event of page.history?.events ?? []) {
      if (event.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED) return { timedOut };
      if (event.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED) return { failed: event, timedOut };
      if (event.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT) timedOut++;
    }
    read += page.history?.events?.length ?? 0;
    nextPageToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
  } while (nextPageToken && read < MAX_EVENTS_READ);
  return { timedOut };
}

/** Decodes a failure's message (MARE's failure converter keeps it in the encoded attributes). */
async function failureText(client: Client, failure: temporal.api.failure.v1.IFailure | null | undefined): Promise<{ message: string; failureType?: string }> {
  if (!failure) return { message: '(no failure recorded)' };
  try {
    const err = await decodeOptionalFailureToOptionalError(client.options.loadedDataConverter, failure);
    const type = err instanceof ApplicationFailure && err.type ? err.type : undefined;
    return { message: err?.message || failure.message || '', ...(type ? { failureType: type } : {}) };
  } catch (err) {
    // An undecodable message (a payload key this process lacks) is still worth listing.
    return { message: `${failure.message ?? ''} (not decoded: ${err instanceof Error ? err.message : String(err)})` };
  }
}

/**
 * Running workflow runs whose last workflow task failed: the pending task is on its second attempt
 * or later, or the last task outcome in history is a failure (other than a signal racing the task).
 * `all` looks at every workflow type, not only MARE's.
 */
export async function findStuckRuns(client: Client, opts: { all?: boolean; limit?: number } = {}): Promise<StuckRun[]> {
  const types = opts.all ? '' : ` AND WorkflowType IN (${MARE_WORKFLOW_TYPES.map((t) => `'${t}'`).join(', ')})`;
  const stuck: StuckRun[] = [];
  let seen = 0;
  for await (const wf of client.workflow.list({ query: `ExecutionStatus = 'Running'${types}` })) {
    if (opts.limit && ++seen > opts.limit) break;
    const execution = { workflowId: wf.workflowId, runId: wf.runId };
    const described = await client.workflowService.describeWorkflowExecution({ namespace: client.options.namespace, execution });
    if (described.workflowExecutionInfo?.status !== temporal.api.enums.v1.WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING) continue;
    const attempts = described.pendingWorkflowTask?.attempt ?? 0;
    const { failed, timedOut } = await lastTaskFailure(client, execution);
    const attrs = failed?.workflowTaskFailedEventAttributes;
    if (!(attempts > 1 || (attrs && !TRANSIENT_CAUSES.has(attrs.cause ?? 0)))) continue;
    const text = attrs ? await failureText(client, attrs.failure) : { message: `the workflow task timed out ${timedOut} time(s): no worker completes it in time` };
    const failedAt = failed ? timeOf(failed.eventTime) : undefined;
    stuck.push({
      workflowId: wf.workflowId,
      workflowType: wf.type,
      runId: wf.runId,
      attempts: Math.max(attempts, 1),
      cause: attrs ? causeName(attrs.cause) : 'TIMED_OUT',
      ...text,
      ...(failedAt ? { failedAt } : {}),
    });
  }
  return stuck;
}

/** The human-readable report: one block per stuck run. */
export function describeStuckRuns(runs: StuckRun[], all: boolean): string[] {
  const scope = all ? 'running workflow runs' : `running MARE runs (${MARE_WORKFLOW_TYPES.join(', ')}; --all for every type)`;
  if (!runs.length) return [`ok: no ${scope} have a failing workflow task`];
  const lines = [`${runs.length} stuck: ${scope} whose last workflow task failed`, ''];
  const head = ['WORKFLOW ID', 'TYPE', 'ATTEMPTS', 'CAUSE'];
  const rows = runs.map((r) => [r.workflowId, r.workflowType, String(r.attempts), r.cause]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  lines.push(line(head));
  runs.forEach((r, i) => {
    lines.push(line(rows[i]!));
    lines.push(`  run ${r.runId}${r.failedAt ? `, failed at ${r.failedAt}` : ''}`);
    lines.push(`  ${r.failureType ? `${r.failureType}: ` : ''}${r.message.split('\n')[0]}`);
  });
  if (runs.some((r) => r.cause === 'NON_DETERMINISTIC_ERROR')) {
    lines.push('', 'NON_DETERMINISTIC_ERROR: the workflow code changed under a running run; deploy the old code again, or take a version decision for the change at the start of a run (workflows/versions.ts, docs/changing-workflow-code.md), or reset/terminate the run.');
  }
  return lines;
}

/** `mare doctor`: running runs whose last workflow task failed, with the reason. */
export function registerDoctorCommand(program: Command, action: Action, print: Print): void {
  program
    .command('doctor')
    .description(`list running workflow runs whose last workflow task failed (stuck: Temporal retries the task forever), with the cause and the failure message; exit code 0 when nothing is wrong, 1 when some run is stuck`)
    .option('--all', `every workflow type, not only MARE's (${MARE_WORKFLOW_TYPES.join(', ')})`)
    .option('--limit <n>', 'look at no more than n running runs', positiveInt, 1000)
    .option('--json', 'print the stuck runs as a JSON array')
    .addHelpText('after', '\nExit codes: 0 no stuck run, 1 some run is stuck (or Temporal is unreachable), 2 wrong usage.')
    .action(
      action(async (opts: { all?: boolean; limit: number; json?: boolean }) => {
        const client = await MareClient.connect();
        try {
          const runs = await findStuckRuns(client.client, { all: !!opts.all, limit: opts.limit });
          if (opts.json) print(JSON.stringify(runs, null, 2));
          else describeStuckRuns(runs, !!opts.all).forEach((l) => print(l));
          if (runs.length) process.exitCode = 1;
        } finally {
          await client.close();
        }
      }),
    );
}
