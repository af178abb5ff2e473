import { z } from 'zod';
import type { PolicyDecision } from './policy';
import type { ToolCall } from './tools';

/** Why a model is called; the scripted offline model matches its rules on this. */
export type ModelPurpose = 'plan' | 'act' | 'judge';

/** A provider-neutral chat message, small enough for workflow history. */
export type ChatMessage =
  | { role: 'system'; content: string }
  | { role: 'user'; content: string }
  | { role: 'assistant'; content: string; toolCalls?: ToolCall[] }
  | { role: 'tool'; toolCallId: string; toolName: string; content: string; isError: boolean };

/** Who is calling a model, for records and for the scripted model's matching. */
export interface ModelCallMeta {
  taskId: string;
  subtaskId?: string;
  role?: string;
  attempt?: number;
  /** The task's tenant, for policies. */
  tenant?: string;
}

/** Input of a model call. */
export interface ModelRequest {
  purpose: ModelPurpose;
  /** The whole conversation, or with `transcript` only the messages from `transcript.offset` on. */
  messages: ChatMessage[];
  /**
   * A transcript stored in PostgreSQL: `messages` are appended at `offset` and the activity reads
   * the earlier ones back, so workflow history carries each message once.
   */
  transcript?: { id: string; offset: number };
  /** Names of tools offered to the model; specs are resolved from the catalog in the activity. */
  tools: string[];
  /** The role's preferred model (`provider:model`); used when the worker runs that provider. */
  modelPreference?: string;
  meta: ModelCallMeta;
  /** The policy decision that allowed the call (`key`: its record's key); the activity records it. */
  policy?: { key: string; target: string; decision: PolicyDecision };
}

/** Tokens spent, in and out. */
export const TokenUsage = z.object({ inputTokens: z.number().int().min(0), outputTokens: z.number().int().min(0) });
export type TokenUsage = z.infer<typeof TokenUsage>;


export type ModelResponse = {
  model: string;
  offline: boolean;
  usage: TokenUsage;
} & ({ kind: 'final'; text: string } | { kind: 'tool_calls'; text: string; calls: ToolCall[] });
