import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { createModelClient, modelConfigFromEnv } from '../../infra/models/model';
import { subtaskWorkflowId, taskWorkflowId } from '../../core/constants';
import { createTestStack, failureMessage, historyOf, type TestStack } from '../helpers';
import { activityRuns, withModelWorker } from './helpers';

/**
 * A local chat-completions endpoint that misbehaves on purpose. Each task carries a marker
 * `[scenario:<name>]` in its goal and instructions; the endpoint looks it up in `behaviour` and
 * records every request it saw (scenario, purpose, time).
 */
type Purpose = 'plan' | 'act';
type Answer = { status: number; headers?: Record<string, string>; body: unknown };
const seen: { scenario: string; purpose: Purpose; at: number }[] = [];
let behaviour: Record<string, (purpose: Purpose, nth: number) => Answer | undefined> = {};
let server: Server;
let baseUrl: string;
let stack: TestStack;

const completion = (content: string): Answer => ({
  status: 200,
  body: {
    id: 'chatcmpl-fault',
    object: 'chat.completion',
    created: 1_700_000_000,
    model: 'local-model',
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12 },
  },
});
const httpError = (status: number, headers: Record<string, string> = {}): Answer => ({ status, headers, body: { error: { message: `fault injected: HTTP ${status}`, type: 'fault' } } });
const plan = (scenario: string): Answer =>
  completion(JSON.stringify({ subtasks: [{ id: 'work', title: 'Work', instructions: `Do the work [scenario:${scenario}]`, role: 'generalist', acceptanceCriteria: [{ kind: 'output_contains', text: 'done' }] }] }));

