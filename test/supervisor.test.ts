import { execFile } from 'node:child_process';
import path from 'node:path';
import { SEARCH_ATTRIBUTES, supervisorWorkflowId, TASK_QUEUE } from '../core/constants';
import { decide, SUPERVISOR_DEFAULTS, type OutcomeReport, type SupervisorState } from '../core/supervisor';
import { embodimentOutcomeSignal, supervisorStateQuery } from '../workflows/definitions';
import { createTestStack, planReply, recordHistory, type ScriptInput, type TestStack } from './helpers';

let stack: TestStack;
const who = { actor: 'test' };
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');

beforeAll(async () => {
  stack = await createTestStack();
  for (const name of ['flaky', 'broken', 'cooling', 'lagging', 'orphan', 'anomalous', 'reborn', 'longlived', 'retiree']) {
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

/** Polls `fn` until it returns something truthy; the budget is generous so a loaded machine only makes it slower. */
async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 90_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The phase in the supervisor's search attribute (what `mare roles reinstate` reads), if it runs. */
async function publishedPhase(role: string): Promise<string | undefined> {
  const d = await stack.env.client.workflow.getHandle(supervisorWorkflowId(role)).describe();
  return d.status.name === 'RUNNING' ? d.typedSearchAttributes.get(SEARCH_ATTRIBUTES.supervisorPhase) : undefined;
}

/** Whether the role is suspended for the default tenant (the supervisors in this file are the default tenant's). */
async function suspendedInRepository(role: string): Promise<boolean> {
  return (await rows(`SELECT 1 FROM role_tenant_enforcement WHERE role = $1 AND tenant = 'default' AND suspended_at IS NOT NULL`, [role])).length === 1;
}

/** Waits until every view agrees the role is suspended: repository, the worker's role cache, the supervisor (state and search attribute). */
async function waitForSuspension(role: string): Promise<void> {
  await waitFor(`${role} suspended in the repository, the role cache and its supervisor`, async () =>
    (await suspendedInRepository(role)) &&
    (await stack.roles.candidates('default')).candidates.find((c) => c.name === role)?.suspended === true &&
    (await stateOf(role)).phase === 'Suspended' &&
    (await publishedPhase(role)) === 'Suspended',
  );
}

/** Waits until the supervisor is Active again (state and search attribute) and returns its state. */
async function waitForActive(role: string, what: string): Promise<SupervisorState> {
  return waitFor(what, async () => {
    const state = await stateOf(role);
    return state.phase === 'Active' && (await publishedPhase(role)) === 'Active' && state;
  });
}

async function enforcementOf(role: string): Promise<{ action: string; decided_by: string; reason: string }[]> {
  return rows(`SELECT action, decided_by, reason FROM enforcement_actions WHERE role = $1 ORDER BY id`, [role]);
}

/** The names of the signals in the supervisor's current run, in order. */
async function signalsTo(role: string): Promise<string[]> {
  const { events } = await stack.env.client.workflow.getHandle(supervisorWorkflowId(role)).fetchHistory();
  return (events ?? []).flatMap((e) => (e.workflowExecutionSignaledEventAttributes?.signalName ? [e.workflowExecutionSignaledEventAttributes.signalName] : []));
}

function mare(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return mareWith({}, ...args);
}

function mareWith(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, DATABASE_URL: stack.databaseUrl, TEMPORAL_ADDRESS: stack.env.address, ...stack.roleKeysEnv, ...env } }, (err, stdout, stderr) =>
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
  const slotRequests = async (): Promise<number> => (await signalsTo('flaky')).filter((name) => name === 'acquireSlot').length;
  await startSupervisor('flaky');
  await stack.withWorker(script, async () => {
    // Control: not throttled, no subtask asks the supervisor for a slot (proven on its history, not on timing).
    await stack.client.submitTask({ taskId: 'unthrottled', goal: 'three parts', concurrency: 3 });
    await stack.client.result('unthrottled');
    expect(await slotRequests()).toBe(0);

    // The control's three successes, then three failures: at 3/5 = 60%, below 80%, the role is throttled to one at a time.
    const handle = stack.env.client.workflow.getHandle(supervisorWorkflowId('flaky'));
    for (const o of ['failed', 'failed', 'failed', 'completed', 'completed'] as const) await handle.signal(embodimentOutcomeSignal, outcome({ outcome: o }));
    await waitFor('the throttle', async () => (await stateOf('flaky')).throttleCap === 1);
    expect(await rows(`SELECT tenant, throttle_cap FROM role_tenant_enforcement WHERE role = 'flaky'`)).toEqual([{ tenant: 'default', throttle_cap: 1 }]);
    // The worker's role cache hears of it by NOTIFY.
    await waitFor('the cached throttle', async () => (await stack.roles.candidates('default')).candidates.find((c) => c.name === 'flaky')?.throttleCap === 1);

    await stack.client.submitTask({ taskId: 'throttled', goal: 'three parts', concurrency: 3 });
    await stack.client.result('throttled');
    expect(await slotRequests()).toBe(3);
    expect(await overlapping('throttled')).toBe(0);
  });
  const [action] = await rows<{ action: string; reason: string; decided_by: string; evidence: { window: { n: number } } }>(`SELECT action, reason, decided_by, evidence FROM enforcement_actions WHERE role = 'flaky' AND action = 'throttle'`);
  expect(action).toMatchObject({ action: 'throttle', decided_by: 'supervisor', reason: 'success rate 60% over the last 5 embodiments is below 80%: at most 1 at once' });
  expect(action!.evidence.window.n).toBe(5);
});

