import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { MockActivityEnvironment } from '@temporalio/testing';
import pino from 'pino';
import { createModelClient } from '../../infra/models/model';
import { RoleValidationError } from '../../validation/roleProfile';
import { createWorkspaceActivities } from '../../activities/workspace';
import { closeApiServer, createApiServer } from '../../servers/api';
import { InvalidTaskRequestError } from '../../client/client';
import { createCodecServer } from '../../servers/codecServer';
import { textProblem, type TaskRequest, type ToolResult } from '../../validation';
import { subtaskWorkflowId, TASK_QUEUE, taskWorkflowId } from '../../core/constants';
import { builtinToolDeps, createTestDatabase, createTestStack, historyOf, planReply, toolCall, type TestDatabase, type TestStack } from '../helpers';

/** §7 of the threat model: input that PostgreSQL, UTF-8, the stack or the network path cannot take is refused at the boundary. */

const KEY = 'hygiene-api-key-0123456789abcdef';
let stack: TestStack;
let server: http.Server;
let base: string;

beforeAll(async () => {
  stack = await createTestStack();
  server = createApiServer({ client: stack.client, apiKey: KEY, watchIntervalMs: 100, maxStreamsPerKey: 2 });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  if (server) await closeApiServer(server, { graceMs: 100 });
  await stack?.teardown();
});

async function post(route: string, raw: string): Promise<{ status: number; body: { error: string; issues?: { path: string; message: string }[] } }> {
  const res = await fetch(`${base}${route}`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }, body: raw });
  return { status: res.status, body: (await res.json()) as { error: string; issues?: { path: string; message: string }[] } };
}

async function taskRows(taskId: string): Promise<number> {
  return (await stack.pool.query('SELECT 1 FROM tasks WHERE task_id = $1', [taskId])).rowCount ?? 0;
}

async function workflowExists(taskId: string): Promise<boolean> {
  return stack.client.client.workflow
    .getHandle(taskWorkflowId(taskId))
    .describe()
    .then(
      () => true,
      () => false,
    );
}

/** Activity attempts above 1 and failed activity events in a history: a retry loop shows in either. */
function retries(events: Awaited<ReturnType<typeof historyOf>>): { failed: string[]; retried: number } {
  return {
    failed: events.filter((e) => e.activityTaskFailedEventAttributes).map((e) => e.activityTaskFailedEventAttributes?.failure?.message ?? ''),
    retried: events.filter((e) => (e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1).length,
  };
}

describe('task requests', () => {
  test.each([
    ['a NUL in the goal (seen: startTask retried 18+ times)', { goal: 'summarise\u0000 this' }, 'goal', 'NUL'],
    ['a lone high surrogate in the goal', { goal: 'broken \ud800 text' }, 'goal', 'lone surrogate'],
    ['a lone low surrogate in a criterion', { goal: 'ok', acceptanceCriteria: [{ kind: 'output_contains', text: 'x\udc00' }] }, 'acceptanceCriteria.0.text', 'lone surrogate'],
  ])('%s: InvalidTaskRequestError from the client, 400 from the API; no workflow, no task row', async (_name, fields, field, what) => {
    const taskId = `hyg-${Math.random().toString(36).slice(2, 10)}`;
    const err = await stack.client.submitTask({ taskId, ...fields } as never).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidTaskRequestError);
    expect((err as InvalidTaskRequestError).issues.some((i) => i.path.join('.') === field && i.message.includes(what))).toBe(true);
    const answer = await post('/v1/tasks', JSON.stringify({ taskId, ...fields }));
    expect(answer.status).toBe(400);
    expect(answer.body.issues).toEqual(expect.arrayContaining([expect.objectContaining({ path: field, message: expect.stringContaining(what) as string })]));
    expect(await workflowExists(taskId)).toBe(false);
    expect(await taskRows(taskId)).toBe(0);
  });

  test('a JSON escape of a lone surrogate in the raw body is a 400 too', async () => {
    const answer = await post('/v1/tasks', '{"taskId":"hyg-raw-escape","goal":"a \\udfff b"}');
    expect(answer.status).toBe(400);
    expect(answer.body.issues?.[0]?.path).toBe('goal');
    expect(await workflowExists('hyg-raw-escape')).toBe(false);
  });

  test('valid text stays valid: U+FFFE, a surrogate pair and control characters other than NUL', () => {
    expect(textProblem('noncharacter \uFFFE and \uFFFF')).toBeUndefined();
    expect(textProblem('emoji \ud83d\ude00, tab\t, bell\u0007')).toBeUndefined();
    expect(textProblem('\ud83d')).toContain('lone surrogate');
  });

  test.each([
    ['10,000 nested arrays in the goal', `{"taskId":"hyg-deep-1","goal":${'['.repeat(10_000)}${']'.repeat(10_000)}}`],
    ['100 nested objects in an unknown field', `{"taskId":"hyg-deep-2","goal":"g","x":${'{"a":'.repeat(100)}1${'}'.repeat(100)}}`],
    ['65 nested arrays inside a criterion', `{"taskId":"hyg-deep-3","goal":"g","acceptanceCriteria":[{"kind":"json_schema","schema":${'['.repeat(65)}${']'.repeat(65)}}]}`],
  ])('%s: 400, not 500', async (_name, raw) => {
    const answer = await post('/v1/tasks', raw);
    expect(answer.status).toBe(400);
    expect(answer.body.error).toContain('nested deeper than 64 levels');
  });

  test('a run started around the client with a NUL goal fails startTask once, not in a retry loop, and writes no row', async () => {
    const taskId = 'hyg-direct-nul';
    await stack.withWorker({ rules: [{ reply: { text: 'unused' } }] }, async () => {
      const handle = await stack.client.client.workflow.start('orchestrateTask', {
        taskQueue: TASK_QUEUE,
        workflowId: taskWorkflowId(taskId),
        args: [{ taskId, goal: 'bad \u0000 goal', tenant: 'default', concurrency: 1, maxSubtasks: 1, acceptanceThreshold: 0.7 } satisfies TaskRequest],
      });
      const err = await handle.result().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect((err as WorkflowFailedError).cause).toMatchObject({ type: 'InvalidTaskRequest', message: expect.stringContaining('NUL') as string });
    });
    const events = await historyOf(stack, taskWorkflowId(taskId));
    expect(retries(events)).toEqual({ failed: [], retried: 0 });
    // startTask is a local activity: its marker records the attempt that ended it, the first.
    const markers = events.flatMap((e) => {
      const data = e.markerRecordedEventAttributes?.details?.data?.payloads?.[0]?.data;
      return data ? [JSON.parse(Buffer.from(data).toString()) as { activity_type: string; attempt: number }] : [];
    });
    expect(markers).toEqual([expect.objectContaining({ activity_type: 'startTask', attempt: 1 })]);
    expect(await taskRows(taskId)).toBe(0);
  });
});

