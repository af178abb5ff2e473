import { mkdir, readFile } from 'node:fs/promises';
import Ajv from 'ajv';
import { z } from 'zod';
import { patternError, patternFound } from '../core/patterns';
import { storableText, extractJsonObject, type TokenUsage, type Criterion, type CriterionResult, type Verdict } from '../validation';
import { TASK_SCOPE } from '../core/constants';
import { describeCriterion } from '../core/describe';
import { addUsage, ZERO_USAGE } from '../core/usage';
import type { ActivityDeps } from './deps';
import { sha256 } from '../infra/crypto/digest';
import { activityKey, canonicalJson } from './idempotency';
import { callModelWithHeartbeat } from './modelActivity';
import { recordVerificationMetrics } from './metrics';
import { atRestOf } from '../infra/crypto/atRest';
import { writeAudited } from '../infra/db/records';
import { fieldAt, fileChangesOf, runCheckCommand, toolOutputsOf, type CommandEvidence, type ToolOutputEvidence } from './evidence';
import { resolveInWorkspace, taskWorkspace } from './workspace';
import { commandAllowed, describeAllowed } from '../infra/commandAllowlist';
import { SandboxUnavailable } from '../infra/sandbox';

/** Ajv's regular-expression engine for `pattern` and `patternProperties`: RE2, linear in the subject. */
const re2Engine = Object.assign(
  (source: string) => {
    const error = patternError(source);
    if (error) throw new Error(error);
    return { test: (text: string) => patternFound(source, text) };
  },
  { code: 'require("re2js")' },
);

/** A JSON Schema validator whose patterns run on RE2 (schemas/patterns.ts). */
function schemaValidator(): Ajv {
  return new Ajv({ allErrors: true, strict: false, code: { regExp: re2Engine } });
}

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
  /** The role whose work is verified, for metrics. */
  role?: string;
}

/** The verification engine: every criterion is checked, scored, and stored as evidence. */
export function createVerifyActivities(deps: ActivityDeps) {
  return {
    async verify(input: VerifyInput): Promise<Verdict> {
      return verifyAttempt(deps, input);
    },
  };
}

/** Collects what judged criteria cost and what the checks relied on, for the verdict and the evidence. */
interface Spend {
  usage: TokenUsage;
  models: Set<string>;
  /** The attempt's tool calls, read once when a criterion needs them. */
  toolOutputs?: ToolOutputEvidence[];
  /** Digests of the tool outputs the checks relied on. */
  reliedOn: Set<string>;
  commands: CommandEvidence[];
  judgements: { rubric: string; score: number; rationale: string }[];
}

/** The criterion of one kind. */
type CriterionOf<K extends Criterion['kind']> = Extract<Criterion, { kind: K }>;

/** Checks every criterion, stores the evidence bundle and audits the outcome; the activity `verify`. */
async function verifyAttempt(deps: ActivityDeps, input: VerifyInput): Promise<Verdict> {
  const files: Record<string, string> = {};
  const results: CriterionResult[] = [];
  const spend: Spend = { usage: ZERO_USAGE, models: new Set(), reliedOn: new Set(), commands: [], judgements: [] };
  for (const [index, c] of input.criteria.entries()) results.push(await check(deps, input, c, files, spend, index));
  const score = results.length ? results.reduce((sum, r) => sum + r.score, 0) / results.length : 1;
  const passed = results.every((r) => r.passed) && score >= input.threshold;
  const failedOnes = results.filter((r) => !r.passed);
  const feedback = passed
    ? 'all acceptance criteria passed'
    : failedOnes.length
      ? failedOnes.map((r) => `${describeCriterion(r.criterion)}: ${r.detail}`).join('; ')
      : `composite score ${score.toFixed(2)} is below the role's threshold ${input.threshold}`;
  const evidenceId = await storeEvidence(deps, input, { files, spend, results, score, passed });
  recordVerificationMetrics({ role: input.role ?? (input.subtaskId === TASK_SCOPE ? TASK_SCOPE : 'unknown'), score, passed });
  // The feedback reaches the progress query and the retry's prompt: no secrets in it.
  return { passed, score, threshold: input.threshold, feedback: deps.redactor.redact(feedback), evidenceId, results, usage: spend.usage, models: [...spend.models] };
}

/** What the checks found, for the evidence bundle. */
interface Findings {
  files: Record<string, string>;
  spend: Spend;
  results: CriterionResult[];
  score: number;
  passed: boolean;
}

