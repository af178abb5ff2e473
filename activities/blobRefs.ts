import type { Pool } from 'pg';
import { isBlobRef, looksLikeBlobRef, type BlobRef } from '../core/blobRef';
import { type ChatMessage, type ToolCall } from '../validation';
import { TOOL_OUTPUT_HISTORY_LIMIT } from '../core/constants';
import type { AtRest } from '../infra/crypto/atRest';
import { loadBlob, putBlob } from '../infra/db/records';

/**
 * Replaces long arguments of the tool calls a model just wrote with blob references (content goes
 * to PostgreSQL, sealed by `atRest`); non-strings whose JSON is long travel as their JSON text. A
 * value the model wrote in the shape of a reference becomes its JSON text: only references made
 * here are ever expanded.
 */
export async function compactToolCalls(pool: Pool, calls: ToolCall[], atRest: AtRest): Promise<ToolCall[]> {
  return Promise.all(
    calls.map(async (call) => {
      const args: Record<string, unknown> = {};
      for (const [key, value] of Object.entries(call.args)) {
        const text = typeof value === 'string' ? value : JSON.stringify(value ?? null);
        if (text.length > TOOL_OUTPUT_HISTORY_LIMIT) {
          args[key] = { $blob: await putBlob(pool, text, atRest), size: text.length, ...(typeof value === 'string' ? {} : { json: true as const }) } satisfies BlobRef;
        } else {
          args[key] = looksLikeBlobRef(value) ? text : value;
        }
      }
      return { ...call, args };
    }),
  );
}

/** Puts the content back in place of blob references, for a tool, a check or a model that needs it. */
export async function expandArgs(pool: Pool, args: unknown, atRest: AtRest): Promise<unknown> {
  if (!args || typeof args !== 'object' || Array.isArray(args)) return args;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(args as Record<string, unknown>)) {
    if (!isBlobRef(value)) {
      out[key] = value;
      continue;
    }
    const content = await loadBlob(pool, value.$blob, atRest);
    out[key] = value.json ? JSON.parse(content) : content;
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
