import { readFileSync } from 'node:fs';
import type { LanguageModelV3, LanguageModelV3CallOptions, LanguageModelV3GenerateResult } from '@ai-sdk/provider';
import { z } from 'zod';
import { fromProviderToolName, toProviderToolName } from '../../core/toolNames';

const ScriptReply = z.strictObject({
  text: z.string().default(''),
  toolCalls: z.array(z.strictObject({ name: z.string(), args: z.record(z.string(), z.unknown()) })).default([]),
  /** Fail this call with an HTTP-like status (exercises retry classification). */
  errorStatus: z.number().int().optional(),
  /**
   * Play a model that has been talked into misbehaving: if the latest tool result says
   * `CALL <tool> <json arguments>`, request exactly that call instead of `toolCalls`.
   */
  obeyToolOutput: z.boolean().optional(),
});

const ScriptRule = z.strictObject({
  match: z
    .strictObject({
      purpose: z.enum(['plan', 'act', 'judge']).optional(),
      subtask: z.string().optional(),
      role: z.string().optional(),
      attempt: z.number().int().optional(),
      /** How many tool-call rounds came before this call in the current agent loop. */
      turn: z.number().int().optional(),
      goalContains: z.string().optional(),
    })
    .default({}),
  reply: ScriptReply,
});

/** A script for the offline model: the first rule whose `match` fits the call gives the reply. */
export const ModelScript = z.strictObject({
  name: z.string().default('script'),
  /** Simulated latency per call, to exercise heartbeats and crashes mid-call. */
  delayMs: z.number().int().min(0).default(0),
  /** Each call's delay is drawn uniformly from delayMs ± delayJitterMs (the median stays delayMs). */
  delayJitterMs: z.number().int().min(0).default(0),
  rules: z.array(ScriptRule).min(1),
});
export type ModelScript = z.infer<typeof ModelScript>;

/** Reads and validates a script file; errors name the file and the field. */
export function loadModelScript(path: string): ModelScript {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8')) as unknown;
  } catch (err) {
    throw new Error(`cannot read model script ${path}: ${(err as Error).message}`);
  }
  const parsed = ModelScript.safeParse(raw);
  if (!parsed.success) throw new Error(`invalid model script ${path}: ${z.prettifyError(parsed.error)}`);
  return parsed.data;
}

/** The metadata MARE passes to every model call (providerOptions.mare), used for matching. */
const CallMeta = z.object({
  purpose: z.enum(['plan', 'act', 'judge']),
  subtaskId: z.string().optional(),
  role: z.string().optional(),
  attempt: z.number().int().optional(),
  goal: z.string().optional(),
});

/** Thrown for a scripted error status; carries the fields the classifier reads from API errors. */
export class ScriptedHttpError extends Error {
  constructor(readonly statusCode: number) {
    super(`scripted model answered HTTP ${statusCode}`);
    this.name = 'ScriptedHttpError';
  }
}

/**
 * The offline `scripted` model: an AI SDK language model whose answers come from a JSON script.
 * Deterministic: the reply depends only on the request, so retries and replays see the same answer.
 */
export class ScriptedLanguageModel implements LanguageModelV3 {
  readonly specificationVersion = 'v3';
  readonly provider = 'scripted';
  readonly supportedUrls = {};
  constructor(
    readonly modelId: string,
    private readonly script: ModelScript,
  ) {}

  async doGenerate(options: LanguageModelV3CallOptions): Promise<LanguageModelV3GenerateResult> {
    const meta = CallMeta.parse(options.providerOptions?.mare ?? {});
    const turn = options.prompt.filter((m) => m.role === 'assistant').length;
    const rule = this.script.rules.find(({ match: m }) =>
      (m.purpose === undefined || m.purpose === meta.purpose) &&
      (m.subtask === undefined || m.subtask === meta.subtaskId) &&
      (m.role === undefined || m.role === meta.role) &&
      (m.attempt === undefined || m.attempt === meta.attempt) &&
      (m.turn === undefined || m.turn === turn) &&
      (m.goalContains === undefined || (meta.goal ?? '').includes(m.goalContains)),
    );
    if (!rule) {
      throw new Error(
        `scripted model "${this.script.name}": no rule matches purpose=${meta.purpose} subtask=${meta.subtaskId ?? '-'} role=${meta.role ?? '-'} attempt=${meta.attempt ?? '-'} turn=${turn}`,
      );
    }
    const { delayMs, delayJitterMs } = this.script;
    const delay = Math.max(0, delayMs + (delayJitterMs ? Math.round((Math.random() * 2 - 1) * delayJitterMs) : 0));
    if (delay > 0) await sleep(delay, options.abortSignal);
    if (rule.reply.errorStatus !== undefined) throw new ScriptedHttpError(rule.reply.errorStatus);

    const injected = rule.reply.obeyToolOutput ? instructionInToolOutput(options.prompt) : undefined;
    const toolCalls = injected ? [injected] : rule.reply.toolCalls;
    const promptChars = JSON.stringify(options.prompt).length;
    const content: LanguageModelV3GenerateResult['content'] = [];
    if (rule.reply.text) content.push({ type: 'text', text: rule.reply.text });
    toolCalls.forEach((c, i) =>
      content.push({
        type: 'tool-call',
        toolCallId: `call_${turn}_${i}`,
        toolName: toProviderToolName(fromProviderToolName(c.name)),
        input: JSON.stringify(c.args),
      }),
    );
    const outputChars = rule.reply.text.length + JSON.stringify(toolCalls).length;
    return {
      content,
      finishReason: { unified: toolCalls.length ? 'tool-calls' : 'stop', raw: undefined },
      // Offline usage is an estimate (4 characters a token), so totals stay meaningful in demos.
      usage: {
        inputTokens: { total: Math.ceil(promptChars / 4), noCache: undefined, cacheRead: undefined, cacheWrite: undefined },
        outputTokens: { total: Math.ceil(outputChars / 4), text: undefined, reasoning: undefined },
      },
      warnings: [],
    };
  }

  doStream(): never {
    throw new Error('the scripted model does not stream');
  }
}

/** The `CALL <tool> {json}` instruction in the latest tool result, if there is one. */
function instructionInToolOutput(prompt: LanguageModelV3CallOptions['prompt']): { name: string; args: Record<string, unknown> } | undefined {
  const last = [...prompt].reverse().find((m) => m.role === 'tool');
  if (!last || last.role !== 'tool') return undefined;
  for (const part of last.content) {
    if (part.type !== 'tool-result') continue;
    const output = part.output as { type: string; value?: unknown };
    const text = typeof output.value === 'string' ? output.value : '';
    const match = /CALL\s+([\w.-]+)\s+(\{.*?\})\s*$/m.exec(text);
    if (!match) continue;
    try {
      return { name: match[1]!, args: JSON.parse(match[2]!) as Record<string, unknown> };
    } catch {
      continue;
    }
  }
  return undefined;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(timer);
      reject(new Error('aborted'));
    });
  });
}
