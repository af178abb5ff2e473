import { execFile } from 'node:child_process';
import path from 'node:path';
import { SEARCH_ATTRIBUTES, supervisorWorkflowId, TASK_QUEUE } from '../schemas';
import { decide, SUPERVISOR_DEFAULTS, type OutcomeReport, type SupervisorState } from '../schemas/supervisor';
import { embodimentOutcomeSignal, supervisorStateQuery } from '../workflows/definitions';
import { createTestStack, planReply, recordHistory, type ScriptInput, type TestStack } from './helpers';

let stack: TestStack;
const who = { actor: 'test' };
const CLI = path.join(__dirname, '..', 'dist', 'client', 'cli.js');

beforeAll(async () => {
  stack = await createTestStack();
  for (const name of ['flaky', 'broken', 'anomalous', 'longlived', 'retiree']) {
    await stack.roles.repository.publish({ name, version: '1.0.0', description: `${name} role`, systemPrompt: `You are ${name}.`, confidenceThreshold: 0.5 }, who);
  }
});

afterAll(async () => {
  await stack?.teardown();
});

async function rows<T>(sql: string, params: unknown[] = []): Promise<T[]> {
  return (await stack.pool.query(sql, params)).rows as T[];
}

let seq = 0;
const outcome = (o: Partial<OutcomeReport> = {}): OutcomeReport => ({ key: `synthetic-${++seq}`, roleVersion: '1.0.0', outcome: 'completed', score: 1, latencyMs: 1000, endedAt: new Date().toISOString(), ...o });

/** Starts a role's supervisor with test settings (a later signal-with-start reaches this one). */
async function startSupervisor(role: string, settings: Record<string, unknown> = {}) {
  return stack.env.client.workflow.start('superviseRole', { workflowId: supervisorWorkflowId(role), taskQueue: TASK_QUEUE, args: [{ role, settings }] });
}

async function stateOf(role: string): Promise<SupervisorState> {
  return stack.env.client.workflow.getHandle(supervisorWorkflowId(role)).query(supervisorStateQuery);
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function mare(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, DATABASE_URL: stack.databaseUrl, TEMPORAL_ADDRESS: stack.env.address, ...stack.roleKeysEnv } }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('decide (pure)', () => {
  const base = { window: [] as OutcomeReport[], throttleCap: null as number | null, phase: 'Active' as const, settings: SUPERVISOR_DEFAULTS };
  const fill = (outcomes: OutcomeReport['outcome'][]) => outcomes.map((o) => outcome({ outcome: o }));

  test('nothing before minSamples', () => {
    expect(decide({ ...base, window: fill(['failed', 'failed', 'failed']) }, outcome({ outcome: 'failed' })).decisions).toEqual([]);
  });
  test('suspends below 50%, throttles below 80%, lifts a throttle at 90%', () => {
    expect(decide({ ...base, window: fill(['failed', 'failed', 'completed', 'failed']) }, outcome({ outcome: 'failed' })).decisions.map((d) => d.action)).toEqual(['suspend']);
    expect(decide({ ...base, window: fill(['completed', 'failed', 'completed', 'completed']) }, outcome({ outcome: 'failed' })).decisions.map((d) => d.action)).toEqual(['throttle']);
    const good = fill(Array(9).fill('completed') as 'completed'[]);
    expect(decide({ ...base, throttleCap: 1, window: good }, outcome()).decisions.map((d) => d.action)).toEqual(['unthrottle']);
    expect(decide({ ...base, throttleCap: 1, window: fill(['completed', 'failed', 'completed', 'completed']) }, outcome()).decisions).toEqual([]);
  });
  test('warns on a latency or score anomaly, and on a streak of failures', () => {
    const steady = [900, 1000, 1100, 1000, 950].map((latencyMs) => outcome({ latencyMs }));
    expect(decide({ ...base, window: steady }, outcome({ latencyMs: 60_000 })).decisions[0]).toMatchObject({ action: 'warning', reason: expect.stringContaining('anomaly: latency 60000 ms') });
    const scores = [0.9, 0.95, 1, 0.92, 0.97].map((score) => outcome({ score }));
    expect(decide({ ...base, window: scores }, outcome({ score: 0.1 })).decisions[0]).toMatchObject({ action: 'warning', reason: expect.stringContaining('anomaly: score 0.10') });
    const streak = fill([...(Array(7).fill('completed') as 'completed'[]), 'failed', 'escalated']);
    // (already throttled, so the 70% success rate changes nothing else)
    expect(decide({ ...base, throttleCap: 1, window: streak }, outcome({ outcome: 'failed' })).decisions.map((d) => d.reason)).toEqual(['3 embodiments in a row did not complete']);
  });
  test('a cancelled embodiment is not counted', () => {
    expect(decide({ ...base, window: fill(['completed']) }, outcome({ outcome: 'cancelled' })).window).toHaveLength(1);
  });
});

