import type { LoadedPolicy } from '../../schemas/policy';
import type { PolicyService } from './service';

/** Policy activities: the set a workflow pins and evaluates every call against (workflows/policy.ts). */
export function createPolicyActivities({ policies }: { policies: PolicyService }) {
  return {
    /** The policies in force now (latest version of every enabled policy, by name). */
    async loadPolicies(): Promise<LoadedPolicy[]> {
      return policies.active();
    },
  };
}
