import type { z } from 'zod';

/**
 * Input hygiene: text that PostgreSQL, UTF-8 or JSON cannot carry faithfully is refused where it
 * enters (task requests, role profiles, tool arguments) instead of failing later in a retry loop.
 * A NUL character cannot be stored in a PostgreSQL text or jsonb value; a lone UTF-16 surrogate has
 * no UTF-8 encoding (it silently becomes U+FFFD, so checksums and signatures over it break).
 * Every other Unicode scalar value, noncharacters such as U+FFFE included, is accepted.
 */

/** Objects and arrays nested deeper than this are refused in checked values (and HTTP bodies). */
export const MAX_JSON_DEPTH = 64;

/** One problem found in a value: where (a path of keys) and what. */
export interface TextProblem {
  path: (string | number)[];
  message: string;
}

const hex = (code: number): string => `U+${code.toString(16).toUpperCase().padStart(4, '0')}`;

/** What is wrong with `s` as stored text, or undefined when nothing is: a NUL or a lone surrogate (first found). */
export function textProblem(s: string): string | undefined {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0) return `contains a NUL character (U+0000) at offset ${i}`;
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = s.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++;
        continue;
      }
      return `contains a lone surrogate (${hex(c)}) at offset ${i}: not valid Unicode text`;
    }
    if (c >= 0xdc00 && c <= 0xdfff) return `contains a lone surrogate (${hex(c)}) at offset ${i}: not valid Unicode text`;
  }
  return undefined;
}

/**
 * Every string (and object key) of a JSON-like value checked with `textProblem`, plus nesting
 * deeper than `maxDepth`. Walks iteratively, so a hostile depth cannot overflow the stack.
 */
export function textProblems(value: unknown, maxDepth = MAX_JSON_DEPTH): TextProblem[] {
  const problems: TextProblem[] = [];
  const stack: { value: unknown; path: (string | number)[] }[] = [{ value, path: [] }];
  while (stack.length && problems.length < 20) {
    const { value: v, path } = stack.pop()!;
    if (typeof v === 'string') {
      const p = textProblem(v);
      if (p) problems.push({ path, message: p });
    } else if (v !== null && typeof v === 'object') {
      if (path.length >= maxDepth) {
        problems.push({ path, message: `nested deeper than ${maxDepth} levels` });
        continue;
      }
      if (Array.isArray(v)) v.forEach((item, i) => stack.push({ value: item, path: [...path, i] }));
      else {
        for (const [k, item] of Object.entries(v)) {
          // The path names a bad key in its stored form, so the message itself is storable.
          const p = textProblem(k);
          const key = p ? storableText(k) : k;
          if (p) problems.push({ path: [...path, key], message: `field name ${p}` });
          stack.push({ value: item, path: [...path, key] });
        }
      }
    }
  }
  return problems;
}

/** A zod check (for `.superRefine`) adding one issue per text problem of the value. */
export function checkText(value: unknown, ctx: z.core.$RefinementCtx): void {
  for (const p of textProblems(value)) ctx.addIssue({ code: 'custom', path: p.path, message: p.message, input: value });
}

/**
 * A copy of `value` that PostgreSQL can store: NUL and lone surrogates replaced with U+FFFD. For
 * records of what happened (the arguments a model wrote), never for content acted upon.
 */
export function storableText<T>(value: T): T {
  // A lone surrogate is one not paired by the lookahead/lookbehind; strings are rebuilt only when needed.
  const fix = (s: string): string =>
    textProblem(s) === undefined ? s : s.replaceAll('\u0000', '\uFFFD').replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, '\uFFFD');
  const walk = (v: unknown, depth: number): unknown => {
    if (typeof v === 'string') return fix(v);
    if (v === null || typeof v !== 'object' || depth > MAX_JSON_DEPTH) return depth > MAX_JSON_DEPTH ? '[nested too deeply]' : v;
    if (Array.isArray(v)) return v.map((item) => walk(item, depth + 1));
    return Object.fromEntries(Object.entries(v).map(([k, item]) => [fix(k), walk(item, depth + 1)]));
  };
  return walk(value, 0) as T;
}
