import type { ActivityDeps } from './deps';
import { createEmbodimentActivities } from './embodiment';
import { createModelActivities } from './modelActivity';
import { createPlannerActivities } from './planner';
import { createPolicyActivities } from './policy';
import { createReliabilityActivities } from './reliability/activities';
import { createRoleActivities } from './roles/activities';
import { createStoreActivities } from './store';
import { createToolActivities } from './tools';
import { createVerifyActivities } from './verify';
import { createWorkspaceActivities } from './workspace';

export type { ActivityDeps } from './deps';
export type { EmbodimentsReport } from './reliability/activities';

/** All activities, wired to their dependencies. Workflows import this file for types only. */
export function createActivities(deps: ActivityDeps) {
  return {
    ...createStoreActivities(deps),
    ...createRoleActivities(deps),
    ...createPolicyActivities(deps),
    ...createPlannerActivities(deps),
    ...createModelActivities(deps),
    ...createWorkspaceActivities(deps),
    ...createToolActivities(deps),
    ...createReliabilityActivities(deps),
    ...createVerifyActivities(deps),
    ...createEmbodimentActivities(deps),
  };
}

// The groups workflows call, each through the proxy of its own profile (workflows/activityProfiles.ts).

/**
 * Bookkeeping that runs as local activities: PostgreSQL writes, what an embodiment pins at its
 * start (`embody`: role, tools, policies) and records at its end (`finishSubtask`), the approvers'
 * keys and the mediation of long tool arguments. (`loadRole`, `toolCatalog`, `loadPolicies`,
 * `recordEmbodiments` stay registered, as the parts `embody` and `finishSubtask` are made of.)
 */
export type BookkeepingActivities = ReturnType<typeof createStoreActivities> &
  ReturnType<typeof createEmbodimentActivities> &
  Pick<ReturnType<typeof createPolicyActivities>, 'approverKeys' | 'mediateToolCall'>;

/** Model calls on the models queue: the planner and the agent's own calls. */
export type ModelActivities = ReturnType<typeof createPlannerActivities> & ReturnType<typeof createModelActivities>;

/** The verifier, on the models queue too (its judgements are model calls). */
export type VerifyActivities = ReturnType<typeof createVerifyActivities>;

/** Undo steps, on the tools queue. */
export type CompensationActivities = Pick<ReturnType<typeof createToolActivities>, 'compensate'>;

/** A role supervisor's enforcement of its decisions. */
export type EnforcementActivities = Pick<ReturnType<typeof createReliabilityActivities>, 'enforce'>;
