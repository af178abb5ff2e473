import { defineQuery } from '@temporalio/workflow';
import type { SubtaskProgress, TaskProgress } from '../schemas';

/** The plan and each subtask's state, role, attempts and latest step. */
export const progressQuery = defineQuery<TaskProgress>('progress');

/** Live detail of one running subtask (the parent's `progress` is updated when a subtask ends). */
export const subtaskProgressQuery = defineQuery<SubtaskProgress>('subtaskProgress');
