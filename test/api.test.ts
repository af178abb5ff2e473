import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import type http from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import pino from 'pino';
import { closeApiServer, createApiServer } from '../servers/api';
import { MareClient, type TaskView } from '../client/client';
import { type ApprovalView, type TaskProgress, type TaskResult } from '../validation';
import { TASK_QUEUE, taskWorkflowId } from '../core/constants';
import { createTestStack, planReply, toolCall, type ScriptInput, type TestStack } from './helpers';

// The real `mare` command from dist/ (npm test builds it first).
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');
const demoScript = JSON.parse(readFileSync(path.join(__dirname, '..', 'scripts', 'demo-script.json'), 'utf8')) as ScriptInput;
const KEY = 'test-api-key-0123456789abcdef';

let stack: TestStack;
let server: http.Server;
let base: string;
/** What the server logged, one parsed JSON line each. */
const logLines: Record<string, unknown>[] = [];

beforeAll(async () => {
  stack = await createTestStack();
  const logger = pino({ level: 'info' }, { write: (line: string) => void logLines.push(JSON.parse(line) as Record<string, unknown>) });
  server = createApiServer({ client: stack.client, apiKey: KEY, logger, watchIntervalMs: 100 });
  base = await listen(server);
});
afterAll(async () => {
  if (server) await closeApiServer(server, { graceMs: 100 });
  await stack?.teardown();
});

async function listen(s: http.Server): Promise<string> {
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

interface ErrorBody {
  error: string;
  issues?: { path: string; message: string }[];
}

interface Answer<T> {
  status: number;
  body: T;
  headers: Headers;
}

interface OpenApiDoc {
  openapi: string;
  paths: Record<string, Record<string, { operationId: string; security?: unknown[]; responses: Record<string, unknown> }>>;
  components: { schemas: Record<string, Record<string, unknown>> };
}

/** One request with the right key (unless `key` says otherwise), JSON in and out. */
async function api<T = ErrorBody>(method: string, route: string, opts: { body?: unknown; raw?: string; key?: string | null; headers?: Record<string, string>; at?: string } = {}): Promise<Answer<T>> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.key !== null) headers.authorization = `Bearer ${opts.key ?? KEY}`;
  if (opts.body !== undefined || opts.raw !== undefined) headers['content-type'] ??= 'application/json';
  const res = await fetch(`${opts.at ?? base}${route}`, { method, headers, body: opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body)) });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T, headers: res.headers };
}

interface SseEvent {
  event: string;
  data: unknown;
}

/** Reads a server-sent event stream until it closes (or `stopAfter` says to stop: then aborts it). */
async function readEvents(route: string, stopAfter?: (e: SseEvent) => boolean): Promise<{ events: SseEvent[]; contentType: string | null; closedByServer: boolean }> {
  const abort = new AbortController();
  const res = await fetch(`${base}${route}`, { headers: { authorization: `Bearer ${KEY}` }, signal: abort.signal });
  expect(res.status).toBe(200);
  const events: SseEvent[] = [];
  const decoder = new TextDecoder();
  let buffer = '';
  const reader = res.body!.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return { events, contentType: res.headers.get('content-type'), closedByServer: true };
    buffer += decoder.decode(value, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (!event || data === undefined) continue; // a keep-alive comment
      const e: SseEvent = { event, data: JSON.parse(data) };
      events.push(e);
      if (stopAfter?.(e)) {
        abort.abort();
        await reader.cancel().catch(() => undefined);
        return { events, contentType: res.headers.get('content-type'), closedByServer: false };
      }
    }
  }
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('every route but health and the OpenAPI document needs the key; unknown routes are 404, wrong methods 405', async () => {
  for (const [method, route] of [
    ['POST', '/v1/tasks'],
    ['GET', '/v1/tasks/anything'],
    ['GET', '/v1/tasks/anything/events'],
    ['POST', '/v1/tasks/anything/cancel'],
    ['GET', '/v1/approvals'],
    ['POST', '/v1/approvals/a-1/decision'],
  ] as const) {
    const missing = await api(method, route, { key: null, body: method === 'POST' ? { goal: 'x' } : undefined });
    expect([route, missing.status, missing.body.error]).toEqual([route, 401, expect.stringMatching(/missing API key/)]);
    expect(missing.headers.get('www-authenticate')).toMatch(/^Bearer/);
    const wrong = await api(method, route, { key: `${KEY}x`, body: method === 'POST' ? { goal: 'x' } : undefined });
    expect([route, wrong.status, wrong.body]).toEqual([route, 401, { error: 'invalid API key' }]);
  }
  expect((await api('GET', '/v1/approvals', { key: null, headers: { authorization: `Basic ${KEY}` } })).status).toBe(401);
  expect((await api('GET', '/v1/approvals', { key: KEY.slice(0, -1) })).status).toBe(401);
  // nothing was started by the refused submissions
  expect(await stack.client.listTasks()).toEqual([]);

  const health = await api('GET', '/v1/health', { key: null });
  expect(health).toMatchObject({ status: 200, body: { ok: true, temporal: 'reachable' } });
  const unknown = await api('GET', '/v1/nothing-here');
  expect(unknown).toMatchObject({ status: 404, body: { error: 'no route GET /v1/nothing-here' } });
  expect((await api('GET', '/v1/tasks/a/b/c')).status).toBe(404);
  const wrongMethod = await api('DELETE', '/v1/tasks/some-task');
  expect(wrongMethod.status).toBe(405);
  expect(wrongMethod.headers.get('allow')).toBe('GET');
  expect((await api('GET', '/v1/tasks')).headers.get('allow')).toBe('POST');
  expect((await api('PUT', '/v1/health', { key: null })).status).toBe(405);
});

