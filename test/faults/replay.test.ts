import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import type { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { type TaskProgress, type TaskResult } from '../../validation';
import { subtaskWorkflowId, taskWorkflowId } from '../../core/constants';
import { dataDir } from '../../infra/paths';
import { approvalsQuery, progressQuery, subtaskProgressQuery } from '../../workflows/definitions';
import { createTestStack, planReply, toolCall, type ScriptInput, type TestStack } from '../helpers';
import { BUNDLE_PATH } from '../paths';
import { assertBuilt, historyFor, killWorkerProcesses, sleep, startWorkerProcess, workflowTaskFailures, type WorkerProcess } from './helpers';

const TASKS = 30;
const CACHE = 3;
/** How often every open run of every task is queried, as a busy Web UI, `mare approvals` and `watchTask` would. */
const QUERY_INTERVAL_MS = 50;
/** Queries the worker must answer, in flight at once: each takes one of its CACHE workflow task slots, so fewer, or tasks stall. */
const MAX_WORKER_QUERIES = CACHE - 1;
/** No work recorded for this long (well past a restart's heartbeat and sticky timeouts): the tasks left are stuck. */
const STALL_MS = 90_000;
const SUBTASKS = ['notes', 'draft', 'publish'] as const;
const who = { actor: 'test' };
/** Where the histories that fail to replay are written, to be kept as regression cases in test/histories/. */
const FAILURES_DIR = process.env.MARE_REPLAY_FAILURES_DIR ?? path.join(dataDir(), 'replay-failures');

const ids = Array.from({ length: TASKS }, (_, i) => `replay-${String(i).padStart(2, '0')}`);
/** Every fifth task has its publish denied (twice: one approval per attempt), so it rolls back. */
const denied = new Set(ids.filter((_, i) => i % 5 === 4));
const expectedEnd = (id: string): TaskResult['status'] => (denied.has(id) ? 'COMPENSATED' : 'COMPLETED');

const script: ScriptInput = {
  // latency and jitter keep many subtasks starting (loadRole, then the version decisions) at different moments
  delayMs: 300,
  delayJitterMs: 200,
  rules: [
    planReply([
      { id: 'notes', title: 'Notes', instructions: 'write notes.md', role: 'writer', acceptanceCriteria: [{ kind: 'file_contains', path: 'notes.md', text: 'notes' }] },
      { id: 'draft', title: 'Draft', instructions: 'write draft.md, FINAL when done', role: 'writer', acceptanceCriteria: [{ kind: 'file_contains', path: 'draft.md', text: 'FINAL' }] },
      {
        id: 'publish',
        title: 'Publish',
        instructions: 'write publish.md',
        role: 'writer',
        dependsOn: ['draft'],
        acceptanceCriteria: [{ kind: 'file_contains', path: 'publish.md', text: 'published' }],
      },
    ]),
    { match: { purpose: 'act', subtask: 'notes', turn: 0 }, reply: toolCall('workspace.write', { path: 'notes.md', content: '# Notes\nnotes\n' }) },
    // the draft's gate fails the first attempt and passes the second, which gets the verifier's feedback
    { match: { purpose: 'act', subtask: 'draft', attempt: 1, turn: 0 }, reply: toolCall('workspace.write', { path: 'draft.md', content: '# Draft\nfirst try\n' }) },
    { match: { purpose: 'act', subtask: 'draft', attempt: 2, turn: 0 }, reply: toolCall('workspace.write', { path: 'draft.md', content: '# Draft\nFINAL\n' }) },
    // escalated by the policy below: waits for a person on every attempt
    { match: { purpose: 'act', subtask: 'publish', turn: 0 }, reply: toolCall('workspace.write', { path: 'publish.md', content: '# Publish\npublished\n' }) },
    { match: { purpose: 'act' }, reply: { text: 'done' } },
  ],
};

let stack: TestStack;
const busyLoops: ChildProcess[] = [];
beforeAll(async () => {
  assertBuilt();
  stack = await createTestStack();
  await stack.policies.repository.publish(
    {
      schemaVersion: 1,
      name: 'publishing',
      version: '1.0.0',
      rules: [
        {
          id: 'publish-needs-a-person',
          when: { targets: ['workspace.write'], args: { path: { pattern: '^publish' } } },
          decision: 'escalate',
          reason: 'publishing needs a person',
          approval: { timeoutSeconds: 3_600, onTimeout: 'deny' },
        },
      ],
    },
    who,
  );
});
afterAll(async () => {
  stopBusyLoops();
  await killWorkerProcesses();
  await stack?.teardown();
});

/** Two shell loops that keep both cores busy, so workflow tasks and local activities run slowly and overlap with queries. */
function startBusyLoops(): void {
  for (let i = 0; i < 2; i++) busyLoops.push(spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
}
function stopBusyLoops(): void {
  for (const loop of busyLoops.splice(0)) loop.kill('SIGKILL');
}

/** Waits for the promises to settle, at most `ms` (calls held by a dead worker would wait for the server's timeout). */
async function settledWithin(promises: Iterable<Promise<unknown>>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.allSettled(promises), new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

/** Query outcomes, by error name; errors are expected while no worker runs and before a child starts. */
interface QueryStats {
  ok: number;
  errors: Record<string, number>;
}

/** What the queries have seen of one run. */
interface RunView {
  /** It answered a query (or said something other than "not found"): it exists. */
  exists: boolean;
  /** It ended (its last state): queries on it would only replay a closed run. */
  closed: boolean;
  attempts: number;
  pendingApprovals: string[];
  /** Queries it answered. */
  answered: number;
}

const CLOSED_STATES = new Set(['completed', 'failed', 'cancelled', 'skipped']);

/**
 * Queries every open run of every unfinished task every QUERY_INTERVAL_MS: the task's `progress`,
 * each subtask's `subtaskProgress` and `approvals`. A subtask is queried from before it exists
 * (the server answers "not found" without the worker), so the first query that reaches it lands in
 * its first workflow task, while loadRole runs. Queries the worker must answer are capped at
 * MAX_WORKER_QUERIES in flight (each one replays a run that is not cached), so tasks still progress;
 * at most one query of each kind per run is in flight.
 */
function startQueryLoop(isEnded: (id: string) => boolean): { stats: QueryStats; views: Map<string, RunView>; stop(): Promise<void> } {
  const stats: QueryStats = { ok: 0, errors: {} };
  const views = new Map<string, RunView>();
  const view = (wid: string): RunView => {
    let v = views.get(wid);
    if (!v) views.set(wid, (v = { exists: false, closed: false, attempts: 0, pendingApprovals: [], answered: 0 }));
    return v;
  };
  const inFlight = new Map<string, Promise<void>>();
  let atWorker = 0;
  let stopped = false;

  const fire = <T>(workflowId: string, name: string, query: (h: WorkflowHandle) => Promise<T>, onAnswer: (answer: T) => void): void => {
    const key = `${workflowId}:${name}`;
    const v = view(workflowId);
    if (inFlight.has(key) || v.closed || (v.exists && atWorker >= MAX_WORKER_QUERIES)) return;
    const counted = v.exists;
    if (counted) atWorker++;
    const p = query(stack.env.client.workflow.getHandle(workflowId))
      .then((answer) => {
        stats.ok++;
        v.answered++;
        v.exists = true;
        onAnswer(answer);
      })
      .catch((err: unknown) => {
        const kind = err instanceof Error ? err.name : 'unknown';
        stats.errors[kind] = (stats.errors[kind] ?? 0) + 1;
        if (kind !== 'WorkflowNotFoundError') v.exists = true;
      })
      .finally(() => {
        if (counted) atWorker--;
        inFlight.delete(key);
      });
    inFlight.set(key, p);
  };

  const loop = (async () => {
    // Each round offers the queries in a rotated order: the worker's few query slots go round every
    // run and every kind of query, not to the first ones of the list only.
    for (let round = 0; !stopped; round++) {
      const queries: (() => void)[] = [];
      for (const id of ids) {
        if (isEnded(id)) continue;
        queries.push(() =>
          fire(taskWorkflowId(id), 'progress', (h) => h.query(progressQuery), (p: TaskProgress) => {
            for (const s of p.subtasks) if (CLOSED_STATES.has(s.state)) view(s.workflowId).closed = true;
          }),
        );
        const draft = view(subtaskWorkflowId(id, 'draft'));
        for (const sub of SUBTASKS) {
          // publish starts after the draft: it is looked for from the draft's second attempt on
          if (sub === 'publish' && draft.attempts < 2 && !draft.closed) continue;
          const wid = subtaskWorkflowId(id, sub);
          queries.push(() =>
            fire(wid, 'subtaskProgress', (h) => h.query(subtaskProgressQuery), (s) => {
              Object.assign(view(wid), { attempts: s.attempts, closed: CLOSED_STATES.has(s.state) });
            }),
          );
          queries.push(() =>
            fire(wid, 'approvals', (h) => h.query(approvalsQuery), (list) => {
              view(wid).pendingApprovals = list.filter((a) => a.status === 'pending').map((a) => a.approvalId);
            }),
          );
        }
      }
      const first = queries.length ? round % queries.length : 0;
      for (const query of [...queries.slice(first), ...queries.slice(0, first)]) query();
      await sleep(QUERY_INTERVAL_MS);
    }
  })();

  return {
    stats,
    views,
    async stop() {
      stopped = true;
      await loop;
      // queries held by a dead worker would wait for the server's timeout; they carry no result the test needs
      await settledWithin(inFlight.values(), 30_000);
    },
  };
}

/** Decides each pending approval the query loop sees, through MareClient: approve, or deny for the tasks in `denied`. */
function startApprover(views: Map<string, RunView>, isEnded: (id: string) => boolean): { outcomes: Record<string, number>; stop(): Promise<void> } {
  const inFlight = new Map<string, Promise<void>>();
  /** Decisions made, and failed attempts by error name. */
  const outcomes: Record<string, number> = {};
  const count = (what: string): void => void (outcomes[what] = (outcomes[what] ?? 0) + 1);
  const decided = new Set<string>();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      for (const id of ids) {
        if (isEnded(id)) continue;
        for (const approvalId of views.get(subtaskWorkflowId(id, 'publish'))?.pendingApprovals ?? []) {
          // approval ids are unique within a task only
          const key = `${id}/${approvalId}`;
          if (inFlight.has(key) || decided.has(key)) continue;
          const decision = denied.has(id) ? 'deny' : 'approve';
          // a stable update id: a decision retried after a restart has one effect
          const p = stack.client
            .decideApproval(id, { approvalId, decision, reason: `replay test: ${decision}`, by: 'replay-test' }, { updateId: `${approvalId}:${decision}` })
            .then(
              () => {
                count('decided');
                decided.add(key); // the query loop may still show it pending for a while
              },
              (err: unknown) => count(err instanceof Error ? err.name : 'unknown'), // a query or update during a restart: the next round tries again
            )
            .finally(() => inFlight.delete(key));
          inFlight.set(key, p);
        }
      }
      await sleep(100);
    }
  })();
  return {
    outcomes,
    async stop() {
      stopped = true;
      await loop;
      await settledWithin(inFlight.values(), 30_000);
    },
  };
}