test('throttle: the supervisor caps how many embodiments of a role run at once (embodiment timestamps do not overlap)', async () => {
  const steps = ['a', 'b', 'c'].map((id) => ({ id, title: `Part ${id}`, instructions: 'Answer', role: 'flaky' }));
  const script: ScriptInput = { delayMs: 400, rules: [planReply(steps), { match: { purpose: 'act' }, reply: { text: 'answered' } }] };
  const overlapping = async (taskId: string): Promise<number> => {
    const spans = await rows<{ started_at: Date; ended_at: Date }>(`SELECT started_at, ended_at FROM embodiments WHERE task_id = $1 ORDER BY started_at`, [taskId]);
    expect(spans).toHaveLength(3);
    let overlaps = 0;
    for (let i = 1; i < spans.length; i++) if (spans[i]!.started_at < spans[i - 1]!.ended_at) overlaps++;
    return overlaps;
  };
  await startSupervisor('flaky');
  await stack.withWorker(script, async () => {
    // Control: not throttled, the three subtasks run side by side.
    await stack.client.submitTask({ taskId: 'unthrottled', goal: 'three parts', concurrency: 3 });
    await stack.client.result('unthrottled');
    expect(await overlapping('unthrottled')).toBeGreaterThan(0);

    // The control's three successes, then three failures: at 3/5 = 60%, below 80%, the role is throttled to one at a time.
    const handle = stack.env.client.workflow.getHandle(supervisorWorkflowId('flaky'));
    for (const o of ['failed', 'failed', 'failed', 'completed', 'completed'] as const) await handle.signal(embodimentOutcomeSignal, outcome({ outcome: o }));
    await waitFor('the throttle', async () => (await stateOf('flaky')).throttleCap === 1);
    expect(await rows(`SELECT throttle_cap FROM role_heads WHERE name = 'flaky'`)).toEqual([{ throttle_cap: 1 }]);
    // The worker's role cache hears of it by NOTIFY (within a second).
    await waitFor('the cached throttle', async () => (await stack.roles.candidates()).candidates.find((c) => c.name === 'flaky')?.throttleCap === 1);

    await stack.client.submitTask({ taskId: 'throttled', goal: 'three parts', concurrency: 3 });
    await stack.client.result('throttled');
    expect(await overlapping('throttled')).toBe(0);
  });
  const [action] = await rows<{ action: string; reason: string; decided_by: string; evidence: { window: { n: number } } }>(`SELECT action, reason, decided_by, evidence FROM enforcement_actions WHERE role = 'flaky' AND action = 'throttle'`);
  expect(action).toMatchObject({ action: 'throttle', decided_by: 'supervisor', reason: 'success rate 60% over the last 5 embodiments is below 80%: at most 1 at once' });
  expect(action!.evidence.window.n).toBe(5);
});

