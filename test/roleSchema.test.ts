import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import semver from 'semver';
import { availability, routeSubtask } from '../activities/roles/router';
import { type ParentLookup, parseRoleSource, resolveRoleProfile, roleChecksum, RoleValidationError, splitRoleRef } from '../validation/roleProfile';
import {
  BUILTIN_TOOLS,
  ROLE_DEFAULTS,
  ROLE_SCHEMA_VERSION,
  type RoleProfile,
  type RoleProfileSource,
  SYSTEM_PROMPT_MAX_BYTES,
  type ToolCall,
  type ToolGrant,
} from '../validation';
import { BUILTIN_TOOL_ACCESS } from '../core/constants';
import { checkToolCall, toolGrants } from '../core/permissions';

type Candidate = Parameters<typeof routeSubtask>[0]['candidates'][number];
type Stage = 'parse' | 'resolve';
type LookupMock = jest.Mock<ReturnType<ParentLookup>, Parameters<ParentLookup>>;

const noParent: ParentLookup = () => Promise.resolve(undefined);

/** A fresh, complete profile without `extends`; tests spread their changes over it. */
function valid() {
  return {
    schemaVersion: 1,
    name: 'writer',
    version: '1.0.0',
    description: 'Writes documents.',
    systemPrompt: 'You are a technical writer.',
    toneGuide: 'Plain.',
    constraints: ['Write Markdown.'],
    tools: [
      { tool: 'workspace.read', access: 'read' },
      { tool: 'workspace.write', access: 'write' },
    ],
    confidenceThreshold: 0.7,
    modelPreference: 'openai:gpt-4o-mini',
    maxIterations: 8,
    tokenBudget: { context: 8000, total: 100_000 },
    escalateTo: 'human',
    handles: ['write*'],
  };
}

const withFields = (fields: Record<string, unknown>): Record<string, unknown> => ({ ...valid(), ...fields });

function without(...keys: string[]): Record<string, unknown> {
  const profile: Record<string, unknown> = valid();
  for (const key of keys) delete profile[key];
  return profile;
}

const grant = (g: Record<string, unknown>) => withFields({ tools: [g] });
const pathLimit = (limit: unknown) => grant({ tool: 'workspace.read', access: 'read', args: { path: limit } });

/** Parses, then resolves without a parent; reports which step rejected the profile. */
async function rejection(input: unknown): Promise<{ stage: Stage; error: RoleValidationError }> {
  let source: RoleProfileSource;
  try {
    source = parseRoleSource(input);
  } catch (error) {
    expect(error).toBeInstanceOf(RoleValidationError);
    return { stage: 'parse', error: error as RoleValidationError };
  }
  try {
    await resolveRoleProfile(source, noParent);
  } catch (error) {
    expect(error).toBeInstanceOf(RoleValidationError);
    return { stage: 'resolve', error: error as RoleValidationError };
  }
  throw new Error(`profile was accepted: ${JSON.stringify(input)}`);
}

async function expectField(input: unknown, field: string, messagePart?: string, stage: Stage = 'parse'): Promise<void> {
  const { stage: rejectedAt, error } = await rejection(input);
  expect(error.problems.map((p) => p.field)).toContain(field);
  if (messagePart !== undefined) {
    const messages = error.problems.filter((p) => p.field === field).map((p) => p.message);
    expect(messages.join('\n')).toContain(messagePart);
  }
  expect(rejectedAt).toBe(stage);
}

const SEMVER = 'must be a semantic version';
const NAME = 'must be lower-case letters';
const WILDCARD = 'wildcard tool grants are not allowed';
const TOOL_NAME = 'must be an exact "server.tool" name';
const ACCESS = 'must be "read" or "write"';
const BETWEEN = 'must be between 0 and 1';
const EXTENDS = 'must be a role name, optionally with @version or @range';
const TOO_BIG = `must be at most ${SYSTEM_PROMPT_MAX_BYTES} bytes`;

