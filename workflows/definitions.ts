import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { ApprovalDecision, ApprovalView, PendingApprovalNote, SubtaskProgress, TaskProgress, TaskResult } from '../validation';
import type { OutcomeReport, SupervisorState } from '../core/supervisor';

/** The plan and each subtask's state, role, attempts and latest step. */
export const progressQuery = defineQuery<TaskProgress>('progress');

/**
 * The task's result once it has ended (undefined before). A task that ends COMPENSATED or FAILED
 * carries it in its failure's details too; a cancelled run's close event has no room for it.
 */
export const taskResultQuery = defineQuery<TaskResult | undefined>('result');

/** A subtask's approvals that wait for a person, sent to its task whenever they change (empty: none). */
export const subtaskApprovalsSignal = defineSignal<[{ subtaskId: string; pending: PendingApprovalNote[] }]>('subtaskApprovals');

/** Live detail of one running subtask (the parent's `progress` is updated when a subtask ends). */
export const subtaskProgressQuery = defineQuery<SubtaskProgress>('subtaskProgress');

/** A subtask's approvals: pending ones and how earlier ones were decided (arguments redacted). */
export const approvalsQuery = defineQuery<ApprovalView[]>('approvals');

/**
 * A person approves or denies a pending approval. The validator refuses an unknown or already
 * decided approval and a malformed decision; the same update id twice has one effect.
 */
export const decideApprovalUpdate = defineUpdate<ApprovalView, [ApprovalDecision]>('decideApproval');

/** A finished embodiment, for its role's supervisor (sent with signal-with-start by recordEmbodiments). */
export const embodimentOutcomeSignal = defineSignal<[OutcomeReport]>('embodimentOutcome');

/** A person lifted a role's suspension (`mare roles reinstate`): the supervisor starts a fresh window. */
export const reinstateRoleSignal = defineSignal<[{ by: string; reason: string }]>('reinstateRole');

/** Winds the supervisor down: Retiring until no embodiment holds a slot, then Terminated. */
export const retireSupervisorSignal = defineSignal('retireSupervisor');

/** An embodiment of a throttled role asks for a slot (its workflow id), and gives it back when it ends. */
export const acquireSlotSignal = defineSignal<[{ workflowId: string }]>('acquireSlot');
export const releaseSlotSignal = defineSignal<[{ workflowId: string }]>('releaseSlot');

/** The supervisor's answer to acquireSlot: the embodiment may run. */
export const slotGrantedSignal = defineSignal('slotGranted');

/** The supervisor's lifecycle phase, rolling window, throttle, suspension and recent decisions. */
export const supervisorStateQuery = defineQuery<SupervisorState>('supervisorState');