test("suspension sends the role's subtasks to the fallback; a cool-down reinstates it, and so does a person; phases are in search attributes", async () => {
  await startSupervisor('broken', { coolDownSeconds: 3 });
  const handle = stack.env.client.workflow.getHandle(supervisorWorkflowId('broken'));
  const script: ScriptInput = { rules: [planReply([{ id: 's', title: 'Something', instructions: 'Do it', role: 'broken' }]), { match: { purpose: 'act' }, reply: { text: 'done' } }] };
  await stack.withWorker(script, async () => {
    for (let i = 0; i < 5; i++) await handle.signal(embodimentOutcomeSignal, outcome({ outcome: 'failed' }));
    await waitFor('the suspension', async () => (await stateOf('broken')).phase === 'Suspended');
    const found = await waitFor('the visibility record', async () => {
      const ids: string[] = [];
      for await (const wf of stack.env.client.workflow.list({ query: `${SEARCH_ATTRIBUTES.supervisorPhase.name} = 'Suspended'` })) ids.push(wf.workflowId);
      return ids.includes(supervisorWorkflowId('broken')) && ids;
    });
    expect(found).toContain(supervisorWorkflowId('broken'));

    // The router now sends a "broken" subtask to the generalist, with the reason on the subtask.
    await stack.client.submitTask({ taskId: 'rerouted', goal: 'route around a suspended role' });
    const result = await stack.client.result('rerouted');
    expect(result.subtasks[0]).toMatchObject({ role: 'generalist', roleRequested: 'broken', roleFallbackReason: expect.stringContaining('is suspended') });

    // The cool-down (3 s) reinstates it by itself, with a fresh window.
    await waitFor('the cool-down', async () => (await stateOf('broken')).phase === 'Active', 20_000);
    expect(await rows(`SELECT suspended_at FROM role_heads WHERE name = 'broken'`)).toEqual([{ suspended_at: null }]);
    expect((await stateOf('broken')).window).toEqual([]);

    // Suspended again, then reinstated by a person through the CLI: the supervisor hears of it at once.
    for (let i = 0; i < 5; i++) await handle.signal(embodimentOutcomeSignal, outcome({ outcome: 'failed' }));
    await waitFor('the second suspension', async () => (await stateOf('broken')).phase === 'Suspended');
    const out = await mare('roles', 'reinstate', 'broken', '--reason', 'fixed the prompt', '--by', 'frank');
    expect(out).toMatchObject({ code: 0, stdout: 'reinstated broken\n' });
    expect(out.stderr).toContain("told the role's supervisor");
    await waitFor('the reinstatement', async () => (await stateOf('broken')).phase === 'Active', 10_000);
    const shown = await mare('supervisor', 'show', 'broken');
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(/^supervisor of broken: Active; throttle none\nwindow: 0 embodiments/);
    expect(shown.stdout).toContain('reinstate  by frank: fixed the prompt');
    expect(JSON.parse((await mare('supervisor', 'show', 'broken', '--json')).stdout)).toMatchObject({ role: 'broken', phase: 'Active' });
    expect(await mare('supervisor', 'show', 'nobody')).toMatchObject({ code: 2, stderr: 'mare: role "nobody" has no supervisor yet: one starts with the role\'s first finished embodiment\n' });
  });
  const actions = await rows<{ action: string; decided_by: string }>(`SELECT action, decided_by FROM enforcement_actions WHERE role = 'broken' ORDER BY id`);
  expect(actions).toEqual([
    { action: 'suspend', decided_by: 'supervisor' },
    { action: 'reinstate', decided_by: 'supervisor' },
    { action: 'suspend', decided_by: 'supervisor' },
    { action: 'reinstate', decided_by: 'frank' },
  ]);
  const report = await mare('report', 'enforcement', '--role', 'broken', '--json');
  expect(report.code).toBe(0);
  expect((JSON.parse(report.stdout) as { action: string }[]).map((a) => a.action)).toEqual(['reinstate', 'suspend', 'reinstate', 'suspend']);
});

test('an anomaly (latency far from the rolling baseline) produces a warning with its evidence', async () => {
  await startSupervisor('anomalous');
  const handle = stack.env.client.workflow.getHandle(supervisorWorkflowId('anomalous'));
  await stack.withWorker({ rules: [{ reply: { text: 'x' } }] }, async () => {
    for (const latencyMs of [900, 1000, 1100, 1000, 950]) await handle.signal(embodimentOutcomeSignal, outcome({ latencyMs }));
    await handle.signal(embodimentOutcomeSignal, outcome({ latencyMs: 45_000 }));
    await waitFor('the warning', async () => (await stateOf('anomalous')).actions.length > 0);
  });
  const [warning] = await rows<{ action: string; reason: string; evidence: { outcome: { latencyMs: number } } }>(`SELECT action, reason, evidence FROM enforcement_actions WHERE role = 'anomalous'`);
  expect(warning).toMatchObject({ action: 'warning', reason: expect.stringContaining('anomaly: latency 45000 ms') });
  expect(warning!.evidence.outcome.latencyMs).toBe(45_000);
});

