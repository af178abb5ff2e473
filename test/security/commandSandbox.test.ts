/**
 * Issue 15 §3: `command_succeeds` is code execution on the worker. The planner (a model) writes the
 * criteria; the operator's allowlist decides whole argument vectors, and what runs is confined to
 * a bubblewrap sandbox; what it prints is redacted also when a secret is hex- or base64-encoded.
 */
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import pino from 'pino';
import { RE2JS } from 're2js';
import { commandAllowed } from '../../infra/commandAllowlist';
import { createModelClient } from '../../infra/models/model';
import { runSandboxed, SandboxUnavailable } from '../../infra/sandbox';
import { createRedactor, REDACTED } from '../../infra/secrets';
import { ToolCatalog } from '../../infra/tools/catalog';
import { createVerifyActivities, type VerifyInput } from '../../activities/verify';
import type { Criterion, Verdict } from '../../validation';
import { ToolsConfig } from '../../validation/toolConfig';
import { createTestDatabase, type TestDatabase } from '../helpers';

// Secrets of this (worker) process: the sandbox must not see them, the evidence must not show them.
const API_KEY = 'sk-sandboxtest-3f9a1c77e2b84d05a6e1';
const DB_PASSWORD = 'Pg-Sandbox-Passw0rd-91';
process.env.MARE_SANDBOX_TEST_API_KEY = API_KEY;
process.env.MARE_SANDBOX_TEST_DATABASE_URL = `postgres://mare:${DB_PASSWORD}@127.0.0.1:5432/mare`;

let db: TestDatabase;
let root: string;

beforeAll(async () => {
  db = await createTestDatabase();
  root = mkdtempSync(path.join(os.tmpdir(), 'mare-sandbox-'));
});

