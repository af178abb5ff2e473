import { ApplicationFailure } from '@temporalio/workflow';
import { MAX_VERIFY_ATTEMPTS } from '../core/constants';
import { buildAgentContext } from '../core/inject';
import type { LoadedRole, RoleProfile, SubtaskInput, SubtaskResult } from '../validation';
import { verifierFor } from './activityProfiles';
import { agentLoop } from './agentLoop';
import { Embodiment } from './embodiment';
import { workflowVersions } from './versions';

/** A role's attempts that all failed verification: what the escalation needs to know. */
interface Failed {
  role: RoleProfile;
  /** Why, as the failure message says it. */
  failure: string;
  /** The verifier's last feedback. */
  feedback: string | undefined;
}

/**
 * One embodiment of one role for one subtask: load the role, the tools it may use and the policies
 * in force, inject it into a fresh context, run the agent loop (every model and tool call mediated
 * by the role's grants and the policies, escalations waiting for a person), verify, retry once with
 * feedback, escalate. The context lives only in this workflow, so ending it wipes it. On failure
 * the undo stack goes to the parent inside the failure's details.
 */
export async function executeSubtask(input: SubtaskInput): Promise<SubtaskResult> {
  workflowVersions();
  const run = new Embodiment(input);
  try {
    let role: LoadedRole | undefined = await run.embodyFirst();
    while (role) {
      const failed = await attempts(run, role);
      role = failed ? await escalate(run, failed) : undefined;
    }
    return await run.finish();
  } catch (err) {
    return run.finish({ error: err });
  }
}

/** The role's attempts, each verified, the next one with the verifier's feedback. Returns why it failed, or nothing when one passed. */
async function attempts(run: Embodiment, loaded: LoadedRole): Promise<Failed | undefined> {
  const { input, result, progress } = run;
  const role = loaded.profile;
  const maxAttempts = role.maxAttempts ?? MAX_VERIFY_ATTEMPTS;
  const record = await run.begin(loaded);
  let feedback: string | undefined;
  for (let n = 1; n <= maxAttempts; n++) {
    const attempt = ++run.attempt;
    record.attempts = n;
    result.attempts = progress.attempts = attempt;
    const context = buildAgentContext({ role, goal: input.goal, subtask: input.subtask, dependencies: input.dependencies, feedback });
    result.contextDigests?.push(context.digest);
    result.output = await agentLoop(run, role, context.messages, attempt);

    progress.state = 'verifying';
    run.step(`verifying attempt ${attempt}`);
    const verdict = await verifierFor(input.subtask.acceptanceCriteria, `verify attempt ${attempt} [${role.name}]`).verify({
      taskId: run.taskId,
      subtaskId: run.subtaskId,
      attempt,
      criteria: input.subtask.acceptanceCriteria,
      output: result.output,
      threshold: role.confidenceThreshold,
      tenant: run.tenant,
      role: role.name,
    });
    result.evidenceIds.push(verdict.evidenceId);
    run.count(verdict.usage, verdict.models);
    result.score = record.score = verdict.score;
    if (verdict.passed) {
      run.step(`verified (score ${verdict.score.toFixed(2)})`);
      record.outcome = 'completed';
      return undefined;
    }
    feedback = verdict.feedback;
    progress.state = 'running';
    run.step(`verification failed: ${verdict.feedback}`);
  }
  if (role.escalateTo) record.outcome = 'escalated';
  return { role, failure: `verification failed ${maxAttempts} times: ${feedback ?? ''}`, feedback };
}

/**
 * After failed attempts: the role's escalation. To a person, who may accept the work as it is
 * (nothing more to embody); or to another role, returned to embody next. Without one, the subtask fails.
 */
async function escalate(run: Embodiment, { role, failure, feedback }: Failed): Promise<LoadedRole | undefined> {
  if (!role.escalateTo) throw ApplicationFailure.nonRetryable(failure, 'VerificationFailed');
  const { result } = run;
  result.escalations = (result.escalations ?? 0) + 1;
  if (role.escalateTo !== 'human') return run.embodyNext(role.escalateTo, failure);

  // A person looks at the work and the verifier's findings: approved work completes as it is.
  run.step(`verification failed; waiting for a person (${role.name} escalates to human)`);
  const outcome = await run.desk.request(
    {
      kind: 'verification',
      target: `${role.name}@${role.version}`,
      args: { score: result.score, feedback: feedback ?? '', evidenceId: result.evidenceIds.at(-1) ?? '' },
      callKey: `${run.workflowId}/verification/${run.attempt}`,
      about: `the work of ${role.name}@${role.version} (verification failed)`,
    },
    { decision: 'escalate', reason: `${failure}; role ${role.name} escalates to a person`, approval: { timeoutSeconds: 86_400, onTimeout: 'deny' } },
  );
  if (!outcome.allowed) throw ApplicationFailure.nonRetryable(`${failure}; a person did not accept it (approval ${outcome.view.approvalId} ${outcome.view.status})`, 'VerificationFailed');
  result.approvedBy = outcome.view.decidedBy;
  run.step(`accepted by ${outcome.view.decidedBy ?? 'a person'} after failed verification`);
  return undefined;
}
