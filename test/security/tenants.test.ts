import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import { userInfo } from 'node:os';
import path from 'node:path';
import { closeApiServer, createApiServer } from '../../servers/api';
import { ApiKeyStore, type ApiScope } from '../../infra/db/apiKeys';
import { approverIdentity } from '../../cli/approvalsCommand';
import type { TaskView } from '../../client/client';
import { WorkflowNotFoundError } from '@temporalio/client';
import { type ApprovalView } from '../../validation';
import { SEARCH_ATTRIBUTES, taskWorkflowId } from '../../core/constants';
import { createTestStack, freePort, planReply, toolCall, type ScriptInput, type TestStack } from '../helpers';

/**
 * Threat model, tenants (issue 15 §5, and the API side of §3 and §4): an API key sees and acts only
 * within its tenant, holds only its scopes, cannot name the approver, and cannot send command
 * criteria without the `commands` scope. Probes against the real API, Temporal and PostgreSQL.
 */

const CLI = path.join(__dirname, '..', '..', 'dist', 'cli', 'mare.js');

let stack: TestStack;
let server: http.Server;
let base: string;
let store: ApiKeyStore;
/** Secrets and identities of the keys, by role in the tests. */
const keys: Record<string, { secret: string; id: string; identity: string }> = {};

async function makeKey(label: string, tenant: string, scopes: ApiScope[]): Promise<void> {
  const { key, secret } = await store.create({ name: label, tenant, scopes, createdBy: 'test' });
  keys[label] = { secret, id: key.id, identity: `key:${label}/${key.id}` };
}

beforeAll(async () => {
  stack = await createTestStack();
  store = new ApiKeyStore(stack.pool);
  await makeKey('alice', 'acme', ['submit', 'read', 'approve']);
  await makeKey('auditor', 'acme', ['read']);
  await makeKey('ci', 'acme', ['submit', 'read', 'commands']);
  await makeKey('bob', 'globex', ['submit', 'read', 'approve']);
  await makeKey('ops', 'default', ['admin']);
  // No bootstrap key: every request is authenticated against the table.
  server = createApiServer({ client: stack.client, keys: store, watchIntervalMs: 100 });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  if (server) await closeApiServer(server, { graceMs: 100 });
  await stack?.teardown();
});

interface Answer<T> {
  status: number;
  body: T;
  text: string;
}
interface ErrorBody {
  error: string;
  issues?: { path: string; message: string }[];
}

/** One request as `who` (a key label, or a raw bearer token with `raw:`), JSON in and out. */
async function api<T = ErrorBody>(who: string, method: string, route: string, body?: unknown): Promise<Answer<T>> {
  const token = who.startsWith('raw:') ? who.slice(4) : keys[who]!.secret;
  const headers: Record<string, string> = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${route}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined; // an event stream
  }
  return { status: res.status, body: parsed as T, text };
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The tenant a task's run was started for, or null when no run has that id (read from the run, not from visibility). */
async function tenantOfRun(taskId: string): Promise<string | null> {
  try {
    const described = await stack.env.client.workflow.getHandle(taskWorkflowId(taskId)).describe();
    return described.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) ?? '(none)';
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return null;
    throw err;
  }
}

/** Ends runs started without a worker, so a later worker does not pick them up. */
async function terminate(...taskIds: string[]): Promise<void> {
  for (const id of taskIds) await stack.env.client.workflow.getHandle(taskWorkflowId(id)).terminate('test done');
}

function mare(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, TEMPORAL_ADDRESS: stack.env.address, TEMPORAL_NAMESPACE: 'default', MARE_PAYLOAD_KEYS: 'none', ...env } }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
    );
  });
}

