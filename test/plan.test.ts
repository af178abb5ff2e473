import { atomicPlan, findCycle, validatePlan, type Plan } from '../validation';

const sub = (id: string, dependsOn: string[] = []) => ({ id, title: id, instructions: `do ${id}`, role: 'writer', dependsOn });
const plan = (...subtasks: unknown[]): string => JSON.stringify({ subtasks });

describe('validatePlan', () => {
  test('accepts a DAG, fills defaults, and tolerates prose around the JSON', () => {
    const checked = validatePlan(`Sure! Here is the plan:\n\`\`\`json\n${plan(sub('a'), sub('b', ['a']), sub('c', ['a', 'b']))}\n\`\`\``);
    expect(checked.ok).toBe(true);
    if (checked.ok) expect(checked.plan.subtasks[0]).toEqual({ ...sub('a'), acceptanceCriteria: [] });
  });

  test.each([
    ['no JSON at all', 'I could not plan this', 'plan is not valid JSON'],
    ['broken JSON', '{"subtasks": [', 'plan is not valid JSON'],
    ['a missing field', plan({ id: 'a', title: 'A', role: 'writer' }), 'subtasks.0.instructions'],
    ['an unknown field', plan({ ...sub('a'), priority: 1 }), 'priority'],
    ['a bad criterion', plan({ ...sub('a'), acceptanceCriteria: [{ kind: 'file_exists', path: '../etc/passwd' }] }), 'relative path'],
    ['no subtasks', plan(), 'subtasks'],
    ['duplicate ids', plan(sub('a'), sub('a')), 'duplicate subtask id "a"'],
    ['an unknown dependency', plan(sub('a', ['ghost'])), 'unknown subtask "ghost"'],
    ['a self-dependency', plan(sub('a', ['a'])), 'depends on itself'],
    ['a cycle', plan(sub('a', ['c']), sub('b', ['a']), sub('c', ['b'])), 'cycle: a -> c -> b -> a'],
  ])('rejects %s with a reason', (_name, text, reason) => {
    const checked = validatePlan(text);
    expect(checked.ok).toBe(false);
    if (!checked.ok) expect(checked.reason).toContain(reason);
  });

  test('rejects more subtasks than the limit', () => {
    const checked = validatePlan(plan(sub('a'), sub('b'), sub('c')), 2);
    expect(checked).toEqual({ ok: false, reason: 'plan has 3 subtasks, more than the limit of 2' });
  });
});

test('findCycle finds none in a diamond', () => {
  const diamond: Plan = { subtasks: [sub('a'), sub('b', ['a']), sub('c', ['a']), sub('d', ['b', 'c'])].map((s) => ({ ...s, acceptanceCriteria: [] })) };
  expect(findCycle(diamond)).toBeUndefined();
});

test('atomicPlan carries the whole goal in one subtask', () => {
  expect(atomicPlan('do it all')).toEqual({
    subtasks: [{ id: 'task', title: 'do it all', instructions: 'do it all', role: 'generalist', dependsOn: [], acceptanceCriteria: [] }],
  });
});
