import type { Pool } from 'pg';
import { z } from 'zod';
import { TOOL_OUTPUT_HISTORY_LIMIT, type ChatMessage, type ToolCall } from '../schemas';
import type { AtRest } from './atRest';
import { loadBlob, putBlob } from './store';

/** How a large string travels through workflow history: its digest, with the content in `blobs`. */
export const BlobRef = z.strictObject({ $blob: z.string().regex(/^[0-9a-f]{64}$/), size: z.number().int() });
export type BlobRef = z.infer<typeof BlobRef>;

/** Replaces long string arguments of tool calls with blob references (content goes to PostgreSQL). */
export async function compactToolCalls(pool: Pool, calls: ToolCall[], atRest: AtRest): Promise<ToolCall[]> {
  return Promise.all(
    calls.map(async (call) => {
      const args: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(call.args)) {
        args[key] = typeof value === 'string' && value.length > TOOL_OUTPUT_HISTORY_LIMIT ? ({ $blob: await putBlob(pool, value, atRest), size: value.length } satisfies BlobRef) : value;
      }
      return { ...call, args };
    }),
  );
}

/** Puts the content back in place of blob references, for a tool or a model that needs it. */
export async function expandArgs(pool: Pool, args: unknown, atRest: AtRest): Promise<unknown> {
  if (!args || typeof args !== 'object' || Array.isArray(args)) return args;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(args as Record<string, unknown>)) {
    const ref = BlobRef.safeParse(value);
    out[key] = ref.success ? await loadBlob(pool, ref.data.$blob, atRest) : value;
  }
  return out;
}

/** Expands the blob references in a transcript's tool calls before it is sent to a model. */
export async function expandMessages(pool: Pool, messages: ChatMessage[], atRest: AtRest): Promise<ChatMessage[]> {
  return Promise.all(
    messages.map(async (m) =>
      m.role === 'assistant' && m.toolCalls?.length
        ? { ...m, toolCalls: await Promise.all(m.toolCalls.map(async (c) => ({ ...c, args: (await expandArgs(pool, c.args, atRest)) as Record<string, unknown> }))) }
        : m,
    ),
  );
}
