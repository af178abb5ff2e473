import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { bundleWorkflowCode, DefaultLogger, Worker } from '@temporalio/worker';
import { temporal } from '@temporalio/proto';
import { keyringVars, newKey, type Keyring } from '../infra/crypto/keyring';
import type { StuckRun } from '../cli/doctorCommand';
import { TASK_QUEUE } from '../core/constants';
import { ENCRYPTED_ENCODING, FAILURE_CONVERTER_PATH, mareDataConverter, PAYLOAD_KEYS } from '../infra/crypto/payloadCodec';
import { NONDETERMINISM_METRIC, nondeterminismIn, NondeterminismMonitor } from '../workers/workflowTaskFailures';
import { createTestStack, freePort, metricSample as sample, type TestStack } from './helpers';

// The real `mare` command from dist/ (npm test builds it first), against the test Temporal server.
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');
const FIXTURES = path.join(__dirname, 'fixtures', 'doctor');
const { EventType } = temporal.api.enums.v1;

const payloadKey = newKey();
const keyring: Keyring = { activeKeyId: payloadKey.id, keys: new Map([[payloadKey.id, payloadKey.key]]), origin: 'test' };
const payloadEnv = keyringVars(PAYLOAD_KEYS, keyring);

let stack: TestStack;
let worker: ChildProcess | undefined;
let workerOutput = '';

beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  stack = await createTestStack({ payloadKeyring: keyring });
});

afterAll(async () => {
  worker?.kill('SIGKILL');
  await stack?.teardown();
});

/** Builds a fixture bundle the way MARE bundles its workflows: with MARE's failure converter. */
async function bundle(file: string): Promise<string> {
  const { code } = await bundleWorkflowCode({ workflowsPath: path.join(FIXTURES, file), failureConverterPath: FAILURE_CONVERTER_PATH, logger: new DefaultLogger('ERROR') });
  return code;
}

function mare(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // MARE_DATA_DIR: the stack's own directory, so no payload key file of the developer's is picked up.
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, TEMPORAL_ADDRESS: stack.env.address, TEMPORAL_NAMESPACE: 'default', MARE_DATA_DIR: stack.dir, ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The worker's JSON log lines at error level (pino: 50). */
function errorLines(): Record<string, unknown>[] {
  return workerOutput
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.level === 50);
}

async function doctor(...args: string[]): Promise<{ code: number; runs: StuckRun[]; stderr: string }> {
  const r = await mare(payloadEnv, 'doctor', '--json', ...args);
  return { code: r.code, runs: r.code <= 1 && r.stdout ? (JSON.parse(r.stdout) as StuckRun[]) : [], stderr: r.stderr };
}

test('doctor --help states the exit codes; a healthy stack: nothing listed, exit code 0', async () => {
  const help = await mare({}, 'doctor', '--help');
  expect(help.code).toBe(0);
  for (const s of ['--all', '--json', 'Exit codes: 0 no stuck run, 1 some run is stuck']) expect(help.stdout).toContain(s);

  expect(await doctor('--all')).toMatchObject({ code: 0, runs: [] });
  const text = await mare(payloadEnv, 'doctor');
  expect(text.code).toBe(0);
  expect(text.stdout).toContain('ok: no running MARE runs');
});

