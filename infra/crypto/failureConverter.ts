import {
  ApplicationFailure,
  DefaultFailureConverter,
  TemporalFailure,
  type FailureConverter,
  type PayloadConverter,
  type ProtoFailure,
  type SerializationContext,
} from '@temporalio/common';

/**
 * Failure types whose messages MARE builds from ids, statuses, counts and failure types only, never
 * from goals, outputs, arguments or model text: they stay readable without the codec.
 */
const PUBLIC_MESSAGE_TYPES: ReadonlySet<string> = new Set(['TaskCompensated', 'TaskFailed', 'SubtaskFailed', 'SubtaskCancelled', 'InvalidTaskRequest']);

/**
 * MARE's failure converter. Every failure's message and stack trace move into its encoded
 * attributes, a payload, so the payload codec encrypts them like any other data; the top-level
 * message, which the Web UI and `temporal workflow list` show without the codec, is a headline that
 * gives nothing away: the message itself for MARE's outcome failures and Temporal's own wrappers
 * (activity, child workflow, timeout, cancellation), the failure's type for anything else. Stack
 * traces carry file names, never the worker machine's directories. Loaded by path
 * (FAILURE_CONVERTER_PATH) by workers and clients, and bundled into the workflow code.
 */
export class MareFailureConverter extends DefaultFailureConverter implements FailureConverter {
  constructor() {
    super({ encodeCommonAttributes: false });
  }

  override errorToFailure(err: unknown, payloadConverter: PayloadConverter, context?: SerializationContext): ProtoFailure {
    const failure = super.errorToFailure(err, payloadConverter, context);
    const { message, stackTrace } = failure;
    // A failure received earlier and thrown again keeps the encoded attributes it came with.
    failure.encodedAttributes ??= payloadConverter.toPayload({ message, stack_trace: withoutDirectories(stackTrace ?? '') }, context);
    failure.message = headline(err, message ?? '');
    failure.stackTrace = '';
    return failure;
  }
}

function headline(err: unknown, message: string): string {
  if (err instanceof ApplicationFailure) {
    if (err.type && PUBLIC_MESSAGE_TYPES.has(err.type)) return message;
    return `${err.type ?? 'Error'} (the message is in the failure's encoded attributes)`;
  }
  if (err instanceof TemporalFailure) return message;
  return `${err instanceof Error ? err.name : 'Error'} (the message is in the failure's encoded attributes)`;
}

/** `at f (/home/ci/mare/dist/activities/x.js:3:9)` → `at f (x.js:3:9)`: no directory of the worker's machine. */
export function withoutDirectories(text: string): string {
  return text.replace(/(?:file:\/\/|webpack-internal:\/\/\/?)?(?:[A-Za-z]:)?(?:[\\/][^\s\\/():]+)*[\\/]([^\s\\/():]+)/g, '$1');
}

export const failureConverter = new MareFailureConverter();