test('the supervisor continues as new before its history grows large, with its window and counters intact', async () => {
  const started = await startSupervisor('longlived', { maxHistoryEvents: 30 });
  const handle = stack.env.client.workflow.getHandle(supervisorWorkflowId('longlived'));
  const sent: OutcomeReport[] = [];
  await stack.withWorker({ rules: [{ reply: { text: 'x' } }] }, async () => {
    for (let i = 0; i < 30; i++) {
      const o = outcome({ outcome: 'completed', latencyMs: 1000 + i });
      sent.push(o);
      await handle.signal(embodimentOutcomeSignal, o);
    }
    // A repeated signal (the same embodiment) counts once.
    await handle.signal(embodimentOutcomeSignal, sent[29]!);
    await waitFor('all outcomes', async () => (await stateOf('longlived')).outcomesSeen === 30);
    const state = await waitFor('a new run', async () => {
      const s = await stateOf('longlived');
      return s.runs > 1 && s;
    });
    expect(state.outcomesSeen).toBe(30);
    expect(state.window.map((o) => o.key)).toEqual(sent.slice(-20).map((o) => o.key));
    expect(state.phase).toBe('Active');
  });
  const description = await handle.describe();
  expect(description.runId).not.toBe(started.firstExecutionRunId);
  expect(Number(description.raw.workflowExecutionInfo?.historyLength)).toBeLessThan(100);
});

test('every finished embodiment reaches its role supervisor (signal-with-start) and mare report reliability', async () => {
  const script: ScriptInput = { rules: [planReply([{ id: 'w', title: 'Write', instructions: 'Answer', role: 'writer' }]), { match: { purpose: 'act' }, reply: { text: 'answered' } }] };
  await stack.withWorker(script, async () => {
    await stack.client.submitTask({ taskId: 'reported', goal: 'report me' });
    await stack.client.result('reported');
    await waitFor('the writer supervisor', async () => (await stateOf('writer').catch(() => undefined))?.outcomesSeen === 1);
    const [row] = await rows<{ embodiment_key: string }>(`SELECT embodiment_key FROM embodiments WHERE task_id = 'reported'`);
    expect((await stateOf('writer')).window.map((o) => o.key)).toEqual([row!.embodiment_key]);
  });
  const report = await mare('report', 'reliability', '--role', 'writer', '--json');
  expect(report.code).toBe(0);
  expect(JSON.parse(report.stdout)).toEqual([expect.objectContaining({ role: 'writer', version: '1.0.0', embodiments: 1, completed: 1, successRate: 1 })]);
});

test('retiring a supervisor: Retiring until no embodiment holds a slot, then Terminated, and the workflow ends', async () => {
  const started = await startSupervisor('retiree');
  await stack.withWorker({ rules: [{ reply: { text: 'x' } }] }, async () => {
    await waitFor('Ready', async () => (await stateOf('retiree')).phase === 'Ready');
    await started.signal(embodimentOutcomeSignal, outcome());
    await waitFor('Active', async () => (await stateOf('retiree')).phase === 'Active');
    expect(await mare('supervisor', 'retire', 'retiree')).toMatchObject({ code: 0, stdout: 'asked the supervisor of retiree to retire\n' });
    const final = (await started.result()) as SupervisorState;
    expect(final.phase).toBe('Terminated');
    expect(final.outcomesSeen).toBe(1);
  });
  const description = await started.describe();
  expect(description.status.name).toBe('COMPLETED');
  await recordHistory(stack, 'superviseRole.retiree.json', supervisorWorkflowId('retiree'));
  expect(description.searchAttributes[SEARCH_ATTRIBUTES.supervisorPhase.name]).toEqual(['Terminated']);
});
