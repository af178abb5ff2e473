import { createHash } from 'node:crypto';
import { ROLE_DEFAULTS, RoleProfile } from '../validation';
import { buildAgentContext, estimateTokens, SYSTEM_LAYER } from '../core/inject';

const role = RoleProfile.parse({
  ...ROLE_DEFAULTS,
  name: 'writer',
  version: '1.2.0',
  description: 'writes',
  systemPrompt: 'You are a technical writer.',
  toneGuide: 'Friendly and precise.',
  constraints: ['Write Markdown.', 'Start with a heading.'],
  tools: [{ tool: 'workspace.write', access: 'write' }],
});
const subtask = {
  id: 'draft',
  title: 'Draft',
  instructions: 'Write guide.md',
  role: 'writer',
  dependsOn: ['outline'],
  acceptanceCriteria: [{ kind: 'file_exists' as const, path: 'guide.md' }],
};

test('layers come in order: system, then role (prompt, tone, constraints), then task', () => {
  const { messages } = buildAgentContext({ role, goal: 'A guide', subtask, dependencies: [{ id: 'outline', title: 'Outline', output: 'the outline' }] });
  expect(messages.map((m) => m.role)).toEqual(['system', 'system', 'user']);
  expect(messages[0]?.content).toBe(SYSTEM_LAYER);
  expect(messages[1]?.content).toBe(
    '# Role: writer v1.2.0\n\nYou are a technical writer.\n\n## Tone\nFriendly and precise.\n\n## Constraints\n- Write Markdown.\n- Start with a heading.',
  );
  const task = messages[2]?.content ?? '';
  expect(task.indexOf('# Task\nA guide')).toBeLessThan(task.indexOf('# Your subtask: Draft (id: draft)'));
  expect(task).toContain('# Output of "Outline" (outline)\nthe outline');
  expect(task).toContain('# Acceptance criteria\n- file guide.md exists');
  expect(task).not.toContain('Feedback');
});

test('within the context budget: small outputs stay whole, large ones are cut and marked, fixed layers are never cut', () => {
  const tight = { ...role, tokenBudget: { context: 2_000 } };
  const small = 'small output. '.repeat(20);
  const large = 'L'.repeat(20_000);
  const huge = 'H'.repeat(40_000);
  const ctx = buildAgentContext({
    role: tight,
    goal: 'g',
    subtask,
    dependencies: [
      { id: 'a', title: 'A', output: large },
      { id: 'b', title: 'B', output: small },
      { id: 'c', title: 'C', output: huge },
    ],
    feedback: 'file guide.md is missing',
  });
  const task = ctx.messages[2]?.content ?? '';
  expect(task).toContain(`# Output of "B" (b)\n${small}`);
  expect(ctx.truncated.map((t) => t.id).sort()).toEqual(['a', 'c']);
  expect(ctx.truncated.find((t) => t.id === 'c')).toMatchObject({ totalTokens: estimateTokens(huge) });
  expect(task).toMatch(/\[truncated by MARE: kept ~\d+ of ~5000 estimated tokens of this output \(context budget 2000\)\]/);
  expect(task).toMatch(/\[truncated by MARE: kept ~\d+ of ~10000 estimated tokens of this output \(context budget 2000\)\]/);
  expect(ctx.estimatedTokens).toBeLessThanOrEqual(2_000);
  expect(ctx.messages[1]?.content).toContain(tight.systemPrompt);
  expect(task.endsWith('# Feedback on your previous attempt\nfile guide.md is missing')).toBe(true);
});

test('the digest is the sha256 of exactly the injected messages, and changes with any input', () => {
  const input = { role, goal: 'g', subtask, dependencies: [] };
  const ctx = buildAgentContext(input);
  expect(ctx.digest).toBe(createHash('sha256').update(JSON.stringify(ctx.messages)).digest('hex'));
  expect(buildAgentContext(input)).toEqual(ctx);
  expect(buildAgentContext({ ...input, goal: 'g2' }).digest).not.toBe(ctx.digest);
  expect(buildAgentContext({ ...input, role: { ...role, toneGuide: 'Terse.' } }).digest).not.toBe(ctx.digest);
});
