import { RoleProfile } from '../schemas';
import { buildAgentContext, DEPENDENCY_OUTPUT_LIMIT, SYSTEM_LAYER } from '../workflows/inject';

const role = RoleProfile.parse({
  name: 'writer',
  version: '1.2.0',
  description: 'writes',
  systemPrompt: 'You are a technical writer.',
  toneGuide: 'Friendly and precise.',
  constraints: ['Write Markdown.', 'Start with a heading.'],
  tools: ['workspace.write'],
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
  const messages = buildAgentContext({ role, goal: 'A guide', subtask, dependencies: [{ id: 'outline', title: 'Outline', output: 'the outline' }] });
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

test('long dependency outputs are truncated and marked; feedback is appended', () => {
  const long = 'x'.repeat(DEPENDENCY_OUTPUT_LIMIT + 10);
  const messages = buildAgentContext({ role, goal: 'g', subtask, dependencies: [{ id: 'outline', title: 'Outline', output: long }], feedback: 'file guide.md is missing' });
  const task = messages[2]?.content ?? '';
  expect(task).toContain(`${'x'.repeat(DEPENDENCY_OUTPUT_LIMIT)}\n[truncated: 10 more characters]`);
  expect(task.endsWith('# Feedback on your previous attempt\nfile guide.md is missing')).toBe(true);
});

test('injection is deterministic', () => {
  const input = { role, goal: 'g', subtask, dependencies: [] };
  expect(buildAgentContext(input)).toEqual(buildAgentContext(input));
});