test('the OpenAPI document lists every route with its request schema from zod', async () => {
  const doc = await api<OpenApiDoc>('GET', '/v1/openapi.json', { key: null });
  expect(doc.status).toBe(200);
  expect(doc.headers.get('content-type')).toMatch(/^application\/json/);
  expect(doc.body.openapi).toBe('3.1.0');
  expect(Object.keys(doc.body.paths).sort()).toEqual(
    ['/v1/approvals', '/v1/approvals/{id}/decision', '/v1/health', '/v1/openapi.json', '/v1/tasks', '/v1/tasks/{id}', '/v1/tasks/{id}/cancel', '/v1/tasks/{id}/events'].sort(),
  );
  const ops = Object.values(doc.body.paths).flatMap((p) => Object.values(p));
  expect(ops.map((o) => o.operationId).sort()).toEqual(['cancelTask', 'decideApproval', 'getTask', 'health', 'listApprovals', 'openApi', 'submitTask', 'watchTask']);
  for (const op of ops) expect(Object.keys(op.responses).length).toBeGreaterThan(0);
  const submit = doc.body.components.schemas.SubmitTaskRequest;
  expect(submit).toMatchObject({ type: 'object', required: ['goal'], additionalProperties: false, properties: { goal: { type: 'string', minLength: 1 }, concurrency: { minimum: 1, maximum: 32 } } });
  expect((submit as { properties: { acceptanceCriteria: { items: { oneOf: unknown[] } } } }).properties.acceptanceCriteria.items.oneOf.length).toBeGreaterThan(3);
  expect(doc.body.components.schemas.ApprovalDecisionRequest).toMatchObject({ required: ['taskId', 'decision', 'reason'], properties: { decision: { enum: ['approve', 'deny'] } } });
  expect(doc.body.paths['/v1/tasks']?.post?.security).toEqual([{ bearer: [] }]);
  expect(doc.body.paths['/v1/health']?.get?.security).toEqual([]);
  // every $ref resolves
  const refs = JSON.stringify(doc.body).match(/"#\/components\/[^"]+"/g) ?? [];
  expect(refs.length).toBeGreaterThan(10);
  for (const ref of new Set(refs)) {
    const target = (JSON.parse(ref) as string)
      .slice(2)
      .split('/')
      .reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], doc.body);
    expect([ref, target]).toEqual([ref, expect.anything()]);
  }
});

