import { ApplicationFailure, CancellationScope, isCancellation, patched, setHandler, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import { MAX_VERIFY_ATTEMPTS, SEARCH_ATTRIBUTES } from '../schemas/constants';
import { addUsage, ZERO_USAGE } from '../schemas/usage';
import type {
  ChatMessage,
  RoleProfile,
  SubtaskInput,
  SubtaskProgress,
  SubtaskResult,
  ToolCall,
  UndoStep,
} from '../schemas';
import { bookkeeping, models, tools } from './activityProfiles';
import { subtaskProgressQuery } from './definitions';
import { errorMessage } from './errors';
import { buildAgentContext } from './inject';
import { checkToolCall, toolGrants } from './permissions';

/**
 * One embodiment of one role for one subtask: load the role, inject it into a fresh context, run
 * the agent loop, verify, retry once with feedback. The context lives only in this workflow, so
 * ending it wipes it. On failure the undo stack goes to the parent inside the failure's details.
 */
export async function executeSubtask(input: SubtaskInput): Promise<SubtaskResult> {
  const { taskId, subtask } = input;
  const progress: SubtaskProgress = {
    id: subtask.id,
    title: subtask.title,
    role: subtask.role,
    state: 'running',
    attempts: 0,
    latestStep: 'loading role',
    workflowId: workflowInfo().workflowId,
  };
  setHandler(subtaskProgressQuery, () => progress);
  const { store } = bookkeeping();

  const result: SubtaskResult = {
    id: subtask.id,
    role: subtask.role,
    roleVersion: '',
    status: 'failed',
    output: '',
    attempts: 0,
    score: 0,
    evidenceIds: [],
    usage: ZERO_USAGE,
    models: [],
    undo: [],
    deniedToolCalls: 0,
  };

  /** Tokens of this embodiment's own model calls (not the verifier's), against the role's total budget. */
  let agentTokens = 0;

  try {
    // The role version is resolved once, here, and pinned: publishes and rollbacks during the run change nothing.
    const loaded = await store.loadRole({ taskId, subtaskId: subtask.id, name: subtask.role, title: subtask.title });
    const role = loaded.profile;
    Object.assign(result, {
      role: role.name,
      roleVersion: role.version,
      roleFallbackReason: loaded.fallbackReason,
      roleRequested: loaded.requested,
      roleRoutedBy: loaded.routedBy,
      roleSource: loaded.source,
      roleChecksum: loaded.checksum,
      contextDigests: [],
    });
    progress.role = `${role.name}@${role.version}`;
    if (patched('role-version-search-attribute')) {
      upsertSearchAttributes({ [SEARCH_ATTRIBUTES.roles.name]: [progress.role] });
    }

    let feedback: string | undefined;
    for (let attempt = 1; attempt <= MAX_VERIFY_ATTEMPTS; attempt++) {
      result.attempts = progress.attempts = attempt;
      const context = buildAgentContext({ role, goal: input.goal, subtask, dependencies: input.dependencies, feedback });
      result.contextDigests?.push(context.digest);
      const messages = context.messages;
      result.output = await agentLoop(role, messages, attempt);

      progress.state = 'verifying';
      progress.latestStep = `verifying attempt ${attempt}`;
      const verdict = await models.verify({
        taskId,
        subtaskId: subtask.id,
        attempt,
        criteria: subtask.acceptanceCriteria,
        output: result.output,
        threshold: role.confidenceThreshold,
      });
      result.evidenceIds.push(verdict.evidenceId);
      result.usage = addUsage(result.usage, verdict.usage);
      verdict.models.forEach((m) => addModel(m));
      result.score = verdict.score;
      if (verdict.passed) {
        result.status = 'completed';
        progress.state = 'completed';
        progress.latestStep = `verified (score ${verdict.score.toFixed(2)})`;
        await store.recordSubtask({ taskId, result });
        return result;
      }
      feedback = verdict.feedback;
      progress.state = 'running';
      progress.latestStep = `verification failed: ${verdict.feedback}`;
    }
    throw ApplicationFailure.nonRetryable(
      `verification failed ${MAX_VERIFY_ATTEMPTS} times: ${feedback ?? ''}`,
      'VerificationFailed',
    );
  } catch (err) {
    const cancelled = isCancellation(err);
    result.status = cancelled ? 'cancelled' : 'failed';
    result.error = cancelled ? 'cancelled' : errorMessage(err);
    progress.state = result.status;
    progress.latestStep = result.error;
    await CancellationScope.nonCancellable(() => store.recordSubtask({ taskId, result }));
    throw ApplicationFailure.create({
      message: `subtask ${subtask.id} ${result.status}: ${result.error}`,
      type: cancelled ? 'SubtaskCancelled' : (err instanceof ApplicationFailure && err.type) || 'SubtaskFailed',
      nonRetryable: true,
      details: [result],
    });
  }

  function addModel(model: string): void {
    if (!result.models.includes(model)) result.models.push(model);
  }

  /** Model → tool calls → model … until a final answer or the role's iteration budget runs out. */
  async function agentLoop(role: RoleProfile, messages: ChatMessage[], attempt: number): Promise<string> {
    // The transcript lives in PostgreSQL; each call sends only the messages added since the last one.
    const transcriptId = `${workflowInfo().workflowId}/a${attempt}`;
    let sent = 0;
    for (let iteration = 1; iteration <= role.maxIterations; iteration++) {
      progress.latestStep = `attempt ${attempt}: model call ${iteration}`;
      const response = await models.callModel({
        purpose: 'act',
        messages: messages.slice(sent),
        transcript: { id: transcriptId, offset: sent },
        tools: toolGrants(role).map((g) => g.tool),
        ...(role.modelPreference ? { modelPreference: role.modelPreference } : {}),
        meta: { taskId, subtaskId: subtask.id, role: role.name, attempt },
      });
      sent = messages.length;
      result.usage = addUsage(result.usage, response.usage);
      addModel(response.model);
      agentTokens += response.usage.inputTokens + response.usage.outputTokens;
      if (role.tokenBudget?.total !== undefined && agentTokens > role.tokenBudget.total) {
        throw ApplicationFailure.nonRetryable(`BudgetExceeded: ${agentTokens} tokens used, the role's budget is ${role.tokenBudget.total}`, 'BudgetExceeded');
      }
      if (response.kind === 'final') return response.text;

      messages.push({ role: 'assistant', content: response.text, toolCalls: response.calls });
      for (const [index, call] of response.calls.entries()) {
        const callKey = `${workflowInfo().workflowId}/a${attempt}/i${iteration}/c${index}`;
        messages.push(await runToolCall(role, call, callKey));
      }
    }
    throw ApplicationFailure.nonRetryable(
      `BudgetExceeded: no final answer after ${role.maxIterations} model calls`,
      'BudgetExceeded',
    );
  }

  /** Complete mediation: a call the role does not permit never becomes an activity. */
  async function runToolCall(role: RoleProfile, call: ToolCall, callKey: string): Promise<ChatMessage> {
    const reply = (content: string, isError: boolean): ChatMessage => ({
      role: 'tool',
      toolCallId: call.id,
      toolName: call.name,
      content,
      isError,
    });
    const permission = checkToolCall(role, call);
    if (!permission.allowed) {
      result.deniedToolCalls++;
      progress.latestStep = `denied ${call.name}`;
      await store.recordToolDenied({ taskId, subtaskId: subtask.id, callKey, tool: call.name, args: call.args, role: role.name });
      return reply(`Permission denied: ${permission.reason}.`, true);
    }
    progress.latestStep = `tool ${call.name}`;
    const ctx = { taskId, subtaskId: subtask.id, callKey };
    switch (call.name) {
      case 'workspace.read': {
        const out = await tools['workspace.read'](ctx, call.args);
        return reply(out.content, !out.ok);
      }
      case 'workspace.list': {
        const out = await tools['workspace.list'](ctx, call.args);
        return reply(out.content, !out.ok);
      }
      case 'workspace.write': {
        // The undo is registered before the side effect, so a crash in between still rolls back.
        const undo: UndoStep = { tool: call.name, callKey, taskId, subtaskId: subtask.id, args: call.args };
        result.undo.push(undo);
        const out = await tools['workspace.write'](ctx, call.args);
        return reply(out.content, !out.ok);
      }
      default:
        return reply(`Unknown tool "${call.name}".`, true);
    }
  }
}