describe('tool arguments and file-system errors, in a real task', () => {
  const taskId = 'hyg-tools';
  test('each bad call is a tool error the model reads, without server paths; no activity fails or retries', async () => {
    // The task's workspace exists beforehand with a symlink loop and a directory in it.
    const ws = path.join(stack.workspaceRoot, taskId);
    mkdirSync(path.join(ws, 'sub'), { recursive: true });
    symlinkSync('loop', path.join(ws, 'loop'));
    const calls = [
      toolCall('workspace.write', { path: 'a\u0000b.md', content: 'x' }),
      toolCall('workspace.write', { path: 'notes.md', content: 'half a pair \ud800' }),
      toolCall('workspace.write', { path: 'f.md', content: 'a file' }),
      toolCall('workspace.read', { path: 'f.md/inner.md' }),
      toolCall('workspace.read', { path: 'loop/x.md' }),
      { toolCalls: [toolCall('workspace.write', { path: `${'n'.repeat(5_000)}.md`, content: 'x' }).toolCalls[0]!, toolCall('workspace.write', { path: `${'m'.repeat(300)}.md`, content: 'x' }).toolCalls[0]!] },
      toolCall('workspace.read', { path: 'sub' }),
    ];
    const result = await stack.withWorker(
      {
        rules: [
          planReply([{ id: 'a', title: 'Files', instructions: 'Work on files', role: 'generalist' }]),
          ...calls.map((reply, turn) => ({ match: { purpose: 'act' as const, turn }, reply })),
          { match: { purpose: 'act' }, reply: { text: 'done' } },
        ],
      },
      async () => {
        await stack.client.submitTask({ taskId, goal: 'probe the workspace tool' });
        return stack.client.result(taskId);
      },
    );
    expect(result.status).toBe('COMPLETED');
    const { rows } = await stack.pool.query<{ tool: string; status: string; result: ToolResult }>(
      'SELECT tool, status, result FROM tool_calls WHERE task_id = $1 ORDER BY created_at',
      [taskId],
    );
    const answers = rows.map((r) => [r.status, r.result.content]);
    // Two calls of one turn run side by side, so the order is not asserted.
    expect(answers).toHaveLength(8);
    expect(answers).toEqual(expect.arrayContaining([
      ['error', expect.stringMatching(/invalid arguments for workspace.write: path: contains a NUL character/)],
      ['error', expect.stringMatching(/invalid arguments for workspace.write: content: contains a lone surrogate \(U\+D800\)/)],
      ['ok', 'wrote 6 bytes to f.md'],
      ['error', 'f.md/inner.md: a component of the path is a file, not a directory (ENOTDIR)'],
      ['error', 'loop/x.md: too many levels of symbolic links (ELOOP)'],
      ['error', 'invalid arguments for workspace.write: path: Too big: expected string to have <=512 characters'],
      ['error', expect.stringMatching(/^m{300}\.md: file name too long \(ENAMETOOLONG\)$/)],
      ['error', 'sub: is a directory, not a file (EISDIR)'],
    ]));
    const transcript = JSON.stringify((await stack.pool.query(`SELECT message FROM transcript_messages WHERE transcript_id LIKE $1`, [`${subtaskWorkflowId(taskId, 'a')}/%`])).rows);
    expect(transcript).toContain('(ENOTDIR)');
    expect(transcript).not.toContain(stack.workspaceRoot);
    for (const workflowId of [taskWorkflowId(taskId), subtaskWorkflowId(taskId, 'a')]) {
      expect(retries(await historyOf(stack, workflowId))).toEqual({ failed: [], retried: 0 });
    }
    expect(readdirSync(ws).sort()).toEqual(['f.md', 'loop', 'sub']);
  });
});