test("suspension sends the role's subtasks to the fallback; a cool-down reinstates it, and so does a person; phases are in search attributes", async () => {
  // A cool-down that never ends during the test, so the suspension holds until the person lifts it.
  await startSupervisor('broken', { coolDownSeconds: 3600 });
  const handle = stack.env.client.workflow.getHandle(supervisorWorkflowId('broken'));
  const script: ScriptInput = { rules: [planReply([{ id: 's', title: 'Something', instructions: 'Do it', role: 'broken' }]), { match: { purpose: 'act' }, reply: { text: 'done' } }] };
  await stack.withWorker(script, async () => {
    for (let i = 0; i < 5; i++) await handle.signal(embodimentOutcomeSignal, outcome({ outcome: 'failed' }));
    await waitForSuspension('broken');
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

    // Reinstated by a person through the CLI: the repository is lifted and the supervisor hears of it at once.
    const out = await mare('roles', 'reinstate', 'broken', '--tenant', 'default', '--reason', 'fixed the prompt', '--by', 'frank');
    expect(out).toMatchObject({ code: 0, stdout: 'reinstated broken for tenant default\n', stderr: expect.stringContaining("told the role's supervisor") });
    expect(await suspendedInRepository('broken')).toBe(false);
    expect((await waitForActive('broken', 'the reinstatement by frank')).window).toEqual([]);
    const shown = await mare('supervisor', 'show', 'broken');
    expect(shown).toMatchObject({ code: 0, stdout: expect.stringMatching(/^supervisor of broken for tenant default: Active; throttle none\nwindow: 0 embodiments/) });
    expect(shown.stdout).toContain('reinstate  by frank: fixed the prompt');
    expect(JSON.parse((await mare('supervisor', 'show', 'broken', '--json')).stdout)).toMatchObject({ role: 'broken', phase: 'Active' });
    expect(await mare('supervisor', 'show', 'nobody')).toMatchObject({ code: 2, stderr: 'mare: role "nobody" has no supervisor yet: one starts with the role\'s first finished embodiment\n' });

    // The cool-down reinstates a role by itself, with a fresh window (a short one, on a role of its own; waited for on the records it leaves).
    await startSupervisor('cooling', { coolDownSeconds: 2 });
    const cooling = stack.env.client.workflow.getHandle(supervisorWorkflowId('cooling'));
    for (let i = 0; i < 5; i++) await cooling.signal(embodimentOutcomeSignal, outcome({ outcome: 'failed' }));
    const record = await waitFor('the suspension and the cool-down of cooling', async () => {
      const actions = await enforcementOf('cooling');
      return actions.length >= 2 && actions;
    });
    expect(record).toEqual([
      { action: 'suspend', decided_by: 'supervisor', reason: expect.stringContaining('below 50%') },
      { action: 'reinstate', decided_by: 'supervisor', reason: 'cool-down of 2 s elapsed' },
    ]);
    expect((await waitForActive('cooling', 'the cool-down reinstatement')).window).toEqual([]);
    expect(await suspendedInRepository('cooling')).toBe(false);
  });
  expect((await enforcementOf('broken')).map(({ action, decided_by }) => ({ action, decided_by }))).toEqual([
    { action: 'suspend', decided_by: 'supervisor' },
    { action: 'reinstate', decided_by: 'frank' },
  ]);
  const report = await mare('report', 'enforcement', '--role', 'broken', '--json');
  expect(report.code).toBe(0);
  expect((JSON.parse(report.stdout) as { action: string }[]).map((a) => a.action)).toEqual(['reinstate', 'suspend']);
}, 300_000);

