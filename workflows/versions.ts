import { patched } from '@temporalio/workflow';

/**
 * Changes to workflow code that runs already in flight must survive, by id. Empty until the first
 * release (1.0): before it, workflow code changes without patches and the recorded histories are
 * re-recorded (docs/changing-workflow-code.md). A later change adds its id here and branches on
 * `versions[id]`.
 */
export const WORKFLOW_CHANGES = [] as const;

export type WorkflowChange = (typeof WORKFLOW_CHANGES)[number];

/** Which changes this run was started with: `true` for a run started by code that has the change. */
export type WorkflowVersions = Readonly<Record<WorkflowChange, boolean>>;

/**
 * The one place a run takes its version decisions, all of them at once, at the start of the run:
 * call it as the first statement of a workflow function, before any activity, local activity,
 * timer or other await. A `patched()` taken later, after a local activity resolved, can move in
 * history when a query is answered in the same workflow task, and the run then cannot replay
 * (issue 14); ESLint refuses `patched`/`deprecatePatch` anywhere but here.
 */
export function workflowVersions(): WorkflowVersions {
  const versions: Record<string, boolean> = {};
  for (const id of WORKFLOW_CHANGES) versions[id] = patched(id);
  return versions;
}
