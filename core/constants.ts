import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** The task queue of the workflows and their bookkeeping. */
export const TASK_QUEUE = 'mare-tasks';

/**
 * Task queues by kind of work: workflows and bookkeeping, model calls (plan, act, verify), tool calls
 * and their undo steps. A worker process serves any subset (`mare worker --queues models,tools`).
 */
export const TASK_QUEUES = { orchestration: TASK_QUEUE, models: 'mare-models', tools: 'mare-tools' } as const;
export type QueueKind = keyof typeof TASK_QUEUES;
export const QUEUE_KINDS = Object.keys(TASK_QUEUES) as QueueKind[];

/** Verification attempts per subtask: the first run, then one retry with the verifier's feedback. */
export const MAX_VERIFY_ATTEMPTS = 2;

/** Tool output longer than this is stored in PostgreSQL and only a preview goes into history. */
export const TOOL_OUTPUT_HISTORY_LIMIT = 4_000;

/** Custom search attributes: registered by `mare dev` and the test server, set by orchestrateTask. */
export const SEARCH_ATTRIBUTES = {
  /** A task's status (RUNNING, COMPLETED, FAILED, COMPENSATED). */
  taskStatus: defineSearchAttributeKey('MareTaskStatus', SearchAttributeType.KEYWORD),
  /** The task id, on the task's workflow and on each of its subtask workflows. */
  taskId: defineSearchAttributeKey('MareTaskId', SearchAttributeType.KEYWORD),
  tenant: defineSearchAttributeKey('MareTenant', SearchAttributeType.KEYWORD),
  /** Role versions a run embodied, as `name@version` (a subtask: its one role; a task: all of them). */
  roles: defineSearchAttributeKey('MareRoles', SearchAttributeType.KEYWORD_LIST),
  /** Approvals a run waits on (ids); empty when none is pending. */
  pendingApproval: defineSearchAttributeKey('MarePendingApproval', SearchAttributeType.KEYWORD_LIST),
  /** A role supervisor's lifecycle phase (Init, Ready, Active, Suspended, Retiring, Terminated). */
  supervisorPhase: defineSearchAttributeKey('MareSupervisorPhase', SearchAttributeType.KEYWORD),
  /** A role supervisor's throttle cap ("none" when not throttled). */
  supervisorThrottle: defineSearchAttributeKey('MareSupervisorThrottle', SearchAttributeType.KEYWORD),
} as const;

/** The access a built-in tool needs; tools not listed here need "write". */
export const BUILTIN_TOOL_ACCESS: Readonly<Record<string, 'read' | 'write'>> = {
  'workspace.read': 'read',
  'workspace.list': 'read',
  'workspace.write': 'write',
};

/** The pseudo subtask id under which a task's own acceptance criteria are verified (and may rely on all its tool calls). */
export const TASK_SCOPE = '(task)';

/** Workflow id of a task: derived from the task id, so one id can start at most one run. */
export function taskWorkflowId(taskId: string): string {
  return `mare-task-${taskId}`;
}

/** Workflow id of a subtask's child workflow. */
export function subtaskWorkflowId(taskId: string, subtaskId: string): string {
  return `${taskWorkflowId(taskId)}--${subtaskId}`;
}

/** The tenant of a task that names none (and of runs started before tenants were passed on). */
export const DEFAULT_TENANT = 'default';

/**
 * Workflow id of a role's supervisor for one tenant: one per (role, tenant), so one tenant's
 * failures never throttle or suspend the role for another. The default tenant keeps the id of the
 * one-per-role supervisor it replaces; any other tenant is percent-encoded after a ':', which
 * neither a role name nor an encoded tenant contains, so no two (role, tenant) pairs share an id.
 */
export function supervisorWorkflowId(role: string, tenant: string = DEFAULT_TENANT): string {
  return tenant === DEFAULT_TENANT ? `mare-role-supervisor-${role}` : `mare-role-supervisor-${role}:${encodeURIComponent(tenant)}`;
}

/** A text cut to `max` characters for one line of the Web UI (summaries are single lines). */
export function oneLine(text: string, max = 120): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/**
 * What an escalation waits for when its rule does not say: the policy schema's defaults, and the
 * evaluator's and approvals' fallback. Here (nothing of ours imported) so validation/ can use it without a cycle.
 */
export const APPROVAL_DEFAULTS: Readonly<{ timeoutSeconds: number; onTimeout: 'allow' | 'deny' }> = { timeoutSeconds: 3600, onTimeout: 'deny' };
