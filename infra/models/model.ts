import { createAnthropic } from '@ai-sdk/anthropic';
import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import type { LanguageModelV3 } from '@ai-sdk/provider';
import { APICallError, generateText, jsonSchema, type ModelMessage, type ToolSet } from 'ai';
import { ApplicationFailure } from '@temporalio/common';
import { z } from 'zod';
import { BUILTIN_TOOLS, ToolCall, type ChatMessage, type ModelRequest, type ModelResponse } from '../../validation';
import { loadModelScript, ScriptedHttpError, ScriptedLanguageModel } from './scripted';
import { fromProviderToolName, toProviderToolName } from '../../core/toolNames';
import type { ToolDescriptor } from '../tools/catalog';
import { projectRoot } from '../paths';
import path from 'node:path';

/** Where a model comes from: `MARE_MODEL=provider:model`. */
export interface ModelConfig {
  provider: 'openai' | 'anthropic' | 'openai-compatible' | 'scripted';
  modelId: string;
  /** For openai-compatible: the server's base URL (…/v1). */
  baseUrl?: string;
  apiKey?: string;
}

/** The script shipped for the demo and used when no model is configured. */
export const DEMO_SCRIPT = 'scripts/demo-script.json';

/** A model that activities can call; `offline` is true for the scripted provider. */
export interface ModelClient {
  readonly name: string;
  readonly offline: boolean;
  /** `toolSpecs` describe `req.tools` (the activity resolves them from the catalog); without them only built-in tools are described. */
  generate(req: ModelRequest & { goal?: string; toolSpecs?: ToolDescriptor[] }, abortSignal?: AbortSignal): Promise<ModelResponse>;
}

/** Reads MARE_MODEL (and friends) from the environment; defaults to the offline demo script. */
export function modelConfigFromEnv(env: NodeJS.ProcessEnv = process.env): ModelConfig {
  const spec = env.MARE_MODEL?.trim() || `scripted:${env.MARE_MODEL_SCRIPT || path.join(projectRoot(), DEMO_SCRIPT)}`;
  const sep = spec.indexOf(':');
  const provider = sep > 0 ? spec.slice(0, sep) : spec;
  const modelId = sep > 0 ? spec.slice(sep + 1) : '';
  if (!modelId) throw new Error(`MARE_MODEL="${spec}" must look like provider:model, e.g. openai:gpt-4o-mini`);
  switch (provider) {
    case 'openai':
      return { provider, modelId, apiKey: env.OPENAI_API_KEY, baseUrl: env.OPENAI_BASE_URL };
    case 'anthropic':
      return { provider, modelId, apiKey: env.ANTHROPIC_API_KEY };
    case 'openai-compatible': {
      const baseUrl = env.MARE_OPENAI_COMPATIBLE_URL;
      if (!baseUrl) throw new Error('MARE_MODEL=openai-compatible:… needs MARE_OPENAI_COMPATIBLE_URL (e.g. http://127.0.0.1:11434/v1)');
      return { provider, modelId, baseUrl, apiKey: env.MARE_OPENAI_COMPATIBLE_API_KEY };
    }
    case 'scripted':
      return { provider, modelId };
    default:
      throw new Error(`MARE_MODEL provider "${provider}" is not one of openai, anthropic, openai-compatible, scripted`);
  }
}

/** Builds the AI SDK model for a config. */
export function languageModel(config: ModelConfig): LanguageModelV3 {
  switch (config.provider) {
    case 'openai':
      return createOpenAI({ apiKey: config.apiKey, baseURL: config.baseUrl })(config.modelId);
    case 'anthropic':
      return createAnthropic({ apiKey: config.apiKey })(config.modelId);
    case 'openai-compatible':
      return createOpenAICompatible({ name: 'openai-compatible', baseURL: config.baseUrl ?? '', apiKey: config.apiKey })(config.modelId);
    case 'scripted':
      return new ScriptedLanguageModel(config.modelId, loadModelScript(config.modelId));
  }
}