afterAll(async () => {
  await db?.drop();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** The verify activity as a worker builds it, with this tools configuration, on the test database. */
function verifier(verifyCommands: unknown[]) {
  const config = ToolsConfig.parse({ verifyCommands });
  return createVerifyActivities({
    pool: db.pool,
    // The judge is never asked here (no judged criteria).
    model: createModelClient({ provider: 'scripted', modelId: path.join(__dirname, '..', '..', 'scripts', 'demo-script.json') }),
    roles: db.roles,
    policies: db.policies,
    workspaceRoot: root,
    tools: new ToolCatalog(config),
    redactor: createRedactor(config.secrets),
    logger: pino({ level: 'silent' }),
  });
}

const check = (command: string, args: string[]): Criterion => ({ kind: 'command_succeeds', command, args, timeoutSeconds: 30 });
const nodeCheck = (code: string): Criterion => check('node', ['-e', code]);
/** An allowlist entry for exactly this `node -e <code>`, as a careless operator might allow one. */
const allowExactly = (code: string) => ({ command: 'node', args: ['-e', RE2JS.quote(code)] });

async function verify(taskId: string, verifyCommands: unknown[], criteria: Criterion[]) {
  const activities = verifier(verifyCommands);
  const env = new MockActivityEnvironment({ workflowExecution: { workflowId: taskId, runId: 'r' }, activityId: 'verify' });
  const verdict = await env.run<[VerifyInput], Verdict, (input: VerifyInput) => Promise<Verdict>>((input) => activities.verify(input), { taskId, subtaskId: 's', attempt: 1, criteria, output: '', threshold: 1 });
  const { rows } = await db.pool.query<{ body: { commands: { stdout: string; stderr: string; exitCode: number | null }[] } }>(`SELECT body FROM evidence WHERE evidence_id = $1`, [verdict.evidenceId]);
  return { verdict, body: rows[0]!.body, raw: JSON.stringify(rows[0]!.body) };
}

/** Every way the two secrets could appear: as written, hex (both cases), base64/base64url at each byte offset. */
function leakForms(): string[] {
  const forms: string[] = [];
  for (const s of [API_KEY, DB_PASSWORD]) {
    const b = Buffer.from(s);
    forms.push(s, b.toString('hex'), b.toString('hex').toUpperCase());
    for (const pad of [0, 1, 2]) {
      const b64 = Buffer.concat([Buffer.alloc(pad, 'x'), b]).toString('base64');
      // The characters that encode only the secret's bytes: whole 3-byte groups inside it.
      const middle = b64.slice(Math.ceil(pad / 3) * 4, Math.floor((pad + b.length) / 3) * 4);
      forms.push(middle, middle.replace(/\+/g, '-').replace(/\//g, '_'));
    }
  }
  return forms;
}

describe('the allowlist decides whole argument vectors', () => {
  // The operator allows node and git, but only for these vectors.
  const ALLOW = [
    { command: 'node', args: ['--test', 'tests/[a-z0-9_/-]+\\.js'] },
    { command: 'git', args: ['status', '--porcelain'] },
    { command: 'npm', args: ['test'] },
  ];

  test('the seen attacks and others of their class are refused before anything runs', async () => {
    const marker = path.join(root, 'ran-marker');
    const refused: Criterion[] = [
      // Seen: the worker's environment (API key, DATABASE_URL) printed as hex past redaction.
      nodeCheck(`process.stdout.write(require('fs').readFileSync('/proc/' + process.ppid + '/environ').toString('hex'))`),
      // Seen: a git alias that runs a shell.
      check('git', ['-c', `alias.x=!sh -c 'touch ${marker}'`, 'x']),
      // A pattern is a full match: an allowed test path with more after it is not a test path.
      check('node', ['--test', `tests/a.js --eval=require('fs').writeFileSync('${marker}','')`]),
      // Path traversal out of tests/ ('.' is not in the allowed characters).
      check('node', ['--test', '../../etc/evil.js']),
      // An allowed vector with one more argument (a preloaded module) is another vector.
      check('node', ['--test', 'tests/a.js', `--require=${marker}`]),
      // npm with a script of the planner's choosing, and git's config injection after an allowed subcommand.
      check('npm', ['exec', '--', 'sh', '-c', `touch ${marker}`]),
      check('git', ['status', `--porcelain\n-c core.fsmonitor=touch ${marker}`]),
      // A command nobody allowed.
      check('sh', ['-c', `touch ${marker}`]),
    ];
    const { verdict, body } = await verify('refused', ALLOW, refused);
    expect(verdict.passed).toBe(false);
    for (const r of verdict.results) expect(r.detail).toMatch(/^command "[a-z]+" with these \d+ arguments is not allowed here/);
    expect(body.commands).toEqual([]);
    expect(existsSync(marker)).toBe(false);
  });

  test('allowed vectors match position by position, same count', () => {
    const entries = ToolsConfig.parse({ verifyCommands: ALLOW }).verifyCommands;
    expect(commandAllowed(entries, 'node', ['--test', 'tests/unit/a_b-c.js'])).toBe(true);
    expect(commandAllowed(entries, 'npm', ['test'])).toBe(true);
    expect(commandAllowed(entries, 'npm', [])).toBe(false);
    expect(commandAllowed(entries, 'node', ['tests/a.js', '--test'])).toBe(false);
    expect(commandAllowed(entries, 'git', ['status', '--porcelain=v2'])).toBe(false);
  });

  test('patterns run in linear time (RE2): a backtracking-bomb pattern on a long argument returns', () => {
    const entries = ToolsConfig.parse({ verifyCommands: [{ command: 'node', args: ['(a|a)*b'] }] }).verifyCommands;
    // A backtracking engine would take 2^100000 steps here; jest's timeout would fail the test.
    expect(commandAllowed(entries, 'node', ['a'.repeat(100_000)])).toBe(false);
  });

  test('a bare command name (the old format) is refused at load with the new format in the error', () => {
    const parsed = ToolsConfig.safeParse({ verifyCommands: ['node'] });
    expect(parsed.success).toBe(false);
    expect(parsed.error!.issues[0]!.message).toContain('a bare command name ("node") is no longer accepted');
    expect(parsed.error!.issues[0]!.message).toContain('{ "command": "npm", "args": ["test"] }');
    const badPattern = ToolsConfig.safeParse({ verifyCommands: [{ command: 'node', args: ['(a'] }] });
    expect(badPattern.error?.issues[0]).toMatchObject({ path: ['verifyCommands', 0, 'args', 0], message: expect.stringContaining('is not an RE2 pattern') });
  });
});

describe('an allowed command runs in the bubblewrap sandbox', () => {
  test("it cannot read the worker's /proc/<pid>/environ and has none of the worker's environment", async () => {
    // A process holding the secrets in its environment from the start, as a worker does (this test
    // process set them after it started, so its own /proc/<pid>/environ lacks them).
    const holder = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { env: { ...process.env }, stdio: 'ignore' });
    try {
      await new Promise((resolve) => holder.once('spawn', resolve));
      // Outside the sandbox the attack is real: the secrets are there to read.
      expect(readFileSync(`/proc/${holder.pid}/environ`, 'utf8')).toContain(API_KEY);
      const code = [
        `const fs = require('fs');`,
        `const tryRead = (p) => { try { return fs.readFileSync(p).toString('hex'); } catch (e) { return e.code; } };`,
        `console.log(JSON.stringify({ uid: process.getuid(), worker: tryRead('/proc/${process.pid}/environ'), holder: tryRead('/proc/${holder.pid}/environ'), parent: tryRead('/proc/' + process.ppid + '/environ'), env: process.env, pids: fs.readdirSync('/proc').filter((n) => /^[0-9]+$/.test(n)) }));`,
      ].join('\n');
      const { verdict, body, raw } = await verify('environ', [allowExactly(code)], [nodeCheck(code)]);
      expect(verdict.results[0]).toMatchObject({ passed: true });
      const seen = JSON.parse(body.commands[0]!.stdout) as { uid: number; worker: string; holder: string; parent: string; env: Record<string, string>; pids: string[] };
      expect(seen.uid).toBe(65534);
      // A fresh /proc: only the sandbox's own processes; the worker's and the holder's pids are not there.
      expect(seen.pids.length).toBeLessThan(5);
      expect(seen.pids).not.toContain(String(process.pid));
      expect(seen.worker).toBe('ENOENT');
      expect(seen.holder).toBe('ENOENT');
      expect(Object.keys(seen.env).sort()).toEqual(expect.arrayContaining(['HOME', 'LANG', 'PATH']));
      expect(Object.keys(seen.env).filter((k) => !['HOME', 'LANG', 'PATH', 'PWD'].includes(k))).toEqual([]);
      // Not redacted away: never there, in any encoding, in what the sandbox printed or what was stored.
      for (const form of leakForms()) expect(raw).not.toContain(form);
      expect(raw).not.toContain(REDACTED);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  test('it cannot write outside the workspace; inside it can', async () => {
    const outside = {
      sibling: path.join(root, 'other-task', 'x'),
      tmp: path.join(os.tmpdir(), `mare-sandbox-escape-${process.pid}`),
      repo: path.join(process.cwd(), `sandbox-escape-${process.pid}`),
      nodeDir: path.join(path.dirname(process.execPath), `sandbox-escape-${process.pid}`),
    };
    mkdirSync(path.dirname(outside.sibling), { recursive: true });
    chmodSync(path.dirname(outside.sibling), 0o777);
    const code = [
      `const fs = require('fs');`,
      `const tryWrite = (p) => { try { fs.writeFileSync(p, 'escaped'); return 'written'; } catch (e) { return e.code; } };`,
      `const paths = ${JSON.stringify(outside)};`,
      `const out = { inside: tryWrite('inside.txt') };`,
      `for (const [k, p] of Object.entries(paths)) out[k] = tryWrite(p);`,
      `console.log(JSON.stringify(out));`,
    ].join('\n');
    const { body } = await verify('writes', [allowExactly(code)], [nodeCheck(code)]);
    const result = JSON.parse(body.commands[0]!.stdout) as Record<string, string>;
    expect(result.inside).toBe('written');
    expect(readFileSync(path.join(root, 'writes', 'inside.txt'), 'utf8')).toBe('escaped');
    for (const [name, p] of Object.entries(outside)) {
      expect([name, existsSync(p)]).toEqual([name, false]);
      // /tmp is the sandbox's own tmpfs: a write there (also into a repository cloned under /tmp) lands
      // nowhere on the machine, as checked above; anywhere else the write itself fails.
      if (!p.startsWith(`${os.tmpdir()}${path.sep}`)) expect([name, result[name]]).toEqual([name, expect.stringMatching(/^E[A-Z]+$/)]);
    }
  });

  test('it cannot open a network connection, not even to PostgreSQL on 127.0.0.1:5432', async () => {
    // From the worker, PostgreSQL answers on that address.
    await expect(db.pool.query('SELECT 1')).resolves.toBeDefined();
    const code = [
      `const net = require('net');`,
      `const attempt = (host, port) => new Promise((done) => { const s = net.connect(port, host); s.on('connect', () => { s.destroy(); done('connected'); }); s.on('error', (e) => done(e.code)); });`,
      `Promise.all([attempt('127.0.0.1', 5432), attempt('1.1.1.1', 443)]).then((r) => console.log(JSON.stringify(r)));`,
    ].join('\n');
    const { body } = await verify('network', [allowExactly(code)], [nodeCheck(code)]);
    const [postgres, internet] = JSON.parse(body.commands[0]!.stdout) as string[];
    expect(postgres).toBe('ECONNREFUSED');
    expect(internet).toMatch(/^E(NETUNREACH|CONNREFUSED|HOSTUNREACH)$/);
  });

  test('a secret printed hex- or base64-encoded is redacted in the stored evidence', async () => {
    mkdirSync(path.join(root, 'encoded'), { recursive: true });
    // A model put the secrets into a workspace file; the check prints them encoded every way.
    writeFileSync(path.join(root, 'encoded', 'leak.txt'), `${API_KEY}\n${DB_PASSWORD}`);
    const code = [
      `const [a, b] = require('fs').readFileSync('leak.txt', 'utf8').split('\\n');`,
      `for (const s of [a, b]) {`,
      `  const buf = Buffer.from(s);`,
      `  console.log(buf.toString('hex'), buf.toString('hex').toUpperCase());`,
      `  for (const pad of ['', 'x', 'xy']) console.log(Buffer.from(pad + s).toString('base64'), Buffer.from(pad + s).toString('base64url'));`,
      `  console.error('stderr', Buffer.from('DATABASE_URL=' + s).toString('base64'));`,
      `}`,
    ].join('\n');
    const { verdict, body, raw } = await verify('encoded', [allowExactly(code)], [nodeCheck(code)]);
    expect(verdict.results[0]).toMatchObject({ passed: true });
    // The command did print encoded secrets (16 of them), each now redacted.
    expect(body.commands[0]!.stdout.split(REDACTED).length - 1).toBe(16);
    expect(body.commands[0]!.stderr).toContain(REDACTED);
    for (const form of leakForms()) expect(raw).not.toContain(form);
  });
});

describe('without a working sandbox nothing runs', () => {
  const marker = (): string => path.join(root, 'nosandbox', 'ran');
  const request = () => {
    mkdirSync(path.join(root, 'nosandbox'), { recursive: true });
    return { workspace: path.join(root, 'nosandbox'), command: 'sh', args: ['-c', `touch ${marker()}`], timeoutSeconds: 10 };
  };

  test('bwrap missing: SandboxUnavailable (bwrap-missing)', async () => {
    const err = await runSandboxed({ ...request(), bwrapPath: path.join(root, 'no-such-bwrap') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxUnavailable);
    expect(err).toMatchObject({ reason: 'bwrap-missing', message: expect.stringContaining('apt-get install bubblewrap') });
    expect(existsSync(marker())).toBe(false);
  });

  test('bwrap that cannot create namespaces: SandboxUnavailable (sandbox-setup-failed)', async () => {
    // The real bwrap, started inside a bwrap that forbids further user namespaces.
    const wrapper = path.join(root, 'bwrap-without-userns');
    writeFileSync(wrapper, `#!/bin/sh\nexec /usr/bin/bwrap --unshare-user --disable-userns --dev-bind / / /usr/bin/bwrap "$@"\n`, { mode: 0o755 });
    const err = await runSandboxed({ ...request(), bwrapPath: wrapper }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SandboxUnavailable);
    expect(err).toMatchObject({ reason: 'sandbox-setup-failed', message: expect.stringContaining('namespace') });
    expect(existsSync(marker())).toBe(false);
  });
});