/** Stores the evidence bundle (what was checked and what each check relied on, content-addressed); returns its id. */
async function storeEvidence(deps: ActivityDeps, input: VerifyInput, { files, spend, results, score, passed }: Findings): Promise<string> {
  const { pool, workspaceRoot } = deps;
  spend.toolOutputs ??= await toolOutputsOf(pool, input.taskId, input.subtaskId, input.attempt, atRestOf(deps));
  // Display only (people and reports read it): redacted before it is hashed and stored; model-written
  // text (judge rationales, command output) with NUL or a lone surrogate made storable.
  const evidence = storableText(deps.redactor.redactDeep({
    taskId: input.taskId,
    subtaskId: input.subtaskId,
    attempt: input.attempt,
    outputDigest: sha256(input.output),
    fileDigests: files,
    toolOutputs: spend.toolOutputs.map(({ callKey, tool, status, digest }) => ({ callKey, tool, status, digest, reliedOn: spend.reliedOn.has(digest) })),
    filesChanged: await fileChangesOf(pool, taskWorkspace(workspaceRoot, input.taskId), input.taskId, input.subtaskId, input.attempt, atRestOf(deps)),
    commands: spend.commands,
    judgements: spend.judgements,
    results,
    score,
    threshold: input.threshold,
    passed,
  }));
  const evidenceId = sha256(canonicalJson(evidence));
  // The bundle and the audit of the outcome, in one statement.
  await writeAudited(
    pool,
    `INSERT INTO evidence (evidence_id, task_id, subtask_id, attempt, passed, score, body) VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (evidence_id) DO NOTHING`,
    [evidenceId, input.taskId, input.subtaskId, input.attempt, passed, score, JSON.stringify(evidence)],
    { taskId: input.taskId, kind: passed ? 'verify.passed' : 'verify.failed', data: { subtaskId: input.subtaskId, attempt: input.attempt, score, evidenceId }, key: activityKey() },
  );
  return evidenceId;
}

/** The result of checking `c`: a pass scores 1 and a failure 0 unless `score` says otherwise. */
function resultOf(c: Criterion, passed: boolean, detail: string, score = passed ? 1 : 0): CriterionResult {
  return { criterion: c, passed, score, detail };
}

/** Checks one criterion, recording file digests in `files` and costs and reliance in `spend`. */
async function check(deps: ActivityDeps, input: VerifyInput, c: Criterion, files: Record<string, string>, spend: Spend, index: number): Promise<CriterionResult> {
  switch (c.kind) {
    case 'file_exists':
    case 'file_contains':
    case 'file_matches':
      return checkFile(deps, input, c, files);
    case 'output_contains':
      return resultOf(c, input.output.includes(c.text), input.output.includes(c.text) ? `found "${c.text}"` : `final answer lacks "${c.text}"`);
    case 'judged':
      return checkJudged(deps, input, c, spend, index);
    case 'json_schema':
      return checkJsonSchema(deps, input, c, files);
    case 'tool_result_field':
      return checkToolResultField(deps, input, c, spend);
    case 'command_succeeds':
      return checkCommand(deps, input, c, spend);
  }
}

async function fileText(workspaceRoot: string, taskId: string, rel: string): Promise<string | undefined> {
  try {
    return await readFile(await resolveInWorkspace(taskWorkspace(workspaceRoot, taskId), rel), 'utf8');
  } catch {
    return undefined;
  }
}

async function checkFile(
  deps: ActivityDeps,
  input: VerifyInput,
  c: CriterionOf<'file_exists' | 'file_contains' | 'file_matches'>,
  files: Record<string, string>,
): Promise<CriterionResult> {
  const text = await fileText(deps.workspaceRoot, input.taskId, c.path);
  if (text === undefined) return resultOf(c, false, `${c.path} does not exist`);
  files[c.path] = sha256(text);
  if (c.kind === 'file_exists') return resultOf(c, true, `${c.path} exists (${text.length} chars)`);
  if (c.kind === 'file_contains') return resultOf(c, text.includes(c.text), text.includes(c.text) ? `found "${c.text}"` : `"${c.text}" not found in ${c.path}`);
  let found: boolean;
  try {
    found = patternFound(c.pattern, text, { multiline: true });
  } catch (err) {
    return resultOf(c, false, `invalid pattern: ${(err as Error).message}`);
  }
  return resultOf(c, found, found ? `matches /${c.pattern}/` : `${c.path} does not match /${c.pattern}/`);
}

