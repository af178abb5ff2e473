import { CancellationScope, condition, getExternalWorkflowHandle, log, setHandler, sleep, upsertSearchAttributes } from '@temporalio/workflow';
import { approvalSignatureError } from '../core/approvalSignature';
import { oneLine, SEARCH_ATTRIBUTES } from '../core/constants';
import { APPROVAL_DEFAULTS } from '../core/constants';
import type { ApprovalDecision, ApprovalTerms, ApprovalView, PendingApprovalNote, PolicyDecision } from '../validation';
import { bookkeeping as store } from './activityProfiles';
import { approvalsQuery, decideApprovalUpdate, subtaskApprovalsSignal } from './definitions';

/** What happened to an escalated call: it may run, or it may not (and why). */
export interface ApprovalOutcome {
  allowed: boolean;
  view: ApprovalView;
}

/** An escalated call: what it is, and `about`, how a person reads it (`workspace.write notes.md`). */
export interface EscalatedCall {
  kind: ApprovalView['kind'];
  target: string;
  args: Record<string, unknown>;
  callKey: string;
  about: string;
}

/**
 * The human-approval desk of one embodiment: an escalated call is recorded as pending, shown by
 * the `approvals` query and the `MarePendingApproval` search attribute (on this run and, through a
 * signal, on the task's run), and waits for the `decideApproval` update or its deadline, after
 * which the policy's default decision applies.
 */
export class ApprovalDesk {
  private readonly views: ApprovalView[] = [];
  private readonly abouts = new Map<string, string>();
  private readonly decisions = new Map<string, ApprovalDecision>();
  private seq = 0;
  /** The approvers' public keys the run pinned; none: decisions need no signature (no payload keyring). */
  private approvers: Readonly<Record<string, string>> = {};
  private approversPinned = false;

  constructor(
    private readonly ids: { taskId: string; subtaskId: string; workflowId: string; parentWorkflowId?: string },
    private readonly onChange: (pending: string[]) => void,
  ) {
    setHandler(approvalsQuery, () => this.views);
    setHandler(
      decideApprovalUpdate,
      (d) => {
        this.decisions.set(d.approvalId, d);
        // The caller gets the decided approval back; the waiting call resumes on the next activation.
        return Object.assign(this.views.find((v) => v.approvalId === d.approvalId)!, decidedFields(d));
      },
      { validator: (d: ApprovalDecision) => this.validate(d) },
    );
  }

  /** Every approval so far, for the subtask's result. */
  all(): ApprovalView[] {
    return this.views;
  }

  /** Pauses the call until a person decides or the deadline passes. */
  async request(call: EscalatedCall, decision: PolicyDecision): Promise<ApprovalOutcome> {
    const terms = decision.approval ?? APPROVAL_DEFAULTS;
    if (!this.approversPinned) {
      // Pinned at the first escalation (runs without one pay nothing); until then there is nothing to decide.
      this.approvers = await store("pin the approvers' keys").approverKeys();
      this.approversPinned = true;
    }
    const approvalId = `${this.ids.subtaskId}-${++this.seq}`;
    const { parentWorkflowId: _parent, ...ids } = this.ids;
    const view = await store(`record approval ${approvalId} requested: ${call.about}`).recordApprovalRequested({
      callKey: call.callKey,
      view: {
        approvalId,
        ...ids,
        kind: call.kind,
        target: call.target,
        args: call.args,
        reason: decision.reason,
        policy: decision.policy && `${decision.policy}${decision.rule ? `#${decision.rule}` : ''}`,
        status: 'pending',
        // eslint-disable-next-line no-restricted-properties -- Temporal's replayed clock: the start time of this workflow task
        deadline: new Date(Date.now() + terms.timeoutSeconds * 1000).toISOString(),
        onTimeout: terms.onTimeout,
      },
    });
    this.views.push(view);
    this.abouts.set(approvalId, call.about);
    await this.publish();

    const decided = await this.waitForDecision(approvalId, call.about, view.reason, terms);
    const d = this.decisions.get(approvalId);
    if (decided && d) {
      Object.assign(view, decidedFields(d));
    } else {
      Object.assign(view, { status: 'timed_out', decidedBy: 'deadline', decisionReason: `no decision within ${terms.timeoutSeconds} s: the policy's default (${terms.onTimeout}) applies` });
    }
    await this.publish();
    await store(`record approval ${approvalId}: ${view.status}`).recordApprovalDecided({ taskId: this.ids.taskId, approvalId, status: view.status, by: view.decidedBy ?? '', reason: view.decisionReason ?? '' });
    const allowed = view.status === 'approved' || (view.status === 'timed_out' && terms.onTimeout === 'allow');
    return { allowed, view };
  }

