import { setCurrentDetails, setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import { SEARCH_ATTRIBUTES } from '../core/constants';
import type { PendingApprovalNote, TaskProgress, TaskResult } from '../validation';
import { progressQuery, subtaskApprovalsSignal, taskResultQuery } from './definitions';

/**
 * What a task's run shows: the `progress` and `result` queries, and the current step with what
 * waits for a person as the Web UI shows them on the task.
 */
export class TaskBoard {
  readonly progress: TaskProgress;
  /** The task's result once it has ended, for the `result` query. */
  ended: TaskResult | undefined;
  private currentStep = 'validating the request';
  private readonly approvals = new Map<string, PendingApprovalNote[]>();

  constructor(taskId: string) {
    this.progress = { taskId, status: 'RUNNING', phase: 'planning', subtasks: [] };
    setHandler(progressQuery, () => this.progress);
    setHandler(taskResultQuery, () => this.ended);
    // A subtask's approvals that wait for a person show on the task too (MarePendingApproval, details).
    setHandler(subtaskApprovalsSignal, ({ subtaskId, pending }) => {
      if (pending.length) this.approvals.set(subtaskId, pending);
      else this.approvals.delete(subtaskId);
      const sp = this.progress.subtasks.find((p) => p.id === subtaskId);
      if (sp) sp.pendingApprovals = pending.map((a) => a.approvalId);
      upsertSearchAttributes([{ key: SEARCH_ATTRIBUTES.pendingApproval, value: [...this.approvals.values()].flat().map((a) => a.approvalId) }]);
      this.show();
    });
    this.show();
  }

  /** Shows `details` as the run's current step (or the same step again), followed by what waits for a person. */
  show(details?: string): void {
    if (details !== undefined) this.currentStep = details;
    const waiting = [...this.approvals.values()].flat();
    setCurrentDetails(waiting.length ? `${this.currentStep}\n\n**Waiting for a person:**\n${waiting.map((a) => `- approval \`${a.approvalId}\`: ${a.about}: ${a.reason}`).join('\n')}` : this.currentStep);
  }

  /** A subtask's new state, and the count of subtasks done and running as the current step. */
  setState(id: string, state: TaskProgress['subtasks'][number]['state'], latestStep: string, attempts?: number): void {
    const { progress } = this;
    const sp = progress.subtasks.find((p) => p.id === id);
    if (!sp) return;
    sp.state = state;
    sp.latestStep = latestStep;
    if (attempts !== undefined) sp.attempts = attempts;
    const count = (st: string): number => progress.subtasks.filter((p) => p.state === st).length;
    const running = progress.subtasks.filter((p) => p.state === 'running').map((p) => `${p.id} [${p.role}]`);
    this.show(`executing: ${count('completed')}/${progress.subtasks.length} subtasks done${running.length ? `; running ${running.join(', ')}` : ''}${count('failed') ? `; ${count('failed')} failed` : ''}`);
  }

  /** The task has ended: nothing of it waits for a person any more. Returns whether anything did. */
  clearApprovals(): boolean {
    const any = this.approvals.size > 0;
    this.approvals.clear();
    return any;
  }
}