async function checkJudged(deps: ActivityDeps, input: VerifyInput, c: CriterionOf<'judged'>, spend: Spend, index: number): Promise<CriterionResult> {
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
  if (!judged) return resultOf(c, false, `the judge's reply was not valid JSON {score, rationale}: ${response.text.slice(0, 200)}`);
  spend.judgements.push({ rubric: c.rubric, score: judged.score, rationale: judged.rationale });
  return resultOf(c, judged.score >= input.threshold, `score ${judged.score.toFixed(2)}: ${judged.rationale}`, judged.score);
}

async function checkJsonSchema(deps: ActivityDeps, input: VerifyInput, c: CriterionOf<'json_schema'>, files: Record<string, string>): Promise<CriterionResult> {
  const text = c.path ? await fileText(deps.workspaceRoot, input.taskId, c.path) : input.output;
  if (text === undefined) return resultOf(c, false, `${c.path} does not exist`);
  if (c.path) files[c.path] = sha256(text);
  const value = c.path ? parseJson(text) : (parseJson(text) ?? extractJsonObject(text));
  if (value === undefined) return resultOf(c, false, `${c.path ?? 'the final answer'} is not JSON`);
  // A fresh validator per check: a schema's `$id` cannot shadow a later task's, and nothing accumulates.
  const ajv = schemaValidator();
  let validate;
  try {
    validate = ajv.compile(c.schema);
  } catch (err) {
    return resultOf(c, false, `the schema is not a valid JSON Schema: ${(err as Error).message}`);
  }
  if (validate(value)) return resultOf(c, true, `${c.path ?? 'the final answer'} matches the schema`);
  return resultOf(c, false, `${c.path ?? 'the final answer'} does not match the schema: ${ajv.errorsText(validate.errors, { separator: '; ' })}`);
}

async function checkToolResultField(deps: ActivityDeps, input: VerifyInput, c: CriterionOf<'tool_result_field'>, spend: Spend): Promise<CriterionResult> {
  spend.toolOutputs ??= await toolOutputsOf(deps.pool, input.taskId, input.subtaskId, input.attempt, atRestOf(deps));
  const calls = spend.toolOutputs.filter((t) => t.tool === c.tool && t.status === 'ok');
  if (!calls.length) return resultOf(c, false, `no successful ${c.tool} call in this attempt`);
  for (const call of calls) {
    const { found, value } = fieldAt(call.json, c.field);
    if (found && (c.equals === undefined || value === c.equals)) {
      spend.reliedOn.add(call.digest);
      return resultOf(c, true, `${c.tool} result ${call.digest.slice(0, 12)} has ${c.field} = ${JSON.stringify(value)}`);
    }
  }
  return resultOf(c, false, `no ${c.tool} result has ${c.field}${c.equals !== undefined ? ` = ${JSON.stringify(c.equals)}` : ''}`);
}

async function checkCommand(deps: ActivityDeps, input: VerifyInput, c: CriterionOf<'command_succeeds'>, spend: Spend): Promise<CriterionResult> {
  // The whole argument vector must match an operator entry: `node` for tests is not `node -e <code>`.
  const allowed = deps.tools.config.verifyCommands;
  if (!commandAllowed(allowed, c.command, c.args)) {
    return resultOf(c, false, `command "${c.command}" with these ${c.args.length} arguments is not allowed here (the tools configuration's verifyCommands allow: ${describeAllowed(allowed)})`);
  }
  const workspace = taskWorkspace(deps.workspaceRoot, input.taskId);
  await mkdir(workspace, { recursive: true });
  let ran: CommandEvidence;
  try {
    ran = await runCheckCommand(workspace, c.command, c.args, c.timeoutSeconds, deps.redactor);
  } catch (err) {
    if (!(err instanceof SandboxUnavailable)) throw err;
    return resultOf(c, false, `\`${c.command}\` did not run: SandboxUnavailable (${err.reason}): ${deps.redactor.redact(err.message)}`);
  }
  spend.commands.push(ran);
  if (ran.timedOut) return resultOf(c, false, `\`${c.command}\` did not finish within ${c.timeoutSeconds} s`);
  return resultOf(c, ran.exitCode === 0, `\`${c.command}\` exited ${ran.exitCode ?? ran.signal ?? '?'}${ran.exitCode === 0 ? '' : `: ${(ran.stderr || ran.stdout).slice(-300)}`}`);
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function parseJudgement(text: string): z.infer<typeof Judgement> | undefined {
  const parsed = Judgement.safeParse(extractJsonObject(text));
  return parsed.success ? parsed.data : undefined;
}