  /** The embodiment ends (failed or cancelled): nothing of it waits for a person any more, here or on the task. */
  async close(): Promise<void> {
    if (this.pending().length) await this.publish([]);
  }

  /**
   * Waits for the decision or the deadline, whichever comes first; the deadline is a timer whose
   * summary names the call and the reason, so the Web UI shows what waits. A cancellation of the
   * run still ends the wait.
   */
  private async waitForDecision(approvalId: string, about: string, reason: string, terms: ApprovalTerms): Promise<boolean> {
    const scope = new CancellationScope();
    const race = scope.run(() =>
      Promise.race([
        condition(() => this.decisions.has(approvalId)).then(() => true),
        sleep(terms.timeoutSeconds * 1000, { summary: oneLine(`approval ${approvalId}: ${about}: ${reason}; deadline, then ${terms.onTimeout}`, 200) }).then(() => false),
      ]),
    );
    try {
      return await race;
    } finally {
      scope.cancel(); // the loser: the timer is cancelled, the wait for a decision dropped
    }
  }

  private pending(): string[] {
    return this.views.filter((v) => v.status === 'pending').map((v) => v.approvalId);
  }

  /** Shows the pending approvals on this run and on the task's run (a signal to the parent). */
  private async publish(pending = this.pending()): Promise<void> {
    upsertSearchAttributes({ [SEARCH_ATTRIBUTES.pendingApproval.name]: pending });
    this.onChange(pending);
    if (!this.ids.parentWorkflowId) return;
    const notes: PendingApprovalNote[] = pending.map((approvalId) => ({
      approvalId,
      about: this.abouts.get(approvalId) ?? '',
      reason: this.views.find((v) => v.approvalId === approvalId)?.reason ?? '',
    }));
    // A task that has ended no longer shows anything: a failed signal changes nothing here.
    await getExternalWorkflowHandle(this.ids.parentWorkflowId)
      .signal(subtaskApprovalsSignal, { subtaskId: this.ids.subtaskId, pending: notes })
      .catch(() => undefined);
  }

  /** Refuses (without a trace in history) an unknown or decided approval and a malformed decision. */
  private validate(d: ApprovalDecision): void {
    if (!d || typeof d !== 'object') throw new Error('a decision must be an object { approvalId, decision, reason }');
    if (typeof d.approvalId !== 'string' || !d.approvalId) throw new Error('approvalId must be a non-empty string');
    if (d.decision !== 'approve' && d.decision !== 'deny') throw new Error('decision must be "approve" or "deny"');
    if (typeof d.reason !== 'string' || !d.reason.trim()) throw new Error('a reason is required');
    if (d.reason.length > 2_000) throw new Error('the reason must be at most 2000 characters');
    if (d.by !== undefined && (typeof d.by !== 'string' || d.by.length > 200)) throw new Error('by must be a string of at most 200 characters');
    const view = this.views.find((v) => v.approvalId === d.approvalId);
    if (!view) throw new Error(`approval ${d.approvalId} does not exist in ${this.ids.workflowId}`);
    if (view.status !== 'pending' || this.decisions.has(d.approvalId)) throw new Error(`approval ${d.approvalId} is not pending (it is ${view.status})`);
    if (Object.keys(this.approvers).length) {
      const error = approvalSignatureError(d, this.approvers);
      if (error) {
        // Refused without a trace in history; the worker's log keeps the attempt.
        log.warn('approval decision refused: not signed by an approver', { approvalId: d.approvalId, decision: d.decision, claimedBy: d.by, error });
        throw new Error(`approval ${d.approvalId}: ${error}`);
      }
    }
  }
}

function decidedFields(d: ApprovalDecision): Pick<ApprovalView, 'status' | 'decidedBy' | 'decisionReason'> {
  return { status: d.decision === 'approve' ? 'approved' : 'denied', decidedBy: d.by ?? 'unknown', decisionReason: d.reason };
}