test('bad requests: 400 naming the field, 415 for another media type, 413 for a body over 1 MiB, 404 for an unknown task', async () => {
  const empty = await api('POST', '/v1/tasks', { body: {} });
  expect(empty.status).toBe(400);
  expect(empty.body.issues).toEqual([{ path: 'goal', message: expect.any(String) }]);
  const badField = await api('POST', '/v1/tasks', { body: { goal: 'fine', concurrency: 0, taskId: 'no spaces allowed' } });
  expect(badField.status).toBe(400);
  expect(badField.body.issues?.map((i) => i.path).sort()).toEqual(['concurrency', 'taskId']);
  expect(badField.body.error).toMatch(/^invalid request: /);
  const extra = await api('POST', '/v1/tasks', { body: { goal: 'canary-in-the-body', secretField: 1 } });
  expect(extra).toMatchObject({ status: 400, body: { issues: [{ path: 'secretField', message: 'unknown field "secretField"' }] } });
  const nested = await api('POST', '/v1/tasks', { body: { goal: 'fine', acceptanceCriteria: [{ kind: 'file_exists' }] } });
  expect(nested.status).toBe(400);
  expect(nested.body.issues?.[0]?.path).toMatch(/^acceptanceCriteria\.0/);
  expect(await api('POST', '/v1/tasks', { raw: '{"goal": ' })).toMatchObject({ status: 400, body: { error: 'request body is not valid JSON', issues: [] } });
  expect((await api('POST', '/v1/tasks', { raw: 'goal=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } })).status).toBe(415);

  const huge = await api('POST', '/v1/tasks', { body: { goal: 'x'.repeat(1_100_000) } });
  expect(huge).toMatchObject({ status: 413, body: { error: expect.stringMatching(/larger than 1048576 bytes/) } });
  // chunked, without a length up front
  const chunks = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(new TextEncoder().encode('{"goal":"'));
      for (let i = 0; i < 20; i++) controller.enqueue(new TextEncoder().encode('y'.repeat(100_000)));
      controller.enqueue(new TextEncoder().encode('"}'));
      controller.close();
    },
  });
  const streamed = await fetch(`${base}/v1/tasks`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: chunks, duplex: 'half' });
  expect(streamed.status).toBe(413);
  expect((await api('GET', '/v1/health', { key: null })).status).toBe(200); // the server carries on

  expect(await api('GET', '/v1/tasks/no-such-task')).toMatchObject({ status: 404, body: { error: 'no task with id "no-such-task"' } });
  expect((await api('GET', '/v1/tasks/no-such-task/events')).status).toBe(404);
  expect((await api('POST', '/v1/tasks/no-such-task/cancel')).status).toBe(404);
  expect((await api('GET', '/v1/approvals?taskId=no-such-task')).status).toBe(404);
  const badId = await api('GET', `/v1/tasks/${encodeURIComponent('../etc')}`);
  expect(badId.status).toBe(400);
  expect(badId.body.issues).toEqual([{ path: 'id', message: expect.stringMatching(/task ids are/) }]);
  expect((await api('POST', '/v1/tasks/a%20b/cancel')).body.issues?.[0]?.path).toBe('id');
  expect((await api('GET', '/v1/approvals?taskId=a%20b')).body.issues?.[0]?.path).toBe('taskId');
  expect((await api('GET', '/v1/tasks/%E0%A4%A')).status).toBe(400);
  const decision = await api('POST', '/v1/approvals/a-1/decision', { body: { taskId: 'no-such-task', decision: 'maybe', reason: ' ' } });
  expect(decision.status).toBe(400);
  expect(decision.body.issues?.map((i) => i.path).sort()).toEqual(['decision', 'reason']);
  expect((await api('POST', '/v1/approvals/a-1/decision', { body: { decision: 'approve', reason: 'ok' } })).body.issues).toEqual([{ path: 'taskId', message: expect.any(String) }]);
  expect((await api('POST', '/v1/approvals/a-1/decision', { body: { taskId: 'no-such-task', decision: 'approve', reason: 'ok' } })).status).toBe(404);
  expect(await stack.client.listTasks()).toEqual([]);
  // Request lines carry method, path, status and duration; never a body.
  expect(logLines).toContainEqual(expect.objectContaining({ msg: 'request', method: 'POST', path: '/v1/tasks', status: 400, durationMs: expect.any(Number) }));
  expect(logLines).toContainEqual(expect.objectContaining({ msg: 'request', method: 'POST', path: '/v1/tasks', status: 413 }));
  expect(JSON.stringify(logLines)).not.toContain('canary-in-the-body');
});

