import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { addUsage, describeCriterion, extractJsonObject, ZERO_USAGE, type TokenUsage, type Criterion, type CriterionResult, type Verdict } from '../schemas';
import type { ActivityDeps } from './deps';
import { canonicalJson, sha256 } from './idempotency';
import { callModelWithHeartbeat } from './modelActivity';
import { audit } from './store';
import { resolveInWorkspace, taskWorkspace } from './workspace';

const Judgement = z.object({ score: z.number().min(0).max(1), rationale: z.string().default('') });

/** Input of the verify activity: what to check, against which output and threshold. */
export interface VerifyInput {
  taskId: string;
  subtaskId: string;
  attempt: number;
  criteria: Criterion[];
  output: string;
  /** The role's confidence threshold: the minimum composite score. */
  threshold: number;
  /** The task's tenant, for policies on the judge's model calls. */
  tenant?: string;
}

/** The verification engine: every criterion is checked, scored, and stored as evidence. */
export function createVerifyActivities(deps: ActivityDeps) {
  const { pool, workspaceRoot } = deps;

  async function fileText(taskId: string, rel: string): Promise<string | undefined> {
    try {
      return await readFile(await resolveInWorkspace(taskWorkspace(workspaceRoot, taskId), rel), 'utf8');
    } catch {
      return undefined;
    }
  }

  /** Collects what judged criteria cost, for the verdict. */
  interface Spend {
    usage: TokenUsage;
    models: Set<string>;
  }

  async function check(input: VerifyInput, c: Criterion, files: Record<string, string>, spend: Spend, index: number): Promise<CriterionResult> {
    const verdict = (passed: boolean, detail: string, score = passed ? 1 : 0): CriterionResult => ({ criterion: c, passed, score, detail });
    switch (c.kind) {
      case 'file_exists':
      case 'file_contains':
      case 'file_matches': {
        const text = await fileText(input.taskId, c.path);
        if (text === undefined) return verdict(false, `${c.path} does not exist`);
        files[c.path] = sha256(text);
        if (c.kind === 'file_exists') return verdict(true, `${c.path} exists (${text.length} chars)`);
        if (c.kind === 'file_contains') return verdict(text.includes(c.text), text.includes(c.text) ? `found "${c.text}"` : `"${c.text}" not found in ${c.path}`);
        let re: RegExp;
        try {
          re = new RegExp(c.pattern, 'm');
        } catch (err) {
          return verdict(false, `invalid pattern: ${(err as Error).message}`);
        }
        return verdict(re.test(text), re.test(text) ? `matches /${c.pattern}/` : `${c.path} does not match /${c.pattern}/`);
      }
      case 'output_contains':
        return verdict(input.output.includes(c.text), input.output.includes(c.text) ? `found "${c.text}"` : `final answer lacks "${c.text}"`);
      case 'judged': {
        const response = await callModelWithHeartbeat(deps, {
          purpose: 'judge',
          tools: [],
          meta: { taskId: input.taskId, subtaskId: input.subtaskId, attempt: input.attempt, ...(input.tenant ? { tenant: input.tenant } : {}) },
          messages: [
            { role: 'system', content: 'You are a strict reviewer. Reply with JSON only: {"score": <0..1>, "rationale": "<one sentence>"}.' },
            { role: 'user', content: `Rubric: ${c.rubric}\n\nWork to judge:\n${input.output}` },
          ],
        }, index);
        spend.usage = addUsage(spend.usage, response.usage);
        spend.models.add(response.model);
        const judged = parseJudgement(response.text);
        if (!judged) return verdict(false, `the judge's reply was not valid JSON {score, rationale}: ${response.text.slice(0, 200)}`);
        return verdict(judged.score >= input.threshold, `score ${judged.score.toFixed(2)}: ${judged.rationale}`, judged.score);
      }
    }
  }

  return {
    async verify(input: VerifyInput): Promise<Verdict> {
      const files: Record<string, string> = {};
      const results: CriterionResult[] = [];
      const spend: Spend = { usage: ZERO_USAGE, models: new Set() };
      for (const [index, c] of input.criteria.entries()) results.push(await check(input, c, files, spend, index));
      const score = results.length ? results.reduce((sum, r) => sum + r.score, 0) / results.length : 1;
      const passed = results.every((r) => r.passed) && score >= input.threshold;
      const failedOnes = results.filter((r) => !r.passed);
      const feedback = passed
        ? 'all acceptance criteria passed'
        : failedOnes.length
          ? failedOnes.map((r) => `${describeCriterion(r.criterion)}: ${r.detail}`).join('; ')
          : `composite score ${score.toFixed(2)} is below the role's threshold ${input.threshold}`;
      const evidence = {
        taskId: input.taskId,
        subtaskId: input.subtaskId,
        attempt: input.attempt,
        outputDigest: sha256(input.output),
        fileDigests: files,
        results,
        score,
        threshold: input.threshold,
        passed,
      };
      const evidenceId = sha256(canonicalJson(evidence));
      await pool.query(
        `INSERT INTO evidence (evidence_id, task_id, subtask_id, attempt, passed, score, body) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (evidence_id) DO NOTHING`,
        [evidenceId, input.taskId, input.subtaskId, input.attempt, passed, score, JSON.stringify(evidence)],
      );
      await audit(pool, input.taskId, passed ? 'verify.passed' : 'verify.failed', { subtaskId: input.subtaskId, attempt: input.attempt, score, evidenceId });
      // The feedback reaches the progress query and the retry's prompt: no secrets in it.
      return { passed, score, threshold: input.threshold, feedback: deps.redactor.redact(feedback), evidenceId, results, usage: spend.usage, models: [...spend.models] };
    },
  };
}

function parseJudgement(text: string): z.infer<typeof Judgement> | undefined {
  const parsed = Judgement.safeParse(extractJsonObject(text));
  return parsed.success ? parsed.data : undefined;
}
