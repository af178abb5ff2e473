/**
 * Issue 15 §2: no pattern or glob supplied by a policy author, a role author, a planner, an API
 * client or a JSON schema takes more than linear time on any input, on any path that matches it.
 * The subjects below would take a backtracking engine longer than the universe's age; a test that
 * finishes at all proves the engine does not backtrack.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import fc from 'fast-check';
import picomatch from 'picomatch';
import pino from 'pino';
import { createModelClient } from '../../infra/models/model';
import { policyChecksum } from '../../infra/db/policyRepository';
import { routeSubtask } from '../../activities/roles/router';
import { createVerifyActivities } from '../../activities/verify';
import { Criterion, RoleProfile, TaskRequest, type Criterion as CriterionT, type Verdict } from '../../validation';
import { globMatches, patternFound } from '../../core/patterns';
import { PolicyDocument, type LoadedPolicy, type PolicyInput } from '../../validation/policy';
import { checkToolCall } from '../../core/permissions';
import { evaluatePolicies } from '../../core/policy';
import { builtinToolDeps, createTestDatabase, type TestDatabase } from '../helpers';

/** Patterns that take exponential or high-polynomial time on a backtracking engine. */
const EVIL_PATTERNS = ['(a+)+$', '(a|a)*$', '(a*)*b', '(a|aa)+$', '^(a+)+b', '(.*a){20}', '(\\w+\\s?)+$', '([a-z]+)*[0-9]'];
/** Globs whose picomatch regular expressions backtrack on long subjects. */
const EVIL_GLOBS = ['*a*a*a*a*a*a*a*b', '**/*a*a*a*a*a*a*z', '{*a,*a*}{*a,*a*}{*a,*a*}{*a,*a*}b'];

/** Subjects that make the evil patterns fail only at the end: runs of `a` and a final mismatch. */
const evilSubject = fc.tuple(fc.integer({ min: 24, max: 4_000 }), fc.constantFrom('!', '', 'c', '/'), fc.constantFrom('a', 'ab', 'a ')).map(([n, tail, unit]) => unit.repeat(n) + tail);

function policyWith(when: unknown, decision = 'deny'): LoadedPolicy {
  const document = PolicyDocument.parse({ schemaVersion: 1, name: 'probe', version: '1.0.0', rules: [{ id: 'r', when, decision, reason: 'probe' }] });
  return { name: 'probe', version: '1.0.0', checksum: policyChecksum(document), document };
}

const toolInput = (args: Record<string, unknown>): PolicyInput => ({ kind: 'tool', target: 'workspace.write', args, role: 'writer', tenant: 'acme', estimatedCost: 0, sensitivity: [] });

function roleWith(args: Record<string, unknown>): RoleProfile {
  return RoleProfile.parse({
    schemaVersion: 1,
    name: 'writer',
    version: '1.0.0',
    description: 'probe',
    systemPrompt: 'probe',
    toneGuide: '',
    constraints: [],
    tools: [{ tool: 'workspace.write', access: 'write', args }],
    confidenceThreshold: 0.7,
    maxIterations: 8,
    tokenBudget: { context: 8_000 },
    handles: [],
  });
}

describe('the seen inputs finish, on every path that runs a pattern in workflow code', () => {
  test('a policy pattern (a+)+$ against 27 "a"s and "!" (it aborted mare dev) is evaluated, and again at 4,000 characters', () => {
    const policy = policyWith({ args: { content: { pattern: '(a+)+$' } } });
    for (const content of [`${'a'.repeat(27)}!`, `${'a'.repeat(4_000)}!`]) {
      expect(evaluatePolicies([policy], toolInput({ content })).decision).toBe('allow');
    }
    expect(evaluatePolicies([policy], toolInput({ content: 'a'.repeat(30) })).decision).toBe('deny');
  });

  test('a grant glob *a*a*a*a*a*a*a*b against 60 characters (5.8 s before) is checked', () => {
    const role = roleWith({ path: { globs: ['*a*a*a*a*a*a*a*b'] } });
    const refused = checkToolCall(role, { id: '1', name: 'workspace.write', args: { path: 'a'.repeat(60) } }, 'write');
    expect(refused.allowed).toBe(false);
    expect(checkToolCall(role, { id: '1', name: 'workspace.write', args: { path: 'aaaaaaab' } }, 'write').allowed).toBe(true);
  });

  test('a role handles glob on a planner-written title', () => {
    const route = routeSubtask({
      requested: 'missing',
      title: 'a'.repeat(5_000),
      candidates: [{ name: 'writer', version: '1.0.0', description: '', tools: [], handles: ['*a*a*a*a*a*a*a*a*a*b'], deprecated: false, suspended: false }],
    });
    expect(route.routedBy).toBe('default');
  });
});

