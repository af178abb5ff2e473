import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import canonicalize from 'canonicalize';
import { Pool } from 'pg';
import { bootstrapPolicies, bundledPolicyFile, openPolicyService } from '../infra/policies/bootstrap';
import { createPolicyActivities } from '../activities/policy';
import { parsePolicyDocument, policyChecksum, PolicyIntegrityError, PolicyNotFoundError, PolicyRepository, PolicyRepositoryError, PolicyValidationError, type PolicyAuditRow } from '../infra/db/policyRepository';
import { PolicyService } from '../infra/policies/policyService';
import type { Actor } from '../infra/db/documentStore';
import {
  PolicyDocument,
  type LoadedPolicy,
  type PolicyCondition,
  type PolicyInput,
  type PolicyRule,
} from '../validation/policy';
import { APPROVAL_DEFAULTS } from '../core/constants';
import { conditionMatches, evaluatePolicies, NO_RULE_MATCHED } from '../core/policy';
import { createRedactor } from '../infra/secrets';
import { migrate } from '../infra/db/migrate';
import { createScratchDatabase } from '../infra/db/scratch';
import { ADMIN_DATABASE_URL, createTestDatabase, type TestDatabase } from './helpers';

/** A tool call by a writer of tenant acme; `over` replaces fields. */
function call(over: Partial<PolicyInput> = {}): PolicyInput {
  return {
    kind: 'tool',
    target: 'fs.write',
    args: { path: 'docs/guide.md', content: 'hello', count: 5, recursive: true, options: { force: true }, nothing: null },
    role: 'writer',
    tenant: 'acme',
    estimatedCost: 0.25,
    sensitivity: [],
    ...over,
  };
}

/** A policy as the repository would load it (validated, defaults applied). */
function policy(name: string, rules: unknown[], version = '1.0.0'): LoadedPolicy {
  const document = PolicyDocument.parse({ schemaVersion: 1, name, version, rules });
  return { name, version, checksum: policyChecksum(document), document };
}

function rule(id: string, when: PolicyCondition, decision: PolicyRule['decision'], extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { id, when, decision, reason: `${id} says ${decision}`, ...extra };
}

/** Whether `when` matches `input`, checked through the schema (so the condition is a valid one). */
function matches(when: unknown, input: PolicyInput = call()): boolean {
  const parsed = PolicyDocument.parse({ schemaVersion: 1, name: 'p', version: '1.0.0', rules: [{ id: 'r', when, decision: 'deny', reason: 'r' }] });
  return conditionMatches(parsed.rules[0]!.when, input);
}

describe('evaluatePolicies: conditions', () => {
  test('an empty condition matches every call, tool or model', () => {
    expect(matches({})).toBe(true);
    expect(matches({}, call({ kind: 'model', target: 'openai:gpt-4o-mini', args: undefined }))).toBe(true);
  });

  test('kinds', () => {
    expect(matches({ kinds: ['tool'] })).toBe(true);
    expect(matches({ kinds: ['model'] })).toBe(false);
    expect(matches({ kinds: ['tool', 'model'] }, call({ kind: 'model' }))).toBe(true);
  });

  test('targets are globs over the tool or model name, dot files included', () => {
    expect(matches({ targets: ['fs.*'] })).toBe(true);
    expect(matches({ targets: ['fs.read', 'fs.write'] })).toBe(true);
    expect(matches({ targets: ['workspace.*'] })).toBe(false);
    expect(matches({ targets: ['fs.read'] })).toBe(false);
    expect(matches({ targets: ['openai:*'] }, call({ kind: 'model', target: 'openai:gpt-4o-mini' }))).toBe(true);
    expect(matches({ targets: ['anthropic:*'] }, call({ kind: 'model', target: 'openai:gpt-4o-mini' }))).toBe(false);
    expect(matches({ targets: ['*'] }, call({ target: '.hidden' }))).toBe(true);
  });

  test('roles and tenants are exact names', () => {
    expect(matches({ roles: ['reviewer', 'writer'] })).toBe(true);
    expect(matches({ roles: ['reviewer'] })).toBe(false);
    expect(matches({ roles: ['writ*'] })).toBe(false);
    expect(matches({ tenants: ['acme'] })).toBe(true);
    expect(matches({ tenants: ['globex'] })).toBe(false);
  });

  test('args: globs', () => {
    expect(matches({ args: { path: { globs: ['docs/**'] } } })).toBe(true);
    expect(matches({ args: { path: { globs: ['src/**', 'docs/*.md'] } } })).toBe(true);
    expect(matches({ args: { path: { globs: ['src/**'] } } })).toBe(false);
    expect(matches({ args: { path: { globs: ['docs/**'] } } }, call({ args: { path: 'docs/.env' } }))).toBe(true);
  });

  test('args: pattern is an RE2 regular expression searched for (unanchored)', () => {
    expect(matches({ args: { path: { pattern: '\\.md$' } } })).toBe(true);
    expect(matches({ args: { path: { pattern: 'guide' } } })).toBe(true);
    expect(matches({ args: { path: { pattern: '^guide' } } })).toBe(false);
    expect(matches({ args: { content: { pattern: 'BEGIN [A-Z]+ PRIVATE KEY' } } })).toBe(false);
  });

  test('args: equals compares type and value', () => {
    expect(matches({ args: { content: { equals: 'hello' } } })).toBe(true);
    expect(matches({ args: { content: { equals: 'Hello' } } })).toBe(false);
    expect(matches({ args: { count: { equals: 5 } } })).toBe(true);
    expect(matches({ args: { count: { equals: '5' } } })).toBe(false);
    expect(matches({ args: { recursive: { equals: true } } })).toBe(true);
    expect(matches({ args: { recursive: { equals: false } } })).toBe(false);
  });

  test('args: non-string values are matched as JSON text by globs and pattern', () => {
    expect(matches({ args: { count: { globs: ['5'] } } })).toBe(true);
    expect(matches({ args: { recursive: { pattern: '^true$' } } })).toBe(true);
    expect(matches({ args: { options: { pattern: '"force":true' } } })).toBe(true);
    expect(matches({ args: { options: { globs: ['{"force":false}'] } } })).toBe(false);
    expect(matches({ args: { nothing: { pattern: '^null$' } } })).toBe(true);
  });

  test('args: every field of a condition and every argument listed must match', () => {
    expect(matches({ args: { path: { globs: ['docs/**'], pattern: 'guide', equals: 'docs/guide.md' } } })).toBe(true);
    expect(matches({ args: { path: { globs: ['docs/**'], pattern: 'readme' } } })).toBe(false);
    expect(matches({ args: { path: { globs: ['docs/**'] }, content: { equals: 'bye' } } })).toBe(false);
  });

  test('args: a missing argument never matches, not even a pattern that matches anything', () => {
    const anything = { args: { mode: { pattern: '.*' } } };
    expect(matches(anything)).toBe(false);
    expect(matches(anything, call({ args: undefined }))).toBe(false);
    expect(matches(anything, call({ args: { mode: undefined } }))).toBe(false);
    expect(matches(anything, call({ kind: 'model', target: 'openai:gpt-4o-mini', args: undefined }))).toBe(false);
    // Inherited properties are not arguments.
    expect(matches({ args: { constructor: { pattern: '.*' } } }, call({ args: {} }))).toBe(false);
    expect(matches({ args: { toString: { pattern: '.*' } } }, call({ args: {} }))).toBe(false);
  });

  test('minEstimatedCost matches a cost at or above it', () => {
    expect(matches({ minEstimatedCost: 0.25 })).toBe(true);
    expect(matches({ minEstimatedCost: 0 })).toBe(true);
    expect(matches({ minEstimatedCost: 0.26 })).toBe(false);
    expect(matches({ minEstimatedCost: 1 }, call({ estimatedCost: 1.5 }))).toBe(true);
    expect(matches({ minEstimatedCost: 0 }, call({ estimatedCost: Number.NaN }))).toBe(false);
  });

  test('sensitivity matches when any listed kind was detected', () => {
    expect(matches({ sensitivity: ['secret'] })).toBe(false);
    expect(matches({ sensitivity: ['secret'] }, call({ sensitivity: ['pii'] }))).toBe(false);
    expect(matches({ sensitivity: ['secret'] }, call({ sensitivity: ['pii', 'secret'] }))).toBe(true);
    expect(matches({ sensitivity: ['secret', 'pii'] }, call({ sensitivity: ['pii'] }))).toBe(true);
  });

  test('every field present must match', () => {
    const when = { kinds: ['tool'], targets: ['fs.*'], roles: ['writer'], tenants: ['acme'], minEstimatedCost: 0.1, sensitivity: ['pii'] };
    expect(matches(when, call({ sensitivity: ['pii'] }))).toBe(true);
    expect(matches(when, call({ sensitivity: ['pii'], tenant: 'globex' }))).toBe(false);
    expect(matches(when, call({ sensitivity: ['pii'], estimatedCost: 0.01 }))).toBe(false);
    expect(matches(when, call())).toBe(false);
  });
});

