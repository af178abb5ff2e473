import type { TokenUsage } from '../validation/model';

// Zod-free on purpose, like ./describe and ./constants: workflow code imports these (see the
// no-restricted-imports rule for workflows/ in eslint.config.js).

export const ZERO_USAGE: TokenUsage = { inputTokens: 0, outputTokens: 0 };

/** Adds token usage. */
export function addUsage(a: TokenUsage, b: TokenUsage): TokenUsage {
  return { inputTokens: a.inputTokens + b.inputTokens, outputTokens: a.outputTokens + b.outputTokens };
}