async function approvalsRequested(): Promise<number> {
  return (await stack.pool.query(`SELECT count(*)::int AS n FROM approvals`)).rows[0].n;
}

/** Work recorded so far (model calls, tool calls, decisions, subtasks, tasks): it grows while any task progresses. */
async function workDone(): Promise<number> {
  const { rows } = await stack.pool.query(
    `SELECT (SELECT count(*) FROM model_calls) + (SELECT count(*) FROM tool_calls) + (SELECT count(*) FROM approvals WHERE status <> 'pending') +
            (SELECT count(*) FROM subtasks) + (SELECT count(*) FROM tasks WHERE status <> 'RUNNING') AS n`,
  );
  return Number(rows[0].n);
}

/** Waits until `check` holds (true), or until no work is recorded for STALL_MS (false): stuck runs fail the test below, with their reasons. */
async function untilOrStalled(check: () => boolean | Promise<boolean>): Promise<boolean> {
  let seen = -1;
  let since = Date.now();
  for (;;) {
    if (await check()) return true;
    const n = await workDone();
    if (n !== seen) [seen, since] = [n, Date.now()];
    else if (Date.now() - since > STALL_MS) return false;
    await sleep(500);
  }
}

/** Why a task's runs stopped: their latest failed workflow tasks (e.g. [TMPRL1100] on a patch marker), other than routine unhandled commands. */
async function liveFailures(id: string): Promise<string[]> {
  const failures: string[] = [];
  for (const wid of [taskWorkflowId(id), ...SUBTASKS.map((s) => subtaskWorkflowId(id, s))]) {
    const events = await historyFor(stack.env.client, wid).catch(() => []);
    const last = workflowTaskFailures(events).filter((f) => !f.cause.includes('UNHANDLED_COMMAND')).at(-1);
    if (last) failures.push(`${wid}: ${last.cause}: ${last.message}`);
  }
  return failures;
}