test("a key of tenant A gets 404 for tenant B's task (get, events, cancel, approvals, decision), sees none of B's approvals, and B's approver is the key, never the body's `by`", async () => {
  await stack.policies.repository.publish(
    {
      schemaVersion: 1,
      name: 'tenants-approvals',
      version: '1.0.0',
      rules: [{ id: 'ask', when: { targets: ['workspace.write'] }, decision: 'escalate', reason: 'writes need a person', approval: { timeoutSeconds: 600, onTimeout: 'deny' } }],
    },
    { actor: 'test' },
  );
  try {
    const script: ScriptInput = {
      rules: [
        planReply([{ id: 'w', title: 'Write', instructions: 'write a.md and b.md', role: 'writer' }]),
        { match: { purpose: 'act', turn: 0 }, reply: toolCall('workspace.write', { path: 'a.md', content: '# a' }) },
        { match: { purpose: 'act', turn: 1 }, reply: toolCall('workspace.write', { path: 'b.md', content: '# b' }) },
        { match: { purpose: 'act' }, reply: { text: 'wrote a.md and b.md' } },
      ],
      delayMs: 300,
    };
    await stack.withWorker(script, async () => {
      const secret = 'globex-canary-7f3a';
      expect(await api('bob', 'POST', '/v1/tasks', { taskId: 'globex-plan', goal: `merger plan ${secret}` })).toMatchObject({ status: 202 });
      const pending = await waitFor('a pending approval of the globex task', async () => {
        const list = await api<{ approvals: ApprovalView[] }>('bob', 'GET', '/v1/approvals?taskId=globex-plan');
        return list.body.approvals?.find((a) => a.status === 'pending');
      });

      // Tenant A's key: B's task answers exactly like a task that does not exist.
      const missing = await api('alice', 'GET', '/v1/tasks/no-such-task');
      expect(missing).toMatchObject({ status: 404, body: { error: 'no task with id "no-such-task"' } });
      const probes = [
        await api('alice', 'GET', '/v1/tasks/globex-plan'),
        await api('alice', 'GET', '/v1/tasks/globex-plan/events'),
        await api('alice', 'POST', '/v1/tasks/globex-plan/cancel'),
        await api('alice', 'GET', '/v1/approvals?taskId=globex-plan'),
        await api('alice', 'POST', `/v1/approvals/${encodeURIComponent(pending.approvalId)}/decision`, { taskId: 'globex-plan', decision: 'approve', reason: 'mine now' }),
        await api('auditor', 'GET', '/v1/tasks/globex-plan'),
      ];
      for (const p of probes) expect(p).toMatchObject({ status: 404, body: { error: 'no task with id "globex-plan"' } });
      for (const p of probes) expect(p.text).not.toContain(secret);
      // …and B's pending approval is not in A's list of pending approvals.
      const aList = await api<{ approvals: ApprovalView[] }>('alice', 'GET', '/v1/approvals');
      expect(aList.status).toBe(200);
      expect(aList.body.approvals.filter((a) => a.taskId === 'globex-plan')).toEqual([]);
      expect((await api<{ approvals: ApprovalView[] }>('bob', 'GET', '/v1/approvals')).body.approvals.map((a) => a.approvalId)).toContain(pending.approvalId);

      // Probe: a task id that spells B's subtask workflow id ("<task>--<subtask>") is no task, even for B.
      for (const who of ['alice', 'bob']) {
        expect(await api(who, 'GET', '/v1/tasks/globex-plan--w')).toMatchObject({ status: 404 });
        expect(await api(who, 'POST', '/v1/tasks/globex-plan--w/cancel')).toMatchObject({ status: 404 });
      }
      // Probe: tenant A re-submitting B's task id neither takes it over nor reads it.
      const squat = await api('alice', 'POST', '/v1/tasks', { taskId: 'globex-plan', goal: 'mine now' });
      expect(squat).toMatchObject({ status: 409, body: { error: expect.stringMatching(/already in use/) } });
      expect(squat.text).not.toContain(secret);
      const subtaskSquat = await api('alice', 'POST', '/v1/tasks', { taskId: 'globex-plan--w', goal: 'alias the subtask' });
      expect(subtaskSquat.status).toBe(409);

      // The approval is still pending after all of that; B's own key decides it, as itself.
      const forged = await api('bob', 'POST', `/v1/approvals/${encodeURIComponent(pending.approvalId)}/decision`, {
        taskId: 'globex-plan',
        decision: 'approve',
        reason: 'fine',
        by: 'admin@example.com',
      });
      expect(forged).toMatchObject({ status: 400, body: { issues: [{ path: 'by' }] } });
      const still = await api<{ approvals: ApprovalView[] }>('bob', 'GET', '/v1/approvals?taskId=globex-plan');
      expect(still.body.approvals.find((a) => a.approvalId === pending.approvalId)?.status).toBe('pending');
      const decided = await api<ApprovalView>('bob', 'POST', `/v1/approvals/${encodeURIComponent(pending.approvalId)}/decision`, { taskId: 'globex-plan', decision: 'approve', reason: 'fine' });
      expect(decided).toMatchObject({ status: 200, body: { status: 'approved', decidedBy: keys.bob!.identity } });

      // The second write waits for a person; an operator decides it with the CLI, which records the OS account.
      const second = await waitFor('the second approval', async () => {
        const list = await api<{ approvals: ApprovalView[] }>('bob', 'GET', '/v1/approvals?taskId=globex-plan');
        return list.body.approvals?.find((a) => a.status === 'pending' && a.approvalId !== pending.approvalId);
      });
      const cli = await mare({}, 'approve', 'globex-plan', second.approvalId, '--reason', 'ok', '--by', 'admin@example.com', '--json');
      expect([cli.code, cli.stderr]).toEqual([0, '']);
      expect(JSON.parse(cli.stdout)).toMatchObject({ status: 'approved', decidedBy: `admin@example.com (via os:${userInfo().username})` });

      const done = await waitFor('the globex task done', async () => {
        const view = await api<TaskView>('bob', 'GET', '/v1/tasks/globex-plan');
        return view.body.execution !== 'RUNNING' ? view : undefined;
      });
      // A's cancel did nothing: B's task completed, with B's goal.
      expect(done.body.result?.status).toBe('COMPLETED');
      expect(done.body.result?.subtasks[0]?.approvals?.map((a) => a.decidedBy)).toEqual([keys.bob!.identity, `admin@example.com (via os:${userInfo().username})`]);
      // An operator (admin scope) reads every tenant's tasks.
      expect(await api<TaskView>('ops', 'GET', '/v1/tasks/globex-plan')).toMatchObject({ status: 200, body: { result: { status: 'COMPLETED' } } });
    });
  } finally {
    await stack.policies.repository.disable('tenants-approvals', { actor: 'test', reason: 'done' });
  }
});