/** A ModelClient over the AI SDK. The SDK's own retries are off: Temporal retries the activity. */
export function createModelClient(config: ModelConfig): ModelClient {
  const name = `${config.provider}:${config.provider === 'scripted' ? path.basename(config.modelId) : config.modelId}`;
  const models = new Map<string, { model: LanguageModelV3; name: string }>([[config.modelId, { model: languageModel(config), name }]]);
  /** A role's preferred model, if it is served by this worker's provider (same credentials); else the default. */
  const pick = (preference: string | undefined): { model: LanguageModelV3; name: string } => {
    const sep = preference?.indexOf(':') ?? -1;
    const modelId = preference && sep > 0 && preference.slice(0, sep) === config.provider && config.provider !== 'scripted' ? preference.slice(sep + 1) : config.modelId;
    let entry = models.get(modelId);
    if (!entry) models.set(modelId, (entry = { model: languageModel({ ...config, modelId }), name: `${config.provider}:${modelId}` }));
    return entry;
  };
  return {
    name,
    offline: config.provider === 'scripted',
    async generate(req, abortSignal) {
      const { model, name } = pick(req.modelPreference);
      const system = req.messages.filter((m) => m.role === 'system').map((m) => m.content).join('\n\n');
      const result = await generateText({
        model,
        system: system || undefined,
        messages: toModelMessages(req.messages.filter((m) => m.role !== 'system')),
        tools: toolSet(req.toolSpecs ?? builtinSpecs(req.tools)),
        maxRetries: 0,
        abortSignal,
        providerOptions: {
          mare: { purpose: req.purpose, subtaskId: req.meta.subtaskId, role: req.meta.role, attempt: req.meta.attempt, goal: req.goal },
        },
      });
      const usage = { inputTokens: result.usage.inputTokens ?? 0, outputTokens: result.usage.outputTokens ?? 0 };
      const base = { model: name, offline: config.provider === 'scripted', usage };
      if (result.toolCalls.length === 0) return { ...base, kind: 'final', text: result.text };
      const calls = result.toolCalls.map((c) =>
        ToolCall.parse({ id: c.toolCallId, name: fromProviderToolName(c.toolName), args: (c.input ?? {}) as unknown }),
      );
      return { ...base, kind: 'tool_calls', text: result.text, calls };
    },
  };
}

/** Maps a provider error to Temporal's retry semantics: 429/5xx/network retry, 4xx is final. */
export function classifyModelError(err: unknown): Error {
  const status = APICallError.isInstance(err) ? err.statusCode : err instanceof ScriptedHttpError ? err.statusCode : undefined;
  const message = err instanceof Error ? err.message : String(err);
  if (status === undefined) {
    if (APICallError.isInstance(err) || isNetworkError(err)) return ApplicationFailure.retryable(`model unreachable: ${message}`, 'ModelUnavailable');
    return ApplicationFailure.nonRetryable(`model call failed: ${message}`, 'ModelCallFailed');
  }
  if (status === 429 || status >= 500 || status === 408) {
    const retryAfter = APICallError.isInstance(err) ? retryAfterMs(err.responseHeaders) : undefined;
    return ApplicationFailure.create({
      message: `model answered HTTP ${status}: ${message}`,
      type: status === 429 ? 'ModelRateLimited' : 'ModelUnavailable',
      nextRetryDelay: retryAfter,
    });
  }
  return ApplicationFailure.nonRetryable(`model rejected the request (HTTP ${status}): ${message}`, 'ModelRequestRejected');
}

function retryAfterMs(headers: Record<string, string> | undefined): number | undefined {
  const value = headers?.['retry-after'];
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** fetch's own failures (checked by name: errors from another realm fail `instanceof`) and socket errors. */
function isNetworkError(err: unknown): boolean {
  const e = err as { name?: string; message?: string; code?: string; cause?: { code?: string } } | undefined;
  if (e?.name === 'TypeError' && e.message === 'fetch failed') return true;
  const code = e?.cause?.code ?? e?.code;
  return typeof code === 'string' && /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EAI_AGAIN|ENOTFOUND|UND_ERR)/.test(code);
}

function toolSet(specs: ToolDescriptor[]): ToolSet {
  const set: ToolSet = {};
  for (const spec of specs) {
    set[toProviderToolName(spec.name)] = {
      description: spec.description,
      inputSchema: jsonSchema(spec.inputSchema as Parameters<typeof jsonSchema>[0]),
    };
  }
  return set;
}

/** Descriptions of the built-in tools among `names`. */
function builtinSpecs(names: string[]): ToolDescriptor[] {
  return BUILTIN_TOOLS.filter((t) => names.includes(t.name))
    .sort((a, b) => names.indexOf(a.name) - names.indexOf(b.name))
    .map((t) => ({ name: t.name, description: t.description, inputSchema: z.toJSONSchema(t.inputSchema) }));
}

function toModelMessages(messages: ChatMessage[]): ModelMessage[] {
  return messages.map((m): ModelMessage => {
    switch (m.role) {
      case 'system':
      case 'user':
        return { role: m.role, content: m.content };
      case 'assistant':
        return {
          role: 'assistant',
          content: [
            ...(m.content ? [{ type: 'text' as const, text: m.content }] : []),
            ...(m.toolCalls ?? []).map((c) => ({
              type: 'tool-call' as const,
              toolCallId: c.id,
              toolName: toProviderToolName(c.name),
              input: c.args,
            })),
          ],
        };
      case 'tool':
        return {
          role: 'tool',
          content: [
            {
              type: 'tool-result',
              toolCallId: m.toolCallId,
              toolName: toProviderToolName(m.toolName),
              output: m.isError ? { type: 'error-text', value: m.content } : { type: 'text', value: m.content },
            },
          ],
        };
    }
  });
}