test("mare roles reinstate answers from the repository's suspended flags whatever the supervisor's phase, and brings a lagging supervisor along", async () => {
  await startSupervisor('lagging', { coolDownSeconds: 3600 });
  const handle = stack.env.client.workflow.getHandle(supervisorWorkflowId('lagging'));
  await stack.withWorker({ rules: [{ reply: { text: 'x' } }] }, async () => {
    for (let i = 0; i < 5; i++) await handle.signal(embodimentOutcomeSignal, outcome({ outcome: 'failed' }));
    await waitForSuspension('lagging');

    // The supervisor still says Suspended, the repository no longer does (its cool-down's enforce landed, or someone lifted it without telling it).
    await stack.roles.repository.reinstate('lagging', { actor: 'elsewhere', reason: 'lifted behind the supervisor' }, 'default');
    const behind = await mare('roles', 'reinstate', 'lagging', '--tenant', 'default', '--reason', 'fixed', '--by', 'grace');
    expect(behind).toMatchObject({
      code: 2,
      stdout: '',
      stderr: `mare: lagging is not suspended for tenant default; its supervisor (${supervisorWorkflowId('lagging')}) still said Suspended and was told, so it records the reinstatement now\n`,
    });
    await waitForActive('lagging', 'the lagging supervisor to catch up');
    expect((await enforcementOf('lagging')).map((a) => [a.action, a.decided_by, a.reason])).toEqual([
      ['suspend', 'supervisor', expect.stringContaining('below 50%')],
      ['reinstate', 'grace', 'fixed'],
    ]);

    // Suspended for the tenant by a person, not by the supervisor (still Active): the flag is lifted and the supervisor told; it has nothing to undo.
    expect(await mare('roles', 'suspend', 'lagging', '--tenant', 'default', '--reason', 'audit', '--by', 'heidi')).toMatchObject({ code: 0, stdout: 'suspended lagging for tenant default\n' });
    const lifted = await mare('roles', 'reinstate', 'lagging', '--tenant', 'default', '--reason', 'audit done', '--by', 'ivan');
    expect(lifted).toMatchObject({ code: 0, stdout: 'reinstated lagging for tenant default\n', stderr: `told the role's supervisor (${supervisorWorkflowId('lagging')})\n` });
    expect(await suspendedInRepository('lagging')).toBe(false);
    // A global suspension is an operator's: lifting it tells no supervisor.
    expect(await mare('roles', 'suspend', 'lagging', '--reason', 'incident', '--by', 'heidi')).toMatchObject({ code: 0, stdout: 'suspended lagging\n' });
    expect(await mare('roles', 'reinstate', 'lagging', '--reason', 'incident over', '--by', 'ivan')).toMatchObject({ code: 0, stdout: 'reinstated lagging\n', stderr: '' });

    // Neither the repository nor the supervisor says suspended.
    expect(await mare('roles', 'reinstate', 'lagging', '--reason', 'again')).toMatchObject({ code: 2, stdout: '', stderr: 'mare: lagging is not suspended\n' });

    // No supervisor at all: the repository's answer alone, with a note.
    expect(await mare('roles', 'suspend', 'orphan', '--tenant', 'default', '--reason', 'audit')).toMatchObject({ code: 0, stdout: 'suspended orphan for tenant default\n' });
    expect(await mare('roles', 'reinstate', 'orphan', '--tenant', 'default', '--reason', 'audit done')).toMatchObject({
      code: 0,
      stdout: 'reinstated orphan for tenant default\n',
      stderr: `note: orphan has no running supervisor for tenant default (${supervisorWorkflowId('orphan')}), so there is no one else to tell; one starts with the role's next finished embodiment for the tenant\n`,
    });
    expect(await mare('roles', 'reinstate', 'orphan', '--tenant', 'default', '--reason', 'again')).toMatchObject({ code: 2, stdout: '', stderr: 'mare: orphan is not suspended for tenant default\n' });
    expect(await mare('roles', 'reinstate', 'nosuch', '--reason', 'x')).toMatchObject({ code: 2, stdout: '', stderr: 'mare: no role nosuch\n' });

    // Temporal out of reach: the repository is still the answer, and the note says the supervisor was not told.
    expect(await mare('roles', 'suspend', 'orphan', '--tenant', 'default', '--reason', 'audit')).toMatchObject({ code: 0 });
    const unreachable = await mareWith({ TEMPORAL_ADDRESS: '127.0.0.1:1' }, 'roles', 'reinstate', 'orphan', '--tenant', 'default', '--reason', 'offline');
    expect(unreachable).toMatchObject({ code: 0, stdout: 'reinstated orphan for tenant default\n', stderr: expect.stringMatching(/^note: the role's supervisor \(\S+\) was not told \(.+\); it records the reinstatement when its cool-down ends\n$/) });
  });
  expect((await enforcementOf('lagging')).map((a) => a.action)).toEqual(['suspend', 'reinstate']);
}, 300_000);

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

test("a supervisor started after a retired one records its own enforcement actions (their keys don't repeat)", async () => {
  const warnFor = async (): Promise<void> => {
    const started = await startSupervisor('reborn');
    for (const latencyMs of [900, 1000, 1100, 1000, 950, 45_000]) await started.signal(embodimentOutcomeSignal, outcome({ latencyMs }));
    await waitFor('the warning', async () => (await stateOf('reborn')).actions.length > 0);
    expect(await mare('supervisor', 'retire', 'reborn')).toMatchObject({ code: 0 });
    await started.result();
  };
  await stack.withWorker({ rules: [{ reply: { text: 'x' } }] }, async () => {
    await warnFor();
    await warnFor();
  });
  const warnings = await rows<{ action_key: string }>(`SELECT action_key FROM enforcement_actions WHERE role = 'reborn' ORDER BY id`);
  expect(warnings).toHaveLength(2);
  expect(new Set(warnings.map((w) => w.action_key)).size).toBe(2);
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