describe('evaluatePolicies: decisions', () => {
  test('no rule matched anywhere allows the call, naming no policy', () => {
    expect(evaluatePolicies([], call())).toEqual({ decision: 'allow', reason: NO_RULE_MATCHED });
    const p = policy('strict', [rule('no-shell', { targets: ['shell.*'] }, 'deny')]);
    expect(evaluatePolicies([p], call())).toEqual({ decision: 'allow', reason: 'no policy rule matched' });
  });

  test('a matching rule decides, with its reason, the policy name@version and the rule id', () => {
    const p = policy('fs-guard', [rule('no-fs', { targets: ['fs.*'] }, 'deny')], '2.1.0');
    expect(evaluatePolicies([p], call())).toEqual({ decision: 'deny', reason: 'no-fs says deny', policy: 'fs-guard@2.1.0', rule: 'no-fs' });
  });

  test('in each policy the first matching rule is its verdict; later rules are not looked at', () => {
    const p = policy('writers', [
      rule('writers-may', { roles: ['writer'] }, 'allow'),
      rule('escalate-writes', { targets: ['fs.write'] }, 'escalate'),
      rule('deny-rest', {}, 'deny'),
    ]);
    expect(evaluatePolicies([p], call())).toMatchObject({ decision: 'allow', rule: 'writers-may' });
    expect(evaluatePolicies([p], call({ role: 'reviewer' }))).toMatchObject({ decision: 'escalate', rule: 'escalate-writes' });
    expect(evaluatePolicies([p], call({ role: 'reviewer', target: 'fs.read' }))).toMatchObject({ decision: 'deny', rule: 'deny-rest' });
  });

  test('across policies the strictest verdict wins: deny > escalate > allow, whatever the order given', () => {
    const allow = policy('a-allow', [rule('ok', {}, 'allow')]);
    const escalate = policy('b-escalate', [rule('ask', {}, 'escalate')]);
    const deny = policy('c-deny', [rule('no', { targets: ['fs.*'] }, 'deny')]);
    for (const set of [
      [allow, escalate, deny],
      [deny, escalate, allow],
      [escalate, deny, allow],
    ]) {
      expect(evaluatePolicies(set, call())).toMatchObject({ decision: 'deny', policy: 'c-deny@1.0.0', rule: 'no' });
      expect(evaluatePolicies(set, call({ target: 'web.fetch' }))).toMatchObject({ decision: 'escalate', policy: 'b-escalate@1.0.0', rule: 'ask' });
    }
    expect(evaluatePolicies([allow, deny], call({ target: 'web.fetch' }))).toMatchObject({ decision: 'allow', policy: 'a-allow@1.0.0', rule: 'ok' });
    // A policy with no matching rule has no say.
    expect(evaluatePolicies([deny], call({ target: 'web.fetch' }))).toEqual({ decision: 'allow', reason: NO_RULE_MATCHED });
  });

  test('on a tie, the policy first in name order decides', () => {
    const zeta = policy('zeta', [rule('z-deny', {}, 'deny')]);
    const alpha = policy('alpha', [rule('a-deny', {}, 'deny')]);
    const mid = policy('alpha-2', [rule('m-deny', {}, 'deny')]);
    expect(evaluatePolicies([zeta, mid, alpha], call())).toMatchObject({ policy: 'alpha@1.0.0', rule: 'a-deny' });
    const zAllow = policy('zeta', [rule('z-allow', {}, 'allow')]);
    const aAllow = policy('alpha', [rule('a-allow', {}, 'allow')]);
    expect(evaluatePolicies([zAllow, aAllow], call())).toMatchObject({ decision: 'allow', policy: 'alpha@1.0.0', rule: 'a-allow' });
  });

  test('escalate carries the approval terms, with defaults for what the rule leaves out', () => {
    const p = (approval?: object) => policy('approvals', [rule('ask', {}, 'escalate', approval ? { approval } : {})]);
    expect(evaluatePolicies([p()], call())).toEqual({
      decision: 'escalate',
      reason: 'ask says escalate',
      policy: 'approvals@1.0.0',
      rule: 'ask',
      approval: { timeoutSeconds: 3600, onTimeout: 'deny' },
    });
    expect(evaluatePolicies([p({ timeoutSeconds: 60 })], call()).approval).toEqual({ timeoutSeconds: 60, onTimeout: 'deny' });
    expect(evaluatePolicies([p({ onTimeout: 'allow' })], call()).approval).toEqual({ timeoutSeconds: 3600, onTimeout: 'allow' });
    // A document that skipped the schema's defaults still gets them from the evaluator.
    const raw: LoadedPolicy = {
      name: 'raw',
      version: '1.0.0',
      checksum: '-',
      document: { schemaVersion: 1, name: 'raw', version: '1.0.0', rules: [{ id: 'ask', when: {}, decision: 'escalate', reason: 'r' }] },
    };
    expect(evaluatePolicies([raw], call()).approval).toEqual({ timeoutSeconds: 3600, onTimeout: 'deny' });
    // allow and deny carry no approval terms.
    expect(evaluatePolicies([policy('d', [rule('no', {}, 'deny')])], call())).not.toHaveProperty('approval');
    expect(APPROVAL_DEFAULTS).toEqual({ timeoutSeconds: 3600, onTimeout: 'deny' }); // one copy, used by the schema and the approval desk
  });

  test('deterministic: the same policies and call give the same decision, whatever the order, without changing the inputs', () => {
    const set = [
      policy('cost', [rule('expensive', { minEstimatedCost: 1 }, 'escalate', { approval: { timeoutSeconds: 120 } })]),
      policy('secrets', [rule('no-secrets', { sensitivity: ['secret'] }, 'deny')]),
      policy('paths', [rule('outside-docs', { args: { path: { globs: ['!docs/**'] } } }, 'deny'), rule('docs-ok', {}, 'allow')]),
      policy('models', [rule('no-gpt', { kinds: ['model'], targets: ['openai:*'] }, 'escalate')]),
    ];
    const inputs = [
      call(),
      call({ estimatedCost: 3 }),
      call({ sensitivity: ['secret'] }),
      call({ args: { path: 'src/main.ts' } }),
      call({ kind: 'model', target: 'openai:gpt-4o', args: undefined }),
      call({ kind: 'model', target: 'anthropic:claude', args: undefined, estimatedCost: 5 }),
    ];
    const frozen = structuredClone(set);
    const first = inputs.map((i) => evaluatePolicies(set, i));
    expect(first.map((d) => `${d.decision}:${d.policy ?? '-'}:${d.rule ?? '-'}`)).toEqual([
      'allow:paths@1.0.0:docs-ok',
      'escalate:cost@1.0.0:expensive',
      'deny:secrets@1.0.0:no-secrets',
      'deny:paths@1.0.0:outside-docs',
      'escalate:models@1.0.0:no-gpt',
      'escalate:cost@1.0.0:expensive',
    ]);
    for (let i = 0; i < 50; i++) {
      const rotated = [...set.slice(i % set.length), ...set.slice(0, i % set.length)];
      expect(inputs.map((input) => evaluatePolicies(i % 2 ? rotated : rotated.reverse(), input))).toEqual(first);
    }
    expect(set).toEqual(frozen);
  });

  test('workflow code imports no zod: only types from the schemas, and the zod-free pattern engine', () => {
    const source = readFileSync(path.join(__dirname, '..', 'core', 'policy.ts'), 'utf8');
    const imports = source.split('\n').filter((l) => l.startsWith('import '));
    // The only value imports are the zod-free constants (the approval defaults) and pattern engine (RE2 in pure JavaScript).
    expect(imports.filter((l) => /zod/.test(l))).toEqual([]);
    expect(imports.filter((l) => !l.startsWith('import type ')).map((l) => /from '([^']+)'/.exec(l)?.[1])).toEqual(['./constants', './patterns']);
    expect(readFileSync(path.join(__dirname, '..', 'core', 'constants.ts'), 'utf8')).not.toMatch(/from 'zod'/);
    expect(readFileSync(path.join(__dirname, '..', 'core', 'patterns.ts'), 'utf8')).not.toMatch(/from 'zod'/);
  });
});