describe('malformed profiles', () => {
  const cases: [string, unknown, string, string | undefined, Stage?][] = [
    ['an unknown top-level field', withFields({ owner: 'me' }), 'owner', 'unknown field'],
    ['an unknown field in a tool grant', grant({ tool: 'workspace.read', access: 'read', scope: 'all' }), 'tools[0].scope', 'unknown field'],
    ['an unknown field in tokenBudget', withFields({ tokenBudget: { context: 8000, output: 10 } }), 'tokenBudget.output', 'unknown field'],
    ['an unknown field in an argument constraint', pathLimit({ globs: ['docs/**'], regex: '.*' }), 'tools[0].args.path.regex', 'unknown field'],

    ['version "1"', withFields({ version: '1' }), 'version', SEMVER],
    ['version "1.0"', withFields({ version: '1.0' }), 'version', SEMVER],
    ['version "v1.0.0"', withFields({ version: 'v1.0.0' }), 'version', SEMVER],
    ['version "=1.0.0"', withFields({ version: '=1.0.0' }), 'version', SEMVER],
    ['version " 1.0.0"', withFields({ version: ' 1.0.0' }), 'version', SEMVER],
    ['version "1.0.0.0"', withFields({ version: '1.0.0.0' }), 'version', SEMVER],
    ['version "01.0.0"', withFields({ version: '01.0.0' }), 'version', SEMVER],
    ['version "1.0.0+build"', withFields({ version: '1.0.0+build' }), 'version', SEMVER],
    ['version "1.0.0-"', withFields({ version: '1.0.0-' }), 'version', SEMVER],
    ['version ""', withFields({ version: '' }), 'version', SEMVER],
    ['version "latest"', withFields({ version: 'latest' }), 'version', SEMVER],
    ['version 1 (a number)', withFields({ version: 1 }), 'version', 'expected string'],
    ['no version', without('version'), 'version', 'is required'],
    ['no name', without('name'), 'name', 'is required'],

    ['an upper-case name', withFields({ name: 'Writer' }), 'name', NAME],
    ['a name with a leading digit', withFields({ name: '1writer' }), 'name', NAME],
    ['a name with a leading dash', withFields({ name: '-writer' }), 'name', NAME],
    ['a name with a space', withFields({ name: 'tech writer' }), 'name', NAME],
    ['a name with an underscore', withFields({ name: 'tech_writer' }), 'name', NAME],
    ['a name of 65 characters', withFields({ name: 'a'.repeat(65) }), 'name', NAME],
    ['an empty name', withFields({ name: '' }), 'name', NAME],

    ['tool grant "*"', grant({ tool: '*', access: 'read' }), 'tools[0].tool', WILDCARD],
    ['tool grant "workspace.*"', grant({ tool: 'workspace.*', access: 'read' }), 'tools[0].tool', WILDCARD],
    ['tool grant "*.read"', grant({ tool: '*.read', access: 'read' }), 'tools[0].tool', WILDCARD],
    ['tool grant "work?pace.read"', grant({ tool: 'work?pace.read', access: 'read' }), 'tools[0].tool', WILDCARD],
    ['tool "read" (no server)', grant({ tool: 'read', access: 'read' }), 'tools[0].tool', TOOL_NAME],
    ['tool "workspace." (no tool)', grant({ tool: 'workspace.', access: 'read' }), 'tools[0].tool', TOOL_NAME],
    ['tool ".read" (no server)', grant({ tool: '.read', access: 'read' }), 'tools[0].tool', TOOL_NAME],
    ['tool "Workspace.read" (upper-case server)', grant({ tool: 'Workspace.read', access: 'read' }), 'tools[0].tool', TOOL_NAME],
    ['access "admin"', grant({ tool: 'workspace.read', access: 'admin' }), 'tools[0].access', ACCESS],
    ['access "READ"', grant({ tool: 'workspace.read', access: 'READ' }), 'tools[0].access', ACCESS],
    ['no access', grant({ tool: 'workspace.read' }), 'tools[0].access', ACCESS],
    [
      'workspace.write granted with access "read"',
      withFields({ tools: [{ tool: 'workspace.read', access: 'read' }, { tool: 'workspace.write', access: 'read' }] }),
      'tools[1].access',
      'can only be granted with access "write"',
    ],
    [
      'a tool granted twice',
      withFields({ tools: [{ tool: 'workspace.read', access: 'read' }, { tool: 'workspace.read', access: 'write' }] }),
      'tools[1].tool',
      'workspace.read is granted twice',
    ],
    ['tools not an array', withFields({ tools: 'workspace.read' }), 'tools', 'expected array'],

    ['an argument constraint with neither globs nor maxLength', pathLimit({}), 'tools[0].args.path', 'needs globs or maxLength'],
    ['an empty globs array', pathLimit({ globs: [] }), 'tools[0].args.path.globs', undefined],
    ['an empty glob', pathLimit({ globs: [''] }), 'tools[0].args.path.globs[0]', undefined],
    ['maxLength 0', pathLimit({ maxLength: 0 }), 'tools[0].args.path.maxLength', undefined],
    ['maxLength -5', pathLimit({ maxLength: -5 }), 'tools[0].args.path.maxLength', undefined],
    ['maxLength 2.5', pathLimit({ maxLength: 2.5 }), 'tools[0].args.path.maxLength', undefined],
    ['an argument name that is not an identifier', grant({ tool: 'workspace.read', access: 'read', args: { 'a-b': { maxLength: 3 } } }), 'tools[0].args.a-b', undefined],

    ['a system prompt of 32 KB + 1 byte', withFields({ systemPrompt: 'a'.repeat(SYSTEM_PROMPT_MAX_BYTES + 1) }), 'systemPrompt', TOO_BIG],
    // 10 923 characters, but 32 769 bytes of UTF-8: the limit is on bytes, not characters.
    ['a multi-byte system prompt over 32 KB', withFields({ systemPrompt: '€'.repeat(10_923) }), 'systemPrompt', TOO_BIG],
    ['an empty system prompt', withFields({ systemPrompt: '' }), 'systemPrompt', undefined],
    ['an empty description', withFields({ description: '' }), 'description', undefined],
    ['a tone guide over 4000 characters', withFields({ toneGuide: 'x'.repeat(4001) }), 'toneGuide', undefined],

    ['confidenceThreshold -0.01', withFields({ confidenceThreshold: -0.01 }), 'confidenceThreshold', BETWEEN],
    ['confidenceThreshold 1.01', withFields({ confidenceThreshold: 1.01 }), 'confidenceThreshold', BETWEEN],
    ['confidenceThreshold "0.5"', withFields({ confidenceThreshold: '0.5' }), 'confidenceThreshold', 'expected number'],
    ['confidenceThreshold NaN', withFields({ confidenceThreshold: NaN }), 'confidenceThreshold', undefined],
    ['maxIterations 0', withFields({ maxIterations: 0 }), 'maxIterations', undefined],
    ['maxIterations 65', withFields({ maxIterations: 65 }), 'maxIterations', undefined],
    ['maxIterations 1.5', withFields({ maxIterations: 1.5 }), 'maxIterations', undefined],
    ['tokenBudget.context 255', withFields({ tokenBudget: { context: 255 } }), 'tokenBudget.context', undefined],
    ['tokenBudget.context over a million', withFields({ tokenBudget: { context: 1_000_001 } }), 'tokenBudget.context', undefined],
    ['tokenBudget.total 0', withFields({ tokenBudget: { context: 8000, total: 0 } }), 'tokenBudget.total', undefined],
    ['tokenBudget without context', withFields({ tokenBudget: { total: 1000 } }), 'tokenBudget.context', 'is required'],

    ['escalateTo an invalid name', withFields({ escalateTo: 'Senior Writer' }), 'escalateTo', NAME],
    ['escalateTo its own name', withFields({ escalateTo: 'writer' }), 'escalateTo', 'cannot escalate to itself', 'resolve'],

    ['handles not an array', withFields({ handles: 'write*' }), 'handles', 'expected array'],
    ['an empty handles pattern', withFields({ handles: ['write*', ''] }), 'handles[1]', undefined],
    ['an empty constraint', withFields({ constraints: ['Write Markdown.', ''] }), 'constraints[1]', undefined],
    ['constraints not an array', withFields({ constraints: 'Write Markdown.' }), 'constraints', 'expected array'],

    ['schemaVersion 2', withFields({ schemaVersion: 2 }), 'schemaVersion', `reads schemaVersion ${ROLE_SCHEMA_VERSION}`],
    ['schemaVersion "1" (a string)', withFields({ schemaVersion: '1' }), 'schemaVersion', 'unsupported schema version'],
    ['modelPreference without a colon', withFields({ modelPreference: 'gpt-4o-mini' }), 'modelPreference', 'provider:model'],
    ['extends an upper-case name', withFields({ extends: 'Base' }), 'extends', EXTENDS],
    ['extends with an empty version', withFields({ extends: 'base@' }), 'extends', EXTENDS],
    ['extends with two @', withFields({ extends: 'base@1@2' }), 'extends', EXTENDS],
    ['extends with a space', withFields({ extends: 'base @1.0.0' }), 'extends', EXTENDS],
    ['extends ""', withFields({ extends: '' }), 'extends', EXTENDS],

    ['a null profile', null, '(profile)', 'expected object'],
    ['an array profile', [valid()], '(profile)', 'expected object'],
    ['a string profile', JSON.stringify(valid()), '(profile)', 'expected object'],
    ['a number profile', 42, '(profile)', 'expected object'],

    ['no systemPrompt and no extends', without('systemPrompt'), 'systemPrompt', 'required', 'resolve'],
    ['no description and no extends', without('description'), 'description', 'is required', 'resolve'],
  ];

  test('the table has at least 50 distinct cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(50);
    expect(new Set(cases.map(([name]) => name)).size).toBe(cases.length);
  });

  // Every row gets all five values: given a row shorter than its callback's parameter list, jest
  // passes `done` as the last argument and waits for it to be called.
  const rows = cases.map(([name, input, field, messagePart, stage]): [string, unknown, string, string | undefined, Stage] => [name, input, field, messagePart, stage ?? 'parse']);

  test.each(rows)('rejects %s', async (_name, input, field, messagePart, stage) => {
    await expectField(input, field, messagePart, stage);
  });

  test('names every offending field, not only the first', async () => {
    const { error } = await rejection(withFields({ owner: 'me', version: '1.0', maxIterations: 0, tools: [{ tool: '*', access: 'read' }] }));
    expect(error.problems.map((p) => p.field).sort()).toEqual(['maxIterations', 'owner', 'tools[0].tool', 'version']);
    expect(error.role).toBe('writer@1.0');
  });

  test.each([
    ['a system prompt of exactly 32 KB', { systemPrompt: 'a'.repeat(SYSTEM_PROMPT_MAX_BYTES) }],
    ['a multi-byte system prompt of exactly 32 KB', { systemPrompt: `${'€'.repeat(10_922)}ab` }],
    ['a name of 64 characters', { name: `a${'-'.repeat(62)}z` }],
    ['confidenceThreshold 0', { confidenceThreshold: 0 }],
    ['confidenceThreshold 1', { confidenceThreshold: 1 }],
    ['maxIterations 1', { maxIterations: 1 }],
    ['maxIterations 64', { maxIterations: 64 }],
    ['tokenBudget.context 256 without total', { tokenBudget: { context: 256 } }],
    ['a pre-release version', { version: '2.0.0-rc.1' }],
    ['an argument constraint with globs and maxLength', { tools: [{ tool: 'workspace.read', access: 'read', args: { path: { globs: ['docs/**'], maxLength: 200 } } }] }],
    ['extends with a range', { extends: 'base@^1.2.0' }],
    ['no tools at all', { tools: [] }],
    ['a tool outside the catalogue granted read', { tools: [{ tool: 'github.searchIssues', access: 'read' }] }],
  ])('accepts %s', (_name, fields) => {
    expect(parseRoleSource(withFields(fields))).toEqual(withFields(fields));
  });

  test.each([
    ['undefined', undefined],
    ['null', null],
    ['a string', 'writer'],
  ])('names the profile itself when the input is %s', async (_name, input) => {
    const { stage, error } = await rejection(input);
    expect(stage).toBe('parse');
    expect(error.problems.map((p) => p.field)).toEqual(['(profile)']);
  });

  test('the 32 KB limit is the documented one', () => {
    expect(SYSTEM_PROMPT_MAX_BYTES).toBe(32 * 1024);
  });
});