test('submit (202, idempotent by task id), read it while running and when done, and follow its events to the result', async () => {
  await stack.withWorker({ ...demoScript, delayMs: 300 }, async () => {
    const goal = 'Write a short guide to durable execution';
    const first = await api('POST', '/v1/tasks', { body: { taskId: 'api-guide', goal, concurrency: 2 } });
    expect(first).toMatchObject({ status: 202, body: { taskId: 'api-guide', workflowId: taskWorkflowId('api-guide') } });
    const again = await api('POST', '/v1/tasks', { body: { taskId: 'api-guide', goal } });
    expect(again).toMatchObject({ status: 202, body: first.body });

    const running = await waitFor('the task running with a plan', async () => {
      const view = await api<TaskView>('GET', '/v1/tasks/api-guide');
      return view.body.execution === 'RUNNING' && view.body.progress?.plan ? view : undefined;
    });
    expect(running.body).toMatchObject({ taskId: 'api-guide', execution: 'RUNNING', progress: { taskId: 'api-guide', status: 'RUNNING' } });
    expect(running.body.result).toBeUndefined();

    const { events, contentType, closedByServer } = await readEvents('/v1/tasks/api-guide/events');
    expect(contentType).toMatch(/^text\/event-stream/);
    expect(closedByServer).toBe(true);
    const last = events[events.length - 1]!;
    expect(last.event).toBe('result');
    expect(last.data as TaskResult).toMatchObject({ taskId: 'api-guide', status: 'COMPLETED' });
    const progress = events.slice(0, -1);
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.every((e) => e.event === 'progress')).toBe(true);
    expect(progress.some((e) => (e.data as TaskProgress).subtasks.some((s) => s.state === 'running'))).toBe(true);
    expect((progress[progress.length - 1]!.data as TaskProgress).status).toBe('COMPLETED');

    const done = await api<TaskView>('GET', '/v1/tasks/api-guide');
    expect(done).toMatchObject({ status: 200, body: { execution: 'COMPLETED', result: { status: 'COMPLETED' } } });
    expect(done.body.result?.subtasks.map((s) => s.id)).toEqual(['outline', 'draft', 'review']);
    // the stream of a finished task: its final progress, then the result
    const after = await readEvents('/v1/tasks/api-guide/events');
    expect(after.events.map((e) => e.event)).toEqual(['progress', 'result']);
    // a finished task cannot be cancelled
    expect(await api('POST', '/v1/tasks/api-guide/cancel')).toMatchObject({ status: 409, body: { error: 'task "api-guide" has already ended (COMPLETED)' } });
  });
  const runs = [];
  for await (const wf of stack.env.client.workflow.list({ query: `WorkflowId = '${taskWorkflowId('api-guide')}'` })) runs.push(wf.runId);
  expect(runs).toHaveLength(1);
});

test('cancel a running task: it ends COMPENSATED; a second cancel is 409', async () => {
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'slow', title: 'Slow', instructions: 'write, then think for a long time', role: 'writer' }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'x.md', content: 'x' }) },
      ...[1, 2, 3, 4, 5, 6].map((turn) => ({ match: { purpose: 'act', turn }, reply: toolCall('workspace.list', {}) })),
      { match: { purpose: 'act' }, reply: { text: 'finally' } },
    ],
    delayMs: 400,
  };
  const written = path.join(stack.workspaceRoot, 'api-cancel', 'x.md');
  const result = await stack.withWorker(script, async () => {
    expect((await api('POST', '/v1/tasks', { body: { taskId: 'api-cancel', goal: 'be cancelled' } })).status).toBe(202);
    await waitFor('x.md written', () => Promise.resolve(existsSync(written) ? true : undefined));
    const cancelled = await api('POST', '/v1/tasks/api-cancel/cancel');
    expect(cancelled).toMatchObject({ status: 202, body: { taskId: 'api-cancel', cancelRequested: true } });
    const stream = await readEvents('/v1/tasks/api-cancel/events');
    expect(stream.events[stream.events.length - 1]?.event).toBe('result');
    // The run ended cancelled; its result is read from the run (a query a worker answers).
    expect((await api('GET', '/v1/tasks/api-cancel')).body).toMatchObject({ execution: 'CANCELLED', result: { status: 'COMPENSATED', cancelled: true } });
    return stream.events[stream.events.length - 1]?.data as TaskResult;
  });
  expect(result).toMatchObject({ taskId: 'api-cancel', status: 'COMPENSATED', cancelled: true });
  expect(existsSync(written)).toBe(false);
  expect(await api('POST', '/v1/tasks/api-cancel/cancel')).toMatchObject({ status: 409, body: { error: 'task "api-cancel" has already ended (COMPENSATED)' } });
});