describe('the workspace tool against PostgreSQL', () => {
  let db: TestDatabase;
  let acts: ReturnType<typeof createWorkspaceActivities>;
  let root: string;
  let outside: string;
  const run = <A extends unknown[], R>(fn: (...a: A) => Promise<R>, ...args: A): Promise<R> => new MockActivityEnvironment({ attempt: 1 }).run(fn, ...args);
  beforeAll(async () => {
    db = await createTestDatabase();
    const dir = mkdtempSync(path.join(tmpdir(), 'mare-hyg-'));
    root = path.join(dir, 'roots');
    outside = path.join(dir, 'outside');
    mkdirSync(root, { recursive: true });
    mkdirSync(outside, { recursive: true });
    const model = createModelClient({ provider: 'scripted', modelId: path.join(__dirname, '..', '..', 'scripts', 'demo-script.json') });
    acts = createWorkspaceActivities({ pool: db.pool, roles: db.roles, policies: db.policies, ...builtinToolDeps(), workspaceRoot: root, model, logger: pino({ level: 'silent' }) });
    return () => rmSync(dir, { recursive: true, force: true });
  });
  afterAll(async () => db?.drop());

  test.each([
    ['a symlink to a directory outside', (ws: string) => symlinkSync(outside, ws)],
    ['a symlink to a file', (ws: string) => (writeFileSync(`${ws}.file`, 'x'), symlinkSync(`${ws}.file`, ws))],
    ['a dangling symlink', (ws: string) => symlinkSync(path.join(outside, 'missing'), ws)],
  ])('a task workspace that is %s is refused, and nothing is written through it', async (name, plant) => {
    const taskId = `sym-${name.length}`;
    plant(path.join(root, taskId));
    const out = await run(acts['workspace.write'], { taskId, subtaskId: 's', callKey: `sym-${taskId}` }, { path: 'x.md', content: 'through the link' });
    expect(out.ok).toBe(false);
    expect(out.content).not.toContain(root);
    expect(readdirSync(outside)).toEqual([]);
  });

  test('a NUL in a read path, a binary file and a lone surrogate in an object key are tool errors, recorded without failing the insert', async () => {
    const ws = path.join(root, 'bin');
    mkdirSync(ws, { recursive: true });
    writeFileSync(path.join(ws, 'blob.bin'), Buffer.from([0x41, 0x00, 0x42]));
    const ctx = (k: string): { taskId: string; subtaskId: string; callKey: string } => ({ taskId: 'bin', subtaskId: 's', callKey: `bin-${k}` });
    expect(await run(acts['workspace.read'], ctx('1'), { path: 'x\u0000y' })).toMatchObject({ ok: false, content: expect.stringContaining('NUL') as string });
    expect(await run(acts['workspace.read'], ctx('2'), { path: 'blob.bin' })).toEqual({ ok: false, content: expect.stringContaining('not a text file') as string });
    expect(await run(acts['workspace.write'], ctx('3'), { path: 'blob.bin', content: 'text' })).toEqual({ ok: false, content: expect.stringContaining('not a text file') as string });
    expect(await run(acts['workspace.list'], ctx('4'), { path: '.', ['\udbff']: 1 })).toMatchObject({ ok: false, content: expect.stringContaining('field name contains a lone surrogate') as string });
    const { rows } = await db.pool.query<{ status: string }>(`SELECT status FROM tool_calls WHERE task_id = 'bin' ORDER BY call_key`);
    expect(rows.map((r) => r.status)).toEqual(['error', 'error', 'error', 'error']);
  });
});

