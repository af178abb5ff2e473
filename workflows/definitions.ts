import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { ApprovalDecision, ApprovalView, SubtaskProgress, TaskProgress } from '../schemas';

/** The plan and each subtask's state, role, attempts and latest step. */
export const progressQuery = defineQuery<TaskProgress>('progress');

/** Live detail of one running subtask (the parent's `progress` is updated when a subtask ends). */
export const subtaskProgressQuery = defineQuery<SubtaskProgress>('subtaskProgress');

/** A subtask's approvals: pending ones and how earlier ones were decided (arguments redacted). */
export const approvalsQuery = defineQuery<ApprovalView[]>('approvals');

/**
 * A person approves or denies a pending approval. The validator refuses an unknown or already
 * decided approval and a malformed decision; the same update id twice has one effect.
 */
export const decideApprovalUpdate = defineUpdate<ApprovalView, [ApprovalDecision]>('decideApproval');
