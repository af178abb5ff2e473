import { context, propagation, trace, type Tracer } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { Resource } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { ClientInterceptors } from '@temporalio/client';
import { OpenTelemetryActivityInboundInterceptor, OpenTelemetryActivityOutboundInterceptor, OpenTelemetryWorkflowClientInterceptor } from '@temporalio/interceptors-opentelemetry';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';

/**
 * MARE's workflow interceptor module (workflows/traceContext.ts): copies the client's trace context
 * onto the activities and children a workflow starts, with no spans and no yield points inside the
 * sandbox. Every bundle carries it (`bundleMareWorkflows`).
 */
export const TRACING_WORKFLOW_INTERCEPTOR_MODULE = require.resolve('../workflows/traceContext');

/** The service name spans carry when OTEL_SERVICE_NAME is unset. */
export const DEFAULT_SERVICE_NAME = 'mare-worker';

/** An OpenTelemetry environment variable has a value MARE cannot use. */
export class TracingConfigError extends Error {
  override readonly name = 'TracingConfigError';
  constructor(
    readonly variable: string,
    readonly value: string,
    reason: string,
  ) {
    super(`${variable}=${JSON.stringify(value)}: ${reason}`);
  }
}

/** What the environment asks for; `tracingConfigFromEnv` returns undefined when tracing is off. */
export interface TracingConfig {
  serviceName: string;
  /** Where OTLP/HTTP (JSON) spans go: the full URL of the traces endpoint. */
  otlpUrl?: string;
  /** Spans are also printed to stdout (OTEL_TRACES_EXPORTER=console). */
  console: boolean;
}

type Env = Record<string, string | undefined>;

const SUPPORTED_EXPORTERS = ['otlp', 'console', 'none'];
const DEFAULT_OTLP_BASE = 'http://localhost:4318';

/**
 * Reads the standard OpenTelemetry variables. Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, or OTEL_TRACES_EXPORTER names `otlp` and/or `console`;
 * OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true turn it off. OTLP goes over HTTP as JSON, so
 * OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL may only be `http/json`. The exporter itself still reads
 * OTEL_EXPORTER_OTLP_(TRACES_)HEADERS, _TIMEOUT and _COMPRESSION, and the SDK OTEL_BSP_* and
 * OTEL_TRACES_SAMPLER*, from process.env.
 */
export function tracingConfigFromEnv(env: Env = process.env, defaults: { serviceName?: string } = {}): TracingConfig | undefined {
  const get = (name: string): string | undefined => {
    const v = env[name]?.trim();
    return v ? v : undefined;
  };
  const disabled = get('OTEL_SDK_DISABLED');
  if (disabled !== undefined) {
    if (!['true', 'false'].includes(disabled.toLowerCase())) throw new TracingConfigError('OTEL_SDK_DISABLED', disabled, 'expected true or false');
    if (disabled.toLowerCase() === 'true') return undefined;
  }

  const exportersValue = get('OTEL_TRACES_EXPORTER');
  let exporters: string[] | undefined;
  if (exportersValue !== undefined) {
    exporters = [...new Set(exportersValue.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean))];
    const unknown = exporters.filter((e) => !SUPPORTED_EXPORTERS.includes(e));
    if (unknown.length) throw new TracingConfigError('OTEL_TRACES_EXPORTER', exportersValue, `unsupported exporter ${unknown.join(', ')}: expected otlp, console (or both, comma-separated) or none`);
    if (exporters.includes('none')) {
      if (exporters.length > 1) throw new TracingConfigError('OTEL_TRACES_EXPORTER', exportersValue, '"none" cannot be combined with other exporters');
      return undefined;
    }
  }

  const tracesEndpoint = get('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT');
  const baseEndpoint = get('OTEL_EXPORTER_OTLP_ENDPOINT');
  const otlp = exporters ? exporters.includes('otlp') : tracesEndpoint !== undefined || baseEndpoint !== undefined;
  const toConsole = exporters?.includes('console') ?? false;
  if (!otlp && !toConsole) return undefined;

  let otlpUrl: string | undefined;
  if (otlp) {
    for (const name of ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', 'OTEL_EXPORTER_OTLP_PROTOCOL']) {
      const protocol = get(name);
      if (protocol !== undefined && protocol !== 'http/json') {
        throw new TracingConfigError(name, protocol, 'MARE exports OTLP over HTTP as JSON only: use http/json (collectors accept it on port 4318), or unset it');
      }
    }
    // As the specification says: the signal-specific endpoint is used as is, the base one gets /v1/traces.
    otlpUrl = tracesEndpoint
      ? httpUrl('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', tracesEndpoint)
      : `${httpUrl(baseEndpoint ? 'OTEL_EXPORTER_OTLP_ENDPOINT' : 'default', baseEndpoint ?? DEFAULT_OTLP_BASE).replace(/\/+$/, '')}/v1/traces`;
  }
  return { serviceName: get('OTEL_SERVICE_NAME') ?? defaults.serviceName ?? DEFAULT_SERVICE_NAME, ...(otlpUrl ? { otlpUrl } : {}), console: toConsole };
}

