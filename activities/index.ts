import type { ActivityDeps } from './deps';
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
  };
}