describe('the example profiles in reps/', () => {
  const repsDir = path.join(__dirname, '..', 'reps');
  const files = fs
    .readdirSync(repsDir, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => path.join(repsDir, entry.name, '1.0.0', 'profile.json'))
    .filter((file) => fs.existsSync(file));

  test('there are some', () => {
    expect(files.length).toBeGreaterThanOrEqual(3);
  });

  test.each(files.map((file) => [path.relative(repsDir, file), file]))('%s parses and resolves to its content plus defaults', async (_name, file) => {
    const content = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    const resolved = await resolveRoleProfile(parseRoleSource(content), noParent);
    expect(resolved).toEqual({ ...ROLE_DEFAULTS, ...content });
  });
});

describe('resolveRoleProfile', () => {
  const parent: RoleProfile = {
    schemaVersion: 1,
    name: 'base',
    version: '1.2.0',
    description: 'The base role.',
    systemPrompt: 'You are the base.',
    toneGuide: 'Base tone.',
    constraints: ['Base rule one.', 'Base rule two.'],
    tools: [
      { tool: 'workspace.read', access: 'read' },
      { tool: 'workspace.write', access: 'write' },
    ],
    confidenceThreshold: 0.9,
    modelPreference: 'openai:gpt-4o',
    maxIterations: 12,
    tokenBudget: { context: 4000, total: 50_000 },
    escalateTo: 'human',
    handles: ['base*'],
  };

  function lookupOf(...profiles: RoleProfile[]): LookupMock {
    return jest.fn<ReturnType<ParentLookup>, Parameters<ParentLookup>>((name, spec) =>
      Promise.resolve(profiles.find((p) => p.name === name && (spec === undefined || semver.satisfies(p.version, spec)))),
    );
  }

  test('a profile without extends gets the defaults for every field it leaves out', async () => {
    const minimal = { name: 'tiny', version: '0.1.0', description: 'Tiny.', systemPrompt: 'Be tiny.' };
    const resolved = await resolveRoleProfile(parseRoleSource(minimal), noParent);
    expect(resolved).toEqual({ ...ROLE_DEFAULTS, ...minimal });
    expect(resolved).not.toHaveProperty('extends');
  });

  test('a child inherits what it does not set, overrides what it sets, and replaces arrays', async () => {
    const lookup = lookupOf(parent);
    const child = parseRoleSource({
      name: 'child',
      version: '1.0.0',
      extends: 'base',
      systemPrompt: 'You are the child.',
      confidenceThreshold: 0.5,
      constraints: ['Child rule.'],
      tools: [{ tool: 'workspace.read', access: 'read' }],
      handles: [],
    });
    const resolved = await resolveRoleProfile(child, lookup);
    expect(resolved).toEqual({
      schemaVersion: 1,
      name: 'child',
      version: '1.0.0',
      extends: 'base@1.2.0',
      description: 'The base role.',
      systemPrompt: 'You are the child.',
      toneGuide: 'Base tone.',
      constraints: ['Child rule.'],
      tools: [{ tool: 'workspace.read', access: 'read' }],
      confidenceThreshold: 0.5,
      modelPreference: 'openai:gpt-4o',
      maxIterations: 12,
      tokenBudget: { context: 4000, total: 50_000 },
      escalateTo: 'human',
      handles: [],
    });
    expect(lookup).toHaveBeenCalledWith('base', undefined, ['child@1.0.0']);
  });

  test('the resolved extends names the exact parent version, not the range asked for', async () => {
    const lookup = lookupOf(parent);
    const resolved = await resolveRoleProfile(parseRoleSource({ name: 'child', version: '1.0.0', extends: 'base@^1.0.0' }), lookup);
    expect(lookup).toHaveBeenCalledWith('base', '^1.0.0', ['child@1.0.0']);
    expect(resolved.extends).toBe('base@1.2.0');
  });

  test('the parent own extends is not inherited', async () => {
    const root: RoleProfile = { ...parent, name: 'root', version: '3.0.0' };
    const resolved = await resolveRoleProfile(
      parseRoleSource({ name: 'child', version: '1.0.0', extends: 'base' }),
      lookupOf({ ...parent, extends: 'root@3.0.0' }, root),
    );
    expect(resolved.extends).toBe('base@1.2.0');
  });

  test('an inherited escalateTo naming the child is rejected', async () => {
    const source = parseRoleSource({ name: 'child', version: '1.0.0', extends: 'base' });
    await expect(resolveRoleProfile(source, lookupOf({ ...parent, escalateTo: 'child' }))).rejects.toMatchObject({
      problems: [{ field: 'escalateTo', message: 'a role cannot escalate to itself' }],
    });
  });

  test('a base profile without extends missing systemPrompt: field systemPrompt is required', async () => {
    await expectField(without('systemPrompt'), 'systemPrompt', 'required', 'resolve');
  });

  test('a missing parent is rejected on extends', async () => {
    const source = parseRoleSource({ name: 'child', version: '1.0.0', extends: 'ghost@^2.0.0' });
    const error = await resolveRoleProfile(source, lookupOf(parent)).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(RoleValidationError);
    const problems = (error as RoleValidationError).problems;
    expect(problems.map((p) => p.field)).toEqual(['extends']);
    expect(problems[0]?.message).toContain('does not exist');
    expect(problems[0]?.message).toContain('"ghost@^2.0.0"');
  });

  /** A repository of sources whose lookup resolves parents on the fly, passing the chain through. */
  function recursive(sources: Record<string, unknown>): LookupMock {
    const lookup = jest.fn(async (name: string, _spec: string | undefined, chain: string[]): Promise<RoleProfile | undefined> => {
      const source = sources[name];
      return source === undefined ? undefined : resolveRoleProfile(parseRoleSource(source), lookup, chain);
    });
    return lookup;
  }

  async function cycleMessage(start: Record<string, unknown>, lookup: ParentLookup): Promise<string> {
    const error = await resolveRoleProfile(parseRoleSource(start), lookup).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(RoleValidationError);
    const problems = (error as RoleValidationError).problems;
    expect(problems.map((p) => p.field)).toEqual(['extends']);
    return problems[0]?.message ?? '';
  }

  // Cycles are by name@version: a version may extend an earlier version of the same role.
  test('a cycle a → b → a is rejected, naming the chain', async () => {
    const a = withFields({ name: 'a', extends: 'b' });
    const b = withFields({ name: 'b', extends: 'a' });
    const message = await cycleMessage(a, recursive({ a, b }));
    expect(message).toContain('inheritance cycle');
    expect(message).toContain('a@1.0.0 → b@1.0.0 → a@1.0.0');
  });

  test('a longer cycle a → b → c → a is rejected', async () => {
    const a = withFields({ name: 'a', extends: 'b' });
    const b = withFields({ name: 'b', extends: 'c' });
    const c = withFields({ name: 'c', extends: 'a' });
    expect(await cycleMessage(a, recursive({ a, b, c }))).toContain('a@1.0.0 → b@1.0.0 → c@1.0.0 → a@1.0.0');
  });

  test('a version extending itself is rejected', async () => {
    const a = withFields({ name: 'a', extends: 'a@1.0.0' });
    expect(await cycleMessage(a, recursive({ a }))).toContain('a@1.0.0 → a@1.0.0');
  });

  const storedA1: RoleProfile = { ...parent, name: 'a', version: '1.0.0' };

  test('a version may extend an earlier version of the same role', async () => {
    const resolved = await resolveRoleProfile(parseRoleSource({ name: 'a', version: '2.0.0', extends: 'a@1.0.0' }), lookupOf(storedA1));
    expect(resolved).toMatchObject({ name: 'a', version: '2.0.0', extends: 'a@1.0.0', systemPrompt: parent.systemPrompt });
  });

  test('a stored parent whose ancestry leads back to the version being resolved is rejected', async () => {
    // b@1.0.0 was stored extending a@1.0.0; a@1.0.0 resolved again on top of b closes a loop.
    const storedB: RoleProfile = { ...parent, name: 'b', version: '1.0.0', extends: 'a@1.0.0' };
    const message = await cycleMessage(withFields({ name: 'a', version: '1.0.0', extends: 'b' }), lookupOf(storedB, storedA1));
    expect(message).toContain('inheritance cycle');
    expect(message).toContain('a@1.0.0 → b@1.0.0 → a@1.0.0');
  });

  test('a stored parent whose ancestry holds an earlier version of the same role is accepted', async () => {
    const storedB: RoleProfile = { ...parent, name: 'b', version: '1.0.0', extends: 'a@1.0.0' };
    const resolved = await resolveRoleProfile(parseRoleSource(withFields({ name: 'a', version: '2.0.0', extends: 'b' })), lookupOf(storedB, storedA1));
    expect(resolved.extends).toBe('b@1.0.0');
  });

  test('a chain without a cycle resolves through every level', async () => {
    const root = without('extends');
    const mid = { name: 'mid', version: '1.0.0', extends: 'writer', toneGuide: 'Mid tone.' };
    const leaf = { name: 'leaf', version: '1.0.0', extends: 'mid', maxIterations: 3 };
    const resolved = await resolveRoleProfile(parseRoleSource(leaf), recursive({ writer: root, mid }));
    expect(resolved).toMatchObject({ name: 'leaf', extends: 'mid@1.0.0', toneGuide: 'Mid tone.', maxIterations: 3, systemPrompt: valid().systemPrompt });
  });

  test('splitRoleRef splits name and range', () => {
    expect(splitRoleRef('base')).toEqual({ name: 'base', spec: undefined });
    expect(splitRoleRef('base@^1.0.0')).toEqual({ name: 'base', spec: '^1.0.0' });
  });
});