test('the recogniser: Core TMPRL1100 and DeterminismViolationError count, a plain workflow error does not; a run counts once', async () => {
  const core = {
    level: 'WARN' as const,
    message: 'Failing workflow task',
    meta: { runId: 'r1', failure: 'Failure { failure: Some(Failure { message: "[TMPRL1100] Nondeterminism error: Timer machine does \\"x\\"", source: "" }), force_cause: NonDeterministicError }' },
  };
  expect(nondeterminismIn(core)).toEqual({ runId: 'r1', message: '[TMPRL1100] Nondeterminism error: Timer machine does "x"', source: 'core' });
  const lang = { level: 'WARN' as const, message: 'Failing workflow task', meta: { runId: 'r2', failure: 'Failure { failure: Some(Failure { message: "Encoded failure" }), force_cause: Unspecified }' } };
  expect(nondeterminismIn(lang)).toBeUndefined();
  const workflowFailed = (error: unknown) => ({ level: 'WARN' as const, message: 'Workflow failed', meta: { runId: 'r3', workflowId: 'w3', workflowType: 'T', error } });
  expect(nondeterminismIn(workflowFailed({ name: 'Error', message: 'WeakRef cannot be used in Workflows because v8 GC is non-deterministic' }))).toMatchObject({ workflowId: 'w3', workflowType: 'T', source: 'workflow' });
  expect(nondeterminismIn(workflowFailed({ name: 'DeterminismViolationError', message: 'mine' }))).toMatchObject({ message: 'mine', source: 'workflow' });
  expect(nondeterminismIn(workflowFailed(new Error('plain')))).toBeUndefined();

  // The monitor with an inspectable meter: error line with id, run and type (looked up), one count per run.
  const lines: Record<string, unknown>[] = [];
  const logger = { error: (obj: Record<string, unknown>, msg: string) => lines.push({ ...obj, msg }) } as unknown as ConstructorParameters<typeof NondeterminismMonitor>[0];
  const counts: { name: string; value: number; attrs: unknown }[] = [];
  const meter = { createCounter: (name: string) => ({ add: (value: number, attrs: unknown) => counts.push({ name, value, attrs }) }) } as unknown as ReturnType<ConstructorParameters<typeof NondeterminismMonitor>[1]>;
  const monitor = new NondeterminismMonitor(logger, () => meter);
  monitor.useLookup((runId) => Promise.resolve(runId === 'r1' ? { workflowId: 'w1', workflowType: 'driftingWorkflow' } : undefined));
  monitor.observe(core);
  monitor.observe(core);
  monitor.observe(lang);
  await monitor.settled();
  expect(lines).toEqual([expect.objectContaining({ workflowId: 'w1', runId: 'r1', workflowType: 'driftingWorkflow', nondeterminism: 'core' })]);
  expect(counts).toEqual([{ name: NONDETERMINISM_METRIC, value: 1, attrs: { workflow_type: 'driftingWorkflow' } }]);
});