function httpUrl(variable: string, value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new TracingConfigError(variable, value, 'not a URL: expected e.g. http://localhost:4318');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TracingConfigError(variable, value, 'expected an http:// or https:// URL');
  return value;
}

/** Everything a worker and a client need to trace through Temporal's interceptors. */
export interface Tracing {
  readonly config: TracingConfig;
  /** The tracer MARE's own spans may use (the interceptors use it too). */
  readonly tracer: Tracer;
  /**
   * For the Worker's `interceptors`: activity spans, and client spans for the calls activities make
   * through `Context.current().client` (the supervisor signals), so those join the task's trace.
   */
  readonly workerInterceptors: { activity: ActivityInterceptorsFactory[]; client: ClientInterceptors };
  /** For `new Client({ interceptors })`: StartWorkflow, SignalWorkflow, QueryWorkflow… spans whose context reaches the workflow. */
  readonly clientInterceptors: ClientInterceptors;
  /** Sends the spans ended so far. */
  forceFlush(): Promise<void>;
  /** Sends what is left, stops the exporter and releases the global OpenTelemetry registrations. */
  shutdown(): Promise<void>;
}

/**
 * Tracing as the environment asks for it (see `tracingConfigFromEnv`), or undefined when it is off.
 * Call it once per process and share the result between the worker and any client in that process.
 */
export function tracingFromEnv(env: Env = process.env, defaults: { serviceName?: string } = {}): Tracing | undefined {
  const config = tracingConfigFromEnv(env, defaults);
  return config ? createTracing(config) : undefined;
}

/**
 * Builds the exporter, the span processor and the interceptors. Registers a global tracer provider,
 * context manager (AsyncLocalStorage) and W3C propagator unless some are already registered: the
 * interceptors read the active context and inject it into Temporal headers through those globals.
 */
export function createTracing(config: TracingConfig, opts: { spanProcessors?: SpanProcessor[] } = {}): Tracing {
  const resource = Resource.default().merge(new Resource({ 'service.name': config.serviceName }));
  const spanProcessors = [
    ...(config.otlpUrl ? [new BatchSpanProcessor(new OTLPTraceExporter({ url: config.otlpUrl }))] : []),
    ...(config.console ? [new SimpleSpanProcessor(new ConsoleSpanExporter())] : []),
    ...(opts.spanProcessors ?? []),
  ];
  const provider = new BasicTracerProvider({ resource, spanProcessors });
  const tracer = provider.getTracer('mare');
  const contextManager = new AsyncLocalStorageContextManager();
  const registered = {
    // Each returns false (and leaves the existing one alone) when something registered first.
    provider: trace.setGlobalTracerProvider(provider),
    context: context.setGlobalContextManager(contextManager.enable()),
    propagator: propagation.setGlobalPropagator(new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] })),
  };
  if (!registered.context) contextManager.disable();
  let stopped: Promise<void> | undefined;

  return {
    config,
    tracer,
    workerInterceptors: {
      activity: [(ctx) => ({ inbound: new OpenTelemetryActivityInboundInterceptor(ctx, { tracer }), outbound: new OpenTelemetryActivityOutboundInterceptor(ctx) })],
      client: { workflow: [new OpenTelemetryWorkflowClientInterceptor({ tracer })] },
    },
    clientInterceptors: { workflow: [new OpenTelemetryWorkflowClientInterceptor({ tracer })] },
    forceFlush: () => provider.forceFlush(),
    shutdown() {
      stopped ??= (async () => {
        try {
          await provider.shutdown();
        } finally {
          if (registered.provider) trace.disable();
          if (registered.context) context.disable();
          if (registered.propagator) propagation.disable();
        }
      })();
      return stopped;
    },
  };
}
