import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { ServiceError, WorkflowNotFoundError } from '@temporalio/client';
import pino, { type Logger } from 'pino';
import { z } from 'zod';
import { TaskId } from '../validation';
import { SEARCH_ATTRIBUTES } from '../core/constants';
import {
  ApprovalNotFoundError,
  ApprovalRejectedError,
  InvalidTaskRequestError,
  SubmitTaskInput,
  TaskNotFoundError,
  TemporalUnavailableError,
  WorkflowQueryFailedError,
  type MareClient,
} from '../client/client';
import { HttpError, JSON_HEADERS, listen, readJson, sendJson } from './httpKit';
import { ANONYMOUS, authorizeSubmission, checkSubmitted, createAuthenticator, decisionBy, describeOwnTask, ownApprovals, requireScope } from './apiAuth';
import type { ApiKeyStore, ApiScope, Principal } from '../infra/db/apiKeys';

/** API keys shorter than this are refused: a key is the only thing between the network and the tasks. */
export const MIN_API_KEY_LENGTH = 16;
/** Request bodies larger than this are refused with 413. */
export const MAX_BODY_BYTES = 1024 * 1024;

/** The body of `POST /v1/approvals/:id/decision`. Approval ids are unique only within a task, hence `taskId`. */
export const DecisionBody = z.strictObject({
  taskId: TaskId,
  decision: z.enum(['approve', 'deny']),
  reason: z.string().trim().min(1, 'reason must not be empty').max(2_000),
  /** Ignored as a source of truth: the decision is recorded as the key's identity; any other value is a 400. */
  by: z.string().trim().min(1).max(200).optional(),
});

const ApprovalId = z.string().min(1).max(200);
const IdempotencyKey = z.string().min(1).max(200);

/** Options of `createApiServer`. */
export interface ApiServerOptions {
  client: MareClient;
  /** The stored API keys (`mare keys`), each bound to a tenant and scopes. */
  keys?: ApiKeyStore;
  /** The operator's bootstrap key (MARE_API_KEY): scope admin, tenant "default". At least one of `keys` and `apiKey`. */
  apiKey?: string;
  /** Request lines (method, path, status, duration; never bodies) and unexpected errors. Default: silent. */
  logger?: Logger;
  /** How often the event stream polls a task's progress (default 500 ms). */
  watchIntervalMs?: number;
  /** How long `/v1/health` waits for Temporal (default 2000 ms). */
  healthTimeoutMs?: number;
  /** Largest accepted request body (default 1 MiB). */
  maxBodyBytes?: number;
  /** Event streams one API key may hold open at once; beyond it 429 (default 8). */
  maxStreamsPerKey?: number;
}

/** Event streams one API key may hold open at once unless `maxStreamsPerKey` says otherwise. */
export const MAX_STREAMS_PER_KEY = 8;

interface Issue {
  path: string;
  message: string;
}

interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  params: Record<string, string>;
  query: URLSearchParams;
  requestId: string;
  /** The key's principal; a dummy on the unauthenticated routes. */
  principal: Principal;
}

interface Route {
  method: 'GET' | 'POST';
  path: string;
  /** The scope the key must hold; null: no key needed. */
  scope: ApiScope | null;
  /** What the scope lets the key do here, for the 403 message. */
  does?: string;
  handle(ctx: Ctx): Promise<void>;
}

/** Event streams open on each server, so that `closeApiServer` can end them. */
const openStreams = new WeakMap<http.Server, Set<ServerResponse>>();

/** What the routes of one server share: its options, resolved, and its open event streams. */
interface ApiContext {
  client: MareClient;
  logger: Logger;
  watchIntervalMs: number;
  healthTimeoutMs: number;
  maxBodyBytes: number;
  maxStreamsPerKey: number;
  /** Event streams open on this server. */
  streams: Set<ServerResponse>;
  /** Open event streams per API key. */
  streamsPerKey: Map<string, number>;
  /** The OpenAPI document, serialized once. */
  openApi: string;
}