test("the tenant of a task comes from the key: a body naming another tenant is a 400 and starts nothing; an admin key may name one", async () => {
  const refused = await api('alice', 'POST', '/v1/tasks', { taskId: 'dodge-1', goal: 'run under globex policies', tenant: 'globex' });
  expect(refused).toMatchObject({ status: 400, body: { issues: [{ path: 'tenant', message: expect.stringMatching(/acme/) }] } });
  expect(await api('alice', 'POST', '/v1/tasks', { taskId: 'dodge-2', goal: 'x', tenant: 'default' })).toMatchObject({ status: 400 });
  expect([await tenantOfRun('dodge-1'), await tenantOfRun('dodge-2')]).toEqual([null, null]);

  expect(await api('alice', 'POST', '/v1/tasks', { taskId: 'acme-1', goal: 'plain' })).toMatchObject({ status: 202 });
  expect(await api('alice', 'POST', '/v1/tasks', { taskId: 'acme-2', goal: 'plain', tenant: 'acme' })).toMatchObject({ status: 202 });
  expect(await api('ops', 'POST', '/v1/tasks', { taskId: 'ops-for-globex', goal: 'on behalf', tenant: 'globex' })).toMatchObject({ status: 202 });
  try {
    expect([await tenantOfRun('acme-1'), await tenantOfRun('acme-2'), await tenantOfRun('ops-for-globex')]).toEqual(['acme', 'acme', 'globex']);
    // …and the task started for globex by an operator is globex's, not the operator's tenant's.
    expect((await api('bob', 'POST', '/v1/tasks/ops-for-globex/cancel')).status).toBe(202);
    expect((await api('alice', 'POST', '/v1/tasks/ops-for-globex/cancel')).status).toBe(404);
  } finally {
    await terminate('acme-1', 'acme-2', 'ops-for-globex');
  }
});

