import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { MockActivityEnvironment } from '@temporalio/testing';
import { Pool } from 'pg';
import pino from 'pino';
import { createRoleActivities, type LoadRoleInput } from '../activities/roles';
import { keyringEnv, RoleIntegrityError } from '../infra/crypto/roleCrypto';
import { RoleRepositoryUnavailableError, RoleService } from '../infra/roles/roleService';
import type { LoadedRole } from '../validation';
import { createTestDatabase, type TestDatabase } from './helpers';

const PROBE = path.join(__dirname, 'fixtures', 'roleCacheProbe.js');
let db: TestDatabase;
const probes: ChildProcessWithoutNullStreams[] = [];

beforeAll(async () => {
  db = await createTestDatabase();
});

afterAll(async () => {
  probes.forEach((p) => p.kill());
  await db?.drop();
});

function writerProfile(version: string, prompt: string): Record<string, unknown> {
  return {
    name: 'writer',
    version,
    description: 'Writes documents.',
    systemPrompt: prompt,
    tools: [{ tool: 'workspace.write', access: 'write' }],
  };
}

/** A role service in its own OS process, as each worker has; `read` asks it for a role. */
async function startProbe(listen: boolean): Promise<{ read(name: string): Promise<{ version?: string; source?: string }> }> {
  const child = spawn(process.execPath, [PROBE], {
    env: { ...process.env, DATABASE_URL: db.databaseUrl, ...keyringEnv(db.keyring), PROBE_LISTEN: listen ? '1' : '0' },
  });
  probes.push(child);
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const lines = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (): Promise<string> => {
    const line = await lines.next();
    if (line.done) throw new Error(`probe exited: ${stderr}`);
    return line.value;
  };
  expect(await next()).toBe('ready');
  return {
    async read(name) {
      child.stdin.write(`${name}\n`);
      return JSON.parse(await next()) as { version?: string; source?: string };
    },
  };
}

/** Polls until `fn` returns true; resolves with the time it took. */
async function within(ms: number, fn: () => Promise<boolean>): Promise<number> {
  const start = Date.now();
  while (!(await fn())) {
    if (Date.now() - start > ms) throw new Error(`not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return Date.now() - start;
}

test('a publish and a rollback reach the cache of every worker process within a second (LISTEN/NOTIFY; the TTL is 10 minutes)', async () => {
  const [a, b, deaf] = await Promise.all([startProbe(true), startProbe(true), startProbe(false)]);
  for (const p of [a, b, deaf]) {
    expect(await p.read('writer')).toEqual({ version: '1.0.0', source: 'repository' });
    expect(await p.read('writer')).toEqual({ version: '1.0.0', source: 'cache' });
  }

  await db.roles.repository.publish(writerProfile('1.1.0', 'Version two.'), { actor: 'test' });
  for (const p of [a, b]) {
    const took = await within(1_000, async () => (await p.read('writer')).version === '1.1.0');
    expect(took).toBeLessThan(1_000);
  }
  // The control: a cache that does not listen keeps serving what it read, so the notification did it.
  expect(await deaf.read('writer')).toEqual({ version: '1.0.0', source: 'cache' });

  await db.roles.repository.rollback('writer', { actor: 'test', reason: 'bad prompt' });
  // a and b had 1.1.0 cached; only the notification can bring them back to 1.0.0 this fast.
  for (const p of [a, b]) expect(await within(1_000, async () => (await p.read('writer')).version === '1.0.0')).toBeLessThan(1_000);
});

/** A TCP proxy in front of PostgreSQL that the test can cut, as a network partition would. */
async function startProxy(): Promise<{ port: number; cut(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(5432, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    async cut() {
      sockets.forEach((s) => s.destroy());
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

test('while the repository is unreachable, the last known good version serves and the fallback is recorded; the breaker opens', async () => {
  const proxy = await startProxy();
  const url = new URL(db.databaseUrl);
  url.host = `127.0.0.1:${proxy.port}`;
  const pool = new Pool({ connectionString: url.toString(), max: 3, connectionTimeoutMillis: 2_000 });
  pool.on('error', () => undefined);
  // A TTL of 1 ms: every read goes to PostgreSQL, so only the breaker and the fallback can answer.
  const roles = new RoleService({ pool, keyring: db.keyring, ttlMs: 1, breaker: { failures: 2, halfOpenAfterMs: 60_000 } });
  const activities = createRoleActivities({ pool, roles, logger: pino({ level: 'silent' }) });
  const env = new MockActivityEnvironment({ workflowExecution: { workflowId: 'breaker', runId: 'r' }, activityId: '1' });
  const loadRole = (input: LoadRoleInput): Promise<LoadedRole> => env.run((i: LoadRoleInput) => activities.loadRole(i), input);
  try {
    const before = await loadRole({ taskId: 't', subtaskId: 's1', name: 'reviewer', title: 'Review' });
    expect(before).toMatchObject({ source: 'repository', profile: { name: 'reviewer', version: '1.0.0' } });
    expect(before.fallbackReason).toBeUndefined();

    await proxy.cut();
    const during = await loadRole({ taskId: 't', subtaskId: 's2', name: 'reviewer', title: 'Review' });
    expect(during).toMatchObject({ source: 'last-known-good', profile: { name: 'reviewer', version: '1.0.0' } });
    expect(during.fallbackReason).toMatch(/role repository unavailable .*served the last known good version/);

    // Two failures open the breaker: later reads do not even try PostgreSQL.
    await roles.resolve('reviewer');
    const open = await roles.resolve('reviewer');
    expect(open).toMatchObject({ source: 'last-known-good' });
    expect(open?.note).toContain('circuit breaker open');
    expect(roles.stats.fallbacks).toBeGreaterThanOrEqual(4);

    // A role never read before has nothing to fall back on: a retryable, typed error.
    await expect(roles.resolve('writer')).rejects.toBeInstanceOf(RoleRepositoryUnavailableError);
  } finally {
    await roles.close();
    await pool.end();
  }
});

test('a tampered profile is never served, not even from the last known good copy', async () => {
  const roles = new RoleService({ pool: db.pool, keyring: db.keyring, ttlMs: 1 });
  try {
    expect((await roles.resolve('generalist'))?.role.version).toBe('1.0.0');
    await db.pool.query(`UPDATE role_versions SET ciphertext = set_byte(ciphertext, 5, get_byte(ciphertext, 5) # 1) WHERE name = 'generalist'`);
    await new Promise((r) => setTimeout(r, 5));
    await expect(roles.resolve('generalist')).rejects.toBeInstanceOf(RoleIntegrityError);
    expect(roles.stats.fallbacks).toBe(0);
  } finally {
    await roles.close();
  }
});