/**
 * The MARE HTTP API over `client`, on plain `node:http` with zod-validated bodies: tasks, their
 * progress as server-sent events, approvals, health and an OpenAPI 3.1 document. Not yet listening.
 */
export function createApiServer(opts: ApiServerOptions): http.Server {
  if (opts.apiKey !== undefined && opts.apiKey.length < MIN_API_KEY_LENGTH) throw new Error(`the API key must be at least ${MIN_API_KEY_LENGTH} characters`);
  if (opts.apiKey === undefined && !opts.keys) throw new Error('the API needs keys: a key store (`keys`), a bootstrap key (`apiKey`), or both');
  const api: ApiContext = {
    client: opts.client,
    logger: opts.logger ?? pino({ level: 'silent' }),
    watchIntervalMs: opts.watchIntervalMs ?? 500,
    healthTimeoutMs: opts.healthTimeoutMs ?? 2_000,
    maxBodyBytes: opts.maxBodyBytes ?? MAX_BODY_BYTES,
    maxStreamsPerKey: opts.maxStreamsPerKey ?? MAX_STREAMS_PER_KEY,
    streams: new Set<ServerResponse>(),
    streamsPerKey: new Map<string, number>(),
    openApi: JSON.stringify(openApiDocument()),
  };
  const authenticate = createAuthenticator({ bootstrapKey: opts.apiKey, keys: opts.keys });
  // Matched in this order.
  const routes: Route[] = [...serviceRoutes(api), ...taskRoutes(api), ...approvalRoutes(api)];
  const server = http.createServer({ requestTimeout: 60_000 }, (req, res) => handleRequest(api, routes, authenticate, req, res));
  openStreams.set(server, api.streams);
  return server;
}

/** Logs the request once it is over, then answers it by its route, or with the error's status and body. */
function handleRequest(api: ApiContext, routes: Route[], authenticate: ReturnType<typeof createAuthenticator>, req: IncomingMessage, res: ServerResponse): void {
  const { logger } = api;
  const started = process.hrtime.bigint();
  const requestId = randomUUID();
  res.setHeader('x-request-id', requestId);
  const url = new URL(req.url ?? '/', 'http://localhost');
  res.once('close', () => {
    const durationMs = Number((process.hrtime.bigint() - started) / 1_000_000n);
    logger.info({ method: req.method, path: url.pathname, status: res.statusCode, durationMs, requestId, aborted: !res.writableFinished || undefined }, 'request');
  });
  void (async () => {
    try {
      const { route, params } = match(routes, req.method ?? 'GET', url.pathname);
      const principal = route.scope === null ? ANONYMOUS : await authenticate(req.headers.authorization);
      if (route.scope !== null) requireScope(principal, route.scope, route.does ?? route.path);
      await route.handle({ req, res, params, query: url.searchParams, requestId, principal });
    } catch (err) {
      const { status, body, headers } = answerFor(err, requestId, logger, req);
      if (res.headersSent) {
        if (!res.writableEnded) res.end();
        return;
      }
      sendJson(res, status, body, headers);
    }
  })();
}

/** `/v1/health` and `/v1/openapi.json`: no key needed. */
function serviceRoutes({ client, logger, healthTimeoutMs, openApi }: ApiContext): Route[] {
  return [
    {
      method: 'GET',
      path: '/v1/health',
      scope: null,
      async handle({ res }) {
        try {
          await client.client.connection.withDeadline(Date.now() + healthTimeoutMs, () => client.client.workflowService.getSystemInfo({}));
          sendJson(res, 200, { ok: true, temporal: 'reachable' });
        } catch (err) {
          logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'health: Temporal did not answer');
          sendJson(res, 503, { ok: false, temporal: 'unreachable' });
        }
      },
    },
    {
      method: 'GET',
      path: '/v1/openapi.json',
      scope: null,
      handle({ res }) {
        res.writeHead(200, { ...JSON_HEADERS, 'cache-control': 'no-cache' });
        res.end(openApi);
        return Promise.resolve();
      },
    },
  ];
}

