/**
 * The offline model scripts of arm O: a plan of M subtasks, each one model call that writes a file,
 * one workspace.write, and one model call that answers. So each subtask makes K = 3 model and tool
 * calls, the same as B1's K no-op activities. Verification is deterministic (no judge call).
 */
import { writeFileSync } from 'node:fs';
import type { ModelScript } from '../infra/models/scripted';

export const FANOUTS = [1, 3, 10] as const;
/** Calls per subtask that B1 mirrors with no-op activities: model, tool, model. */
export const STEPS: ('model' | 'tool')[] = ['model', 'tool', 'model'];
const FILE_CONTENT = 'MARE bench output. '.repeat(12);

/** The goal text of a bench task with fan-out M; the script's plan rules key on it. */
export function benchGoal(m: number): string {
  return `Bench task fanout=${m}: write one file per subtask and report done.`;
}

/** Writes the script to `file`; `delayMs`/`jitterMs` simulate a slow model (W4). */
export function writeBenchScript(file: string, delayMs = 0, jitterMs = 0): string {
  const plan = (m: number): string =>
    JSON.stringify({
      subtasks: Array.from({ length: m }, (_, i) => ({
        id: `s${i}`,
        title: `Write part ${i}`,
        role: 'writer',
        dependsOn: [],
        instructions: `Write part ${i} of the bench output to out-s${i}.txt, then say done.`,
        acceptanceCriteria: [{ kind: 'output_contains', text: 'done' }],
      })),
    });
  const script: ModelScript = {
    name: delayMs ? `bench-slow-${delayMs}ms` : 'bench-instant',
    delayMs,
    delayJitterMs: jitterMs,
    rules: [
      // Longest goal marker first: "fanout=10" must not be taken for "fanout=1".
      ...[...FANOUTS].reverse().map((m) => ({ match: { purpose: 'plan' as const, goalContains: `fanout=${m}:` }, reply: { text: plan(m), toolCalls: [] } })),
      ...Array.from({ length: Math.max(...FANOUTS) }, (_, i) => ({
        match: { purpose: 'act' as const, subtask: `s${i}`, turn: 0 },
        reply: { text: '', toolCalls: [{ name: 'workspace.write', args: { path: `out-s${i}.txt`, content: `${FILE_CONTENT}${i}` } }] },
      })),
      { match: { purpose: 'act' as const }, reply: { text: 'done: the file is written.', toolCalls: [] } },
    ],
  };
  writeFileSync(file, JSON.stringify(script, null, 2));
  return file;
}