describe('policy documents: schema', () => {
  const valid = (): Record<string, unknown> => ({
    schemaVersion: 1,
    name: 'guard',
    version: '1.0.0',
    description: 'A test policy.',
    rules: [
      {
        id: 'ask-for-money',
        when: { kinds: ['tool'], targets: ['pay.*'], args: { amount: { pattern: '^[0-9]+$' } }, minEstimatedCost: 0 },
        decision: 'escalate',
        reason: 'payments need a person',
        approval: { timeoutSeconds: 600, onTimeout: 'deny' },
      },
      { id: 'no-secrets', when: { sensitivity: ['secret'] }, decision: 'deny', reason: 'no secrets' },
    ],
  });
  /** The valid document with one rule (index 0) changed. */
  const withRule = (changes: Record<string, unknown>): Record<string, unknown> => {
    const doc = valid();
    const rules = doc.rules as Record<string, unknown>[];
    return { ...doc, rules: [{ ...rules[0], ...changes }, rules[1]] };
  };
  const withWhen = (when: Record<string, unknown>): Record<string, unknown> => withRule({ when });

  test('the valid document, the bundled default policy and boundary values are accepted', () => {
    expect(parsePolicyDocument(valid()).rules).toHaveLength(2);
    const bundled = parsePolicyDocument(JSON.parse(readFileSync(bundledPolicyFile(), 'utf8')));
    expect(bundled).toMatchObject({ name: 'default', version: '1.0.0' });
    expect(bundled.rules).toEqual([expect.objectContaining({ when: { kinds: ['tool'], sensitivity: ['secret'] }, decision: 'deny' })]);
    expect(parsePolicyDocument(withRule({ approval: { timeoutSeconds: 1 } })).rules[0]!.approval).toEqual({ timeoutSeconds: 1, onTimeout: 'deny' });
    expect(parsePolicyDocument(withRule({ approval: { timeoutSeconds: 604_800, onTimeout: 'allow' } })).rules[0]!.approval).toEqual({
      timeoutSeconds: 604_800,
      onTimeout: 'allow',
    });
    expect(parsePolicyDocument(withRule({ approval: {} })).rules[0]!.approval).toEqual({ timeoutSeconds: 3600, onTimeout: 'deny' });
    expect(parsePolicyDocument(withRule({ approval: undefined })).rules[0]!.approval).toBeUndefined();
    expect(parsePolicyDocument(withWhen({})).rules[0]!.when).toEqual({});
    expect(parsePolicyDocument(withWhen({ args: { a: { equals: 0 } }, minEstimatedCost: 0 })).rules[0]!.when.minEstimatedCost).toBe(0);
    expect(parsePolicyDocument({ ...valid(), version: '2.0.0-rc.1', name: 'a-b-9' }).version).toBe('2.0.0-rc.1');
  });

  const longName = 'a'.repeat(65);
  const cases: [string, unknown, string, RegExp][] = [
    ['unknown top-level field', { ...valid(), owner: 'me' }, 'owner', /unknown field/],
    ['unknown rule field', withRule({ priority: 1 }), 'rules[0].priority', /unknown field/],
    ['unknown condition field', withWhen({ tool: 'fs.write' }), 'rules[0].when.tool', /unknown field/],
    ['unknown argument-condition field', withWhen({ args: { path: { glob: 'docs/**' } } }), 'rules[0].when.args.path.glob', /unknown field/],
    ['unknown approval field', withRule({ approval: { timeout: 5 } }), 'rules[0].approval.timeout', /unknown field/],
    ['bad semver', { ...valid(), version: '1.0' }, 'version', /semantic version/],
    ['semver with a v', { ...valid(), version: 'v1.0.0' }, 'version', /semantic version/],
    ['upper-case name', { ...valid(), name: 'Guard' }, 'name', /lower-case/],
    ['name too long', { ...valid(), name: longName }, 'name', /at most 64/],
    ['missing name', { ...valid(), name: undefined }, 'name', /is required/],
    ['schema version 2', { ...valid(), schemaVersion: 2 }, 'schemaVersion', /unsupported schema version/],
    ['missing schema version', { ...valid(), schemaVersion: undefined }, 'schemaVersion', /is required/],
    ['bad regex', withWhen({ args: { amount: { pattern: '([0-9]+' } } }), 'rules[0].when.args.amount.pattern', /is not a pattern MARE can run in linear time/],
    ['bad regex quantifier', withWhen({ args: { amount: { pattern: '*' } } }), 'rules[0].when.args.amount.pattern', /linear time/],
    ['approval on a deny rule', withRule({ decision: 'deny' }), 'rules[0].approval', /only an "escalate" rule/],
    ['approval on an allow rule', withRule({ decision: 'allow' }), 'rules[0].approval', /this rule says "allow"/],
    ['duplicate rule ids', { ...valid(), rules: [(valid().rules as unknown[])[0], { ...(valid().rules as object[])[1], id: 'ask-for-money' }] }, 'rules[1].id', /used twice/],
    ['empty rules', { ...valid(), rules: [] }, 'rules', /at least one rule/],
    ['rules not a list', { ...valid(), rules: { id: 'x' } }, 'rules', /expected array/],
    ['negative cost', withWhen({ minEstimatedCost: -0.01 }), 'rules[0].when.minEstimatedCost', /at least 0/],
    ['cost as text', withWhen({ minEstimatedCost: '1' }), 'rules[0].when.minEstimatedCost', /expected number/],
    ['unknown decision', withRule({ decision: 'block' }), 'rules[0].decision', /must be "allow", "deny" or "escalate"/],
    ['missing decision', withRule({ decision: undefined, approval: undefined }), 'rules[0].decision', /is required/],
    ['empty reason', withRule({ reason: '' }), 'rules[0].reason', /must not be empty/],
    ['missing reason', withRule({ reason: undefined }), 'rules[0].reason', /is required/],
    ['missing when', withRule({ when: undefined }), 'rules[0].when', /is required/],
    ['rule id with capitals and underscores', withRule({ id: 'No_Secrets' }), 'rules[0].id', /lower-case letters and digits/],
    ['rule id with a trailing dash', withRule({ id: 'no-' }), 'rules[0].id', /dash-separated/],
    ['rule id starting with a digit', withRule({ id: '1-rule' }), 'rules[0].id', /starting with a letter/],
    ['timeout of 0', withRule({ approval: { timeoutSeconds: 0 } }), 'rules[0].approval.timeoutSeconds', /between 1 and 604800/],
    ['timeout over a week', withRule({ approval: { timeoutSeconds: 604_801 } }), 'rules[0].approval.timeoutSeconds', /between 1 and 604800/],
    ['fractional timeout', withRule({ approval: { timeoutSeconds: 1.5 } }), 'rules[0].approval.timeoutSeconds', /whole number/],
    ['onTimeout escalate', withRule({ approval: { onTimeout: 'escalate' } }), 'rules[0].approval.onTimeout', /must be "allow" or "deny"/],
    ['unknown kind', withWhen({ kinds: ['tool', 'agent'] }), 'rules[0].when.kinds[1]', /must be "tool" or "model"/],
    ['empty kinds', withWhen({ kinds: [] }), 'rules[0].when.kinds', /too small|at least/i],
    ['empty targets', withWhen({ targets: [] }), 'rules[0].when.targets', /too small|at least/i],
    ['empty target glob', withWhen({ targets: [''] }), 'rules[0].when.targets[0]', /too small|at least/i],
    ['empty role name', withWhen({ roles: [''] }), 'rules[0].when.roles[0]', /too small|at least/i],
    ['tenants not a list', withWhen({ tenants: 'acme' }), 'rules[0].when.tenants', /expected array/],
    ['unknown sensitivity', withWhen({ sensitivity: ['password'] }), 'rules[0].when.sensitivity[0]', /must be "secret" or "pii"/],
    ['empty argument condition', withWhen({ args: { path: {} } }), 'rules[0].when.args.path', /needs globs, pattern or equals/],
    ['bad argument name', withWhen({ args: { 'file-path': { equals: 'x' } } }), 'rules[0].when.args.file-path', /must be an argument name/],
    ['equals an object', withWhen({ args: { path: { equals: { a: 1 } } } }), 'rules[0].when.args.path.equals', /string, a number or a boolean/],
    ['empty globs', withWhen({ args: { path: { globs: [] } } }), 'rules[0].when.args.path.globs', /too small|at least/i],
    ['description not text', { ...valid(), description: 42 }, 'description', /expected string/],
    ['not an object', 'allow everything', '(policy)', /expected object/],
    ['null', null, '(policy)', /expected object/],
  ];

  test.each(cases)('%s is rejected, naming the field', (_what, doc, field, message) => {
    let error: unknown;
    try {
      parsePolicyDocument(doc);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(PolicyValidationError);
    const problems = (error as PolicyValidationError).problems;
    expect(problems).toContainEqual({ field, message: expect.stringMatching(message) });
    expect((error as Error).message).toContain(field);
  });

  test('the error names the policy it could read', () => {
    try {
      parsePolicyDocument({ ...valid(), rules: [] });
      throw new Error('accepted');
    } catch (err) {
      expect(err).toBeInstanceOf(PolicyValidationError);
      expect((err as PolicyValidationError).policy).toBe('guard@1.0.0');
    }
  });
});

describe('repository, service and bootstrap on PostgreSQL', () => {
  const who: Actor = { actor: 'test' };
  let db: TestDatabase;
  let repo: PolicyRepository;
  const extraPools: Pool[] = [];
  const services: PolicyService[] = [];

  const doc = (name: string, version: string, rules: unknown[] = [rule('deny-shell', { targets: ['shell.*'] }, 'deny')]): Record<string, unknown> => ({
    schemaVersion: 1,
    name,
    version,
    rules,
  });

  async function failure(p: Promise<unknown>): Promise<Error> {
    try {
      await p;
    } catch (err) {
      return err as Error;
    }
    throw new Error('expected a rejection, but it resolved');
  }

  async function count(table: 'policy_versions' | 'policy_heads' | 'policy_audit'): Promise<number> {
    const { rows } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`);
    return rows[0]!.n;
  }

  async function head(name: string): Promise<{ latest: string; disabled_at: Date | null; disabled_reason: string | null } | undefined> {
    const { rows } = await db.pool.query<{ latest: string; disabled_at: Date | null; disabled_reason: string | null }>(
      'SELECT latest, disabled_at, disabled_reason FROM policy_heads WHERE name = $1',
      [name],
    );
    return rows[0];
  }

  async function lastAuditId(): Promise<string> {
    const { rows } = await db.pool.query<{ id: string }>('SELECT coalesce(max(id), 0)::text AS id FROM policy_audit');
    return rows[0]!.id;
  }

  /** Runs `change` and returns the audit rows it wrote. */
  async function auditOf(change: () => Promise<unknown>): Promise<PolicyAuditRow[]> {
    const since = await lastAuditId();
    await change();
    const { rows } = await db.pool.query<PolicyAuditRow>('SELECT at, actor, action, name, version, reason, detail FROM policy_audit WHERE id > $1 ORDER BY id', [since]);
    return rows;
  }

  const activeNames = async (read: () => Promise<LoadedPolicy[]>): Promise<string[]> => (await read()).map((p) => `${p.name}@${p.version}`);

  async function waitFor(check: () => Promise<boolean>, withinMs: number): Promise<number> {
    const started = Date.now();
    while (Date.now() - started < withinMs) {
      if (await check()) return Date.now() - started;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`not seen within ${withinMs} ms`);
  }

  beforeAll(async () => {
    db = await createTestDatabase();
    repo = new PolicyRepository(db.pool);
    await bootstrapPolicies(repo); // as every worker does (a no-op if the helper's policy service did it)
  });

  afterAll(async () => {
    for (const s of services) await s.close();
    for (const p of extraPools) await p.end();
    await db?.drop();
  });

  test('bootstrap publishes the bundled default policy once, even from several workers at once', async () => {
    // A database of its own, migrated only: no worker or helper has bootstrapped it.
    const scratch = await createScratchDatabase(ADMIN_DATABASE_URL, `mare_test_policyboot_${process.pid}`);
    try {
      await migrate(scratch.url);
      const pool = new Pool({ connectionString: scratch.url, max: 4 });
      try {
        const fresh = new PolicyRepository(pool);
        expect(await fresh.active()).toEqual([]);
        const results = await Promise.all([bootstrapPolicies(fresh), bootstrapPolicies(fresh), bootstrapPolicies(fresh)]);
        expect(results.filter(Boolean)).toEqual(['default@1.0.0']);
        expect(await bootstrapPolicies(fresh)).toBeUndefined();
        expect((await fresh.versions('default')).map((v) => v.version)).toEqual(['1.0.0']);
        // A disabled default policy is not published again.
        await fresh.disable('default', { actor: 'test', reason: 'off' });
        expect(await bootstrapPolicies(fresh)).toBeUndefined();
        expect(await fresh.active()).toEqual([]);
      } finally {
        await pool.end();
      }
    } finally {
      await scratch.drop();
    }

    const stored = await repo.require('default');
    expect(stored).toMatchObject({ name: 'default', version: '1.0.0', latest: true, publishedBy: 'mare (bundled)', schemaVersion: 1 });
    expect(stored.document).toEqual(JSON.parse(readFileSync(path.join(__dirname, '..', 'policies', 'default.json'), 'utf8')));
    expect(await repo.history('default')).toEqual([
      expect.objectContaining({ actor: 'mare (bundled)', action: 'publish', name: 'default', version: '1.0.0', reason: 'bundled default policy' }),
    ]);

    // The default policy in force: a secret in a tool call's arguments is refused, nothing else.
    const active = await repo.active();
    expect(active.map((p) => p.name)).toEqual(['default']);
    expect(evaluatePolicies(active, call({ sensitivity: ['secret'] }))).toMatchObject({ decision: 'deny', policy: 'default@1.0.0', rule: 'no-secrets-in-tool-args' });
    expect(evaluatePolicies(active, call({ sensitivity: ['pii'] }))).toEqual({ decision: 'allow', reason: NO_RULE_MATCHED });
    expect(evaluatePolicies(active, call({ kind: 'model', target: 'openai:gpt-4o', args: undefined, sensitivity: ['secret'] }))).toEqual({
      decision: 'allow',
      reason: NO_RULE_MATCHED,
    });
  });

  test('publish stores the validated document with the checksum of its canonical JSON; get by exact version, range or latest', async () => {
    const v1 = await repo.publish(doc('limits', '1.0.0'), { actor: 'alice', reason: 'first' });
    expect(v1).toMatchObject({ name: 'limits', version: '1.0.0', latest: true, publishedBy: 'alice' });
    expect(v1.publishedAt).toBeInstanceOf(Date);
    expect(v1.checksum).toBe(createHash('sha256').update(canonicalize(v1.document)!).digest('hex'));
    // Defaults are applied before the checksum is taken: what is stored is what is evaluated.
    const escalating = await repo.publish(doc('limits', '1.1.0', [rule('ask', {}, 'escalate', { approval: { timeoutSeconds: 30 } })]), who);
    expect(escalating.document.rules[0]!.approval).toEqual({ timeoutSeconds: 30, onTimeout: 'deny' });
    expect(escalating.latest).toBe(true);

    const lower = await repo.publish(doc('limits', '0.9.0'), who);
    expect(lower.latest).toBe(false);
    expect((await head('limits'))?.latest).toBe('1.1.0');

    expect((await repo.get('limits'))?.version).toBe('1.1.0');
    expect((await repo.get('limits', 'latest'))?.version).toBe('1.1.0');
    expect(await repo.get('limits', '1.0.0')).toMatchObject({ version: '1.0.0', latest: false, checksum: v1.checksum });
    expect((await repo.get('limits', '^1.0.0'))?.version).toBe('1.1.0');
    expect((await repo.get('limits', '~1.0.0'))?.version).toBe('1.0.0');
    expect((await repo.get('limits', '<1.0.0'))?.version).toBe('0.9.0');
    expect(await repo.get('limits', '3.x')).toBeUndefined();
    expect(await repo.get('no-such-policy')).toBeUndefined();
    expect((await repo.versions('limits')).map((v) => [v.version, v.latest])).toEqual([
      ['0.9.0', false],
      ['1.0.0', false],
      ['1.1.0', true],
    ]);

    const badSpec = await failure(repo.get('limits', 'one.two'));
    expect(badSpec).toBeInstanceOf(PolicyRepositoryError);
    expect(badSpec.message).toContain('one.two');
    const missing = await failure(repo.require('limits', '7.0.0'));
    expect(missing).toBeInstanceOf(PolicyNotFoundError);
    expect(missing.message).toBe('no policy limits@7.0.0');
    expect(await failure(repo.require('no-such-policy'))).toBeInstanceOf(PolicyNotFoundError);

    expect((await repo.list()).map((p) => `${p.name}@${p.version}`)).toEqual(['default@1.0.0', 'limits@1.1.0']);
    expect(await activeNames(() => repo.active())).toEqual(['default@1.0.0', 'limits@1.1.0']);
  });

  test('an invalid document is refused naming the field, and nothing is written', async () => {
    const before = await Promise.all([count('policy_versions'), count('policy_heads'), count('policy_audit')]);
    const err = await failure(repo.publish({ ...doc('broken', '1.0.0'), rules: [{ id: 'x', when: { minEstimatedCost: -1 }, decision: 'deny', reason: 'r' }] }, who));
    expect(err).toBeInstanceOf(PolicyValidationError);
    expect((err as PolicyValidationError).problems).toEqual([{ field: 'rules[0].when.minEstimatedCost', message: 'must be at least 0' }]);
    expect(await Promise.all([count('policy_versions'), count('policy_heads'), count('policy_audit')])).toEqual(before);
  });

  test('a published name@version cannot be published again, with the same or other content', async () => {
    const before = await Promise.all([count('policy_versions'), count('policy_audit')]);
    const original = await repo.require('limits', '1.0.0');
    const same = await failure(repo.publish(doc('limits', '1.0.0'), { actor: 'mallory' }));
    expect(same).toBeInstanceOf(PolicyRepositoryError);
    expect(same.message).toMatch(/already published with the same content/);
    const other = await failure(repo.publish(doc('limits', '1.0.0', [rule('allow-all', {}, 'allow')]), who));
    expect(other).toBeInstanceOf(PolicyRepositoryError);
    expect(other.message).toMatch(/already published with different content/);
    expect(await Promise.all([count('policy_versions'), count('policy_audit')])).toEqual(before);
    expect(await repo.require('limits', '1.0.0')).toEqual(original);
  });

  test('the database refuses to change, delete or truncate a published version or the audit trail', async () => {
    await expect(db.pool.query(`UPDATE policy_versions SET checksum = 'forged' WHERE name = 'limits' AND version = '1.0.0'`)).rejects.toThrow(/append-only/);
    await expect(db.pool.query(`UPDATE policy_versions SET document = '{}' WHERE name = 'limits'`)).rejects.toThrow(/append-only/);
    await expect(db.pool.query(`DELETE FROM policy_versions WHERE name = 'limits' AND version = '1.0.0'`)).rejects.toThrow(/append-only/);
    await expect(db.pool.query('TRUNCATE policy_versions CASCADE')).rejects.toThrow(/append-only/);
    await expect(db.pool.query(`UPDATE policy_audit SET actor = 'mallory'`)).rejects.toThrow(/append-only/);
    await expect(db.pool.query('DELETE FROM policy_audit')).rejects.toThrow(/append-only/);
    await expect(db.pool.query('TRUNCATE policy_audit')).rejects.toThrow(/append-only/);
    expect((await repo.require('limits', '1.0.0')).document.rules).toHaveLength(1);
  });

  test('rollback moves latest down one version at a time until there is nothing earlier', async () => {
    await repo.publish(doc('rb', '1.0.0'), who);
    await repo.publish(doc('rb', '1.1.0'), who);
    await repo.publish(doc('rb', '2.0.0'), who);
    expect(await repo.rollback('rb', who)).toEqual({ from: '2.0.0', to: '1.1.0' });
    expect(await repo.get('rb')).toMatchObject({ version: '1.1.0', latest: true });
    expect((await repo.active()).find((p) => p.name === 'rb')?.version).toBe('1.1.0');
    expect(await repo.rollback('rb', who)).toEqual({ from: '1.1.0', to: '1.0.0' });
    const none = await failure(repo.rollback('rb', who));
    expect(none).toBeInstanceOf(PolicyRepositoryError);
    expect(none.message).toMatch(/no earlier version/);
    expect((await head('rb'))?.latest).toBe('1.0.0');
    expect(await failure(repo.rollback('no-such-policy', who))).toBeInstanceOf(PolicyNotFoundError);
    // Publishing again moves latest up from where it is now.
    expect((await repo.publish(doc('rb', '1.0.5'), who)).latest).toBe(true);
  });

  test('disable takes a policy out of active() and enable puts it back; a publish while disabled stays disabled', async () => {
    await repo.publish(doc('toggle', '1.0.0'), who);
    expect(await activeNames(() => repo.active())).toContain('toggle@1.0.0');

    await repo.disable('toggle', { actor: 'bob', reason: 'incident 7' });
    expect(await activeNames(() => repo.active())).not.toContain('toggle@1.0.0');
    expect(await head('toggle')).toMatchObject({ latest: '1.0.0', disabled_reason: 'incident 7' });
    expect((await repo.require('toggle')).disabled).toEqual({ at: expect.any(Date), reason: 'incident 7' });
    expect((await repo.list()).find((p) => p.name === 'toggle')?.disabled?.reason).toBe('incident 7');

    const twice = await failure(repo.disable('toggle', who));
    expect(twice).toBeInstanceOf(PolicyRepositoryError);
    expect(twice.message).toBe('toggle is already disabled');

    const published = await repo.publish(doc('toggle', '1.1.0'), who);
    expect(published).toMatchObject({ latest: true, disabled: { reason: 'incident 7' } });
    expect((await repo.active()).some((p) => p.name === 'toggle')).toBe(false);

    await repo.enable('toggle', { actor: 'bob', reason: 'resolved' });
    expect(await activeNames(() => repo.active())).toContain('toggle@1.1.0');
    expect((await head('toggle'))?.disabled_at).toBeNull();
    const notDisabled = await failure(repo.enable('toggle', who));
    expect(notDisabled).toBeInstanceOf(PolicyRepositoryError);
    expect(notDisabled.message).toBe('toggle is not disabled');
    expect(await failure(repo.disable('no-such-policy', who))).toBeInstanceOf(PolicyNotFoundError);
    expect(await failure(repo.enable('no-such-policy', who))).toBeInstanceOf(PolicyNotFoundError);
  });

  test('every change writes exactly one audit row (who, what, why); a refused change writes none', async () => {
    const carol = (reason: string): Actor => ({ actor: 'carol', reason });
    const published = await auditOf(() => repo.publish(doc('audited', '1.0.0'), carol('first cut')));
    expect(published).toEqual([
      expect.objectContaining({ actor: 'carol', action: 'publish', name: 'audited', version: '1.0.0', reason: 'first cut', detail: expect.objectContaining({ latest: true }) }),
    ]);
    expect(published[0]!.detail.checksum).toBe((await repo.require('audited')).checksum);
    expect(published[0]!.at).toBeInstanceOf(Date);

    const second = await auditOf(() => repo.publish(doc('audited', '1.1.0'), carol('second cut')));
    expect(second).toEqual([expect.objectContaining({ action: 'publish', version: '1.1.0', detail: expect.objectContaining({ latest: true, previous: '1.0.0' }) })]);
    expect(await auditOf(() => repo.rollback('audited', carol('1.1.0 misbehaves')))).toEqual([
      expect.objectContaining({ actor: 'carol', action: 'rollback', name: 'audited', version: '1.0.0', reason: '1.1.0 misbehaves', detail: { from: '1.1.0', to: '1.0.0' } }),
    ]);
    expect(await auditOf(() => repo.disable('audited', carol('noisy')))).toEqual([
      expect.objectContaining({ actor: 'carol', action: 'disable', name: 'audited', version: '1.0.0', reason: 'noisy' }),
    ]);
    expect(await auditOf(() => repo.enable('audited', { actor: 'carol' }))).toEqual([
      expect.objectContaining({ actor: 'carol', action: 'enable', name: 'audited', version: '1.0.0', reason: null }),
    ]);

    expect(await auditOf(() => failure(repo.publish(doc('audited', '1.0.0'), who)))).toEqual([]);
    expect(await auditOf(() => failure(repo.enable('audited', who)))).toEqual([]);
    expect(await auditOf(() => failure(repo.publish({ ...doc('audited', '2.0.0'), rules: [] }, who)))).toEqual([]);

    expect((await repo.history('audited')).map((r) => r.action)).toEqual(['publish', 'publish', 'rollback', 'disable', 'enable']);
    expect((await repo.history()).length).toBe(await count('policy_audit'));
  });

  test('the service cache sees a publish, a disable and a rollback through NOTIFY within a second; a cache that does not listen keeps its copy', async () => {
    const pool = new Pool({ connectionString: db.databaseUrl, max: 3 });
    pool.on('error', () => undefined);
    extraPools.push(pool);
    // Ten-minute TTLs: only a notification can make these caches read again in time.
    const listening = await openPolicyService({ pool, ttlMs: 600_000 });
    const deaf = new PolicyService({ pool, ttlMs: 600_000 });
    services.push(listening, deaf);

    const before = await activeNames(() => listening.active());
    expect(await activeNames(() => deaf.active())).toEqual(before);
    expect(before).not.toContain('notified@1.0.0');
    const misses = listening.stats.misses;
    await listening.active();
    expect(listening.stats.misses).toBe(misses); // served from memory

    const loadPolicies = createPolicyActivities({ policies: listening, pool: db.pool, redactor: createRedactor() }).loadPolicies;

    await repo.publish(doc('notified', '1.0.0'), who);
    const seenIn = await waitFor(async () => (await activeNames(() => listening.active())).includes('notified@1.0.0'), 1_000);
    expect(seenIn).toBeLessThan(1_000);
    expect(await activeNames(loadPolicies)).toContain('notified@1.0.0');
    expect(await activeNames(() => deaf.active())).toEqual(before); // the control

    await repo.publish(doc('notified', '1.1.0'), who);
    await waitFor(async () => (await activeNames(() => listening.active())).includes('notified@1.1.0'), 1_000);
    await repo.rollback('notified', who);
    await waitFor(async () => (await activeNames(() => listening.active())).includes('notified@1.0.0'), 1_000);
    await repo.disable('notified', { actor: 'test', reason: 'gone' });
    await waitFor(async () => !(await activeNames(() => listening.active())).some((n) => n.startsWith('notified@')), 1_000);
    expect(listening.stats.invalidations).toBeGreaterThanOrEqual(4);

    // The TTL is the fallback of a cache that is not notified.
    const shortLived = new PolicyService({ pool, ttlMs: 100 });
    services.push(shortLived);
    expect(await activeNames(() => shortLived.active())).not.toContain('late@1.0.0');
    await repo.publish(doc('late', '1.0.0'), who);
    await new Promise((r) => setTimeout(r, 150));
    expect(await activeNames(() => shortLived.active())).toContain('late@1.0.0');

    // Closing releases the listener connection (once): closing again is harmless.
    await listening.close();
    await listening.close();
    expect(pool.totalCount - pool.idleCount).toBe(0);
  });

  test('concurrent reads share one query, and a read that started before an invalidation is not cached', async () => {
    const pool = new Pool({ connectionString: db.databaseUrl, max: 3 });
    pool.on('error', () => undefined);
    extraPools.push(pool);
    const service = new PolicyService({ pool, ttlMs: 600_000 });
    services.push(service);
    const [a, b, c] = await Promise.all([service.active(), service.active(), service.active()]);
    expect(service.stats.misses).toBe(1);
    expect(b).toBe(a);
    expect(c).toBe(a);

    service.invalidate();
    const during = service.active();
    service.invalidate(); // a change notified while the read is in flight
    await during;
    await service.active();
    expect(service.stats.misses).toBe(3);
  });

  test('a row whose content does not match its checksum or its name is never used', async () => {
    const document = parsePolicyDocument(doc('forged', '1.0.0', [rule('allow-all', {}, 'allow')]));
    await db.pool.query(`INSERT INTO policy_versions (name, version, schema_version, checksum, document, published_by) VALUES ('forged', '1.0.0', 1, $1, $2, 'mallory')`, [
      'f'.repeat(64),
      JSON.stringify(document),
    ]);
    await db.pool.query(`INSERT INTO policy_heads (name, latest) VALUES ('forged', '1.0.0')`);
    const err = await failure(repo.get('forged'));
    expect(err).toBeInstanceOf(PolicyIntegrityError);
    expect(err).toBeInstanceOf(PolicyRepositoryError);
    expect(err.message).toMatch(/forged@1.0.0 fails its integrity check/);
    expect(await failure(repo.active())).toBeInstanceOf(PolicyIntegrityError);

    const renamed = parsePolicyDocument(doc('other', '1.0.0'));
    await db.pool.query(`INSERT INTO policy_versions (name, version, schema_version, checksum, document, published_by) VALUES ('forged', '1.0.1', 1, $1, $2, 'mallory')`, [
      policyChecksum(renamed),
      JSON.stringify(renamed),
    ]);
    expect((await failure(repo.get('forged', '1.0.1'))).message).toMatch(/names another policy/);
    // A disabled policy is not read for active(), so the others stay usable.
    await db.pool.query(`UPDATE policy_heads SET disabled_at = now(), disabled_reason = 'forged' WHERE name = 'forged'`);
    expect(await activeNames(() => repo.active())).toContain('default@1.0.0');
  });
});