describe('roleChecksum', () => {
  const source = (): RoleProfileSource => parseRoleSource(valid());

  test('is 64 hex characters', () => {
    expect(roleChecksum(source())).toMatch(/^[0-9a-f]{64}$/);
  });

  test('is the sha256 of the canonical JSON', () => {
    const tiny = { version: '1.0.0', name: 'a' } as RoleProfileSource;
    expect(roleChecksum(tiny)).toBe(createHash('sha256').update('{"name":"a","version":"1.0.0"}').digest('hex'));
  });

  test('does not depend on key order, at any depth', () => {
    const original = valid();
    const reordered = Object.fromEntries(Object.entries(original).reverse()) as typeof original;
    reordered.tools = original.tools.map((g) => ({ access: g.access, tool: g.tool }));
    reordered.tokenBudget = { total: original.tokenBudget.total, context: original.tokenBudget.context };
    expect(JSON.stringify(reordered)).not.toBe(JSON.stringify(original));
    expect(roleChecksum(parseRoleSource(reordered))).toBe(roleChecksum(source()));
  });

  test.each([
    ['version', { version: '1.0.1' }],
    ['description', { description: 'Writes documents!' }],
    ['systemPrompt (one trailing space)', { systemPrompt: 'You are a technical writer. ' }],
    ['confidenceThreshold', { confidenceThreshold: 0.71 }],
    ['a tool access', { tools: [{ tool: 'workspace.read', access: 'write' }, { tool: 'workspace.write', access: 'write' }] }],
    ['the order of tools', { tools: [{ tool: 'workspace.write', access: 'write' }, { tool: 'workspace.read', access: 'read' }] }],
    ['tokenBudget.total', { tokenBudget: { context: 8000, total: 100_001 } }],
    ['an added handles pattern', { handles: ['write*', 'draft*'] }],
    ['an added extends', { extends: 'base' }],
  ])('changes when %s changes', (_name, change) => {
    expect(roleChecksum(parseRoleSource(withFields(change)))).not.toBe(roleChecksum(source()));
  });
});