test('each route needs its scope (403, naming it) and a refused call changes nothing', async () => {
  const submit = await api('auditor', 'POST', '/v1/tasks', { taskId: 'auditor-1', goal: 'x' });
  expect(submit).toMatchObject({ status: 403, body: { error: expect.stringMatching(/lacks the "submit" scope/) } });
  expect(await api('auditor', 'POST', '/v1/tasks/anything/cancel')).toMatchObject({ status: 403, body: { error: expect.stringMatching(/"submit"/) } });
  expect(await api('auditor', 'POST', '/v1/approvals/a-1/decision', { taskId: 'anything', decision: 'approve', reason: 'x' })).toMatchObject({
    status: 403,
    body: { error: expect.stringMatching(/"approve"/) },
  });
  expect(await api('ci', 'POST', '/v1/approvals/a-1/decision', { taskId: 'anything', decision: 'approve', reason: 'x' })).toMatchObject({ status: 403 });
  expect(await api('auditor', 'GET', '/v1/approvals')).toMatchObject({ status: 200 });
  expect(await tenantOfRun('auditor-1')).toBeNull();
});

test('command_succeeds criteria need the commands scope (403, nothing started); a key with it may send them', async () => {
  const command = { kind: 'command_succeeds', command: 'node', args: ['-e', 'process.exit(0)'] };
  for (const criteria of [[command], [{ kind: 'output_contains', text: 'ok' }, { kind: 'file_exists', path: 'a.md' }, command]]) {
    const refused = await api('alice', 'POST', '/v1/tasks', { taskId: 'cmd-1', goal: 'x', acceptanceCriteria: criteria });
    expect(refused).toMatchObject({ status: 403, body: { error: expect.stringMatching(/"commands" scope/) } });
  }
  expect(await api('bob', 'POST', '/v1/tasks', { taskId: 'cmd-2', goal: 'x', acceptanceCriteria: [command] })).toMatchObject({ status: 403 });
  expect([await tenantOfRun('cmd-1'), await tenantOfRun('cmd-2')]).toEqual([null, null]);
  // Criteria without a command need no extra scope.
  expect(await api('alice', 'POST', '/v1/tasks', { taskId: 'no-cmd', goal: 'x', acceptanceCriteria: [{ kind: 'output_contains', text: 'ok' }] })).toMatchObject({ status: 202 });
  expect(await api('ci', 'POST', '/v1/tasks', { taskId: 'with-cmd', goal: 'x', acceptanceCriteria: [command] })).toMatchObject({ status: 202 });
  await terminate('no-cmd', 'with-cmd');
});

test('forged keys: a wrong secret under a real key id, a truncated key, another tenant\'s id with my secret: all 401', async () => {
  const bob = keys.bob!.secret;
  const alice = keys.alice!.secret;
  const wrongSecret = `mare_${keys.bob!.id}_${'A'.repeat(43)}`;
  const swapped = `mare_${keys.bob!.id}_${alice.split('_')[2]}`;
  for (const token of [wrongSecret, swapped, bob.slice(0, -1), `${bob}x`, bob.toUpperCase(), 'mare_0000000000000000_' + 'x'.repeat(43)]) {
    expect(await api(`raw:${token}`, 'GET', '/v1/approvals')).toMatchObject({ status: 401, body: { error: 'invalid API key' } });
  }
  // No bootstrap key is configured: a long random string is not a key either.
  expect((await api('raw:0123456789abcdef0123456789abcdef', 'GET', '/v1/approvals')).status).toBe(401);
});