/** Where a task that did not end waits: each open run's pending workflow task and activities, and its approvals. */
async function whereItWaits(id: string): Promise<string> {
  const parts: string[] = [];
  for (const wid of [taskWorkflowId(id), ...SUBTASKS.map((s) => subtaskWorkflowId(id, s))]) {
    const d = await stack.env.client.workflow.getHandle(wid).describe().catch(() => undefined);
    if (!d || d.status.name !== 'RUNNING') continue;
    const raw = d.raw;
    const wft = raw.pendingWorkflowTask ? `wft ${raw.pendingWorkflowTask.state ?? ''}#${raw.pendingWorkflowTask.attempt ?? ''}` : 'no wft';
    const acts = (raw.pendingActivities ?? []).map((a) => `${a.activityType?.name ?? ''}:${a.state ?? ''}#${a.attempt ?? ''}`).join(',');
    parts.push(`${wid.replace(taskWorkflowId(id), '') || 'task'} [${wft}${acts ? `; ${acts}` : ''}]`);
  }
  const { rows } = await stack.pool.query<{ approval_id: string; status: string }>(`SELECT approval_id, status FROM approvals WHERE task_id = $1 ORDER BY approval_id`, [id]);
  return `${parts.join(' ')} approvals ${rows.map((r) => `${r.approval_id}=${r.status}`).join(',') || 'none'}`;
}

