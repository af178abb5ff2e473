import { execFile } from 'node:child_process';
import path from 'node:path';
import { subtaskWorkflowId, supervisorWorkflowId, TASK_QUEUE } from '../../core/constants';
import type { SupervisorState } from '../../core/supervisor';
import { supervisorStateQuery } from '../../workflows/definitions';
import { createTestStack, historyOf, planReply, toolCall, type ScriptInput, type TestStack } from '../helpers';

/**
 * Issue 15 §5: enforcement of a role counts per tenant. Failing tasks of tenant acme throttle, then
 * suspend, the shared role for acme only; globex's tasks with the same role run unhindered; an
 * operator's global suspension stops both.
 */
let stack: TestStack;
const CLI = path.join(__dirname, '..', '..', 'dist', 'cli', 'mare.js');
const ROLE = 'shared';
/** Decisions after 3 outcomes; a cool-down that never ends during the test. */
const SETTINGS = { minSamples: 3, coolDownSeconds: 3600 };

// A goal with FAIL plans subtask "bad", whose agent calls a tool that does not exist until its one model call is spent (BudgetExceeded).
const script: ScriptInput = {
  rules: [
    { ...planReply([{ id: 'bad', title: 'Bad part', instructions: 'Answer', role: ROLE }]), match: { purpose: 'plan', goalContains: 'FAIL' } },
    planReply([{ id: 'good', title: 'Good part', instructions: 'Answer', role: ROLE }]),
    { match: { purpose: 'act', subtask: 'bad' }, reply: toolCall('no.such.tool', {}) },
    { match: { purpose: 'act' }, reply: { text: 'done' } },
  ],
};

beforeAll(async () => {
  stack = await createTestStack();
  await stack.roles.repository.publish({ name: ROLE, version: '1.0.0', description: 'a role every tenant uses', systemPrompt: 'You answer.', confidenceThreshold: 0.5, maxIterations: 1 }, { actor: 'test' });
  for (const tenant of ['acme', 'globex']) {
    await stack.env.client.workflow.start('superviseRole', { workflowId: supervisorWorkflowId(ROLE, tenant), taskQueue: TASK_QUEUE, args: [{ role: ROLE, tenant, settings: SETTINGS }] });
  }
}, 120_000);

afterAll(async () => {
  await stack?.teardown();
});

async function rows<T>(sql: string, params: unknown[] = []): Promise<T[]> {
  return (await stack.pool.query(sql, params)).rows as T[];
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 90_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

function mare(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, DATABASE_URL: stack.databaseUrl, TEMPORAL_ADDRESS: stack.env.address, ...stack.roleKeysEnv } }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

const stateOf = (tenant: string): Promise<SupervisorState> => stack.env.client.workflow.getHandle(supervisorWorkflowId(ROLE, tenant)).query(supervisorStateQuery);

let n = 0;
/** Runs one task of `tenant` to its end; returns the task id and its first subtask's result. */
async function run(tenant: string, fail = false) {
  const taskId = `${tenant}-${++n}`;
  await stack.client.submitTask({ taskId, goal: fail ? 'FAIL on purpose' : 'succeed', tenant });
  const result = await stack.client.result(taskId);
  return { taskId, subtask: result.subtasks[0]!, status: result.status };
}

/** The signals a subtask's child workflow sent to other workflows, as "signal → workflow id". */
async function externalSignals(taskId: string, subtaskId: string): Promise<string[]> {
  return (await historyOf(stack, subtaskWorkflowId(taskId, subtaskId))).flatMap((e) => {
    const a = e.signalExternalWorkflowExecutionInitiatedEventAttributes;
    return a ? [`${a.signalName} → ${a.workflowExecution?.workflowId}`] : [];
  });
}

async function tenantRow(tenant: string): Promise<{ suspended_at: Date | null; throttle_cap: number | null } | undefined> {
  return (await rows<{ suspended_at: Date | null; throttle_cap: number | null }>('SELECT suspended_at, throttle_cap FROM role_tenant_enforcement WHERE role = $1 AND tenant = $2', [ROLE, tenant]))[0];
}