test('mare keys create|list|revoke: the secret is printed once and stored only as its SHA-256; list never shows it; a revoked key is a 401', async () => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  const env = { DATABASE_URL: stack.databaseUrl };
  const help = await mare(env, 'keys', 'create', '--help');
  for (const text of ['--tenant <tenant>', '--scopes <list>', 'submit', 'read', 'approve', 'commands', 'admin', 'print its secret once']) expect(help.stdout).toContain(text);

  const created = await mare(env, 'keys', 'create', '--name', 'carol@example.com', '--tenant', 'acme', '--scopes', 'read', '--json');
  expect([created.code, created.stderr]).toEqual([0, '']);
  const carol = JSON.parse(created.stdout) as { id: string; name: string; tenant: string; scopes: string[]; secret: string };
  expect(carol).toMatchObject({ name: 'carol@example.com', tenant: 'acme', scopes: ['read'], secret: expect.stringMatching(/^mare_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/) });
  const { rows } = await stack.pool.query<{ secret_sha256: Buffer; row: string }>(`SELECT secret_sha256, row_to_json(api_keys)::text AS row FROM api_keys WHERE id = $1`, [carol.id]);
  expect(rows[0]!.secret_sha256.equals(createHash('sha256').update(carol.secret).digest())).toBe(true);
  expect(rows[0]!.row).not.toContain(carol.secret.split('_')[2]);

  for (const args of [['keys', 'list'], ['keys', 'list', '--json']]) {
    const listed = await mare(env, ...args);
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain(carol.id);
    expect(listed.stdout).toContain('carol@example.com');
    expect(listed.stdout).not.toContain(carol.secret.split('_')[2]);
    expect(listed.stdout).not.toMatch(/secret/i);
  }

  expect(await api(`raw:${carol.secret}`, 'GET', '/v1/approvals')).toMatchObject({ status: 200 });
  expect(await api(`raw:${carol.secret}`, 'POST', '/v1/tasks', { goal: 'x' })).toMatchObject({ status: 403 });
  const revoked = await mare(env, 'keys', 'revoke', carol.id);
  expect([revoked.code, revoked.stdout.trim()]).toEqual([0, `revoked key ${carol.id} "carol@example.com"`]);
  expect(await api(`raw:${carol.secret}`, 'GET', '/v1/approvals')).toMatchObject({ status: 401, body: { error: 'this API key has been revoked' } });
  expect((await mare(env, 'keys', 'revoke', carol.id)).stdout).toMatch(/already revoked/);
  expect((await mare(env, 'keys', 'list')).stdout).toMatch(new RegExp(`${carol.id}.*revoked`));

  // Bad input: exit 2, one line, nothing created.
  const count = async (): Promise<number> => Number((await stack.pool.query<{ n: string }>(`SELECT count(*) AS n FROM api_keys`)).rows[0]!.n);
  const n = await count();
  for (const args of [
    ['--name', 'dave', '--tenant', 'acme', '--scopes', 'read,root'],
    ['--name', 'dave', '--tenant', 'Acme Corp', '--scopes', 'read'],
    ['--name', 'bootstrap', '--tenant', 'acme', '--scopes', 'read'],
    ['--name', 'alice', '--tenant', 'acme', '--scopes', 'read'],
  ]) {
    const bad = await mare(env, 'keys', 'create', ...args);
    expect([args.join(' '), bad.code, bad.stderr]).toEqual([args.join(' '), 2, expect.stringMatching(/^mare: .+\n$/)]);
  }
  expect((await mare(env, 'keys', 'revoke', 'ffffffffffffffff')).code).toBe(2);
  expect(await count()).toBe(n);
});

test('the CLI approver is the operating-system account; --by is only a note beside it', () => {
  const os = `os:${userInfo().username}`;
  expect(approverIdentity(undefined)).toBe(os);
  expect(approverIdentity('alice')).toBe(`alice (via ${os})`);
  expect(approverIdentity(os)).toBe(os);
  expect(() => approverIdentity('x'.repeat(121))).toThrow(/at most 120/);
});

test('mare api with DATABASE_URL and no MARE_API_KEY: the stored keys are the only keys', async () => {
  const port = await freePort();
  const env: NodeJS.ProcessEnv = { ...process.env, TEMPORAL_ADDRESS: stack.env.address, TEMPORAL_NAMESPACE: 'default', MARE_PAYLOAD_KEYS: 'none', MARE_LOG_LEVEL: 'warn', DATABASE_URL: stack.databaseUrl };
  delete env.MARE_API_KEY;
  const child = spawn(process.execPath, [CLI, 'api', '--port', String(port)], { env });
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  try {
    await waitFor('mare api to listen', () => Promise.resolve(stdout.includes('MARE HTTP API on') ? true : undefined), 30_000);
    expect(stdout).not.toContain('MARE_API_KEY only');
    const at = `http://127.0.0.1:${port}`;
    const call = async (token: string, route: string): Promise<number> => (await fetch(`${at}${route}`, { headers: { authorization: `Bearer ${token}` } })).status;
    expect(await call(keys.alice!.secret, '/v1/approvals')).toBe(200);
    expect(await call(keys.alice!.secret, '/v1/tasks/globex-plan')).toBe(404);
    expect(await call(keys.bob!.secret, '/v1/tasks/globex-plan')).toBe(200);
    expect(await call('0123456789abcdef0123456789abcdef', '/v1/approvals')).toBe(401);
  } finally {
    child.kill('SIGTERM');
  }
  expect(await exited).toBe(0);
});
