/**
 * Micro-figures of the role and routing code, in process: role retrieval cached and uncached,
 * loadRole with routing, the routing fallback for an unknown role, injection (buildAgentContext)
 * of a 16 KB prompt with three dependency outputs, and plan validation.
 */
import { MockActivityEnvironment } from '@temporalio/testing';
import type { Pool } from 'pg';
import pino from 'pino';
import { createRoleActivities, type LoadRoleInput } from '../activities/roles';
import { keyringFromEnv } from '../infra/crypto/roleCrypto';
import { openRoleService } from '../infra/roles/bootstrap';
import { validatePlan, type LoadedRole, type RoleProfile } from '../validation';
import { buildAgentContext } from '../core/inject';
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

/** Three dependency outputs of a few KB each, as a DAG's middle subtask gets them. */
const DEPENDENCIES = [1, 2, 3].map((n) => ({ id: `s${n}`, title: `Step ${n}`, output: `Done: wrote out-${n}.txt with the findings. `.repeat(60 * n) }));

export async function runMicro(pool: Pool, iterations: number): Promise<MicroFigure[]> {
  const keyring = keyringFromEnv({ dataDir: '' });
  const logger = pino({ level: 'silent' });
  // "Uncached" empties the cache before each read, so each one queries, decrypts and checks the row.
  const service = await openRoleService({ pool, keyring, logger, ttlMs: 3_600_000 });
  const roles = createRoleActivities({ pool, roles: service, logger });
  const uncached = <T>(fn: () => Promise<T>) => () => {
    service.invalidate();
    return fn();
  };
  // loadRole keys its audit rows by the activity it runs in, so it runs in a mock activity context.
  const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'bench-micro', runId: 'r' }, activityId: '1' });
  const loadRole = (name: string): Promise<LoadedRole> =>
    env.run((input: LoadRoleInput) => roles.loadRole(input), { taskId: 'bench', subtaskId: 'micro', name, title: 'Step 3' });
  const role: RoleProfile = { ...(await loadRole('writer')).profile, systemPrompt: 'You are a meticulous technical writer. '.repeat(420).slice(0, 16 * 1024) };
  const plan = validatePlan(JSON.stringify(PLAN));
  if (!plan.ok) throw new Error(`the micro-bench plan is invalid: ${plan.reason}`);
  const subtask = plan.plan.subtasks[3]!;
  try {
    return [
      await time('role retrieval, uncached (PostgreSQL read + AES-GCM decrypt + checksum)', iterations, uncached(() => service.resolve('writer'))),
      await time('role retrieval, cached (worker LRU cache)', iterations * 10, () => service.resolve('writer')),
      await time('loadRole activity, cached roles: routing + audit row', iterations, () => loadRole('writer')),
      await time('loadRole activity, uncached: all roles read for routing + the role + audit row', iterations, uncached(() => loadRole('writer'))),
      await time('routing: unknown role → generalist fallback (loadRole, cached roles)', iterations, () => loadRole('no-such-role')),
      await time('injection: 16 KB system prompt + 3 dependency outputs, with digest', iterations * 10, () =>
        buildAgentContext({ role, goal: 'Bench goal. '.repeat(20), subtask, dependencies: DEPENDENCIES }),
      ),
      await time('plan validation, 12 subtasks (validatePlan from JSON text)', iterations * 10, () => validatePlan(JSON.stringify(PLAN))),
    ];
  } finally {
    await service.close();
  }
}