/** `/v1/tasks…`: submit, read, watch and cancel tasks. */
function taskRoutes(api: ApiContext): Route[] {
  const { client, maxBodyBytes } = api;
  return [
    {
      method: 'POST',
      path: '/v1/tasks',
      scope: 'submit',
      does: 'submit tasks',
      async handle({ req, res, principal }) {
        const body = await readJson(req, maxBodyBytes);
        const input = authorizeSubmission(principal, validate(SubmitTaskInput, body), (body as { tenant?: unknown }).tenant);
        const accepted = await client.submitTask(input);
        await checkSubmitted(client, accepted.taskId, input.tenant);
        sendJson(res, 202, accepted);
      },
    },
    {
      method: 'GET',
      path: '/v1/tasks/:id',
      scope: 'read',
      does: 'read tasks',
      async handle({ res, params, principal }) {
        const taskId = validate(TaskId, params.id, 'id');
        await describeOwnTask(client, principal, taskId);
        sendJson(res, 200, await client.getTask(taskId));
      },
    },
    {
      method: 'GET',
      path: '/v1/tasks/:id/events',
      scope: 'read',
      does: 'watch tasks',
      handle: (ctx) => limitStreams(api, ctx.principal, () => streamEvents(api, ctx, validate(TaskId, ctx.params.id, 'id'))),
    },
    {
      method: 'POST',
      path: '/v1/tasks/:id/cancel',
      scope: 'submit',
      does: 'cancel tasks',
      async handle({ res, params, principal }) {
        const taskId = validate(TaskId, params.id, 'id');
        const described = await describeOwnTask(client, principal, taskId);
        // Temporal accepts a cancellation of a closed run and does nothing: say so instead.
        if (described.status.name !== 'RUNNING') {
          const attrs = described.typedSearchAttributes;
          const status = attrs.get(SEARCH_ATTRIBUTES.taskStatus) ?? described.status.name;
          throw new HttpError(409, `task "${taskId}" has already ended (${status})`);
        }
        await client.cancelTask(taskId);
        sendJson(res, 202, { taskId, cancelRequested: true });
      },
    },
  ];
}

/** `/v1/approvals…`: list and decide approvals. */
function approvalRoutes({ client, maxBodyBytes }: ApiContext): Route[] {
  return [
    {
      method: 'GET',
      path: '/v1/approvals',
      scope: 'read',
      does: 'read approvals',
      async handle({ res, query, principal }) {
        const param = query.get('taskId');
        const taskId = param === null ? null : validate(TaskId, param, 'taskId');
        if (taskId !== null) await describeOwnTask(client, principal, taskId);
        const approvals = taskId !== null ? await client.approvals(taskId) : await ownApprovals(client, principal, await client.pendingApprovals());
        sendJson(res, 200, { approvals });
      },
    },
    {
      method: 'POST',
      path: '/v1/approvals/:id/decision',
      scope: 'approve',
      does: 'decide approvals',
      async handle({ req, res, params, principal }) {
        const approvalId = validate(ApprovalId, params.id, 'id');
        const header = req.headers['idempotency-key'];
        const updateId = header === undefined ? undefined : validate(IdempotencyKey, Array.isArray(header) ? header[0] : header, 'Idempotency-Key');
        const body = validate(DecisionBody, await readJson(req, maxBodyBytes));
        const by = decisionBy(principal, body.by);
        await describeOwnTask(client, principal, body.taskId);
        try {
          const view = await client.decideApproval(
            body.taskId,
            { approvalId, decision: body.decision, reason: body.reason, by },
            updateId ? { updateId } : {},
          );
          sendJson(res, 200, view);
        } catch (err) {
          // The approval was found, so "not found" from the update means its subtask has closed since.
          if (err instanceof WorkflowNotFoundError) throw new HttpError(409, `approval "${approvalId}" of task "${body.taskId}" can no longer be decided: its subtask has ended`);
          throw err;
        }
      },
    },
  ];
}

