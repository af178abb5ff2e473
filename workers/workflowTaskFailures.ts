import type { MetricMeter } from '@temporalio/common';
import type { LogEntry, NativeConnection } from '@temporalio/worker';
import type { Logger } from 'pino';

/**
 * Non-determinism failures of workflow tasks, seen by the worker process: logged at error level
 * through MARE's logger and counted in `mare_workflow_nondeterminism` (by workflow type).
 *
 * The hook is the Temporal Runtime's logger (installRuntime, with Core's logs forwarded to it),
 * because it is the one place that hears both kinds: Core detects a replay mismatch (TMPRL1100)
 * itself and fails the task without ever telling workflow code or interceptors, logging "Failing
 * workflow task" with force_cause NonDeterministicError; a DeterminismViolationError thrown by the
 * SDK in workflow code (WeakRef, FinalizationRegistry) reaches it as the SDK's "Workflow failed" line.
 */

/** What one log entry says about a non-deterministic workflow task, if anything. */
export interface NondeterminismReport {
  runId: string;
  workflowId?: string;
  workflowType?: string;
  message: string;
  /** core: Core's replay check (TMPRL1100); workflow: a DeterminismViolationError in workflow code. */
  source: 'core' | 'workflow';
}

/** The metric's name (Prometheus on MARE_METRICS_BIND, next to the Runtime's own metrics). */
export const NONDETERMINISM_METRIC = 'mare_workflow_nondeterminism';

// The SDK's own DeterminismViolationError messages: the error's class name does not survive the
// workflow thread boundary (structured clone keeps only standard error names), its message does.
const SDK_DETERMINISM_MESSAGE = /cannot be used in Workflows because v8 GC is non-deterministic/;

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v ? v : undefined;
}

/** The first `message: "…"` of Core's Debug rendering of a failure, unescaped. */
function coreFailureMessage(failure: string): string {
  const m = /message: "((?:[^"\\]|\\.)*)"/.exec(failure);
  if (!m?.[1]) return failure;
  try {
    return JSON.parse(`"${m[1]}"`) as string;
  } catch {
    return m[1];
  }
}

/** Recognises a workflow task that failed with non-determinism in one Runtime log entry. */
export function nondeterminismIn(entry: Pick<LogEntry, 'level' | 'message' | 'meta'>): NondeterminismReport | undefined {
  const meta = (entry.meta ?? {}) as Record<string, unknown>;
  const runId = str(meta.runId) ?? str(meta.run_id);
  if (!runId) return undefined;
  const failure = str(meta.failure);
  if (entry.message === 'Failing workflow task' && failure && /force_cause: NonDeterministicError|\[TMPRL1100\]/.test(failure)) {
    return { runId, message: coreFailureMessage(failure), source: 'core' };
  }
  if (entry.message === 'Workflow failed' && typeof meta.error === 'object' && meta.error !== null) {
    const { name, message } = meta.error as { name?: unknown; message?: unknown };
    if (name === 'DeterminismViolationError' || (typeof message === 'string' && SDK_DETERMINISM_MESSAGE.test(message))) {
      return {
        runId,
        ...(str(meta.workflowId) ? { workflowId: str(meta.workflowId) } : {}),
        ...(str(meta.workflowType) ? { workflowType: str(meta.workflowType) } : {}),
        message: typeof message === 'string' ? message : 'DeterminismViolationError',
        source: 'workflow',
      };
    }
  }
  return undefined;
}

/** Finds a run's workflow id and type by its run id (Core's log line names only the run). */
export type RunLookup = (runId: string) => Promise<{ workflowId: string; workflowType: string } | undefined>;

/** A RunLookup through a worker's connection: the visibility store, by RunId. */
export function runLookupVia(connection: Pick<NativeConnection, 'workflowService'>, namespace = 'default'): RunLookup {
  return async (runId) => {
    const { executions } = await connection.workflowService.listWorkflowExecutions({ namespace, query: `RunId = '${runId.replace(/'/g, '')}'`, pageSize: 1 });
    const e = executions?.[0];
    return e?.execution?.workflowId && e.type?.name ? { workflowId: e.execution.workflowId, workflowType: e.type.name } : undefined;
  };
}

const SEEN_LIMIT = 10_000;

/**
 * Watches the Runtime's log entries for non-deterministic workflow tasks. Each run is reported once
 * per process (the SDK logs a failing workflow function on every attempt).
 */
export class NondeterminismMonitor {
  private readonly seen = new Set<string>();
  private lookup: RunLookup | undefined;
  private pending = new Set<Promise<void>>();

  constructor(
    private readonly logger: Logger,
    /** The meter the counter is created on (the Runtime's, exported with its metrics); none: not counted. */
    private readonly meter: () => MetricMeter | undefined,
  ) {}

  /** Where the workflow id and type of a run named only by its run id are looked up. */
  useLookup(lookup: RunLookup): void {
    this.lookup = lookup;
  }

  /** Looks at one Runtime log entry; never throws (it runs inside the Runtime's logger). */
  observe(entry: Pick<LogEntry, 'level' | 'message' | 'meta'>): void {
    let report: NondeterminismReport | undefined;
    try {
      report = nondeterminismIn(entry);
    } catch {
      return;
    }
    if (!report || this.seen.has(report.runId)) return;
    this.seen.add(report.runId);
    if (this.seen.size > SEEN_LIMIT) this.seen.delete(this.seen.values().next().value!);
    const done = this.report(report).catch(() => undefined);
    this.pending.add(done);
    void done.finally(() => this.pending.delete(done));
  }

  /** Resolves when every report under way has been logged and counted (tests, shutdown). */
  async settled(): Promise<void> {
    await Promise.all([...this.pending]);
  }

  private async report(r: NondeterminismReport): Promise<void> {
    let { workflowId, workflowType } = r;
    if ((!workflowId || !workflowType) && this.lookup) {
      const found = await this.lookup(r.runId).catch(() => undefined);
      workflowId ??= found?.workflowId;
      workflowType ??= found?.workflowType;
    }
    this.logger.error(
      { workflowId: workflowId ?? 'unknown', runId: r.runId, workflowType: workflowType ?? 'unknown', nondeterminism: r.source, failure: r.message },
      `workflow task failed with non-determinism: ${r.message}`,
    );
    try {
      this.meter()
        ?.createCounter(NONDETERMINISM_METRIC, '', 'Runs whose workflow task failed with non-determinism (TMPRL1100 or DeterminismViolationError), by workflow type')
        .add(1, { workflow_type: workflowType ?? 'unknown' });
    } catch {
      // Counting never breaks logging; a Runtime without metrics has a no-op meter anyway.
    }
  }
}