describe('routeSubtask', () => {
  const candidate = (name: string, fields: Partial<Candidate> = {}): Candidate => ({
    name,
    version: '1.0.0',
    description: `${name} role`,
    tools: [],
    handles: [],
    deprecated: false,
    suspended: false,
    ...fields,
  });
  const candidates = [candidate('generalist'), candidate('writer', { handles: ['write*', '*document*'] }), candidate('reviewer', { handles: ['review*'] })];

  test('uses the planner suggestion when it is available', () => {
    expect(routeSubtask({ requested: 'writer', title: 'Review the docs', candidates })).toEqual({ name: 'writer', routedBy: 'planner' });
  });

  test('routes an unknown role by a handles pattern, case-insensitively', () => {
    const route = routeSubtask({ requested: 'editor', title: 'REVIEW the README', candidates });
    expect(route.name).toBe('reviewer');
    expect(route.routedBy).toBe('handles');
    expect(route.reason).toContain('role "editor" does not exist');
    expect(route.reason).toContain('"review*"');
  });

  test('matches an upper-case pattern against a lower-case title', () => {
    const route = routeSubtask({ requested: 'editor', title: 'proofread it', candidates: [candidate('proofer', { handles: ['PROOF*'] })] });
    expect(route).toMatchObject({ name: 'proofer', routedBy: 'handles' });
  });

  test('a pattern matches a title that starts with a dot', () => {
    const route = routeSubtask({ requested: 'editor', title: '.github workflow review', candidates: [candidate('ci', { handles: ['*workflow*'] })] });
    expect(route).toMatchObject({ name: 'ci', routedBy: 'handles' });
  });

  test('falls back to the generalist when nothing matches', () => {
    const route = routeSubtask({ requested: 'poet', title: 'Compose a sonnet', candidates });
    expect(route.name).toBe('generalist');
    expect(route.routedBy).toBe('default');
    expect(route.reason).toContain('role "poet" does not exist');
  });

  test.each([
    ['deprecated', { deprecated: true }],
    ['suspended', { suspended: true }],
  ])('does not use a %s planner suggestion, even when its own handles match', (why, fields) => {
    const route = routeSubtask({ requested: 'writer', title: 'Write the guide', candidates: [candidate('generalist'), candidate('writer', { handles: ['write*'], ...fields })] });
    expect(route.name).toBe('generalist');
    expect(route.routedBy).toBe('default');
    expect(route.reason).toContain(`role "writer@1.0.0" is ${why}`);
  });

  test.each([
    ['deprecated', { deprecated: true }],
    ['suspended', { suspended: true }],
    ['unreadable', { unreadable: 'integrity check failed' }],
  ])('never routes by handles to a %s candidate', (_why, fields) => {
    const route = routeSubtask({
      requested: 'poet',
      title: 'Review the README',
      candidates: [candidate('generalist'), candidate('auditor', { handles: ['review*'], ...fields }), candidate('reviewer', { handles: ['review*'] })],
    });
    expect(route).toMatchObject({ name: 'reviewer', routedBy: 'handles' });
  });

  test('tries candidates in name order, whatever order they come in', () => {
    const pool = [candidate('zeta', { handles: ['*'] }), candidate('gamma', { handles: ['check*'] }), candidate('beta', { handles: ['check*'] }), candidate('alpha', { handles: ['nope'] })];
    expect(routeSubtask({ requested: 'poet', title: 'check links', candidates: pool }).name).toBe('beta');
    expect(routeSubtask({ requested: 'poet', title: 'check links', candidates: [...pool].reverse() }).name).toBe('beta');
  });

  test('availability says why a candidate cannot take work', () => {
    expect(availability(undefined)).toBe('unknown');
    expect(availability(candidate('a'))).toBeUndefined();
    expect(availability(candidate('a', { deprecated: true }))).toBe('deprecated');
    expect(availability(candidate('a', { suspended: true, deprecated: true }))).toBe('suspended');
  });
});