/** One history fetched from the server, with what is needed to name and save it. */
interface StoredHistory {
  workflowId: string;
  runId: string;
  type: string;
  history: temporal.api.history.v1.IHistory;
}

/** Every run on the server (tasks, subtasks, supervisors), with its full history. */
async function allHistories(): Promise<StoredHistory[]> {
  const out: StoredHistory[] = [];
  for await (const wf of stack.env.client.workflow.list()) {
    const history = await stack.env.client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory();
    out.push({ workflowId: wf.workflowId, runId: wf.runId, type: wf.type, history });
  }
  return out;
}

test(
  `${TASKS} tasks with approvals, tools and gates, every run queried every ${QUERY_INTERVAL_MS} ms under CPU load, cache ${CACHE}, the worker SIGKILLed and later SIGTERMed → every task ends as decided, and every history on the server replays`,
  async () => {
    const model = `scripted:${stack.writeScript(script)}`;
    const common = { address: stack.env.address, databaseUrl: stack.databaseUrl, roleKeys: stack.roleKeysEnv, workspaceRoot: stack.workspaceRoot, model, env: { MARE_MAX_CACHED_WORKFLOWS: String(CACHE) } };
    const results = new Map<string, TaskResult>();
    const ended = (id: string): boolean => results.has(id);

    const workers: WorkerProcess[] = [];
    /** The restarts that happened: both, unless the run stalled before them. */
    const restarts: string[] = [];
    let worker: WorkerProcess = await startWorkerProcess({ ...common, identity: 'first' });
    workers.push(worker);
    startBusyLoops();
    const queries = startQueryLoop(ended);
    const approver = startApprover(queries.views, ended);
    try {
      await Promise.all(ids.map((taskId) => stack.client.submitTask({ taskId, goal: 'write notes, draft and publish' })));
      for (const id of ids) {
        // results of stuck tasks never come; teardown closes the connection under them
        void stack.client.result(id).then(
          (r) => void results.set(id, r),
          () => undefined,
        );
      }

      // SIGKILL once a few tasks wait for a person, SIGTERM (a deploy: the next worker starts at once) once more have.
      if (await untilOrStalled(async () => (await approvalsRequested()) >= TASKS / 4)) {
        expect(results.size).toBeLessThan(TASKS);
        worker.child.kill('SIGKILL');
        await worker.exited;
        worker = await startWorkerProcess({ ...common, identity: 'second' });
        workers.push(worker);
        restarts.push('SIGKILL');
      }
      if (restarts.length === 1 && (await untilOrStalled(async () => (await approvalsRequested()) >= (TASKS * 2) / 3))) {
        expect(results.size).toBeLessThan(TASKS);
        const stopping = worker;
        stopping.child.kill('SIGTERM');
        worker = await startWorkerProcess({ ...common, identity: 'third' });
        workers.push(worker);
        await stopping.exited;
        restarts.push('SIGTERM');
      }
      // every task ends, or the tasks left are stuck
      await untilOrStalled(() => results.size === TASKS);
    } finally {
      await approver.stop();
      await queries.stop();
      stopBusyLoops();
      // the workers' logs go with the failing histories, for the diagnosis
      mkdirSync(FAILURES_DIR, { recursive: true });
      for (const w of workers) writeFileSync(path.join(FAILURES_DIR, `worker-${w.identity}.log`), w.output());
    }

    const unexpectedEnds: string[] = [];
    for (const id of ids) {
      const r = results.get(id);
      if (r?.status === expectedEnd(id)) continue;
      const why = r ? `${r.status} (${r.error ?? ''})` : `no end — ${(await liveFailures(id)).join(' | ') || 'no failed workflow task'}; ${await whereItWaits(id)}`;
      unexpectedEnds.push(`${id}: expected ${expectedEnd(id)}, got ${why}`);
      // the histories of a task that did not end as decided go with the failing ones, for the diagnosis
      mkdirSync(FAILURES_DIR, { recursive: true });
      for (const wid of [taskWorkflowId(id), ...SUBTASKS.map((s) => subtaskWorkflowId(id, s))]) {
        const history = await stack.env.client.workflow.getHandle(wid).fetchHistory().catch(() => undefined);
        if (history) writeFileSync(path.join(FAILURES_DIR, `unended-${wid}.json`), historyToJSON(history));
      }
    }

    // Replay every history on the server against this code, as a worker does after a restart or an eviction.
    await killWorkerProcesses();
    const histories = await allHistories();
    expect(histories.length).toBeGreaterThan(TASKS); // every task, the subtasks that started, the writer's supervisor
    const replayFailures: string[] = [];
    const workflowBundle = { code: readFileSync(BUNDLE_PATH, 'utf8') };
    const replays = Worker.runReplayHistories({ workflowBundle }, histories.map(({ workflowId, history }) => ({ workflowId, history })));
    for await (const r of replays) {
      if (!r.error) continue;
      replayFailures.push(`${r.workflowId}: ${r.error.name}: ${r.error.message}`);
      const failed = histories.find((h) => h.workflowId === r.workflowId && h.runId === r.runId) ?? histories.find((h) => h.workflowId === r.workflowId);
      if (failed) {
        mkdirSync(FAILURES_DIR, { recursive: true });
        const runs = histories.filter((h) => h.workflowId === failed.workflowId).length;
        writeFileSync(path.join(FAILURES_DIR, `${failed.workflowId}${runs > 1 ? `.${failed.runId}` : ''}.json`), historyToJSON(failed.history));
      }
    }

    process.stderr.write(
      `[replay test] ${results.size}/${TASKS} tasks ended, restarts: ${restarts.join(', ') || 'none (stalled first)'}; queries answered ${queries.stats.ok}, failed ${JSON.stringify(queries.stats.errors)}; approvals ${JSON.stringify(approver.outcomes)}; ` +
        `${histories.length} histories replayed, ${replayFailures.length} failed${replayFailures.length ? ` (saved in ${FAILURES_DIR})` : ''}\n`,
    );
    expect({ unexpectedEnds, replayFailures, restarts }).toEqual({ unexpectedEnds: [], replayFailures: [], restarts: ['SIGKILL', 'SIGTERM'] });
    // `MARE_RECORD_HISTORIES=1`: a subtask that waited for a person twice while queried, restarted and evicted joins test/histories.
    if (process.env.MARE_RECORD_HISTORIES) {
      const kept = histories.find((h) => h.workflowId === subtaskWorkflowId('replay-04', 'publish'));
      writeFileSync(path.join(__dirname, '..', 'histories', 'executeSubtask.query-load.json'), historyToJSON(kept!.history));
    }
    // the load really happened: every task and subtask run answered queries while it ran, and every
    // run was asked far more often than that (the server answers "not found" before a run exists)
    const taskRuns = ids.flatMap((id) => [taskWorkflowId(id), ...SUBTASKS.map((s) => subtaskWorkflowId(id, s))]);
    expect(taskRuns.filter((wid) => !queries.views.get(wid)?.answered)).toEqual([]);
    expect(queries.stats.ok + (queries.stats.errors.WorkflowNotFoundError ?? 0)).toBeGreaterThan(taskRuns.length * 20);
  },
  15 * 60_000,
);
