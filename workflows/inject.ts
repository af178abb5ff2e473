import type { ChatMessage, DependencyOutput, RoleProfile, Subtask } from '../schemas';
import { describeCriterion } from '../schemas/describe';

/** Rules every embodiment gets, whatever its role: the system layer. */
export const SYSTEM_LAYER = [
  'You are an agent embodied by MARE for exactly one subtask; you remember nothing from other subtasks.',
  'Use only the tools you are given. Tool calls outside your permissions are refused.',
  'Paths are relative to the task workspace. When the work is done, reply with a short final answer and no tool call.',
].join('\n');

/** Dependency outputs beyond this many characters are cut, and marked as cut. */
export const DEPENDENCY_OUTPUT_LIMIT = 4_000;

/** What the injection layers are built from. */
export interface InjectionInput {
  role: RoleProfile;
  goal: string;
  subtask: Subtask;
  dependencies: DependencyOutput[];
  /** The verifier's feedback on the previous attempt, if any. */
  feedback?: string;
}

/**
 * Builds a fresh agent context, layer by layer: system → role (prompt, tone, constraints) → task
 * (goal, subtask, dependency outputs, criteria, feedback). Pure and deterministic.
 */
export function buildAgentContext(input: InjectionInput): ChatMessage[] {
  const { role, goal, subtask, dependencies, feedback } = input;
  const roleLayer = [
    `# Role: ${role.name} v${role.version}`,
    role.systemPrompt,
    role.toneGuide ? `## Tone\n${role.toneGuide}` : '',
    role.constraints.length ? `## Constraints\n${role.constraints.map((c) => `- ${c}`).join('\n')}` : '',
  ].filter(Boolean);
  const taskLayer = [
    `# Task\n${goal}`,
    `# Your subtask: ${subtask.title} (id: ${subtask.id})\n${subtask.instructions}`,
    ...dependencies.map((d) => `# Output of "${d.title}" (${d.id})\n${truncate(d.output, DEPENDENCY_OUTPUT_LIMIT)}`),
    subtask.acceptanceCriteria.length
      ? `# Acceptance criteria\n${subtask.acceptanceCriteria.map((c) => `- ${describeCriterion(c)}`).join('\n')}`
      : '',
    feedback ? `# Feedback on your previous attempt\n${feedback}` : '',
  ].filter(Boolean);
  return [
    { role: 'system', content: SYSTEM_LAYER },
    { role: 'system', content: roleLayer.join('\n\n') },
    { role: 'user', content: taskLayer.join('\n\n') },
  ];
}

function truncate(text: string, limit: number): string {
  return text.length <= limit ? text : `${text.slice(0, limit)}\n[truncated: ${text.length - limit} more characters]`;
}