describe('role profiles at publish', () => {
  const profile = (over: Record<string, unknown>): Record<string, unknown> => ({
    schemaVersion: 1,
    name: 'hygienic',
    version: '1.0.0',
    description: 'A role for the hygiene test.',
    systemPrompt: 'You are careful.',
    ...over,
  });
  test.each([
    ['a lone surrogate in the system prompt (seen: it broke every embodiment)', { systemPrompt: 'You are \ud83d careful.' }, 'systemPrompt'],
    ['a NUL in the description', { description: 'nul\u0000here' }, 'description'],
    ['a lone low surrogate in a constraint', { constraints: ['fine', 'not \udc00 fine'] }, 'constraints[1]'],
  ])('%s: RoleValidationError naming the field; nothing is stored', async (_name, over, field) => {
    const err = await stack.roles.repository.publish(profile(over), { actor: 'test' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RoleValidationError);
    expect((err as RoleValidationError).problems.map((p) => p.field)).toContain(field);
    expect((await stack.pool.query(`SELECT 1 FROM role_versions WHERE name = 'hygienic'`)).rowCount).toBe(0);
  });
});

describe('event streams per API key', () => {
  test('beyond the cap a new stream is a 429 until one closes', async () => {
    const taskId = 'hyg-streams';
    await stack.withWorker(
      { delayMs: 1_500, rules: [planReply([{ id: 'a', title: 'Slow', instructions: 'Take time', role: 'generalist' }]), { match: { purpose: 'act' }, reply: { text: 'done' } }] },
      async () => {
        await stack.client.submitTask({ taskId, goal: 'slow task' });
        const open = (): { res: Promise<Response>; abort: AbortController } => {
          const abort = new AbortController();
          return { res: fetch(`${base}/v1/tasks/${taskId}/events`, { headers: { authorization: `Bearer ${KEY}` }, signal: abort.signal }), abort };
        };
        const first = open();
        const second = open();
        expect((await first.res).status).toBe(200);
        expect((await second.res).status).toBe(200);
        const third = await open().res;
        expect(third.status).toBe(429);
        expect(third.headers.get('retry-after')).toBe('5');
        first.abort.abort();
        await (await first.res).body?.cancel().catch(() => undefined);
        // The slot is released once the server sees the client go: wait on that state, not a timer.
        let again: Response;
        for (;;) {
          const next = open();
          again = await next.res;
          if (again.status !== 429) {
            next.abort.abort();
            break;
          }
          await again.body?.cancel();
        }
        expect(again.status).toBe(200);
        second.abort.abort();
        await stack.client.result(taskId);
      },
    );
  });
});

describe('the codec server', () => {
  test('answers only the hosts it serves (DNS rebinding), loopback and configured names', async () => {
    const codec = createCodecServer({ keyring: { activeKeyId: 'k', keys: new Map([['k', Buffer.alloc(32)]]), origin: 'test' }, token: 'codec-token-0123456789abcdef', allowedHosts: ['codec.example.internal'] });
    await new Promise<void>((resolve) => codec.listen(0, '127.0.0.1', resolve));
    const port = (codec.address() as AddressInfo).port;
    const status = (host: string): Promise<number> =>
      new Promise((resolve, reject) => {
        http.get({ host: '127.0.0.1', port, path: '/healthz', headers: { host } }, (res) => (res.resume(), resolve(res.statusCode ?? 0))).on('error', reject);
      });
    try {
      expect(await status(`127.0.0.1:${port}`)).toBe(200);
      expect(await status(`localhost:${port}`)).toBe(200);
      expect(await status(`[::1]:${port}`)).toBe(200);
      expect(await status('codec.example.internal')).toBe(200);
      expect(await status(`evil.example:${port}`)).toBe(421);
      expect(await status(`localhost.evil.example:${port}`)).toBe(421);
      expect(await status('127.0.0.1.nip.io')).toBe(421);
    } finally {
      await new Promise<void>((resolve) => codec.close(() => resolve()));
    }
  });
});
