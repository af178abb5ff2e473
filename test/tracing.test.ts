import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@temporalio/client';
import { Worker, type WorkerOptions } from '@temporalio/worker';
import pino from 'pino';
import { createModelClient } from '../infra/models/model';
import { createRedactor } from '../infra/secrets';
import { ToolCatalog } from '../activities/tools';
import { createMareWorker } from '../workers/worker';
import { MareClient } from '../client/client';
import { TASK_QUEUE, taskWorkflowId } from '../core/constants';
import { ToolsConfig } from '../validation/toolConfig';
import {
  DEFAULT_SERVICE_NAME,
  TRACING_WORKFLOW_INTERCEPTOR_MODULE,
  tracingConfigFromEnv,
  TracingConfigError,
  tracingFromEnv,
  type Tracing,
} from '../infra/tracing';
import { createTestStack, planReply, type ScriptInput, type TestStack } from './helpers';
import { BUNDLE_PATH } from './paths';

describe('tracing configuration from the environment', () => {
  test('off by default, and OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true force it off', () => {
    expect(tracingConfigFromEnv({})).toBeUndefined();
    expect(tracingFromEnv({})).toBeUndefined();
    expect(tracingConfigFromEnv({ OTEL_SERVICE_NAME: 'x', OTEL_EXPORTER_OTLP_ENDPOINT: '' })).toBeUndefined();
    expect(tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' })).toBeUndefined();
    expect(tracingFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' })).toBeUndefined();
    expect(tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'true' })).toBeUndefined();
  });

  test('an OTLP endpoint switches it on: the base endpoint gets /v1/traces, the traces endpoint is used as is', () => {
    expect(tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' })).toEqual({
      serviceName: DEFAULT_SERVICE_NAME,
      otlpUrl: 'http://collector:4318/v1/traces',
      console: false,
    });
    expect(DEFAULT_SERVICE_NAME).toBe('mare-worker');
    expect(
      tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://ignored:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://otel.example/ingest', OTEL_SERVICE_NAME: 'mare-eu' }),
    ).toEqual({ serviceName: 'mare-eu', otlpUrl: 'https://otel.example/ingest', console: false });
    expect(tracingConfigFromEnv({ OTEL_TRACES_EXPORTER: 'otlp' }, { serviceName: 'mare-client' })).toEqual({ serviceName: 'mare-client', otlpUrl: 'http://localhost:4318/v1/traces', console: false });
    expect(tracingConfigFromEnv({ OTEL_TRACES_EXPORTER: 'console' })).toEqual({ serviceName: 'mare-worker', console: true });
    expect(tracingConfigFromEnv({ OTEL_TRACES_EXPORTER: 'console', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toEqual({ serviceName: 'mare-worker', console: true });
    expect(tracingConfigFromEnv({ OTEL_TRACES_EXPORTER: 'otlp,console', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' })).toEqual({
      serviceName: 'mare-worker',
      otlpUrl: 'http://c:4318/v1/traces',
      console: true,
    });
  });

  test('what a worker and a client need, and a shutdown that may be called twice', async () => {
    const tracing = tracingFromEnv({ OTEL_TRACES_EXPORTER: 'console', OTEL_SERVICE_NAME: 'mare-unit' })!;
    expect(tracing.config).toEqual({ serviceName: 'mare-unit', console: true });
    expect(TRACING_WORKFLOW_INTERCEPTOR_MODULE).toMatch(/workflows[\\/]traceContext\.[jt]s$/);
    expect(tracing.workerInterceptors.activity).toHaveLength(1);
    expect(tracing.workerInterceptors.client.workflow).toHaveLength(1);
    expect(tracing.clientInterceptors.workflow).toHaveLength(1);
    await tracing.shutdown();
    await tracing.shutdown();
  });

  test.each([
    [{ OTEL_TRACES_EXPORTER: 'zipkin' }, 'OTEL_TRACES_EXPORTER'],
    [{ OTEL_TRACES_EXPORTER: 'none,console' }, 'OTEL_TRACES_EXPORTER'],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }, 'OTEL_EXPORTER_OTLP_ENDPOINT'],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' }, 'OTEL_EXPORTER_OTLP_ENDPOINT'],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'grpc://collector:4317' }, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, 'OTEL_EXPORTER_OTLP_PROTOCOL'],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf' }, 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL'],
    [{ OTEL_SDK_DISABLED: 'yes' }, 'OTEL_SDK_DISABLED'],
  ])('%j is refused with a TracingConfigError naming %s', (env, variable) => {
    let error: unknown;
    try {
      tracingFromEnv(env);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(TracingConfigError);
    expect((error as TracingConfigError).variable).toBe(variable);
    expect((error as Error).message).toMatch(new RegExp(`^${variable}=`));
  });
});

/** A span as the OTLP/HTTP JSON exporter sends it. */
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  serviceName?: string;
}

/** A local OTLP/HTTP receiver: records every POST /v1/traces body. */
async function startOtlpReceiver(): Promise<{ url: string; spans(): OtlpSpan[]; paths: string[]; close(): Promise<void> }> {
  const bodies: unknown[] = [];
  const paths: string[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      paths.push(`${req.method} ${req.url} ${req.headers['content-type']}`);
      if (req.method === 'POST' && req.url === '/v1/traces') {
        bodies.push(JSON.parse(Buffer.concat(chunks).toString('utf8')));
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } else {
        res.writeHead(404).end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  type Body = { resourceSpans?: { resource?: { attributes?: { key: string; value: { stringValue?: string } }[] }; scopeSpans?: { spans?: OtlpSpan[] }[] }[] };
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    paths,
    spans: () =>
      (bodies as Body[]).flatMap((b) =>
        (b.resourceSpans ?? []).flatMap((rs) => {
          const serviceName = rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value.stringValue;
          return (rs.scopeSpans ?? []).flatMap((ss) => (ss.spans ?? []).map((s) => ({ ...s, ...(serviceName ? { serviceName } : {}) })));
        }),
      ),
    close: () => new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve()))),
  };
}