/** Runs `stream` unless the caller's key already holds `maxStreamsPerKey` open streams (429 then). */
async function limitStreams({ streamsPerKey, maxStreamsPerKey }: ApiContext, principal: Principal, stream: () => Promise<void>): Promise<void> {
  const key = principal.keyId || principal.identity;
  const open = streamsPerKey.get(key) ?? 0;
  if (open >= maxStreamsPerKey) throw new HttpError(429, `too many event streams: at most ${maxStreamsPerKey} may be open per API key`, {}, { 'retry-after': '5' });
  streamsPerKey.set(key, open + 1);
  try {
    await stream();
  } finally {
    const left = (streamsPerKey.get(key) ?? 1) - 1;
    if (left > 0) streamsPerKey.set(key, left);
    else streamsPerKey.delete(key);
  }
}

/** One `event:` per progress change, then the result; stops watching when the client goes away. */
async function streamEvents({ client, logger, streams, watchIntervalMs }: ApiContext, { req, res, requestId, principal }: Ctx, taskId: string): Promise<void> {
  await describeOwnTask(client, principal, taskId); // a 404 while an ordinary JSON answer is still possible
  await client.getTask(taskId);
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  res.flushHeaders();
  streams.add(res);
  // Cancels the pending gRPC call and every later one once the client has gone, which ends the watch.
  const abort = stickyAbortController();
  const gone = new Promise<typeof GONE>((resolve) =>
    res.once('close', () => {
      abort.abort();
      resolve(GONE);
    }),
  );
  const scoped = <T>(fn: () => Promise<T>): Promise<T> => client.client.connection.withAbortSignal(abort.signal, fn);
  const send = (event: string, data: unknown): void => {
    if (!res.writableEnded && !res.destroyed) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  };
  // A comment line now and then keeps proxies from closing a quiet stream.
  const heartbeat = setInterval(() => !res.writableEnded && res.write(': keep-alive\n\n'), 15_000);
  heartbeat.unref();
  const watch = client.watchTask(taskId, { intervalMs: watchIntervalMs });
  try {
    for (;;) {
      const next = await Promise.race([scoped(() => watch.next()), gone]);
      if (next === GONE || next.done) break;
      send('progress', next.value);
    }
    if (!res.writableEnded && !res.destroyed) {
      const result = await Promise.race([scoped(() => client.result(taskId)), gone]);
      if (result !== GONE) send('result', result);
    }
  } catch (err) {
    const { body } = answerFor(err, requestId, logger, req);
    send('error', body);
  } finally {
    clearInterval(heartbeat);
    streams.delete(res);
    watch.return(undefined).catch(() => undefined); // runs once the cancelled call has ended the pending step
    if (!res.writableEnded) res.end();
  }
}

/**
 * Stops accepting connections, ends open event streams, and after `graceMs` (default 5 s) closes
 * whatever requests are still in flight. Resolves once the server is closed.
 */
export async function closeApiServer(server: http.Server, opts: { graceMs?: number } = {}): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  for (const res of openStreams.get(server) ?? []) res.end();
  server.closeIdleConnections();
  const timer = setTimeout(() => server.closeAllConnections(), opts.graceMs ?? 5_000);
  try {
    await closed;
  } finally {
    clearTimeout(timer);
  }
}

