import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ApplicationFailure } from '@temporalio/common';
import { classifyModelError, createModelClient, modelConfigFromEnv, type ModelClient } from '../infra/models/model';

/** A local endpoint that speaks the chat-completions protocol; each test queues its answers. */
let server: Server;
let baseUrl: string;
const requests: { path: string; body: Record<string, unknown> }[] = [];
let answers: ((res: ServerResponse) => void)[] = [];

const json = (status: number, body: unknown, headers: Record<string, string> = {}) => (res: ServerResponse) => {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
};
const completion = (message: Record<string, unknown>, finish: string) =>
  json(200, {
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1_700_000_000,
    model: 'local-model',
    choices: [{ index: 0, message: { role: 'assistant', ...message }, finish_reason: finish }],
    usage: { prompt_tokens: 42, completion_tokens: 7, total_tokens: 49 },
  });

beforeAll(async () => {
  server = createServer((req: IncomingMessage, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      requests.push({ path: req.url ?? '', body: JSON.parse(raw) as Record<string, unknown> });
      const answer = answers.shift() ?? json(500, { error: { message: 'no answer queued' } });
      answer(res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
beforeEach(() => {
  requests.length = 0;
  answers = [];
});

const client = (): ModelClient => createModelClient(modelConfigFromEnv({ MARE_MODEL: 'openai-compatible:local-model', MARE_OPENAI_COMPATIBLE_URL: baseUrl }));
const request = {
  purpose: 'act' as const,
  tools: ['workspace.write', 'workspace.read'],
  meta: { taskId: 't', subtaskId: 's', role: 'writer', attempt: 1 },
  messages: [
    { role: 'system' as const, content: 'SYSTEM LAYER' },
    { role: 'system' as const, content: 'ROLE LAYER' },
    { role: 'user' as const, content: 'write hello.md' },
  ],
};

test('the OpenAI-compatible provider sends tools over HTTP and maps a tool call back', async () => {
  answers.push(
    completion(
      { content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'workspace__write', arguments: '{"path":"hello.md","content":"hi"}' } }] },
      'tool_calls',
    ),
  );
  const response = await client().generate(request);
  expect(response).toMatchObject({
    kind: 'tool_calls',
    model: 'openai-compatible:local-model',
    offline: false,
    usage: { inputTokens: 42, outputTokens: 7 },
    calls: [{ id: 'call_1', name: 'workspace.write', args: { path: 'hello.md', content: 'hi' } }],
  });
  expect(requests[0]?.path).toBe('/v1/chat/completions');
  const body = requests[0]!.body as { model: string; messages: { role: string; content: string }[]; tools: { function: { name: string; parameters: { required?: string[] } } }[] };
  expect(body.model).toBe('local-model');
  expect(body.messages[0]).toEqual({ role: 'system', content: 'SYSTEM LAYER\n\nROLE LAYER' });
  expect(body.tools.map((t) => t.function.name)).toEqual(['workspace__write', 'workspace__read']);
  expect(body.tools[0]?.function.parameters.required).toEqual(['path', 'content']);
});

test('a tool result goes back as a tool message and a text answer is final', async () => {
  answers.push(completion({ content: 'Wrote hello.md.' }, 'stop'));
  const response = await client().generate({
    ...request,
    messages: [
      ...request.messages,
      { role: 'assistant', content: '', toolCalls: [{ id: 'call_1', name: 'workspace.write', args: { path: 'hello.md', content: 'hi' } }] },
      { role: 'tool', toolCallId: 'call_1', toolName: 'workspace.write', content: 'wrote 2 bytes to hello.md', isError: false },
    ],
  });
  expect(response).toMatchObject({ kind: 'final', text: 'Wrote hello.md.' });
  const messages = (requests[0]!.body as { messages: Record<string, unknown>[] }).messages;
  expect(messages[2]).toMatchObject({ role: 'assistant', tool_calls: [{ id: 'call_1', function: { name: 'workspace__write' } }] });
  expect(messages[3]).toMatchObject({ role: 'tool', tool_call_id: 'call_1', content: 'wrote 2 bytes to hello.md' });
});

async function failureFor(status: number, headers: Record<string, string> = {}): Promise<ApplicationFailure> {
  answers.push(json(status, { error: { message: `status ${status}` } }, headers));
  const err = await client().generate(request).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(requests).toHaveLength(1); // the SDK's own retries are off: Temporal retries
  const classified = classifyModelError(err);
  expect(classified).toBeInstanceOf(ApplicationFailure);
  return classified as ApplicationFailure;
}

test.each([400, 401, 403, 422])('HTTP %i is not retried', async (status) => {
  const failure = await failureFor(status);
  expect(failure.nonRetryable).toBe(true);
  expect(failure.type).toBe('ModelRequestRejected');
});

test.each([500, 502, 503])('HTTP %i is retryable', async (status) => {
  const failure = await failureFor(status);
  expect(failure.nonRetryable).toBe(false);
  expect(failure.type).toBe('ModelUnavailable');
});

test('HTTP 429 is retryable and the next attempt waits for retry-after', async () => {
  const failure = await failureFor(429, { 'retry-after': '7' });
  expect(failure.nonRetryable).toBe(false);
  expect(failure.type).toBe('ModelRateLimited');
  expect(failure.nextRetryDelay).toBe(7000);
});

test('an unreachable endpoint is retryable', async () => {
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  const dead = createModelClient(modelConfigFromEnv({ MARE_MODEL: 'openai-compatible:m', MARE_OPENAI_COMPATIBLE_URL: `http://127.0.0.1:${port}/v1` }));
  const err = await dead.generate(request).catch((e: unknown) => e);
  const failure = classifyModelError(err) as ApplicationFailure;
  expect(failure.nonRetryable).toBe(false);
  expect(failure.type).toBe('ModelUnavailable');
});

test('MARE_MODEL is validated with clear messages', () => {
  expect(() => modelConfigFromEnv({ MARE_MODEL: 'openai' })).toThrow(/provider:model/);
  expect(() => modelConfigFromEnv({ MARE_MODEL: 'llama:7b' })).toThrow(/not one of openai, anthropic, openai-compatible, scripted/);
  expect(() => modelConfigFromEnv({ MARE_MODEL: 'openai-compatible:m' })).toThrow(/MARE_OPENAI_COMPATIBLE_URL/);
  expect(modelConfigFromEnv({}).provider).toBe('scripted');
});