describe('patterns RE2 cannot run in linear time are refused where they are written', () => {
  test.each([
    ['a lookahead', '(?=a)b'],
    ['a negative lookbehind', '(?<!a)b'],
    ['a backreference', '(a)\\1'],
    ['a possessive quantifier', 'a++'],
  ])('a policy pattern with %s is refused at publish, naming the field', (_what, pattern) => {
    const result = PolicyDocument.safeParse({ schemaVersion: 1, name: 'p', version: '1.0.0', rules: [{ id: 'r', when: { args: { content: { pattern } } }, decision: 'deny', reason: 'r' }] });
    expect(result.success).toBe(false);
    expect(result.error!.issues[0]!.path.join('.')).toBe('rules.0.when.args.content.pattern');
    expect(result.error!.issues[0]!.message).toMatch(/linear time/);
  });

  test('a file_matches criterion with a backreference is refused when the task is submitted', () => {
    const result = TaskRequest.safeParse({ taskId: 't1', goal: 'g', acceptanceCriteria: [{ kind: 'file_matches', path: 'a.txt', pattern: '(a)\\1' }] });
    expect(result.success).toBe(false);
    expect(result.error!.issues[0]!.message).toMatch(/linear time/);
  });

  test('a policy stored before patterns were checked fails closed: its deny rule applies, its allow rule does not', () => {
    const stored = (decision: string): LoadedPolicy => {
      const p = policyWith({ args: { content: { pattern: 'x' } } }, decision);
      p.document.rules[0]!.when.args!.content!.pattern = '(?=a)a';
      return p;
    };
    expect(evaluatePolicies([stored('deny')], toolInput({ content: 'anything' })).decision).toBe('deny');
    expect(evaluatePolicies([stored('allow'), policyWith({ kinds: ['tool'] }, 'escalate')], toolInput({ content: 'anything' })).decision).toBe('escalate');
  });
});

