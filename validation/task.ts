import { z } from 'zod';
import { Criterion } from './criteria';
import type { Plan, Subtask } from './plan';
import { DEFAULT_MAX_SUBTASKS } from './plan';
import type { TokenUsage } from './model';
import type { RoleSource, RoutedBy } from './role';
import type { CompensationOutcome, UndoStep } from './tools';
import type { ApprovalSignature } from '../core/approvalSignature';
import { checkText } from './text';

/** Task ids double as idempotency keys: the same id never starts a second run. */
export const TaskId = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/, 'task ids are 1-128 chars of letters, digits, ".", "_" or "-"');

/** The fields of a TaskRequest, before the text check (for schemas that change a field, such as SubmitTaskInput). */
export const TaskRequestFields = z.strictObject({
  taskId: TaskId,
  goal: z.string().trim().min(1, 'goal must not be empty').max(20_000),
  tenant: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,63}$/).default('default'),
  concurrency: z.number().int().min(1).max(32).default(4),
  maxSubtasks: z.number().int().min(1).max(50).default(DEFAULT_MAX_SUBTASKS),
  /** Checked over the combined result once every subtask is done; failing them rolls the task back. */
  acceptanceCriteria: z.array(Criterion).max(20).optional(),
  /** The composite score the task's own criteria must reach. */
  acceptanceThreshold: z.number().min(0).max(1).default(0.7),
});

/** What an application submits. Validated before anything starts; no text in it may hold NUL or a lone surrogate. */
export const TaskRequest = TaskRequestFields.superRefine(checkText);
export type TaskRequest = z.infer<typeof TaskRequest>;
/** The request before defaults are applied, as a client writes it. */
export type TaskRequestInput = z.input<typeof TaskRequest>;

export type TaskStatus = 'RUNNING' | 'COMPLETED' | 'FAILED' | 'COMPENSATED';
export type SubtaskState = 'pending' | 'running' | 'verifying' | 'completed' | 'failed' | 'cancelled' | 'skipped';

/** The output of a finished dependency, handed to its dependents. */
export interface DependencyOutput {
  id: string;
  title: string;
  output: string;
}

/** Input of the `executeSubtask` child workflow: one embodiment of one role. */
export interface SubtaskInput {
  taskId: string;
  goal: string;
  subtask: Subtask;
  dependencies: DependencyOutput[];
  /** The task's tenant, for policies (runs started before it was passed: "default"). */
  tenant?: string;
}

/** What one embodiment produced: output, verification, usage, and the undo steps it registered. */
export interface SubtaskResult {
  id: string;
  role: string;
  roleVersion: string;
  roleFallbackReason?: string;
  /** The role the planner asked for. */
  roleRequested?: string;
  /** How the role was chosen: the planner's suggestion, a `handles` match, or the default. */
  roleRoutedBy?: RoutedBy;
  /** Where the profile was read from: the repository, the worker's cache, or the last known good copy. */
  roleSource?: RoleSource;
  /** sha256 of the profile as published. */
  roleChecksum?: string;
  /** sha256 of the injected context, one per attempt. */
  contextDigests?: string[];
  status: 'completed' | 'failed' | 'cancelled';
  output: string;
  attempts: number;
  score: number;
  evidenceIds: string[];
  usage: TokenUsage;
  /** The models that answered, as `provider:model` (`scripted:…` is the offline model). */
  models: string[];
  /** Undo steps registered by this subtask, oldest first. */
  undo: UndoStep[];
  deniedToolCalls: number;
  /** Calls escalated to a person, and how each was decided. */
  approvals?: ApprovalView[];
  /** Escalations after failed verification (to another role or to a person). */
  escalations?: number;
  /** The role versions that failed verification and escalated to the one in `role`, in order. */
  escalatedFrom?: string[];
  /** Who accepted the work after it failed verification and escalated to a person. */
  approvedBy?: string;
  error?: string;
}

/** A call a policy escalated to a person, as the `approvals` query and `mare approvals` show it. */
export interface ApprovalView {
  approvalId: string;
  taskId: string;
  subtaskId: string;
  workflowId: string;
  /** A tool call, a model call, or work that failed verification and escalated to a person. */
  kind: 'tool' | 'model' | 'verification';
  /** The tool (`server.tool`), the model, or the role version whose work failed verification. */
  target: string;
  /** The call's arguments with secrets redacted. */
  args: Record<string, unknown>;
  /** Why the policy escalated, and which policy rule did (`name@version#rule`). */
  reason: string;
  policy?: string;
  status: 'pending' | 'approved' | 'denied' | 'timed_out';
  /** ISO time after which the policy's default decision applies. */
  deadline: string;
  onTimeout: 'allow' | 'deny';
  decidedBy?: string;
  decisionReason?: string;
}

/** A person's decision on a pending approval (the `decideApproval` update's argument). */
export interface ApprovalDecision {
  approvalId: string;
  decision: 'approve' | 'deny';
  reason: string;
  /** Who decided; recorded with the decision. */
  by?: string;
  /** The approvers' signature (schemas/approvalSignature.ts); required by runs whose workers have a payload keyring. */
  signature?: ApprovalSignature;
}

/** A pending approval as the task shows it: what waits for a person, on what, and why (no arguments). */
export interface PendingApprovalNote {
  approvalId: string;
  /** The tool and its target (`workspace.write changelog/summary.md`), a model call, or the work of a role version. */
  about: string;
  reason: string;
}

/** One subtask's line in the progress of a task. */
export interface SubtaskProgress {
  id: string;
  title: string;
  role: string;
  state: SubtaskState;
  attempts: number;
  latestStep: string;
  workflowId: string;
  /** Ids of this subtask's approvals still waiting for a person. */
  pendingApprovals?: string[];
}

/** The `progress` query of a task. */
export interface TaskProgress {
  taskId: string;
  status: TaskStatus;
  phase: 'planning' | 'executing' | 'verifying' | 'compensating' | 'done';
  plan?: Plan;
  planFallbackReason?: string;
  subtasks: SubtaskProgress[];
}

/** The final result of `orchestrateTask`. */
export interface TaskResult {
  taskId: string;
  status: Exclude<TaskStatus, 'RUNNING'>;
  cancelled: boolean;
  plan: Plan;
  planFallbackReason?: string;
  subtasks: SubtaskResult[];
  usage: TokenUsage;
  /** The task's own acceptance criteria checked over the combined result, when it has any. */
  verification?: { passed: boolean; score: number; evidenceId: string; feedback: string };
  /** Every model that answered during the task; `scripted:…` means the offline model. */
  models: string[];
  compensations: CompensationOutcome[];
  error?: string;
}