describe('checkToolCall', () => {
  // Built as a literal, not parsed: the mediation must hold even for a profile zod would reject.
  const role = (tools: ToolGrant[]): RoleProfile => ({
    schemaVersion: 1,
    name: 'tester',
    version: '1.0.0',
    description: 'Tests.',
    systemPrompt: 'Test.',
    toneGuide: '',
    constraints: [],
    tools,
    confidenceThreshold: 0.7,
    maxIterations: 8,
    tokenBudget: { context: 8000 },
    handles: [],
  });
  const call = (name: string, args: Record<string, unknown> = {}): ToolCall => ({ id: 'call-1', name, args });
  const reasonOf = (permission: ReturnType<typeof checkToolCall>): string => (permission.allowed ? '' : permission.reason);

  test('denies a tool the role is not granted, naming it', () => {
    const permission = checkToolCall(role([{ tool: 'workspace.read', access: 'read' }]), call('workspace.write', { path: 'a.md', content: 'x' }));
    expect(permission.allowed).toBe(false);
    expect(reasonOf(permission)).toContain('"workspace.write"');
    expect(reasonOf(permission)).toContain('"tester"');
  });

  test('denies a write tool granted with read access', () => {
    const permission = checkToolCall(role([{ tool: 'workspace.write', access: 'read' }]), call('workspace.write', { path: 'a.md', content: 'x' }));
    expect(permission.allowed).toBe(false);
    expect(reasonOf(permission)).toContain('only read access');
  });

  test('treats a tool outside the catalogue as writing', () => {
    const permission = checkToolCall(role([{ tool: 'github.createIssue', access: 'read' }]), call('github.createIssue', { title: 'x' }));
    expect(permission.allowed).toBe(false);
  });

  test('allows a read tool granted with write access, returning the grant', () => {
    const g: ToolGrant = { tool: 'workspace.read', access: 'write' };
    expect(checkToolCall(role([g]), call('workspace.read', { path: 'a.md' }))).toEqual({ allowed: true, grant: g });
  });

  describe('a path glob constraint', () => {
    const docsOnly = role([{ tool: 'workspace.read', access: 'read', args: { path: { globs: ['docs/**'] } } }]);

    test.each(['docs/a.md', 'docs/x/y.md'])('allows %s', (p) => {
      expect(checkToolCall(docsOnly, call('workspace.read', { path: p })).allowed).toBe(true);
    });

    test.each(['src/a.md', 'docs/../secret.md', 'docs/x/../../secret.md', './docs/a.md', '/docs/a.md', 'docs//a.md'])('denies %s', (p) => {
      const permission = checkToolCall(docsOnly, call('workspace.read', { path: p }));
      expect(permission.allowed).toBe(false);
      expect(reasonOf(permission)).toContain('outside docs/**');
    });

    test('denies a call that leaves the constrained argument out', () => {
      const listDocs = role([{ tool: 'workspace.list', access: 'read', args: { path: { globs: ['docs/**'] } } }]);
      expect(checkToolCall(listDocs, call('workspace.list')).allowed).toBe(false);
    });
  });

  test('a maxLength constraint denies a longer argument', () => {
    const short = role([{ tool: 'workspace.write', access: 'write', args: { content: { maxLength: 10 } } }]);
    expect(checkToolCall(short, call('workspace.write', { path: 'a.md', content: 'x'.repeat(10) })).allowed).toBe(true);
    const permission = checkToolCall(short, call('workspace.write', { path: 'a.md', content: 'x'.repeat(11) }));
    expect(permission.allowed).toBe(false);
    expect(reasonOf(permission)).toContain('longer than the 10 characters');
  });

  test('toolGrants gives legacy bare-name grants the access their tool needs', () => {
    const legacy = { ...role([]), tools: ['workspace.read', 'workspace.write', 'github.search'] } as unknown as RoleProfile;
    expect(toolGrants(legacy)).toEqual([
      { tool: 'workspace.read', access: 'read' },
      { tool: 'workspace.write', access: 'write' },
      { tool: 'github.search', access: 'write' },
    ]);
    expect(checkToolCall(legacy, call('workspace.write', { path: 'a.md', content: 'x' })).allowed).toBe(true);
  });
});

describe('BUILTIN_TOOL_ACCESS', () => {
  test('lists exactly the built-in tools', () => {
    expect(Object.keys(BUILTIN_TOOL_ACCESS).sort()).toEqual(BUILTIN_TOOLS.map((t) => t.name).sort());
  });

  test.each(BUILTIN_TOOLS.map((t) => [t.name, t.sideEffect]))('%s is "write" exactly when it has a side effect', (name, sideEffect) => {
    expect(BUILTIN_TOOL_ACCESS[name]).toBe(sideEffect ? 'write' : 'read');
  });
});