test("acme's failures throttle, then suspend, the shared role for acme only; globex's tasks with it still run and complete; an operator's global suspension stops both", async () => {
  await stack.withWorker(script, async () => {
    // Throttle: 2 of 3 acme embodiments complete (67%, below 80%).
    for (const fail of [false, false, true]) await run('acme', fail);
    await waitFor('the throttle of acme', async () => (await tenantRow('acme'))?.throttle_cap === 1);
    await waitFor('the cached throttle', async () => (await stack.roles.candidates('acme')).candidates.find((c) => c.name === ROLE)?.throttleCap === 1);
    expect((await stack.roles.candidates('globex')).candidates.find((c) => c.name === ROLE)?.throttleCap).toBeUndefined();
    expect(await tenantRow('globex')).toBeUndefined();
    expect((await stateOf('globex')).throttleCap).toBeNull();

    // Proven on the histories: acme's subtask asked acme's supervisor for a slot; globex's asked nobody.
    const throttledAcme = await run('acme');
    expect(throttledAcme.status).toBe('COMPLETED');
    expect(await externalSignals(throttledAcme.taskId, 'good')).toEqual([`acquireSlot → ${supervisorWorkflowId(ROLE, 'acme')}`, `releaseSlot → ${supervisorWorkflowId(ROLE, 'acme')}`]);
    const freeGlobex = await run('globex');
    expect(freeGlobex).toMatchObject({ status: 'COMPLETED', subtask: { role: ROLE, status: 'completed' } });
    expect(await externalSignals(freeGlobex.taskId, 'good')).toEqual([]);

    // Suspension: three more acme failures (3 of 7 complete, 43%, below 50%).
    for (const fail of [true, true, true]) await run('acme', fail);
    await waitFor('the suspension of acme', async () => Boolean((await tenantRow('acme'))?.suspended_at) && (await stateOf('acme')).phase === 'Suspended');
    await waitFor('the cached suspension', async () => (await stack.roles.candidates('acme')).candidates.find((c) => c.name === ROLE)?.suspended === true);
    expect((await rows('SELECT 1 FROM role_heads WHERE name = $1 AND suspended_at IS NOT NULL', [ROLE])).length).toBe(0);

    const reroutedAcme = await run('acme');
    expect(reroutedAcme.subtask).toMatchObject({ role: 'generalist', roleRequested: ROLE, roleFallbackReason: expect.stringContaining('is suspended') as unknown });
    const stillGlobex = await run('globex');
    expect(stillGlobex).toMatchObject({ status: 'COMPLETED', subtask: { role: ROLE, roleRequested: ROLE, status: 'completed' } });
    expect(stillGlobex.subtask.roleFallbackReason).toBeUndefined();
    // The database agrees: globex's embodiments of the role all completed, none of them waited on acme's record.
    expect(await rows('SELECT tenant, role, outcome FROM embodiments WHERE task_id = ANY($1) ORDER BY task_id', [[freeGlobex.taskId, stillGlobex.taskId, reroutedAcme.taskId]])).toEqual([
      { tenant: 'acme', role: 'generalist', outcome: 'completed' },
      { tenant: 'globex', role: ROLE, outcome: 'completed' },
      { tenant: 'globex', role: ROLE, outcome: 'completed' },
    ]);
    // Throttle and suspension for acme only (a warning may come between them, depending on when outcomes arrive).
    expect(await rows("SELECT tenant, action FROM enforcement_actions WHERE role = $1 AND action <> 'warning' ORDER BY id", [ROLE])).toEqual([
      { tenant: 'acme', action: 'throttle' },
      { tenant: 'acme', action: 'suspend' },
    ]);
    expect(await rows("SELECT tenant, action FROM enforcement_actions WHERE role = $1 AND tenant <> 'acme'", [ROLE])).toEqual([]);
    expect(await mare('supervisor', 'list', ROLE)).toMatchObject({
      code: 0,
      stdout: expect.stringMatching(/^supervisor of shared for tenant acme: Suspended until \S+; throttle 1 at once \(0 running, 0 waiting\)\nsupervisor of shared for tenant globex: Active; throttle none\n$/) as unknown,
    });
    await waitFor("globex's two outcomes", async () => (await stateOf('globex')).outcomesSeen === 2);
    expect((await mare('supervisor', 'show', ROLE, '--tenant', 'globex')).stdout).toMatch(/^supervisor of shared for tenant globex: Active; throttle none\nwindow: 2 embodiments, success 100%/);

    // An operator suspends the role for every tenant: globex's task is rerouted too.
    expect(await mare('roles', 'suspend', ROLE, '--reason', 'incident', '--by', 'olga')).toMatchObject({ code: 0, stdout: 'suspended shared\n' });
    await waitFor('the cached global suspension', async () => (await stack.roles.candidates('globex')).candidates.find((c) => c.name === ROLE)?.suspended === true);
    const stoppedGlobex = await run('globex');
    expect(stoppedGlobex.subtask).toMatchObject({ role: 'generalist', roleRequested: ROLE, roleFallbackReason: expect.stringContaining('is suspended') as unknown });
    expect((await run('acme')).subtask).toMatchObject({ role: 'generalist', roleRequested: ROLE });

    // Lifting the global suspension leaves acme's in force, and says so.
    const lifted = await mare('roles', 'reinstate', ROLE, '--reason', 'incident over', '--by', 'olga');
    expect(lifted).toMatchObject({ code: 0, stdout: expect.stringMatching(/^reinstated shared\nstill in force: tenant acme: suspended \S+: success rate 43% over the last 7 embodiments is below 50%; throttled to 1 at once: success rate 67% .+\n$/) as unknown });
    expect(await mare('roles', 'reinstate', ROLE, '--reason', 'again')).toMatchObject({ code: 2, stderr: 'mare: shared is not suspended for every tenant; it is suspended for tenant(s) acme (use --tenant)\n' });
    await waitFor('globex free again', async () => (await stack.roles.candidates('globex')).candidates.find((c) => c.name === ROLE)?.suspended === false);
    expect((await run('globex')).subtask).toMatchObject({ role: ROLE, status: 'completed' });

    // acme's suspension is lifted by a person for acme: its supervisor hears of it and starts afresh.
    const forAcme = await mare('roles', 'reinstate', ROLE, '--tenant', 'acme', '--reason', 'fixed', '--by', 'olga');
    expect(forAcme).toMatchObject({ code: 0, stdout: expect.stringMatching(/^reinstated shared for tenant acme\n/) as unknown, stderr: `told the role's supervisor (${supervisorWorkflowId(ROLE, 'acme')})\n` });
    await waitFor('acme Active again', async () => (await stateOf('acme')).phase === 'Active');
  });
}, 600_000);

