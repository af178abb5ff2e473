import { z } from 'zod';
import type { TokenUsage } from './model';

export { describeCriterion } from './describe';

/** A workspace-relative path: no absolute paths, no `..` segments (checked again on disk by the tools). */
export const WorkspacePath = z
  .string()
  .min(1)
  .max(512)
  .refine((p) => !p.startsWith('/') && !p.split(/[\\/]/).includes('..'), {
    message: 'must be a relative path inside the task workspace (no leading "/" and no "..")',
  });

/** One acceptance criterion: deterministic checks where possible, a model-judged rubric otherwise. */
export const Criterion = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('file_exists'), path: WorkspacePath }),
  z.strictObject({ kind: z.literal('file_contains'), path: WorkspacePath, text: z.string().min(1) }),
  z.strictObject({ kind: z.literal('file_matches'), path: WorkspacePath, pattern: z.string().min(1) }),
  z.strictObject({ kind: z.literal('output_contains'), text: z.string().min(1) }),
  z.strictObject({ kind: z.literal('judged'), rubric: z.string().min(1).max(4000) }),
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