test('approvals: an escalated call is listed, decided once over HTTP (a second decision is 409), and the task completes; a departed event-stream client is no longer polled for', async () => {
  await stack.policies.repository.publish(
    {
      schemaVersion: 1,
      name: 'api-approvals',
      version: '1.0.0',
      rules: [{ id: 'ask', when: { targets: ['workspace.write'] }, decision: 'escalate', reason: 'writes need a person', approval: { timeoutSeconds: 600, onTimeout: 'deny' } }],
    },
    { actor: 'test' },
  );
  try {
    const script: ScriptInput = {
      rules: [
        planReply([{ id: 'w', title: 'Write', instructions: 'write a.md', role: 'writer' }]),
        { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.md', content: '# approved' }) },
        { match: { purpose: 'act' }, reply: { text: 'wrote a.md' } },
      ],
      // keeps the subtask open for a moment after the decision, so a second one meets the validator
      delayMs: 500,
    };
    await stack.withWorker(script, async () => {
      expect((await api('POST', '/v1/tasks', { body: { taskId: 'api-approve', goal: 'needs approval' } })).status).toBe(202);
      const pending = await waitFor('a pending approval', async () => {
        const list = await api<{ approvals: ApprovalView[] }>('GET', '/v1/approvals');
        return list.body.approvals.find((a) => a.taskId === 'api-approve');
      });
      expect(pending).toMatchObject({ kind: 'tool', target: 'workspace.write', status: 'pending', policy: 'api-approvals@1.0.0#ask', reason: 'writes need a person' });
      const ofTask = await api<{ approvals: ApprovalView[] }>('GET', '/v1/approvals?taskId=api-approve');
      expect(ofTask.body.approvals.map((a) => [a.approvalId, a.status])).toEqual([[pending.approvalId, 'pending']]);

      // While the task waits its progress does not change; a client that reads one event and goes
      // away must not leave the server polling for it.
      const progressCalls = jest.spyOn(stack.client, 'progress');
      try {
        const { events, closedByServer } = await readEvents('/v1/tasks/api-approve/events', () => true);
        expect([events.map((e) => e.event), closedByServer]).toEqual([['progress'], false]);
        await sleep(300);
        const calls = progressCalls.mock.calls.length;
        await sleep(1_000);
        expect(progressCalls.mock.calls.length).toBe(calls);
      } finally {
        progressCalls.mockRestore();
      }

      const route = `/v1/approvals/${encodeURIComponent(pending.approvalId)}/decision`;
      expect((await api('POST', route, { key: null, body: { taskId: 'api-approve', decision: 'approve', reason: 'fine' } })).status).toBe(401);
      expect((await api('POST', '/v1/approvals/zz-9/decision', { body: { taskId: 'api-approve', decision: 'approve', reason: 'fine' } })).status).toBe(404);
      // The approver is the key's identity; a body that names someone else is refused.
      const forged = await api('POST', route, { body: { taskId: 'api-approve', decision: 'approve', reason: 'looks right', by: 'alice' } });
      expect(forged).toMatchObject({ status: 400, body: { issues: [{ path: 'by', message: expect.stringMatching(/key:bootstrap\/env/) }] } });
      const decision = { taskId: 'api-approve', decision: 'approve', reason: 'looks right' };
      const once = await api<ApprovalView>('POST', route, { body: decision, headers: { 'idempotency-key': 'api-k-1' } });
      expect(once).toMatchObject({ status: 200, body: { approvalId: pending.approvalId, status: 'approved', decidedBy: 'key:bootstrap/env', decisionReason: 'looks right' } });
      const retried = await api('POST', route, { body: decision, headers: { 'idempotency-key': 'api-k-1' } });
      expect(retried).toMatchObject({ status: 200, body: once.body });
      const second = await api('POST', route, { body: { taskId: 'api-approve', decision: 'deny', reason: 'changed my mind' } });
      expect(second).toMatchObject({ status: 409, body: { error: expect.stringMatching(/not pending/) } });

      const done = await waitFor('the task done', async () => {
        const view = await api<TaskView>('GET', '/v1/tasks/api-approve');
        return view.body.execution !== 'RUNNING' ? view : undefined;
      });
      expect(done.body.result?.status).toBe('COMPLETED');
      expect(done.body.result?.subtasks[0]?.approvals?.map((a) => [a.status, a.decidedBy])).toEqual([['approved', 'key:bootstrap/env']]);
      // the subtask has closed: a decision now is still a 409, not an error
      expect((await api('POST', route, { body: { taskId: 'api-approve', decision: 'deny', reason: 'too late' } })).status).toBe(409);
      expect((await api<{ approvals: ApprovalView[] }>('GET', '/v1/approvals')).body.approvals.filter((a) => a.taskId === 'api-approve')).toEqual([]);
    });
    expect(readFileSync(path.join(stack.workspaceRoot, 'api-approve', 'a.md'), 'utf8')).toBe('# approved');
  } finally {
    await stack.policies.repository.disable('api-approvals', { actor: 'test', reason: 'done' });
  }
});

test('health is 503 when Temporal does not answer', async () => {
  const port = await freePort();
  const connection = Connection.lazy({ address: `127.0.0.1:${port}` });
  const down = createApiServer({ client: new MareClient(new Client({ connection }), TASK_QUEUE), apiKey: KEY, healthTimeoutMs: 500 });
  const at = await listen(down);
  try {
    const started = Date.now();
    expect(await api('GET', '/v1/health', { key: null, at })).toMatchObject({ status: 503, body: { ok: false, temporal: 'unreachable' } });
    expect(Date.now() - started).toBeLessThan(5_000);
  } finally {
    await closeApiServer(down, { graceMs: 100 });
    await connection.close();
  }
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

/** Runs `mare api` from dist/; resolves with its exit code and output once it exits. */
function mareApi(env: Record<string, string | undefined>, args: string[] = [], whileRunning?: (stdout: () => string) => Promise<void>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, TEMPORAL_ADDRESS: stack.env.address, TEMPORAL_NAMESPACE: 'default', MARE_LOG_LEVEL: 'warn', ...env };
  for (const [name, value] of Object.entries(env)) if (value === undefined) delete childEnv[name];
  const child = spawn(process.execPath, [CLI, 'api', ...args], { env: childEnv });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return (async () => {
    if (whileRunning) {
      try {
        await whileRunning(() => stdout);
      } finally {
        child.kill('SIGTERM');
      }
    }
    return { code: await exited, stdout, stderr };
  })();
}

test('mare api: refuses to start without any key source (DATABASE_URL or MARE_API_KEY) or with a short MARE_API_KEY (exit 2); serves, then stops on SIGTERM', async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  const missing = await mareApi({ MARE_API_KEY: undefined, DATABASE_URL: undefined });
  expect(missing.code).toBe(2);
  expect(missing.stderr).toBe(
    'mare: no API keys: set DATABASE_URL (keys made with `mare keys create`) and/or MARE_API_KEY (an operator key of at least 16 characters, e.g. `openssl rand -hex 32`)\n',
  );
  const short = await mareApi({ MARE_API_KEY: 'too-short', DATABASE_URL: undefined });
  expect(short).toMatchObject({ code: 2, stderr: 'mare: MARE_API_KEY is too short (9 characters): use at least 16\n' });

  const port = await freePort();
  const served = await mareApi({ MARE_API_KEY: KEY, DATABASE_URL: undefined }, ['--port', String(port)], async (stdout) => {
    await waitFor('the server to listen', () => Promise.resolve(stdout().includes('MARE HTTP API on') ? true : undefined), 20_000);
    const at = `http://127.0.0.1:${port}`;
    expect(await api('GET', '/v1/health', { key: null, at })).toMatchObject({ status: 200, body: { ok: true } });
    expect((await api('GET', '/v1/approvals', { key: 'wrong-key-wrong-key', at })).status).toBe(401);
    expect(await api('GET', '/v1/approvals', { at })).toMatchObject({ status: 200, body: { approvals: [] } });
  });
  expect(served.stdout).toContain(`MARE HTTP API on http://127.0.0.1:${port}/v1`);
  expect(served.stdout).toContain('API keys: MARE_API_KEY only');
  expect(served.stdout).toContain('stopped.');
  expect(served.code).toBe(0);
  expect(served.stderr).not.toMatch(/error/i);
});
