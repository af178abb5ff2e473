import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { createModelClient } from '../infra/models/model';
import type { TaskResult } from '../validation';
import { createMareWorker } from '../workers/worker';
import { builtinToolDeps, createTestStack, type ScriptInput, type TestStack } from './helpers';

// The real `mare` command from dist/ (npm test builds it first), against the test Temporal server.
const CLI = path.join(__dirname, '..', 'dist', 'cli', 'mare.js');
const demoScript = JSON.parse(readFileSync(path.join(__dirname, '..', 'scripts', 'demo-script.json'), 'utf8')) as ScriptInput;

let stack: TestStack;
beforeAll(async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first (npm test does)`);
  stack = await createTestStack();
});
afterAll(async () => stack?.teardown());

function mare(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return mareWithEnv({}, ...args);
}

function mareWithEnv(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, TEMPORAL_ADDRESS: stack.env.address, TEMPORAL_NAMESPACE: 'default', ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

test('--help lists every command, and each command has its own help', async () => {
  const top = await mare('--help');
  expect(top.code).toBe(0);
  for (const cmd of ['dev', 'worker', 'bundle', 'run', 'status', 'list', 'cancel', 'demo']) expect(top.stdout).toMatch(new RegExp(`^  ${cmd}\\b`, 'm'));
  const run = await mare('run', '--help');
  expect(run.code).toBe(0);
  for (const opt of ['--id <taskId>', '--concurrency <n>', '--tenant <tenant>', '--wait', '--json']) expect(run.stdout).toContain(opt);
  expect((await mare('dev', '--help')).stdout).toContain('--ui-port <port>');
  expect((await mare('worker', '--help')).stdout).toContain('--identity <name>');
});

test('run --wait --json, run --wait, status, list: a task from submission to result', async () => {
  await stack.withWorker({ ...demoScript, delayMs: 0 }, async () => {
    const json = await mare('run', 'Write a short guide to durable execution', '--id', 'cli-json', '--wait', '--json');
    expect(json.code).toBe(0);
    const result = JSON.parse(json.stdout) as TaskResult;
    expect(result).toMatchObject({ taskId: 'cli-json', status: 'COMPLETED' });

    const human = await mare('run', 'Write a short guide to durable execution', '--id', 'cli-text', '--wait');
    expect(human.code).toBe(0);
    expect(human.stdout).toContain('Plan (3 subtasks):');
    expect(human.stdout).toMatch(/review\s+completed/);
    expect(human.stdout).toContain('Task cli-text: COMPLETED');
    expect(human.stdout).toContain('Offline model: the "scripted" model');
  });
  const status = await mare('status', 'cli-json');
  expect(status.code).toBe(0);
  expect(status.stdout).toContain('workflow mare-task-cli-json is COMPLETED');
  const list = await mare('list', '--json');
  expect((JSON.parse(list.stdout) as { taskId: string }[]).map((t) => t.taskId)).toEqual(expect.arrayContaining(['cli-json', 'cli-text']));
});

test('bad input gets a clear error and a non-zero exit, and starts nothing', async () => {
  const empty = await mare('run', '   ', '--id', 'cli-empty');
  expect(empty.code).toBe(2);
  expect(empty.stderr).toContain('goal: goal must not be empty');
  expect((await mare('status', 'cli-empty')).stderr).toContain('no task with id "cli-empty"');
  const zero = await mare('run', 'x', '--concurrency', '0');
  expect(zero.code).not.toBe(0);
  expect(zero.stderr).toContain("option '--concurrency <n>' argument '0' is invalid. must be a positive integer");
  const unreachable = await new Promise<{ code: number; stderr: string }>((resolve) =>
    execFile(process.execPath, [CLI, 'list'], { env: { ...process.env, TEMPORAL_ADDRESS: '127.0.0.1:1' } }, (err, _out, stderr) =>
      resolve({ code: err ? Number(err.code) : 0, stderr }),
    ),
  );
  expect(unreachable.code).toBe(1);
  expect(unreachable.stderr).toContain('cannot reach Temporal at 127.0.0.1:1');
  expect(unreachable.stderr).toContain('start a local stack with `mare dev`, or set TEMPORAL_ADDRESS');
  // The Temporal CLI's flag names override the environment, before or after the command.
  const before = await mare('--address', '127.0.0.1:2', 'list');
  expect(before).toMatchObject({ code: 1, stderr: expect.stringContaining('cannot reach Temporal at 127.0.0.1:2') });
  const after = await mare('list', '--address', '127.0.0.1:3');
  expect(after).toMatchObject({ code: 1, stderr: expect.stringContaining('cannot reach Temporal at 127.0.0.1:3') });
  const elsewhere = await mare('--namespace', 'no-such-namespace', 'list');
  expect(elsewhere.code).not.toBe(0);
  expect(elsewhere.stderr).toContain('no-such-namespace');
  const cancel = await mare('cancel', 'nope');
  expect(cancel.code).toBe(2);
  expect(cancel.stderr).toContain('no task with id "nope"');
});

test('mare worker refuses a bad tuning variable or a missing bundle with one clear line, before connecting', async () => {
  const env = { DATABASE_URL: stack.databaseUrl, ...stack.roleKeysEnv };
  const tuning = await mareWithEnv({ ...env, MARE_MAX_ACTIVITIES: 'lots' }, 'worker');
  expect(tuning.code).toBe(1);
  expect(tuning.stderr.trim()).toBe('mare: MARE_MAX_ACTIVITIES="lots" is not a number');
  const bundle = await mareWithEnv({ ...env, MARE_WORKFLOW_BUNDLE: path.join(stack.dir, 'missing-bundle.js') }, 'worker');
  expect(bundle.code).toBe(1);
  expect(bundle.stderr).toMatch(/MARE_WORKFLOW_BUNDLE=.*missing-bundle\.js does not exist: write it with `mare bundle/);
});

test('mare bundle writes a zod-free bundle that a worker loads from its path (as with MARE_WORKFLOW_BUNDLE) and completes a task with', async () => {
  const file = path.join(stack.dir, 'bundle', 'workflows.js');
  const out = await mare('bundle', file);
  expect(out.code).toBe(0);
  expect(out.stdout).toContain(`wrote ${file}`);
  const code = readFileSync(file, 'utf8');
  expect(code).toContain('orchestrateTask');
  expect(code).not.toContain('node_modules/zod'); // workflow code stays zod-free (see eslint.config.js)
  const model = createModelClient({ provider: 'scripted', modelId: stack.writeScript({ ...demoScript, delayMs: 0 }) });
  const worker = await createMareWorker({
    connection: stack.env.nativeConnection,
    workflowBundle: { codePath: file },
    deps: { pool: stack.pool, model, roles: stack.roles, policies: stack.policies, ...builtinToolDeps(), workspaceRoot: stack.workspaceRoot, logger: pino({ level: 'silent' }) },
    shutdownGraceTime: '1 second',
  });
  const result = await worker.runUntil(async () => {
    await stack.client.submitTask({ taskId: 'cli-bundle', goal: 'Write a short guide to durable execution' });
    return stack.client.result('cli-bundle');
  });
  expect(result.status).toBe('COMPLETED');
});
