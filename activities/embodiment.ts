import type { LoadedPolicy, LoadedRole, SubtaskResult, ToolCatalogView } from '../validation';
import { toolGrants } from '../core/permissions';
import type { ActivityDeps } from './deps';
import { createPolicyActivities } from './policy';
import { createReliabilityActivities, type EmbodimentsReport } from './reliability/activities';
import { createRoleActivities, type LoadRoleInput } from './roles';
import { createStoreActivities } from './store';
import { createToolActivities } from './tools';

/** What an embodiment runs with, pinned at its start: the role, its tools and (for the first) the policies in force. */
export interface Embodied {
  loaded: LoadedRole;
  catalog: ToolCatalogView;
  /** Only when asked for (`pinPolicies`): an escalation keeps the policies the subtask pinned first. */
  policies?: LoadedPolicy[];
}

/**
 * An embodiment's two bookkeeping steps, each ONE local activity (so one marker and one workflow
 * activation, not one per read or write; `npm run bench` measured the difference, bench/TUNING.md):
 * `embody` at its start, `finishSubtask` at the subtask's end.
 */
export function createEmbodimentActivities(deps: ActivityDeps) {
  const roles = createRoleActivities(deps);
  const tools = createToolActivities(deps);
  const policies = createPolicyActivities(deps);
  const store = createStoreActivities(deps);
  const reliability = createReliabilityActivities(deps);
  return {
    /** Routes and loads the role (audited), the catalog of the tools it is granted and, with `pinPolicies`, the policies in force. */
    async embody(input: LoadRoleInput & { pinPolicies: boolean }): Promise<Embodied> {
      const { pinPolicies, ...role } = input;
      const loaded = await roles.loadRole(role);
      const catalog = await tools.toolCatalog({ tools: toolGrants(loaded.profile).map((g) => g.tool) });
      return { loaded, catalog, ...(pinPolicies ? { policies: await policies.loadPolicies() } : {}) };
    },

    /** Records the subtask's end and, if any, one reliability row per embodiment, each outcome reported to its role's supervisor. */
    async finishSubtask(input: { taskId: string; result: SubtaskResult; embodiments?: EmbodimentsReport }): Promise<void> {
      await store.recordSubtask({ taskId: input.taskId, result: input.result });
      if (input.embodiments) await reliability.recordEmbodiments(input.embodiments);
    },
  };
}
