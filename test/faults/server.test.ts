import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { MareClient } from '../../client/client';
import { type TaskResult } from '../../validation';
import { subtaskWorkflowId, TASK_QUEUE, taskWorkflowId } from '../../core/constants';
import { findFreePort } from '../../dev/stack';
import { resolveTemporalCli, startTemporalDevServer, type TemporalDevServer } from '../../dev/temporal';
import { keyringEnv } from '../../infra/crypto/roleCrypto';
import { createTestDatabase, planReply, toolCall, type ScriptInput } from '../helpers';
import { activityRuns, assertBuilt, historyFor, killWorkerProcesses, sleep, startWorkerProcess, taskWorkflowIds, waitFor, workflowTaskFailures, type ActivityRun } from './helpers';

const OUTAGE_MS = 25_000;
const TASKS = 10;
let dir: string;
let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: TemporalDevServer | undefined;
let connection: Connection | undefined;

beforeAll(async () => {
  assertBuilt();
  dir = mkdtempSync(path.join(tmpdir(), 'mare-fault-server-'));
  db = await createTestDatabase();
});
afterAll(async () => {
  await killWorkerProcesses();
  await connection?.close();
  await server?.stop();
  await db?.drop();
  rmSync(dir, { recursive: true, force: true });
});

const script: ScriptInput = {
  delayMs: 1_000,
  delayJitterMs: 300,
  rules: [
    planReply([
      {
        id: 'doc',
        title: 'Doc',
        instructions: 'write doc/a.md and doc/b.md',
        role: 'writer',
        acceptanceCriteria: [
          { kind: 'file_contains', path: 'doc/a.md', text: 'alpha' },
          { kind: 'file_contains', path: 'doc/b.md', text: 'beta' },
        ],
      },
    ]),
    { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'doc/a.md', content: 'alpha' }) },
    { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.write', { path: 'doc/b.md', content: 'beta' }) },
    { match: { purpose: 'act' }, reply: { text: 'wrote doc/a.md and doc/b.md' } },
  ],
};

test(`the Temporal dev server (SQLite file) stopped for 25 s and restarted (same port and file) mid-run → the same worker process and the client's pending result() calls carry on, ${TASKS} of ${TASKS} tasks COMPLETED, each write once`, async () => {
  const cliPath = await resolveTemporalCli();
  const opts = {
    cliPath,
    dbFile: path.join(dir, 'temporal.sqlite'),
    logFile: path.join(dir, 'temporal.log'),
    port: await findFreePort(),
    uiPort: await findFreePort(),
  };
  server = await startTemporalDevServer(opts);
  const workspaceRoot = path.join(dir, 'workspaces');
  const scriptFile = path.join(dir, 'script.json');
  writeFileSync(scriptFile, JSON.stringify(script));
  const worker = await startWorkerProcess({ identity: 'steady', address: server.address, databaseUrl: db.databaseUrl, roleKeys: keyringEnv(db.keyring), workspaceRoot, model: `scripted:${scriptFile}` });
  connection = await Connection.connect({ address: server.address });
  const mare = new MareClient(new Client({ connection, namespace: 'default' }), TASK_QUEUE);

  const ids = Array.from({ length: TASKS }, (_, i) => `restart-${i}`);
  await Promise.all(ids.map((taskId) => mare.submitTask({ taskId, goal: 'write two files' })));
  // the client is already waiting for the results when the server goes away
  const results = Promise.allSettled(ids.map((id) => mare.result(id)));
  await waitFor('the first writes', async () => (await db.pool.query(`SELECT 1 FROM tool_calls LIMIT 3`)).rows.length >= 3, 60_000, 100);

  await server.stop();
  const stoppedAt = Date.now();
  // Longer than the gRPC client's own retries (about 20 s), which MareClient.result() rides out.
  await sleep(OUTAGE_MS);
  expect(worker.isRunning()).toBe(true);
  server = await startTemporalDevServer(opts);

  const settled = await results;
  const failures = settled.flatMap((s, i) => (s.status === 'rejected' ? [`${ids[i]}: ${String(s.reason)}`] : []));
  expect(failures).toEqual([]);
  const done = settled.map((s) => (s as PromiseFulfilledResult<TaskResult>).value);
  expect(done.map((r) => r.status)).toEqual(ids.map(() => 'COMPLETED'));
  expect(worker.isRunning()).toBe(true);

  // some tasks were mid-flight across the outage and the worker picked them up again afterwards
  const { rows: before } = await db.pool.query(`SELECT count(*)::int AS n FROM tasks WHERE status = 'COMPLETED' AND updated_at < to_timestamp($1 / 1000.0)`, [stoppedAt]);
  expect(before[0].n).toBeLessThan(TASKS);
  const runs: ActivityRun[] = [];
  const wftFailures: string[] = [];
  for (const r of done) {
    for (const wid of taskWorkflowIds(r)) {
      const events = await historyFor(mare.client, wid);
      runs.push(...activityRuns(wid, events));
      wftFailures.push(...workflowTaskFailures(events).map((f) => `${wid}: ${f.cause}: ${f.message}`));
    }
  }
  expect(runs.every((r) => r.outcome === 'completed' && r.identity === 'steady')).toBe(true);
  // Tasks still open when the server went away closed after it came back (nothing can close while it
  // is down; the moment the restart call returns would be too late a mark, since work resumes while
  // it still waits for readiness). Their remaining steps may all have been workflow tasks and local activities, so
  // this looks at the workflows, not at activities.
  const closeTimes = await Promise.all(done.map(async (r) => (await mare.client.workflow.getHandle(taskWorkflowId(r.taskId)).describe()).closeTime?.getTime() ?? 0));
  expect(closeTimes.filter((t) => t > stoppedAt + OUTAGE_MS).length).toBe(TASKS - before[0].n);
  expect(wftFailures).toEqual([]);

  // each write once, each file right, nothing compensated
  const { rows: calls } = await db.pool.query(`SELECT call_key, status FROM tool_calls ORDER BY call_key`);
  const key = (id: string, i: number): string => `${subtaskWorkflowId(id, 'doc')}/a1/i${i}/c0`;
  expect(calls).toEqual(ids.flatMap((id) => [key(id, 1), key(id, 2)]).sort().map((call_key) => ({ call_key, status: 'ok' })));
  const { rows: snaps } = await db.pool.query(`SELECT count(*)::int AS n, bool_or(existed) AS existed FROM workspace_snapshots`);
  expect(snaps[0]).toEqual({ n: TASKS * 2, existed: false });
  const { rows: compensations } = await db.pool.query(`SELECT count(*)::int AS n FROM compensations`);
  expect(compensations[0].n).toBe(0);
  const { rows: modelCalls } = await db.pool.query(`SELECT count(*)::int AS n FROM model_calls`);
  expect(modelCalls[0].n).toBe(TASKS * 4);
  for (const id of ids) expect(readFileSync(path.join(workspaceRoot, id, 'doc', 'b.md'), 'utf8')).toBe('beta');
});