beforeAll(async () => {
  server = createServer((req, res: ServerResponse) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      const scenario = /\[scenario:([a-z0-9-]+)\]/.exec(raw)?.[1] ?? '?';
      const purpose: Purpose = raw.includes("You are MARE's planner") ? 'plan' : 'act';
      const nth = seen.filter((s) => s.scenario === scenario && s.purpose === purpose).length;
      seen.push({ scenario, purpose, at: performance.now() });
      const answer = behaviour[scenario]?.(purpose, nth) ?? (purpose === 'plan' ? plan(scenario) : completion('done'));
      res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers });
      res.end(JSON.stringify(answer.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  stack = await createTestStack();
});
afterAll(async () => {
  await stack?.teardown();
  await new Promise<void>((resolve) => server?.close(() => resolve()));
});

const model = () => createModelClient(modelConfigFromEnv({ MARE_MODEL: 'openai-compatible:local-model', MARE_OPENAI_COMPATIBLE_URL: baseUrl }));
const requestsOf = (scenario: string, purpose: Purpose) => seen.filter((s) => s.scenario === scenario && s.purpose === purpose);
const run = (taskIds: string[]) =>
  withModelWorker(stack, { model: model() }, async () => {
    await Promise.all(taskIds.map((id) => stack.client.submitTask({ taskId: id, goal: `Do the work [scenario:${id}]` })));
    return Promise.all(taskIds.map((id) => stack.client.result(id)));
  });

test('the model endpoint answers 503 twice, then recovers → decompose succeeds on attempt 3 after ≥2 s and ≥4 s backoff, the task COMPLETES, usage is recorded once', async () => {
  behaviour = { flaky: (purpose, nth) => (purpose === 'plan' && nth < 2 ? httpError(503) : undefined) };
  const [result] = await run(['flaky']);
  expect(result?.status).toBe('COMPLETED');
  expect(result?.subtasks.map((s) => s.output)).toEqual(['done']);

  const plans = requestsOf('flaky', 'plan');
  expect(plans).toHaveLength(3);
  // Temporal's backoff (2 s, doubling) is what spaced them, not the SDK: it makes one request per attempt
  expect(plans[1]!.at - plans[0]!.at).toBeGreaterThanOrEqual(1_900);
  expect(plans[2]!.at - plans[1]!.at).toBeGreaterThanOrEqual(3_900);
  expect(requestsOf('flaky', 'act')).toHaveLength(1);

  const decompose = activityRuns(taskWorkflowId('flaky'), await historyOf(stack, taskWorkflowId('flaky'))).filter((r) => r.type === 'decompose');
  expect(decompose.map((r) => `${r.attempt}:${r.outcome}`)).toEqual(['3:completed']);
  expect(decompose[0]?.lastFailure?.applicationFailureInfo?.type).toBe('ModelUnavailable');
  expect(failureMessage(decompose[0]?.lastFailure)).toContain('model answered HTTP 503');
  const { rows } = await stack.pool.query(`SELECT purpose, count(*)::int AS n FROM model_calls WHERE task_id = 'flaky' GROUP BY purpose ORDER BY purpose`);
  expect(rows).toEqual([{ purpose: 'act', n: 1 }, { purpose: 'plan', n: 1 }]);
});

test('the model endpoint answers 400 or 401 → exactly one attempt, a non-retryable ModelRequestRejected naming the status, the task ends with that error', async () => {
  behaviour = {
    'bad-request': (purpose) => (purpose === 'act' ? httpError(400) : undefined),
    unauthorized: (purpose) => (purpose === 'act' ? httpError(401) : undefined),
  };
  const results = await run(['bad-request', 'unauthorized']);
  for (const [result, status] of [[results[0], 400], [results[1], 401]] as const) {
    const taskId = result!.taskId;
    expect(result?.status).toBe('COMPENSATED'); // nothing was written, so there is nothing to undo
    expect(result?.compensations).toEqual([]);
    expect(result?.error).toContain(`model rejected the request (HTTP ${status})`);
    expect(result?.subtasks.map((s) => [s.status, s.attempts])).toEqual([['failed', 1]]);
    expect(requestsOf(taskId, 'act')).toHaveLength(1);

    const child = activityRuns(subtaskWorkflowId(taskId, 'work'), await historyOf(stack, subtaskWorkflowId(taskId, 'work')));
    const calls = child.filter((r) => r.type === 'callModel');
    expect(calls.map((r) => `${r.attempt}:${r.outcome}`)).toEqual(['1:failed']);
    expect(calls[0]?.failure?.applicationFailureInfo).toMatchObject({ type: 'ModelRequestRejected', nonRetryable: true });
    expect(failureMessage(calls[0]?.failure)).toContain(`HTTP ${status}`);
    const { rows } = await stack.pool.query(`SELECT status, error FROM subtasks WHERE task_id = $1`, [taskId]);
    expect(rows).toEqual([{ status: 'failed', error: expect.stringContaining(`model rejected the request (HTTP ${status})`) }]);
  }
});

test('the model endpoint answers 429 with retry-after: 5 → the second attempt comes ≥5 s later (not the 2 s backoff), then the task COMPLETES', async () => {
  behaviour = { 'rate-limited': (purpose, nth) => (purpose === 'act' && nth === 0 ? httpError(429, { 'retry-after': '5' }) : undefined) };
  const [result] = await run(['rate-limited']);
  expect(result?.status).toBe('COMPLETED');
  const acts = requestsOf('rate-limited', 'act');
  expect(acts).toHaveLength(2);
  expect(acts[1]!.at - acts[0]!.at).toBeGreaterThanOrEqual(5_000);

  const calls = activityRuns(subtaskWorkflowId('rate-limited', 'work'), await historyOf(stack, subtaskWorkflowId('rate-limited', 'work'))).filter((r) => r.type === 'callModel');
  expect(calls.map((r) => `${r.attempt}:${r.outcome}`)).toEqual(['2:completed']);
  expect(calls[0]?.lastFailure?.applicationFailureInfo?.type).toBe('ModelRateLimited');
  expect(failureMessage(calls[0]?.lastFailure)).toContain('model answered HTTP 429');
});
