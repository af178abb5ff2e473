import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createTestStack, freePort, metricSample as sample, planReply, toolCall, type ScriptInput, type TestStack } from './helpers';

let stack: TestStack;
let worker: ChildProcess | undefined;
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');

beforeAll(async () => {
  stack = await createTestStack();
});

afterAll(async () => {
  worker?.kill('SIGKILL');
  await stack?.teardown();
});

test("a worker's health endpoints and MARE's own metrics next to the Runtime's on the Prometheus endpoint", async () => {
  const [metricsPort, healthPort] = [await freePort(), await freePort()];
  const script: ScriptInput = {
    rules: [
      planReply([{ id: 'w', title: 'Write', instructions: 'Write a.md', role: 'writer', acceptanceCriteria: [{ kind: 'judged', rubric: 'Is it good?' }, { kind: 'file_contains', path: 'a.md', text: 'IMPOSSIBLE' }] }]),
      { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.md', content: 'a' }) },
      { match: { purpose: 'act' }, reply: { text: 'wrote a.md' } },
      { match: { purpose: 'judge' }, reply: { text: '{"score": 0.9, "rationale": "fine"}' } },
    ],
  };
  worker = spawn(process.execPath, [CLI, 'worker', '--identity', 'observed'], {
    env: {
      ...process.env,
      TEMPORAL_ADDRESS: stack.env.address,
      DATABASE_URL: stack.databaseUrl,
      ...stack.roleKeysEnv,
      MARE_MODEL: `scripted:${stack.writeScript(script)}`,
      MARE_WORKSPACE_DIR: stack.workspaceRoot,
      MARE_METRICS_BIND: `127.0.0.1:${metricsPort}`,
      MARE_HEALTH_BIND: `127.0.0.1:${healthPort}`,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    worker!.stdout?.on('data', (c: Buffer) => {
      output += c.toString();
      if (output.includes('worker started')) resolve();
    });
    worker!.stderr?.on('data', (c: Buffer) => (output += c.toString()));
    worker!.once('exit', (code) => reject(new Error(`worker exited (${code}): ${output}`)));
  });
  const health = `http://127.0.0.1:${healthPort}`;
  expect(await (await fetch(`${health}/healthz`)).json()).toEqual({ status: 'ok' });
  const ready = await fetch(`${health}/readyz`);
  expect(ready.status).toBe(200);
  expect((await fetch(`${health}/other`)).status).toBe(404);
  expect((await fetch(`${health}/healthz`, { method: 'POST' })).status).toBe(405);

  // Verification fails twice (a file that never has the text), so the write is undone.
  await stack.client.submitTask({ taskId: 'observed', goal: 'measure me' });
  const result = await stack.client.result('observed');
  expect(result.status).toBe('COMPENSATED');

  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  // The task ended COMPENSATED, so its run and its subtask's failed: Temporal's own count says so.
  expect(sample(metrics, 'temporal_workflow_failed')).toBeGreaterThan(0);
  expect(sample(metrics, 'mare_model_tokens', { role: 'writer', purpose: 'act', direction: 'input' })).toBeGreaterThan(0);
  expect(sample(metrics, 'mare_model_tokens', { role: 'planner', purpose: 'plan' })).toBeGreaterThan(0);
  expect(sample(metrics, 'mare_model_tokens', { role: 'verifier', purpose: 'judge' })).toBeGreaterThan(0);
  expect(sample(metrics, 'mare_verifications', { role: 'writer', outcome: 'failed' })).toBe(2);
  expect(sample(metrics, 'mare_verification_score_count', { role: 'writer' })).toBe(2);
  expect(sample(metrics, 'mare_compensations', { tool: 'workspace.write' })).toBe(2);

  worker.kill('SIGTERM');
  await new Promise((r) => worker!.once('exit', r));
  worker = undefined;
});
