import type { Headers } from '@temporalio/common';
import type { WorkflowInterceptorsFactory } from '@temporalio/workflow';

/**
 * Carries the client's trace context through workflow code unchanged: the header the
 * OpenTelemetry client interceptor sets on a workflow start is copied onto every activity, local
 * activity, child workflow and signal the workflow sends, so activity spans join the task's trace.
 *
 * Why not @temporalio/interceptors-opentelemetry's own workflow interceptors: they make spans
 * inside the sandbox with extra awaits gated by SDK flags, and with them our subtasks failed replay
 * after a worker restart ("patch marker encountered … no corresponding change command";
 * sdk-typescript #1677, #2023). This one makes no spans, adds no yield points and reads no
 * randomness: it only copies a header, so it cannot change what a workflow does.
 */

/** The header the OpenTelemetry interceptors keep the serialized trace context in. */
export const TRACE_HEADER = '_tracer-data';

export const interceptors: WorkflowInterceptorsFactory = () => {
  let carried: Headers[string] | undefined;
  const withTrace = <T extends { headers: Headers }>(input: T): T =>
    carried && !input.headers[TRACE_HEADER] ? { ...input, headers: { ...input.headers, [TRACE_HEADER]: carried } } : input;
  return {
    inbound: [
      {
        execute(input, next) {
          carried = input.headers[TRACE_HEADER];
          return next(input);
        },
      },
    ],
    outbound: [
      {
        scheduleActivity: (input, next) => next(withTrace(input)),
        scheduleLocalActivity: (input, next) => next(withTrace(input)),
        startChildWorkflowExecution: (input, next) => next(withTrace(input)),
        signalWorkflow: (input, next) => next(withTrace(input)),
      },
    ],
  };
};
