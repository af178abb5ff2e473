import { Context } from '@temporalio/activity';

/**
 * A key stable across retries of the current activity: workflow id + activity id. Local activities
 * number their ids separately, so theirs are marked to never collide with a regular activity's.
 */
export function activityKey(): string {
  const info = Context.current().info;
  return `${info.workflowExecution?.workflowId ?? 'standalone'}:${info.isLocal ? 'local-' : ''}${info.activityId}`;
}

/** JSON with sorted keys, so equal values always have equal digests. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)))
      : v,
  );
}