test('tenant names cannot collide with each other or reach another tenant through the key format', async () => {
  // Every (role, tenant) pair has its own supervisor id, including tenants that look like separators or object keys.
  const pairs: [string, string][] = [
    ['a', 'b-c'],
    ['a-b', 'c'],
    ['a', 'default'],
    ['a', 'default2'],
    ['a', 'constructor'],
    ['a', '__proto__'],
    ['a', 'b:c'],
    ['a:b', 'c'],
    ['a', 'b%3Ac'],
  ];
  const ids = pairs.map(([role, tenant]) => supervisorWorkflowId(role, tenant));
  expect(new Set(ids).size).toBe(pairs.length);

  // A tenant named like an Object.prototype property is a tenant like any other (state is not a plain object keyed by tenant).
  expect(await mare('roles', 'suspend', ROLE, '--tenant', 'constructor', '--reason', 'probe')).toMatchObject({ code: 0, stdout: 'suspended shared for tenant constructor\n' });
  await waitFor('the cached suspension of constructor', async () => (await stack.roles.candidates('constructor')).candidates.find((c) => c.name === ROLE)?.suspended === true);
  for (const other of ['default', 'hasownproperty', 'tostring', 'globex']) {
    expect((await stack.roles.candidates(other)).candidates.find((c) => c.name === ROLE)).toMatchObject({ suspended: false });
  }
  expect(await mare('roles', 'reinstate', ROLE, '--tenant', 'constructor', '--reason', 'probe over')).toMatchObject({ code: 0 });

  // A tenant outside the format is refused before anything changes.
  const before = await rows('SELECT role, tenant FROM role_tenant_enforcement ORDER BY tenant');
  for (const bad of ['acme:x', '../acme', 'ACME', '__proto__', '', 'a'.repeat(65)]) {
    const out = await mare('roles', 'suspend', ROLE, '--tenant', bad, '--reason', 'probe');
    expect(out).toMatchObject({ code: 2, stdout: '', stderr: expect.stringContaining('--tenant') as unknown });
  }
  expect(await rows('SELECT role, tenant FROM role_tenant_enforcement ORDER BY tenant')).toEqual(before);
  expect(await mare('supervisor', 'show', ROLE, '--tenant', 'acme:x')).toMatchObject({ code: 2, stderr: expect.stringContaining('--tenant') as unknown });
}, 120_000);
