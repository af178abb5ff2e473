/**
 * Micro-figures of the role and routing code, in process: role retrieval (the loadRole query),
 * the routing fallback for an unknown role, injection (buildAgentContext) and plan validation.
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import type { Pool } from 'pg';
import { createRoleActivities } from '../activities/roles';
import { RoleProfile, validatePlan, type LoadedRole } from '../schemas';
import { buildAgentContext } from '../workflows/inject';
import { percentile } from './stats';

export interface MicroFigure {
  name: string;
  iterations: number;
  p50Us: number;
  p99Us: number;
  /** Why a figure could not be measured (e.g. the code does not exist yet). */
  note?: string;
}

async function time(name: string, iterations: number, fn: () => unknown): Promise<MicroFigure> {
  for (let i = 0; i < Math.min(200, iterations); i++) await fn(); // warm-up: JIT and connection pool
  const samples: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const t = process.hrtime.bigint();
    await fn();
    samples.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  return { name, iterations, p50Us: percentile(samples, 50), p99Us: percentile(samples, 99) };
}

const PLAN = {
  subtasks: Array.from({ length: 12 }, (_, i) => ({
    id: `s${i}`,
    title: `Step ${i}`,
    role: i % 2 ? 'writer' : 'reviewer',
    dependsOn: i > 0 ? [`s${i - 1}`] : [],
    instructions: 'Do the step and write the result to a file. '.repeat(5),
    acceptanceCriteria: [{ kind: 'file_exists', path: `out-${i}.txt` }, { kind: 'output_contains', text: 'done' }],
  })),
};

export async function runMicro(pool: Pool, iterations: number): Promise<MicroFigure[]> {
  const roles = createRoleActivities({ pool });
  // loadRole keys its audit rows by the activity it runs in, so it runs in a mock activity context.
  const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'bench-micro', runId: 'r' }, activityId: '1' });
  const loadRole = (name: string): Promise<LoadedRole> => env.run((input: { taskId: string; subtaskId: string; name: string }) => roles.loadRole(input), { taskId: 'bench', subtaskId: 'micro', name });
  const loaded = await loadRole('writer');
  const role = RoleProfile.parse(loaded.profile);
  const plan = validatePlan(JSON.stringify(PLAN));
  if (!plan.ok) throw new Error(`the micro-bench plan is invalid: ${plan.reason}`);
  const subtask = plan.plan.subtasks[3]!;
  const dependencies = [{ id: 's2', title: 'Step 2', output: 'Done: wrote out-2.txt. '.repeat(40) }];
  return [
    await time('role retrieval, uncached (PostgreSQL query + zod)', iterations, () => loadRole('writer')),
    { name: 'role retrieval, cached', iterations: 0, p50Us: NaN, p99Us: NaN, note: 'no role cache yet: the LRU cache arrives with role profiles (issue 4)' },
    await time('routing: unknown role → generalist fallback (2 queries + audit row)', Math.ceil(iterations / 4), () => loadRole('no-such-role')),
    await time('injection (buildAgentContext)', iterations * 10, () => buildAgentContext({ role, goal: 'Bench goal. '.repeat(20), subtask, dependencies })),
    await time('plan validation, 12 subtasks (validatePlan from JSON text)', iterations * 10, () => validatePlan(JSON.stringify(PLAN))),
  ];
}