/** `mare api`: serves the API until SIGINT or SIGTERM, then closes it. */
export async function serveApi(opts: ApiServerOptions & { port: number; host: string; print: (line: string) => void }): Promise<void> {
  const server = createApiServer(opts);
  const { port } = await listen(server, opts.port, opts.host);
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  opts.print(`MARE HTTP API on http://${host}:${port}/v1 (OpenAPI document: /v1/openapi.json). Press Ctrl-C to stop.`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  opts.print('stopping…');
  await closeApiServer(server);
  opts.print('stopped.');
}

const GONE = Symbol('client gone');

/**
 * An AbortController whose signal also cancels calls that start after it fired: Temporal's connection
 * only subscribes to a future 'abort', so an already aborted plain signal would let a later call run.
 */
function stickyAbortController(): AbortController {
  const controller = new AbortController();
  const { signal } = controller;
  const subscribe = signal.addEventListener.bind(signal) as (...args: unknown[]) => void;
  Object.defineProperty(signal, 'addEventListener', {
    value: (type: string, listener: unknown, options?: unknown): void => {
      if (type === 'abort' && signal.aborted && typeof listener === 'function') queueMicrotask(() => (listener as () => void)());
      else subscribe(type, listener, options);
    },
  });
  return controller;
}
function match(routes: Route[], method: string, pathname: string): { route: Route; params: Record<string, string> } {
  const parts = pathname.split('/');
  const allowed: string[] = [];
  for (const route of routes) {
    const pattern = route.path.split('/');
    if (pattern.length !== parts.length) continue;
    const params: Record<string, string> = {};
    const fits = pattern.every((seg, i) => {
      const part = parts[i] ?? '';
      if (!seg.startsWith(':')) return seg === part;
      if (!part) return false;
      try {
        params[seg.slice(1)] = decodeURIComponent(part);
      } catch {
        throw new HttpError(400, `malformed path segment "${part}"`);
      }
      return true;
    });
    if (!fits) continue;
    if (route.method === method) return { route, params };
    allowed.push(route.method);
  }
  if (allowed.length) throw new HttpError(405, `method ${method} not allowed on ${pathname}`, {}, { allow: allowed.join(', ') });
  throw new HttpError(404, `no route ${method} ${pathname}`);
}

function validate<S extends z.ZodType>(schema: S, value: unknown, name?: string): z.output<S> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issues = toIssues(parsed.error.issues, name);
  throw new HttpError(400, `invalid request: ${issues.map((i) => `${i.path || '(body)'}: ${i.message}`).join('; ')}`, { issues });
}

function toIssues(issues: z.core.$ZodIssue[], prefix?: string): Issue[] {
  const path = (segments: PropertyKey[]): string => [...(prefix ? [prefix] : []), ...segments.map(String)].join('.');
  return issues.flatMap((i) =>
    // An unknown field is named by its own path rather than its parent's.
    i.code === 'unrecognized_keys' ? i.keys.map((k) => ({ path: path([...i.path, k]), message: `unknown field "${k}"` })) : [{ path: path(i.path), message: i.message }],
  );
}

/** The status and JSON body for an error: typed errors by their meaning, anything else 500 without details. */
function answerFor(err: unknown, requestId: string, logger: Logger, req: IncomingMessage): { status: number; body: Record<string, unknown>; headers: Record<string, string> } {
  if (err instanceof HttpError) return { status: err.status, body: { error: err.message, ...err.extra }, headers: err.headers };
  if (err instanceof InvalidTaskRequestError) return { status: 400, body: { error: err.message, issues: toIssues(err.issues) }, headers: {} };
  if (err instanceof TaskNotFoundError || err instanceof ApprovalNotFoundError) return { status: 404, body: { error: err.message }, headers: {} };
  if (err instanceof ApprovalRejectedError) return { status: 409, body: { error: err.message }, headers: {} };
  // A run that cannot answer (no worker polls, or it cannot replay) is not "nothing there".
  if (err instanceof WorkflowQueryFailedError) return { status: 503, body: { error: err.message }, headers: { 'retry-after': '5' } };
  if (err instanceof TemporalUnavailableError || isUnavailable(err)) {
    logger.warn({ requestId, err: err instanceof Error ? err.message : String(err) }, 'Temporal unavailable');
    return { status: 503, body: { error: 'Temporal is unavailable; try again later' }, headers: { 'retry-after': '5' } };
  }
  logger.error({ err, requestId, method: req.method }, 'unexpected error');
  return { status: 500, body: { error: 'internal error', requestId }, headers: {} };
}

/** gRPC UNAVAILABLE or DEADLINE_EXCEEDED from the Temporal frontend. */
function isUnavailable(err: unknown): boolean {
  const code = err instanceof ServiceError ? (err.cause as { code?: number } | undefined)?.code : undefined;
  return code === 14 || code === 4;
}

