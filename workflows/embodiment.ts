import {
  ApplicationFailure,
  CancellationScope,
  condition,
  getExternalWorkflowHandle,
  isCancellation,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import { SEARCH_ATTRIBUTES, supervisorWorkflowId } from '../core/constants';
import { errorMessage, failureType } from '../core/errors';
import { addUsage, ZERO_USAGE } from '../core/usage';
import type { LoadedPolicy, LoadedRole, RoleProfile, Sensitivity, SubtaskInput, SubtaskProgress, SubtaskResult, TokenUsage, ToolCatalogView } from '../validation';
import type { EmbodimentsReport } from '../activities';
import { bookkeeping as store } from './activityProfiles';
import { ApprovalDesk } from './approvals';
import { acquireSlotSignal, releaseSlotSignal, slotGrantedSignal, subtaskProgressQuery } from './definitions';

/** One role's embodiment of the subtask, kept until the subtask ends, for its reliability record. */
export interface EmbodimentRecord {
  role: string;
  version: string;
  outcome: 'completed' | 'failed' | 'cancelled' | 'escalated';
  attempts: number;
  score: number;
  /** Workflow time when it started (ms). */
  started: number;
  /** The subtask's token usage when it started, to attribute tokens to each embodiment. */
  usageStart: TokenUsage;
  /** Workflow time when it ended (ms), set before its slot (if any) is given back. */
  ended?: number;
}

/**
 * The state of one subtask's run: the role it embodies (another after an escalation), what that
 * embodiment pinned (tools, policies), what entered its context, its slot of a throttled role, its
 * approval desk, the result and the progress the queries show, and the one way it ends.
 */
export class Embodiment {
  readonly taskId: string;
  readonly tenant: string;
  readonly workflowId: string;
  readonly progress: SubtaskProgress;
  readonly result: SubtaskResult;
  readonly desk: ApprovalDesk;
  /** The tools as configured when the embodiment starts, pinned like the role. */
  catalog: ToolCatalogView = { tools: [], modelPricePer1kTokens: 0 };
  /** The policies in force when the subtask starts. */
  policies: LoadedPolicy[] = [];
  /** Tokens of this embodiment's own model calls (not the verifier's), against the role's total budget. */
  agentTokens = 0;
  /** Sensitive data that has entered the context through tool output. */
  readonly contextSensitivity = new Set<Sensitivity>();
  /** Attempts so far, over every embodiment. */
  attempt = 0;
  /** `role@version` of every role embodied, in order. */
  private readonly embodied: string[] = [];
  private readonly records: EmbodimentRecord[] = [];
  /** The throttled role whose slot this embodiment holds, if any. */
  private slotHolder: string | undefined;
  private slotGranted = false;

  constructor(readonly input: SubtaskInput) {
    const { taskId, subtask } = input;
    this.taskId = taskId;
    this.workflowId = workflowInfo().workflowId;
    this.progress = { id: subtask.id, title: subtask.title, role: subtask.role, state: 'running', attempts: 0, latestStep: 'loading role', workflowId: this.workflowId };
    setHandler(subtaskProgressQuery, () => this.progress);
    this.result = { id: subtask.id, role: subtask.role, roleVersion: '', status: 'failed', output: '', attempts: 0, score: 0, evidenceIds: [], usage: ZERO_USAGE, models: [], undo: [], deniedToolCalls: 0 };
    setHandler(slotGrantedSignal, () => void (this.slotGranted = true));
    // The approvals query and the decideApproval update exist from the first activation on.
    this.desk = new ApprovalDesk({ taskId, subtaskId: subtask.id, workflowId: this.workflowId, parentWorkflowId: workflowInfo().parent?.workflowId }, (pending) => {
      this.progress.pendingApprovals = pending;
    });
    this.result.approvals = this.desk.all();
    this.tenant = input.tenant ?? 'default';
  }

  /** The subtask's id. */
  get subtaskId(): string {
    return this.input.subtask.id;
  }

  /** The latest step, for the progress query and as the run's current details in the Web UI. */
  step(text: string): void {
    this.progress.latestStep = text;
    setCurrentDetails(`${this.progress.role} · attempt ${this.progress.attempts}: ${text}`);
  }

  /**
   * Loads the subtask's role, its tools and the policies in force, once: publishes and rollbacks
   * during the run change nothing.
   */
  async embodyFirst(): Promise<LoadedRole> {
    const { subtask } = this.input;
    const { loaded, catalog, policies } = await store(`embody ${subtask.role} for ${subtask.id}: role, tools, policies`).embody({
      taskId: this.taskId,
      subtaskId: subtask.id,
      name: subtask.role,
      title: subtask.title,
      tenant: this.tenant,
      pinPolicies: true,
    });
    const role = loaded.profile;
    Object.assign(this.result, {
      role: role.name,
      roleVersion: role.version,
      roleFallbackReason: loaded.fallbackReason,
      roleRequested: loaded.requested,
      roleRoutedBy: loaded.routedBy,
      roleSource: loaded.source,
      roleChecksum: loaded.checksum,
      contextDigests: [],
    });
    this.progress.role = `${role.name}@${role.version}`;
    this.embodied.push(this.progress.role);
    upsertSearchAttributes([
      { key: SEARCH_ATTRIBUTES.roles, value: [this.progress.role] },
      { key: SEARCH_ATTRIBUTES.taskId, value: this.taskId },
    ]);
    this.catalog = catalog;
    this.policies = policies ?? [];
    return loaded;
  }

  /**
   * Escalation to another role: a fresh embodiment of it, pinned like the first, with no memory of
   * this one. A role is never embodied twice in one subtask.
   */
  async embodyNext(name: string, failure: string): Promise<LoadedRole> {
    const { subtask } = this.input;
    const { loaded: next, catalog } = await store(`embody ${name} for ${subtask.id} (escalation): role, tools`).embody({
      taskId: this.taskId,
      subtaskId: subtask.id,
      name,
      title: subtask.title,
      tenant: this.tenant,
      pinPolicies: false,
    });
    const id = `${next.profile.name}@${next.profile.version}`;
    if (this.embodied.some((e) => e.startsWith(`${next.profile.name}@`))) {
      throw ApplicationFailure.nonRetryable(`${failure}; escalation to ${name} would embody ${id} again`, 'VerificationFailed');
    }
    this.embodied.push(id);
    this.endEmbodiment();
    await this.releaseSlot();
    const role = next.profile;
    this.catalog = catalog;
    this.agentTokens = 0;
    Object.assign(this.result, { role: role.name, roleVersion: role.version, roleChecksum: next.checksum, roleSource: next.source, escalatedFrom: [...(this.result.escalatedFrom ?? []), this.embodied[this.embodied.length - 2]!] });
    this.progress.role = id;
    upsertSearchAttributes({ [SEARCH_ATTRIBUTES.roles.name]: [...this.embodied] });
    this.progress.state = 'running';
    this.step(`escalated to ${id}`);
    return next;
  }

  /** Starts the embodiment of a loaded role: waits for a slot while the role is throttled, then keeps its record. */
  async begin(loaded: LoadedRole): Promise<EmbodimentRecord> {
    if (loaded.throttleCap) await this.acquireSlot(loaded.profile.name);
    const role: RoleProfile = loaded.profile;
    // eslint-disable-next-line no-restricted-properties -- Temporal's replayed clock, for the embodiment's latency
    const record: EmbodimentRecord = { role: role.name, version: role.version, outcome: 'failed', attempts: 0, score: 0, started: Date.now(), usageStart: this.result.usage };
    this.records.push(record);
    return record;
  }

  /** Counts tokens and the models that used them. */
  count(usage: TokenUsage, models: string[]): void {
    this.result.usage = addUsage(this.result.usage, usage);
    for (const model of models) if (!this.result.models.includes(model)) this.result.models.push(model);
  }

  /**
   * The one end of the subtask, passed or not: records it (and each embodiment's outcome) and
   * gives its slot back. Without `failure` it returns the completed result; with one, the run ends
   * failed (or cancelled), the SubtaskResult with the whole story in the failure's details.
   */
  async finish(failure?: { error: unknown }): Promise<SubtaskResult> {
    const { result, progress } = this;
    const cancelled = failure !== undefined && isCancellation(failure.error);
    if (failure === undefined) {
      result.status = 'completed';
      progress.state = 'completed';
    } else {
      result.status = cancelled ? 'cancelled' : 'failed';
      result.error = cancelled ? 'cancelled' : errorMessage(failure.error);
      progress.state = result.status;
      this.step(result.error);
      const last = this.records.at(-1);
      if (last && cancelled) last.outcome = 'cancelled';
    }
    this.endEmbodiment();
    const record = async (): Promise<void> => {
      await this.desk.close();
      await this.releaseSlot();
      const embodiments = this.embodimentsReport();
      await store(`record subtask ${this.subtaskId}: ${result.status}${embodiments ? `, ${embodiments.embodiments.length} embodiment(s)` : ''}`).finishSubtask({
        taskId: this.taskId,
        result,
        ...(embodiments ? { embodiments } : {}),
      });
      this.records.length = 0;
    };
    // A failed or cancelled subtask is still recorded while the run is being cancelled.
    if (failure === undefined) {
      await record();
      return result;
    }
    await CancellationScope.nonCancellable(record);
    // The message names ids and types only (it is shown without the codec).
    throw ApplicationFailure.create({
      message: `subtask ${this.subtaskId} ${result.status} after ${result.attempts} attempt(s)${cancelled ? '' : `: ${failureType(failure.error)}`}`,
      type: cancelled ? 'SubtaskCancelled' : 'SubtaskFailed',
      nonRetryable: true,
      details: [result],
      cause: failure.error instanceof Error && !cancelled ? failure.error : undefined,
    });
  }

  /**
   * Waits for a slot from the tenant's supervisor of a throttled role (it hands out at most its cap
   * at once). Without a running supervisor there is nobody to wait for: the embodiment runs.
   */
  private async acquireSlot(roleName: string): Promise<void> {
    this.slotGranted = false;
    try {
      await getExternalWorkflowHandle(supervisorWorkflowId(roleName, this.tenant)).signal(acquireSlotSignal, { workflowId: this.workflowId });
    } catch {
      return;
    }
    this.slotHolder = roleName;
    this.step(`waiting for a slot: ${roleName} is throttled`);
    await condition(() => this.slotGranted);
  }

  /** Gives a throttled role's slot back (also when this embodiment fails or is cancelled). */
  private async releaseSlot(): Promise<void> {
    if (!this.slotHolder) return;
    const roleName = this.slotHolder;
    this.slotHolder = undefined;
    await getExternalWorkflowHandle(supervisorWorkflowId(roleName, this.tenant))
      .signal(releaseSlotSignal, { workflowId: this.workflowId })
      .catch(() => undefined);
  }

  /** Marks when the current embodiment ended: before its slot is given back, so throttled embodiments never overlap. */
  private endEmbodiment(): void {
    const last = this.records.at(-1);
    // eslint-disable-next-line no-restricted-properties -- Temporal's replayed clock, for the embodiment's latency
    if (last && last.ended === undefined) last.ended = Date.now();
  }

  /** One reliability row per embodiment, each outcome reported to the role's supervisor for this tenant (by `finishSubtask`). */
  private embodimentsReport(): EmbodimentsReport | undefined {
    const { records, result } = this;
    if (!records.length) return undefined;
    // eslint-disable-next-line no-restricted-properties -- Temporal's replayed clock, for the embodiments' latency
    const ended = Date.now();
    return {
      taskId: this.taskId,
      subtaskId: this.subtaskId,
      workflowId: this.workflowId,
      tenant: this.tenant,
      models: result.models,
      escalations: result.escalations ?? 0,
      embodiments: records.map((e, i) => {
        const next = records[i + 1];
        const until = next?.usageStart ?? result.usage;
        return {
          role: e.role,
          version: e.version,
          outcome: e.outcome,
          attempts: e.attempts,
          score: e.score,
          startedAt: new Date(e.started).toISOString(),
          endedAt: new Date(e.ended ?? next?.started ?? ended).toISOString(),
          usage: { inputTokens: until.inputTokens - e.usageStart.inputTokens, outputTokens: until.outputTokens - e.usageStart.outputTokens },
        };
      }),
    };
  }
}
