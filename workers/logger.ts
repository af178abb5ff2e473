import pino, { type DestinationStream, type LogFn, type Logger } from 'pino';
import pretty from 'pino-pretty';
import { createRedactor, type Redactor } from '../infra/secrets';
import { loadToolsConfig } from '../activities/tools';
import { logContext } from './logContext';

/** Where a logger writes and what it redacts. */
export interface LoggerOptions {
  /** Default: `processRedactor()`, the environment's secrets and the tools configuration's. */
  redactor?: Redactor;
  /** Default: standard output. */
  destination?: DestinationStream;
  /** Human-readable lines (pino-pretty) instead of JSON: `mare dev` on a terminal, or MARE_LOG_PRETTY=1. */
  pretty?: boolean;
}

/**
 * The redactor of this process: secret environment values (and those the tools configuration's
 * `secrets.env` names) plus its `secrets.patterns`, the rules the worker redacts stored content
 * with. An unreadable tools configuration or an unusable pattern throws (ToolsConfigError,
 * SecretsConfigError): a logger never runs with fewer rules than the worker.
 */
export function processRedactor(): Redactor {
  return createRedactor(loadToolsConfig().secrets);
}

/**
 * The process logger. MARE_LOG_LEVEL sets the level (default info). Every line is redacted: the
 * message and its interpolation arguments, the merged object (deep, errors included) and, as a last
 * pass over the written JSON, child bindings and anything else that reached the line.
 */
export function createLogger(name = 'mare', opts: LoggerOptions = {}): Logger {
  const redactor = opts.redactor ?? processRedactor();
  const options: pino.LoggerOptions = {
    name,
    level: process.env.MARE_LOG_LEVEL ?? 'info',
    // Lines written while an activity runs carry its task id, workflow id, activity and role.
    mixin: () => ({ ...logContext.getStore() }),
    // pino's own err serializer would retype an already redacted error shape as "Object".
    serializers: { err: (err: unknown) => (err instanceof Error ? redactor.redactDeep(err) : err) },
    hooks: {
      logMethod(args, method) {
        const redacted = (args as unknown[]).map((arg, i) =>
          // pino logs a bare Error as { err } with its message; keep that shape once it is a plain object.
          i === 0 && arg instanceof Error ? { err: redactor.redactDeep(arg) } : redactor.redactDeep(arg),
        );
        method.apply(this, redacted as Parameters<LogFn>);
      },
      // The built-in shapes never cross a quote, so this pass keeps the line valid JSON.
      streamWrite: (line) => redactor.redact(line),
    },
  };
  if (opts.pretty) {
    // Lines are redacted before they reach pino-pretty (streamWrite runs first), so pretty output is redacted too.
    return pino(options, pretty({ destination: opts.destination ?? 1, sync: true, colorize: !opts.destination && process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
  }
  return opts.destination ? pino(options, opts.destination) : pino(options);
}