test('stuck runs: a genuine non-determinism, a DeterminismViolationError and a plain error are listed with their decrypted reasons; the worker logs and counts the non-determinism', async () => {
  const client = stack.client.client;
  // Version A starts the run: it sleeps, then waits for a signal; the worker stops once A's task completed.
  const workerA = await Worker.create({ connection: stack.env.nativeConnection, taskQueue: TASK_QUEUE, workflowBundle: { code: await bundle('driftA.ts') }, dataConverter: mareDataConverter(keyring), maxCachedWorkflows: 0 });
  const drift = await workerA.runUntil(async () => {
    const handle = await client.workflow.start('driftingWorkflow', { taskQueue: TASK_QUEUE, workflowId: 'doctor-drift' });
    await waitFor('version A to pass its timer', async () => {
      const events = (await handle.fetchHistory()).events ?? [];
      const fired = events.findIndex((e) => e.eventType === EventType.EVENT_TYPE_TIMER_FIRED);
      return fired >= 0 && events.slice(fired).some((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED);
    });
    return handle;
  });

  // Version B (an activity where A had a timer) runs in a real `mare worker` process with Prometheus metrics.
  const bundleB = path.join(stack.dir, 'drift-b-bundle.js');
  writeFileSync(bundleB, await bundle('driftB.ts'));
  const metricsPort = await freePort();
  worker = spawn(process.execPath, [CLI, 'worker', '--identity', 'version-b'], {
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: stack.env.address,
      DATABASE_URL: stack.databaseUrl,
      MARE_DATA_DIR: stack.dir,
      MARE_WORKSPACE_DIR: stack.workspaceRoot,
      MARE_WORKFLOW_BUNDLE: bundleB,
      MARE_METRICS_BIND: `127.0.0.1:${metricsPort}`,
      MARE_LOG_LEVEL: 'info',
      ...stack.roleKeysEnv,
      ...payloadEnv,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await new Promise<void>((resolve, reject) => {
    worker!.stdout?.on('data', (c: Buffer) => {
      workerOutput += c.toString();
      if (workerOutput.includes('worker started')) resolve();
    });
    worker!.stderr?.on('data', (c: Buffer) => (workerOutput += c.toString()));
    worker!.once('exit', (code) => reject(new Error(`worker exited (${code}): ${workerOutput}`)));
  });

  await drift.signal('release');
  const weakRef = await client.workflow.start('weakRefWorkflow', { taskQueue: TASK_QUEUE, workflowId: 'doctor-weakref' });
  const failing = await client.workflow.start('alwaysFailingWorkflow', { taskQueue: TASK_QUEUE, workflowId: 'doctor-failing' });

  // mare doctor --all lists all three, newest failure reasons decoded and decrypted, exit code 1.
  const listed = await waitFor('doctor to list the three stuck runs', async () => {
    const r = await doctor('--all');
    return r.runs.length === 3 ? r : undefined;
  });
  expect(listed.code).toBe(1);
  const byId = Object.fromEntries(listed.runs.map((r) => [r.workflowId, r]));
  expect(byId['doctor-drift']).toMatchObject({ workflowType: 'driftingWorkflow', runId: drift.firstExecutionRunId, cause: 'NON_DETERMINISTIC_ERROR' });
  expect(byId['doctor-drift']!.message).toContain('[TMPRL1100] Nondeterminism error');
  expect(byId['doctor-weakref']).toMatchObject({ workflowType: 'weakRefWorkflow', runId: weakRef.firstExecutionRunId, cause: 'WORKFLOW_WORKER_UNHANDLED_FAILURE', message: 'WeakRef cannot be used in Workflows because v8 GC is non-deterministic' });
  expect(byId['doctor-failing']).toMatchObject({ workflowType: 'alwaysFailingWorkflow', runId: failing.firstExecutionRunId, cause: 'WORKFLOW_WORKER_UNHANDLED_FAILURE', message: 'fixture: this workflow task always fails' });
  for (const run of listed.runs) expect(run.attempts).toBeGreaterThanOrEqual(1);
  await waitFor('a second attempt of the failing task', async () => ((await doctor('--all')).runs.find((r) => r.workflowId === 'doctor-failing')?.attempts ?? 0) > 1);

  // The message doctor showed was not readable in history: MARE's failure converter encoded it, the codec sealed it.
  const events = (await failing.fetchHistory()).events ?? [];
  const failure = events.find((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)?.workflowTaskFailedEventAttributes?.failure;
  expect(failure?.message).not.toContain('always fails');
  expect(Buffer.from(failure?.encodedAttributes?.metadata?.encoding ?? []).toString()).toBe(ENCRYPTED_ENCODING);
  // Without the payload key the runs are still listed, their messages marked as not decoded.
  const keyless = await mare({ MARE_PAYLOAD_KEYS: 'none' }, 'doctor', '--all', '--json');
  expect(keyless.code).toBe(1);
  const keylessRuns = JSON.parse(keyless.stdout) as StuckRun[];
  expect(keylessRuns.find((r) => r.workflowId === 'doctor-failing')?.message).toContain('not decoded');

  // The readable report, and without --all only MARE's workflow types count: none of these.
  const text = await mare(payloadEnv, 'doctor', '--all');
  expect(text.code).toBe(1);
  expect(text.stdout).toMatch(/^doctor-drift\s+driftingWorkflow\s+\d+\s+NON_DETERMINISTIC_ERROR$/m);
  expect(text.stdout).toContain('fixture: this workflow task always fails');
  expect(await doctor()).toMatchObject({ code: 0, runs: [] });

  // The worker logged the two non-determinism failures at error level, with id, run and type, and counted them.
  const lines = await waitFor('the error lines', () => {
    const found = errorLines().filter((l) => l.nondeterminism);
    return Promise.resolve(found.length >= 2 ? found : undefined);
  });
  expect(lines).toEqual(
    expect.arrayContaining([
      expect.objectContaining({ workflowId: 'doctor-drift', runId: drift.firstExecutionRunId, workflowType: 'driftingWorkflow', nondeterminism: 'core', msg: expect.stringContaining('TMPRL1100') }),
      expect.objectContaining({ workflowId: 'doctor-weakref', runId: weakRef.firstExecutionRunId, workflowType: 'weakRefWorkflow', nondeterminism: 'workflow' }),
    ]),
  );
  expect(lines.some((l) => l.workflowId === 'doctor-failing')).toBe(false);
  const metrics = await waitFor('the metric', async () => {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    return sample(text, NONDETERMINISM_METRIC, { workflow_type: 'weakRefWorkflow' }) >= 1 ? text : undefined;
  });
  expect(sample(metrics, NONDETERMINISM_METRIC, { workflow_type: 'driftingWorkflow' })).toBe(1);
  expect(sample(metrics, NONDETERMINISM_METRIC, { workflow_type: 'weakRefWorkflow' })).toBe(1);
  expect(sample(metrics, NONDETERMINISM_METRIC, { workflow_type: 'alwaysFailingWorkflow' })).toBeNaN();
  // Core's own count sees the TMPRL1100 one too, but files the DeterminismViolationError under WorkflowError.
  expect(sample(metrics, 'temporal_workflow_task_execution_failed', { workflow_type: 'driftingWorkflow', failure_reason: 'NonDeterminismError' })).toBeGreaterThanOrEqual(1);
  expect(sample(metrics, 'temporal_workflow_task_execution_failed', { workflow_type: 'weakRefWorkflow', failure_reason: 'NonDeterminismError' })).toBeNaN();

  // Once the runs are gone, nothing is wrong again.
  await Promise.all([drift, weakRef, failing].map((h) => h.terminate('test done')));
  expect(await doctor('--all')).toMatchObject({ code: 0, runs: [] });

  worker.kill('SIGTERM');
  await new Promise((r) => worker!.once('exit', r));
  worker = undefined;
});