/** The OpenAPI 3.1 document of the API; request schemas come from the zod schemas that validate them. */
export function openApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.0',
    info: {
      title: 'MARE HTTP API',
      version: '1',
      description:
        'Submit, watch and cancel MARE tasks and decide their approvals without the Temporal client. Every route except /v1/health and /v1/openapi.json needs "Authorization: Bearer <key>".',
    },
    paths: { ...taskPaths(), ...approvalPaths(), ...servicePaths() },
    components: {
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          description:
            "An API key (`mare keys create`, or the operator's MARE_API_KEY). A key acts only in its tenant (another tenant's task is a 404) and needs the route's scope: submit (submit, cancel), read (tasks, events, approvals), approve (decisions), commands (command_succeeds criteria); admin holds every scope in every tenant.",
        },
      },
      schemas: {
        SubmitTaskRequest: jsonSchema(SubmitTaskInput),
        ApprovalDecisionRequest: jsonSchema(DecisionBody),
        ...taskSchemas(),
        ...approvalSchemas(),
        ...serviceSchemas(),
      },
      responses: errorResponses(),
    },
  };
}

/** A zod schema as JSON Schema (of its input), without `$schema`. */
function jsonSchema(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _ignored, ...rest } = z.toJSONSchema(schema, { io: 'input' }) as Record<string, unknown>;
  return rest;
}

function ref(name: string): { $ref: string } {
  return { $ref: `#/components/schemas/${name}` };
}

function json(schema: unknown, description: string): Record<string, unknown> {
  return { description, content: { 'application/json': { schema } } };
}

function error(description: string): { $ref: string } {
  return { $ref: `#/components/responses/${description}` };
}

/** The security requirement of every route that needs a key. */
function guarded(): { security: { bearer: string[] }[] } {
  return { security: [{ bearer: [] }] };
}

/** The error responses every route that needs a key can give. */
function commonErrors(): Record<string, { $ref: string }> {
  return { '401': error('Unauthorized'), '403': error('Forbidden'), '500': error('InternalError'), '503': error('Unavailable') };
}

/** The paths under `/v1/tasks`. */
function taskPaths(): Record<string, unknown> {
  const taskIdParam = { name: 'id', in: 'path', required: true, description: 'The task id.', schema: jsonSchema(TaskId) };
  const common = commonErrors();
  return {
    '/v1/tasks': {
      post: {
        operationId: 'submitTask',
        summary: 'Submit a task. The task id is the idempotency key: the same id again returns the existing task.',
        ...guarded(),
        requestBody: { required: true, content: { 'application/json': { schema: ref('SubmitTaskRequest') } } },
        responses: { '202': json(ref('TaskAccepted'), 'Started, or already started under that id.'), '400': error('BadRequest'), '409': error('Conflict'), '413': error('TooLarge'), '415': error('UnsupportedMediaType'), ...common },
      },
    },
    '/v1/tasks/{id}': {
      get: {
        operationId: 'getTask',
        summary: "A task: its Temporal execution status, its progress while running, its result once completed.",
        ...guarded(),
        parameters: [taskIdParam],
        responses: { '200': json(ref('TaskView'), 'The task.'), '400': error('BadRequest'), '404': error('NotFound'), ...common },
      },
    },
    '/v1/tasks/{id}/events': {
      get: {
        operationId: 'watchTask',
        summary: 'Server-sent events: `progress` (a TaskProgress) on every change, then `result` (a TaskResult) when the task ends, then the stream closes. `error` ({ error }) if the result cannot be read.',
        ...guarded(),
        parameters: [taskIdParam],
        responses: {
          '200': { description: 'An event stream.', content: { 'text/event-stream': { schema: { type: 'string' } } } },
          '400': error('BadRequest'),
          '404': error('NotFound'),
          '429': error('TooManyStreams'),
          ...common,
        },
      },
    },
    '/v1/tasks/{id}/cancel': {
      post: {
        operationId: 'cancelTask',
        summary: 'Request cancellation: the task rolls back what it did and ends COMPENSATED (FAILED if an undo step fails).',
        ...guarded(),
        parameters: [taskIdParam],
        responses: {
          '202': json({ type: 'object', required: ['taskId', 'cancelRequested'], properties: { taskId: { type: 'string' }, cancelRequested: { const: true } } }, 'Cancellation requested.'),
          '400': error('BadRequest'),
          '404': error('NotFound'),
          '409': error('Conflict'),
          ...common,
        },
      },
    },
  };
}

