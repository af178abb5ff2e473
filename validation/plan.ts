import { z } from 'zod';
import { Criterion } from './criteria';

export const SubtaskId = z
  .string()
  .regex(/^[a-z0-9][a-z0-9_-]{0,47}$/, 'subtask ids are 1-48 chars of a-z, 0-9, "_" or "-"');

/** One node of the plan DAG. */
export const Subtask = z.strictObject({
  id: SubtaskId,
  title: z.string().min(1).max(200),
  instructions: z.string().min(1).max(20_000),
  role: z.string().min(1).max(64),
  dependsOn: z.array(SubtaskId).default([]),
  acceptanceCriteria: z.array(Criterion).max(20).default([]),
});
export type Subtask = z.infer<typeof Subtask>;

/** A plan: the subtasks of a task, forming a DAG through `dependsOn`. */
export const Plan = z.strictObject({ subtasks: z.array(Subtask).min(1) });
export type Plan = z.infer<typeof Plan>;

export const DEFAULT_MAX_SUBTASKS = 12;

export type PlanValidation = { ok: true; plan: Plan } | { ok: false; reason: string };

/**
 * Parses and validates a model's plan: JSON, schema, unique ids, known dependencies, no cycle and
 * at most `maxSubtasks` nodes. Pure, so the planner activity and tests share it.
 */
export function validatePlan(raw: unknown, maxSubtasks = DEFAULT_MAX_SUBTASKS): PlanValidation {
  let data: unknown = raw;
  if (typeof raw === 'string') {
    const json = extractJsonObject(raw);
    if (json === undefined) return { ok: false, reason: 'plan is not valid JSON' };
    data = json;
  }
  const parsed = Plan.safeParse(data);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { ok: false, reason: `plan violates the schema at ${issue?.path.join('.') || '(root)'}: ${issue?.message}` };
  }
  const plan = parsed.data;
  if (plan.subtasks.length > maxSubtasks) {
    return { ok: false, reason: `plan has ${plan.subtasks.length} subtasks, more than the limit of ${maxSubtasks}` };
  }
  const ids = new Set<string>();
  for (const s of plan.subtasks) {
    if (ids.has(s.id)) return { ok: false, reason: `duplicate subtask id "${s.id}"` };
    ids.add(s.id);
  }
  for (const s of plan.subtasks) {
    for (const dep of s.dependsOn) {
      if (!ids.has(dep)) return { ok: false, reason: `subtask "${s.id}" depends on unknown subtask "${dep}"` };
      if (dep === s.id) return { ok: false, reason: `subtask "${s.id}" depends on itself` };
    }
  }
  const cycle = findCycle(plan);
  if (cycle) return { ok: false, reason: `plan has a dependency cycle: ${cycle.join(' -> ')}` };
  return { ok: true, plan };
}

/** The fallback when the model's plan is unusable: one subtask carrying the whole task. */
export function atomicPlan(goal: string, role = 'generalist'): Plan {
  return {
    subtasks: [{ id: 'task', title: goal.slice(0, 200), instructions: goal, role, dependsOn: [], acceptanceCriteria: [] }],
  };
}

/** Returns one dependency cycle as a list of ids, or undefined when the graph is acyclic. */
export function findCycle(plan: Plan): string[] | undefined {
  const deps = new Map(plan.subtasks.map((s) => [s.id, s.dependsOn]));
  const state = new Map<string, 'visiting' | 'done'>();
  const stack: string[] = [];
  const visit = (id: string): string[] | undefined => {
    if (state.get(id) === 'done') return undefined;
    if (state.get(id) === 'visiting') return [...stack.slice(stack.indexOf(id)), id];
    state.set(id, 'visiting');
    stack.push(id);
    for (const d of deps.get(id) ?? []) {
      const found = visit(d);
      if (found) return found;
    }
    stack.pop();
    state.set(id, 'done');
    return undefined;
  };
  for (const s of plan.subtasks) {
    const found = visit(s.id);
    if (found) return found;
  }
  return undefined;
}

/** Models often wrap JSON in prose or code fences; takes the outermost object, or undefined. */
export function extractJsonObject(text: string): unknown {
  const start = text.indexOf('{');
  const end = text.lastIndexOf('}');
  if (start < 0 || end <= start) return undefined;
  try {
    return JSON.parse(text.slice(start, end + 1)) as unknown;
  } catch {
    return undefined;
  }
}
