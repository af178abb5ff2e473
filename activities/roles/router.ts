import { DEFAULT_ROLE, type RoutedBy } from '../../validation';
import type { RoleCandidate } from '../../infra/roles/roleService';
import { globMatches } from '../../core/patterns';

/** Why the planner's role cannot be used, if it cannot. */
export type Unavailability = 'unknown' | 'deprecated' | 'suspended';

/** The router's choice for one subtask. */
export interface Route {
  name: string;
  routedBy: RoutedBy;
  /** Set when the choice is not the planner's suggestion. */
  reason?: string;
}

/** Whether a candidate can take work, and if not, why. */
export function availability(candidate: RoleCandidate | undefined): Unavailability | undefined {
  if (!candidate) return 'unknown';
  if (candidate.suspended) return 'suspended';
  if (candidate.deprecated) return 'deprecated';
  return undefined;
}

/**
 * Picks the role for a subtask: the planner's suggestion if it is available; otherwise the first
 * available role (by name) with a `handles` pattern matching the subtask's title; otherwise the
 * default generalist. Pure: the candidates come from the role service.
 */
export function routeSubtask(input: { requested: string; title: string; candidates: RoleCandidate[] }): Route {
  const byName = new Map(input.candidates.map((c) => [c.name, c]));
  const requested = byName.get(input.requested);
  const why = availability(requested);
  if (!why) return { name: input.requested, routedBy: 'planner' };
  const problem =
    why === 'unknown'
      ? `role "${input.requested}" does not exist`
      : `role "${input.requested}@${requested!.version}" is ${why}`;
  const title = input.title.toLowerCase();
  for (const candidate of [...input.candidates].sort((a, b) => a.name.localeCompare(b.name))) {
    if (candidate.name === input.requested || availability(candidate) || candidate.unreadable) continue;
    const pattern = candidate.handles.find((p) => handles(p, title));
    if (pattern) return { name: candidate.name, routedBy: 'handles', reason: `${problem}; routed to "${candidate.name}" by its handles pattern "${pattern}"` };
  }
  return { name: DEFAULT_ROLE, routedBy: 'default', reason: `${problem}; using the default "${DEFAULT_ROLE}"` };
}

/** Whether a handles glob matches a title (`*` spans anything); a glob RE2 cannot run matches nothing. */
function handles(glob: string, title: string): boolean {
  try {
    return globMatches(glob.toLowerCase(), title, { crossSlashes: true });
  } catch {
    return false;
  }
}