/** The paths under `/v1/approvals`. */
function approvalPaths(): Record<string, unknown> {
  const common = commonErrors();
  return {
    '/v1/approvals': {
      get: {
        operationId: 'listApprovals',
        summary: 'Approvals waiting for a person in every running task; with `taskId`, every approval of that task, decided ones too.',
        ...guarded(),
        parameters: [{ name: 'taskId', in: 'query', required: false, schema: jsonSchema(TaskId) }],
        responses: {
          '200': json({ type: 'object', required: ['approvals'], properties: { approvals: { type: 'array', items: ref('Approval') } } }, 'The approvals.'),
          '400': error('BadRequest'),
          '404': error('NotFound'),
          ...common,
        },
      },
    },
    '/v1/approvals/{id}/decision': {
      post: {
        operationId: 'decideApproval',
        summary: 'Approve or deny a pending approval of a task. The same Idempotency-Key twice has one effect and the same answer.',
        ...guarded(),
        parameters: [
          { name: 'id', in: 'path', required: true, description: 'The approval id (unique within its task).', schema: jsonSchema(ApprovalId) },
          { name: 'Idempotency-Key', in: 'header', required: false, description: 'Used as the update id.', schema: jsonSchema(IdempotencyKey) },
        ],
        requestBody: { required: true, content: { 'application/json': { schema: ref('ApprovalDecisionRequest') } } },
        responses: {
          '200': json(ref('Approval'), 'The approval, decided.'),
          '400': error('BadRequest'),
          '404': error('NotFound'),
          '409': error('Conflict'),
          '413': error('TooLarge'),
          '415': error('UnsupportedMediaType'),
          ...common,
        },
      },
    },
  };
}

/** `/v1/health` and `/v1/openapi.json`: no key needed. */
function servicePaths(): Record<string, unknown> {
  return {
    '/v1/health': {
      get: {
        operationId: 'health',
        summary: 'Whether Temporal answers. No key needed.',
        security: [],
        responses: { '200': json(ref('Health'), 'Temporal is reachable.'), '503': json(ref('Health'), 'Temporal did not answer in time.') },
      },
    },
    '/v1/openapi.json': {
      get: { operationId: 'openApi', summary: 'This document. No key needed.', security: [], responses: { '200': json({ type: 'object' }, 'The OpenAPI 3.1 document.') } },
    },
  };
}

/** The response schemas of the task routes. */
function taskSchemas(): Record<string, unknown> {
  return {
    TaskAccepted: { type: 'object', required: ['taskId', 'workflowId'], properties: { taskId: { type: 'string' }, workflowId: { type: 'string' } } },
    TaskView: {
      type: 'object',
      required: ['taskId', 'workflowId', 'execution'],
      properties: {
        taskId: { type: 'string' },
        workflowId: { type: 'string' },
        execution: { type: 'string', description: "Temporal's execution status: RUNNING, COMPLETED, FAILED, CANCELLED, TERMINATED, TIMED_OUT…" },
        progress: ref('TaskProgress'),
        result: ref('TaskResult'),
      },
    },
    TaskProgress: {
      type: 'object',
      required: ['taskId', 'status', 'phase', 'subtasks'],
      properties: {
        taskId: { type: 'string' },
        status: { enum: ['RUNNING', 'COMPLETED', 'FAILED', 'COMPENSATED'] },
        phase: { enum: ['planning', 'executing', 'verifying', 'compensating', 'done'] },
        plan: { type: 'object', description: 'The validated plan: { subtasks: [{ id, title, instructions, role, dependsOn, … }] }.' },
        planFallbackReason: { type: 'string' },
        subtasks: {
          type: 'array',
          items: {
            type: 'object',
            required: ['id', 'title', 'role', 'state', 'attempts', 'latestStep', 'workflowId'],
            properties: {
              id: { type: 'string' },
              title: { type: 'string' },
              role: { type: 'string' },
              state: { enum: ['pending', 'running', 'verifying', 'completed', 'failed', 'cancelled', 'skipped'] },
              attempts: { type: 'integer' },
              latestStep: { type: 'string' },
              workflowId: { type: 'string' },
              pendingApprovals: { type: 'array', items: { type: 'string' } },
            },
          },
        },
      },
    },
    TaskResult: {
      type: 'object',
      required: ['taskId', 'status', 'cancelled', 'plan', 'subtasks', 'usage', 'models', 'compensations'],
      properties: {
        taskId: { type: 'string' },
        status: { enum: ['COMPLETED', 'FAILED', 'COMPENSATED'] },
        cancelled: { type: 'boolean' },
        plan: { type: 'object' },
        planFallbackReason: { type: 'string' },
        subtasks: { type: 'array', items: { type: 'object', description: 'Per subtask: id, role, roleVersion, status, output, attempts, score, evidenceIds, usage, models, approvals, error…' } },
        usage: { type: 'object', description: 'Token usage: inputTokens, outputTokens, …' },
        verification: { type: 'object', properties: { passed: { type: 'boolean' }, score: { type: 'number' }, evidenceId: { type: 'string' }, feedback: { type: 'string' } } },
        models: { type: 'array', items: { type: 'string' }, description: '`scripted:…` is the offline model.' },
        compensations: { type: 'array', items: { type: 'object' } },
        error: { type: 'string' },
      },
    },
  };
}

