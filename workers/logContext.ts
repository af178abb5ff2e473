import { AsyncLocalStorage } from 'node:async_hooks';
import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, Next } from '@temporalio/worker';
import { Context } from '@temporalio/activity';

/** What every log line written during an activity carries: the task, the workflow and the activity. */
export interface LogContext {
  taskId?: string;
  workflowId: string;
  activity: string;
  activityId: string;
  attempt: number;
  /** The role of an agent's call, when the activity's input names it. */
  role?: string;
}

/** The context of the activity running in this async call chain (pino's mixin reads it). */
export const logContext = new AsyncLocalStorage<LogContext>();

/** Sets the log context for each activity execution (registered by createMareWorker). */
export class LogContextInterceptor implements ActivityInboundCallsInterceptor {
  async execute(input: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    const info = Context.current().info;
    const workflowId = info.workflowExecution?.workflowId ?? '';
    const taskId = /^mare-task-(.+?)(?:--.*)?$/.exec(workflowId)?.[1];
    const first = input.args[0] as { meta?: { role?: unknown } } | undefined;
    const role = typeof first?.meta?.role === 'string' ? first.meta.role : undefined;
    return logContext.run(
      { workflowId, activity: info.activityType, activityId: info.activityId, attempt: info.attempt, ...(taskId ? { taskId } : {}), ...(role ? { role } : {}) },
      () => next(input),
    );
  }
}