let stack: TestStack;
let tracedBundle: { code: string };

beforeAll(async () => {
  stack = await createTestStack();
  // The shared test bundle is MARE's: it always carries the trace-context interceptor.
  tracedBundle = { code: readFileSync(BUNDLE_PATH, 'utf8') };
});

afterAll(async () => {
  await stack?.teardown();
});

const script: ScriptInput = {
  rules: [planReply([{ id: 'notes', title: 'Write the notes', instructions: 'Write notes', role: 'writer' }]), { match: { purpose: 'act' }, reply: { text: 'the notes' } }],
};

/**
 * Runs `fn` with MARE's workers (every queue) on the given bundle, interceptors and sinks, with the
 * default data converter, so the clients here use the default one too.
 */
async function withTracedWorker<T>(opts: Pick<WorkerOptions, 'interceptors'> & { workflowBundle: { code: string } }, fn: () => Promise<T>): Promise<T> {
  const toolsConfig = ToolsConfig.parse({});
  const tools = new ToolCatalog(toolsConfig);
  const model = createModelClient({ provider: 'scripted', modelId: stack.writeScript(script) });
  const deps = { pool: stack.pool, model, roles: stack.roles, policies: stack.policies, tools, redactor: createRedactor(toolsConfig.secrets), workspaceRoot: stack.workspaceRoot, logger: pino({ level: 'silent' }) };
  try {
    const worker = await createMareWorker({
      connection: stack.env.nativeConnection,
      workflowBundle: opts.workflowBundle,
      deps,
      ...(opts.interceptors ? { interceptors: opts.interceptors } : {}),
      shutdownGraceTime: '1 second',
    });
    return await worker.runUntil(fn());
  } finally {
    await tools.close();
  }
}

describe('spans through the Temporal interceptors', () => {
  let receiver: Awaited<ReturnType<typeof startOtlpReceiver>>;
  let tracing: Tracing;

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
  });
  afterAll(async () => {
    await tracing?.shutdown();
    await receiver?.close();
  });

  test('client and activity spans reach an OTLP/HTTP receiver as one trace', async () => {
    tracing = tracingFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_SERVICE_NAME: 'mare-tracing-test' })!;
    expect(tracing.config.otlpUrl).toBe(`${receiver.url}/v1/traces`);
    const client = new MareClient(new Client({ connection: stack.env.connection, interceptors: tracing.clientInterceptors }), TASK_QUEUE);

    const result = await withTracedWorker({ workflowBundle: tracedBundle, interceptors: tracing.workerInterceptors }, async () => {
      await client.submitTask({ taskId: 'traced', goal: 'Write the notes' });
      return client.result('traced');
    });
    expect(result.status).toBe('COMPLETED');
    // The worker has stopped, so every workflow span has crossed the sink; shutdown sends them.
    await tracing.shutdown();

    expect(receiver.paths.every((p) => p === 'POST /v1/traces application/json')).toBe(true);
    const spans = receiver.spans();
    const named = (name: string): OtlpSpan => {
      const found = spans.filter((s) => s.name === name);
      expect({ name, count: found.length }).toEqual({ name, count: 1 });
      return found[0]!;
    };
    const start = named('StartWorkflow:orchestrateTask');
    const decompose = named('RunActivity:decompose');
    const callModel = named('RunActivity:callModel');

    // One trace: the workflows carry the client's context (workflows/traceContext.ts) to the
    // activities of the task and of its subtask, which are children of the client's start.
    expect(new Set(spans.map((s) => s.traceId))).toEqual(new Set([start.traceId]));
    expect(start.parentSpanId ?? '').toBe('');
    expect(decompose.parentSpanId).toBe(start.spanId);
    expect(callModel.parentSpanId).toBe(start.spanId);
    // No span is made inside workflow code (that is what kept replay deterministic).
    expect(spans.filter((s) => /^(RunWorkflow|StartActivity|StartChildWorkflow|HandleSignal):/.test(s.name))).toEqual([]);
    // The supervisor signal an activity sends through the worker's client joins the trace too.
    const signal = named('SignalWithStartWorkflow:superviseRole');
    expect(spans.find((s) => s.spanId === signal.parentSpanId)?.name).toBe('RunActivity:finishSubtask');
    expect(new Set(spans.map((s) => s.serviceName))).toEqual(new Set(['mare-tracing-test']));

    // The run's history replays.
    const history = await stack.env.client.workflow.getHandle(taskWorkflowId('traced')).fetchHistory();
    await Worker.runReplayHistory({ workflowBundle: tracedBundle }, history, taskWorkflowId('traced'));
  });
});

describe('tracing off', () => {
  test('without a traced client nothing is carried: no activity gets a trace header', async () => {
    const client = new MareClient(new Client({ connection: stack.env.connection }), TASK_QUEUE);
    const quiet = await withTracedWorker({ workflowBundle: tracedBundle }, async () => {
      await client.submitTask({ taskId: 'untraced', goal: 'Write the notes' });
      return client.result('untraced');
    });
    expect(quiet.status).toBe('COMPLETED');
    const events = (await stack.env.client.workflow.getHandle(taskWorkflowId('untraced')).fetchHistory()).events ?? [];
    const scheduled = events.filter((e) => e.activityTaskScheduledEventAttributes).map((e) => Object.keys(e.activityTaskScheduledEventAttributes?.header?.fields ?? {}));
    expect(scheduled.length).toBeGreaterThan(0);
    expect(scheduled.flat()).not.toContain('_tracer-data');
  });
});