describe('property: adversarial subjects against every pattern path', () => {
  let db: TestDatabase;
  let verify: ReturnType<typeof createVerifyActivities>['verify'];
  let workspaceRoot: string;
  beforeAll(async () => {
    db = await createTestDatabase();
    workspaceRoot = mkdtempSync(path.join(tmpdir(), 'mare-redos-'));
    const model = createModelClient({ provider: 'scripted', modelId: path.join(__dirname, '..', '..', 'scripts', 'demo-script.json') });
    const deps = { pool: db.pool, roles: db.roles, policies: db.policies, ...builtinToolDeps(), workspaceRoot, model, logger: pino({ level: 'silent' }) };
    verify = createVerifyActivities(deps).verify;
  });
  afterAll(async () => {
    await db?.drop();
    rmSync(workspaceRoot, { recursive: true, force: true });
  });

  let runs = 0;
  /** Runs the verify activity on one criterion over `content` written to the task workspace. */
  async function verifyFile(criterion: CriterionT, content: string): Promise<boolean> {
    const taskId = `redos-${++runs}`;
    mkdirSync(path.join(workspaceRoot, taskId), { recursive: true });
    writeFileSync(path.join(workspaceRoot, taskId, 'out.txt'), content);
    const verdict: Verdict = await new MockActivityEnvironment({ attempt: 1 }).run(verify, { taskId, subtaskId: 's1', attempt: 1, criteria: [Criterion.parse(criterion)], output: content, threshold: 0.5 });
    return verdict.passed;
  }

  test('policy patterns, policy globs, grant globs and handles globs (workflow code)', () => {
    fc.assert(
      fc.property(fc.constantFrom(...EVIL_PATTERNS), fc.constantFrom(...EVIL_GLOBS), evilSubject, (pattern, glob, subject) => {
        const byPattern = evaluatePolicies([policyWith({ args: { content: { pattern } } })], toolInput({ content: subject }));
        expect(byPattern.decision).toBe(patternFound(pattern, subject) ? 'deny' : 'allow');
        evaluatePolicies([policyWith({ args: { content: { globs: [glob] } } }), policyWith({ targets: [glob] })], { ...toolInput({ content: subject }), target: subject });
        checkToolCall(roleWith({ path: { globs: [glob] } }), { id: '1', name: 'workspace.write', args: { path: subject } }, 'write');
        routeSubtask({ requested: 'missing', title: subject, candidates: [{ name: 'w', version: '1.0.0', description: '', tools: [], handles: [glob], deprecated: false, suspended: false }] });
      }),
      { numRuns: 60 },
    );
  });

  test('file_matches and json_schema patterns in the verify activity (28 characters took 14.5 s and 24 took 2.7 s before)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...EVIL_PATTERNS), evilSubject, async (pattern, subject) => {
        const expected = patternFound(pattern, subject, { multiline: true });
        expect(await verifyFile({ kind: 'file_matches', path: 'out.txt', pattern }, subject)).toBe(expected);
        const schema = { type: 'object', properties: { s: { type: 'string', pattern } }, patternProperties: { [pattern]: { type: 'string' } } };
        await verifyFile({ kind: 'json_schema', path: 'out.txt', schema }, JSON.stringify({ s: subject }));
      }),
      { numRuns: 25 },
    );
  });

  test("a criterion schema's $id does not shadow a later task's schema with the same $id (issue 15 §7)", async () => {
    const strict = { $id: 'https://example.com/result', type: 'object', required: ['ok'], properties: { ok: { const: true } } };
    const lax = { $id: 'https://example.com/result', type: 'object' };
    expect(await verifyFile({ kind: 'json_schema', path: 'out.txt', schema: strict }, '{"ok": false}')).toBe(false);
    // Same $id, another schema: with a shared Ajv instance this reused the first one (or threw "already exists").
    expect(await verifyFile({ kind: 'json_schema', path: 'out.txt', schema: lax }, '{"ok": false}')).toBe(true);
    expect(await verifyFile({ kind: 'json_schema', path: 'out.txt', schema: strict }, '{"ok": true}')).toBe(true);
  });

  test('a JSON Schema pattern RE2 cannot run fails the criterion with a clear reason instead of running', async () => {
    const taskId = 'redos-lookahead';
    mkdirSync(path.join(workspaceRoot, taskId), { recursive: true });
    writeFileSync(path.join(workspaceRoot, taskId, 'out.txt'), '{"s":"a"}');
    const verdict: Verdict = await new MockActivityEnvironment({ attempt: 1 }).run(verify, {
      taskId,
      subtaskId: 's1',
      attempt: 1,
      criteria: [Criterion.parse({ kind: 'json_schema', path: 'out.txt', schema: { properties: { s: { pattern: '(?=a)a' } } } })],
      output: '',
      threshold: 0.5,
    });
    expect(verdict.passed).toBe(false);
    expect(JSON.stringify(verdict)).toMatch(/linear time/);
  });
});

describe('property: the linear-time glob engine agrees with picomatch on ordinary globs and paths', () => {
  const segment = fc.constantFrom('docs', 'src', 'a', 'b.md', '.env', 'x.ts', 'notes');
  const globSegment = fc.constantFrom('docs', 'src', '*', '**', '*.md', '?', 'a', '{a,b.md}', '.env', '*.{ts,md}', 'x*');
  test('paths', () => {
    fc.assert(
      fc.property(fc.array(globSegment, { minLength: 1, maxLength: 4 }), fc.array(segment, { minLength: 1, maxLength: 4 }), (g, p) => {
        const glob = g.join('/');
        const text = p.join('/');
        // picomatch's one quirk here: a final `/**` after a segment ending in `*` needs the slash (`*/**` misses `docs`); ours does not.
        fc.pre(!/\*\/\*\*$/.test(glob));
        expect(globMatches(glob, text)).toBe(picomatch.isMatch(text, glob, { dot: true }));
      }),
      { numRuns: 3_000 },
    );
  });
});