/** The response schema of the approval routes. */
function approvalSchemas(): Record<string, unknown> {
  return {
    Approval: {
      type: 'object',
      required: ['approvalId', 'taskId', 'subtaskId', 'workflowId', 'kind', 'target', 'args', 'reason', 'status', 'deadline', 'onTimeout'],
      properties: {
        approvalId: { type: 'string' },
        taskId: { type: 'string' },
        subtaskId: { type: 'string' },
        workflowId: { type: 'string' },
        kind: { enum: ['tool', 'model', 'verification'] },
        target: { type: 'string' },
        args: { type: 'object', description: 'The call arguments, secrets redacted.' },
        reason: { type: 'string' },
        policy: { type: 'string', description: 'name@version#rule' },
        status: { enum: ['pending', 'approved', 'denied', 'timed_out'] },
        deadline: { type: 'string', format: 'date-time' },
        onTimeout: { enum: ['allow', 'deny'] },
        decidedBy: { type: 'string' },
        decisionReason: { type: 'string' },
      },
    },
  };
}

/** The health answer and the error body every route shares. */
function serviceSchemas(): Record<string, unknown> {
  return {
    Health: { type: 'object', required: ['ok', 'temporal'], properties: { ok: { type: 'boolean' }, temporal: { enum: ['reachable', 'unreachable'] } } },
    Error: {
      type: 'object',
      required: ['error'],
      properties: {
        error: { type: 'string' },
        issues: { type: 'array', items: { type: 'object', required: ['path', 'message'], properties: { path: { type: 'string' }, message: { type: 'string' } } } },
        requestId: { type: 'string', description: 'On 500: the id to find the error in the server log.' },
      },
    },
  };
}

/** The error responses, each an `Error` body. */
function errorResponses(): Record<string, unknown> {
  return Object.fromEntries(
    (
      [
        ['BadRequest', 'Invalid body (not JSON, nested deeper than 64 levels, text with a NUL character or a lone surrogate), parameter or task id; `issues` names each field.'],
        ['Unauthorized', 'Missing, wrong or revoked API key.'],
        ['Forbidden', 'The key lacks the scope this call needs.'],
        ['NotFound', "No such task or approval, or another tenant's."],
        ['Conflict', "The approval is no longer pending, the task has already ended, or the task id is another tenant's."],
        ['TooLarge', 'The body is larger than 1 MiB.'],
        ['TooManyStreams', 'The API key already holds the most event streams allowed at once; close one (Retry-After says when to try again).'],
        ['UnsupportedMediaType', 'The body is not application/json.'],
        ['InternalError', 'Unexpected error; the body carries only a request id.'],
        ['Unavailable', 'Temporal is unavailable.'],
      ] as const
    ).map(([name, description]) => [name, json(ref('Error'), description)]),
  );
}
