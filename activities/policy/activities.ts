import type { RoleProfile, ToolCall } from '../../validation';
import type { LoadedPolicy, PolicyDecision, PolicyInput } from '../../validation/policy';
import { checkToolCall, type Permission } from '../../core/permissions';
import { evaluatePolicies } from '../../core/policy';
import { atRestOf } from '../../infra/crypto/atRest';
import { expandArgs } from '../blobRefs';
import type { ActivityDeps } from '../deps';

/** A tool call whose arguments hold blob references, with what its checks need. */
export interface MediationInput {
  role: RoleProfile;
  call: ToolCall;
  /** The access the tool needs (from the pinned catalog); undefined for a tool not configured. */
  needs?: 'read' | 'write';
  /** The policies pinned by the run. */
  policies: LoadedPolicy[];
  /** The policy input without the arguments (they are expanded here). */
  input: Omit<PolicyInput, 'args'>;
}

/** The grant check and the policies' decision on a call's full arguments. */
export interface Mediation {
  permission: Permission;
  decision: PolicyDecision;
}

/** Policy activities: the set a workflow pins and evaluates every call against (workflows/policy.ts). */
export function createPolicyActivities(deps: Pick<ActivityDeps, 'policies' | 'pool' | 'redactor' | 'approverKeys' | 'atRest'>) {
  const { policies, pool, approverKeys } = deps;
  return {
    /** The policies in force now (latest version of every enabled policy, by name). */
    async loadPolicies(): Promise<LoadedPolicy[]> {
      return policies.active();
    },

    /**
     * The approvers' public keys (derived from the workers' payload keyring, workers/approvalSigning.ts)
     * a run pins: its approvals then count only when signed. None without a payload keyring.
     */
    approverKeys(): Promise<Record<string, string>> {
      return Promise.resolve(approverKeys ?? {});
    },

    /**
     * Complete mediation of a call with long arguments: the same pure checks the workflow runs on
     * short ones (grant limits, policy conditions), on the full text its blob references stand for.
     */
    async mediateToolCall({ role, call, needs, policies: pinned, input }: MediationInput): Promise<Mediation> {
      const args = (await expandArgs(pool, call.args, atRestOf(deps))) as Record<string, unknown>;
      return { permission: checkToolCall(role, { ...call, args }, needs), decision: evaluatePolicies(pinned, { ...input, args }) };
    },
  };
}
