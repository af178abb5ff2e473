import { z } from 'zod';
import type { TokenUsage } from './model';
import { PatternField } from './patternFields';
import { WorkspacePath } from './workspacePath';


/** One acceptance criterion: deterministic checks where possible, a model-judged rubric otherwise. */
export const Criterion = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('file_exists'), path: WorkspacePath }),
  z.strictObject({ kind: z.literal('file_contains'), path: WorkspacePath, text: z.string().min(1) }),
  z.strictObject({
    kind: z.literal('file_matches'),
    path: WorkspacePath,
    /** RE2 syntax (searched line by line with `^`/`$` at line breaks); matched in linear time. */
    pattern: PatternField,
  }),
  z.strictObject({ kind: z.literal('output_contains'), text: z.string().min(1) }),
  z.strictObject({ kind: z.literal('judged'), rubric: z.string().min(1).max(4000) }),
  /** The final answer (or, with `path`, a workspace file) is JSON that matches a JSON Schema. */
  z.strictObject({ kind: z.literal('json_schema'), schema: z.record(z.string(), z.unknown()), path: WorkspacePath.optional() }),
  /** A call of `tool` in this attempt returned JSON with `field` (a dot path), equal to `equals` when given. */
  z.strictObject({
    kind: z.literal('tool_result_field'),
    tool: z.string().min(1),
    field: z.string().min(1).max(200),
    equals: z.union([z.string(), z.number(), z.boolean(), z.null()]).optional(),
  }),
  /** A command, run in the task workspace (no shell, clean environment, time limit), exits 0. */
  z.strictObject({
    kind: z.literal('command_succeeds'),
    command: z.string().min(1).max(200),
    args: z.array(z.string().max(1_000)).max(50).default([]),
    timeoutSeconds: z.number().int().min(1).max(600).default(60),
  }),
]);
export type Criterion = z.infer<typeof Criterion>;


/** The outcome of one criterion, as stored in the evidence bundle. */
export const CriterionResult = z.object({
  criterion: Criterion,
  passed: z.boolean(),
  score: z.number().min(0).max(1),
  detail: z.string(),
});
export type CriterionResult = z.infer<typeof CriterionResult>;

/** What the verify activity returns to the workflow: the verdict and a reference to stored evidence. */
export interface Verdict {
  passed: boolean;
  score: number;
  threshold: number;
  feedback: string;
  evidenceId: string;
  results: CriterionResult[];
  /** Tokens spent by judged criteria, and the models that judged. */
  usage: TokenUsage;
  models: string[];
}
