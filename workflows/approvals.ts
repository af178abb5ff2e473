import { CancellationScope, condition, setHandler, sleep, upsertSearchAttributes } from '@temporalio/workflow';
import { SEARCH_ATTRIBUTES } from '../schemas/constants';
import type { ApprovalDecision, ApprovalTerms, ApprovalView, PolicyDecision } from '../schemas';
import type { Bookkeeping } from './activityProfiles';
import { approvalsQuery, decideApprovalUpdate } from './definitions';

/** What happened to an escalated call: it may run, or it may not (and why). */
export interface ApprovalOutcome {
  allowed: boolean;
  view: ApprovalView;
}

/**
 * The human-approval desk of one embodiment: an escalated call is recorded as pending, shown by
 * the `approvals` query and the `MarePendingApproval` search attribute, and waits for the
 * `decideApproval` update or its deadline, after which the policy's default decision applies.
 */
export class ApprovalDesk {
  private readonly views: ApprovalView[] = [];
  private readonly decisions = new Map<string, ApprovalDecision>();
  private seq = 0;

  constructor(
    private readonly store: Bookkeeping['store'],
    private readonly ids: { taskId: string; subtaskId: string; workflowId: string },
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
  async request(call: { kind: ApprovalView['kind']; target: string; args: Record<string, unknown>; callKey: string }, decision: PolicyDecision): Promise<ApprovalOutcome> {
    const terms = decision.approval ?? { timeoutSeconds: 3600, onTimeout: 'deny' as const };
    const approvalId = `${this.ids.subtaskId}-${++this.seq}`;
    const view = await this.store.recordApprovalRequested({
      callKey: call.callKey,
      view: {
        approvalId,
        ...this.ids,
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
    this.publish();

    const decided = await this.waitForDecision(approvalId, terms);
    const d = this.decisions.get(approvalId);
    if (decided && d) {
      Object.assign(view, decidedFields(d));
    } else {
      Object.assign(view, { status: 'timed_out', decidedBy: 'deadline', decisionReason: `no decision within ${terms.timeoutSeconds} s: the policy's default (${terms.onTimeout}) applies` });
    }
    this.publish();
    await this.store.recordApprovalDecided({ taskId: this.ids.taskId, approvalId, status: view.status, by: view.decidedBy ?? '', reason: view.decisionReason ?? '' });
    const allowed = view.status === 'approved' || (view.status === 'timed_out' && terms.onTimeout === 'allow');
    return { allowed, view };
  }

  /**
   * Waits for the decision or the deadline, whichever comes first; the deadline is a timer with a
   * summary, so the Web UI shows what it is. A cancellation of the run still ends the wait.
   */
  private async waitForDecision(approvalId: string, terms: ApprovalTerms): Promise<boolean> {
    const scope = new CancellationScope();
    const race = scope.run(() =>
      Promise.race([
        condition(() => this.decisions.has(approvalId)).then(() => true),
        sleep(terms.timeoutSeconds * 1000, { summary: `approval ${approvalId}: deadline, then ${terms.onTimeout}` }).then(() => false),
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

  private publish(): void {
    const pending = this.pending();
    upsertSearchAttributes({ [SEARCH_ATTRIBUTES.pendingApproval.name]: pending });
    this.onChange(pending);
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
  }
}

function decidedFields(d: ApprovalDecision): Pick<ApprovalView, 'status' | 'decidedBy' | 'decisionReason'> {
  return { status: d.decision === 'approve' ? 'approved' : 'denied', decidedBy: d.by ?? 'unknown', decisionReason: d.reason };
}
