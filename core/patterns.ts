import { RE2JS } from 're2js';

/**
 * Patterns and globs written by people MARE does not fully trust (policy authors, role authors,
 * planners, API clients, JSON schemas) and matched against text a model wrote. They all run on
 * RE2 (the `re2js` port): matching takes time linear in the subject whatever the pattern, so no
 * pattern can stall a worker (ReDoS). RE2 has no lookaround and no backreferences; such patterns are
 * refused where they are written. Pure and deterministic: workflow code uses these too.
 */

/** A pattern or glob that RE2 cannot run (lookaround, backreference, bad syntax). */
export class UnsafePatternError extends Error {
  constructor(
    readonly source: string,
    reason: string,
  ) {
    super(`"${source}" is not a pattern MARE can run in linear time (RE2 syntax, no lookaround or backreferences): ${reason}`);
    this.name = 'UnsafePatternError';
  }
}

// Compiled patterns, so a policy set evaluated on every call compiles each once. Bounded: cleared
// when full (a miss only costs a compilation, never a different result).
const CACHE_LIMIT = 1_000;
const compiled = new Map<string, RE2JS>();

function compile(source: string, flags: number): RE2JS {
  const key = `${flags}:${source}`;
  let re = compiled.get(key);
  if (!re) {
    try {
      re = RE2JS.compile(source, flags);
    } catch (err) {
      throw new UnsafePatternError(source, (err as Error).message);
    }
    if (compiled.size >= CACHE_LIMIT) compiled.clear();
    compiled.set(key, re);
  }
  return re;
}

/** Options of a search: `multiline` makes `^` and `$` match at line breaks. */
export interface PatternOptions {
  multiline?: boolean;
}

/** Whether `source` (RE2 syntax) occurs anywhere in `text`. Throws UnsafePatternError when it cannot be compiled. */
export function patternFound(source: string, text: string, opts: PatternOptions = {}): boolean {
  return compile(source, opts.multiline ? RE2JS.MULTILINE : 0)
    .matcher(text)
    .find();
}

/** Whether all of `text` matches `source` (RE2 syntax). */
export function patternMatchesWhole(source: string, text: string): boolean {
  return compile(source, 0).matches(text);
}

/** Why `source` cannot be used as a pattern, or undefined when it can. */
export function patternError(source: string): string | undefined {
  try {
    compile(source, 0);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

/** How a glob treats `/`: paths (default: `*` and `?` stay within a segment) or plain text (`*` crosses `/`). */
export interface GlobOptions {
  crossSlashes?: boolean;
}

/** Whether `text` matches the glob. Leading `!` negates; `**`, `*`, `?`, `[...]`, `{a,b}` and `\` escapes as in shells. */
export function globMatches(glob: string, text: string, opts: GlobOptions = {}): boolean {
  if (glob.startsWith('!') && glob.length > 1) return !globMatches(glob.slice(1), text, opts);
  return compile(globToRe2(glob, opts), RE2JS.DOTALL).matches(text);
}

/** Why `glob` cannot be used, or undefined when it can. */
export function globError(glob: string): string | undefined {
  try {
    compile(globToRe2(glob.startsWith('!') ? glob.slice(1) : glob, {}), RE2JS.DOTALL);
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

const REGEX_SPECIAL = /[\\^$.|?*+()[\]{}]/g;
const escapeRe = (s: string): string => s.replace(REGEX_SPECIAL, '\\$&');

/**
 * Translates a glob into an RE2 source matching the whole text. `**` as a whole path segment spans
 * any number of segments (`docs/**` matches `docs` and `docs/a/b`; `**\/x` matches `x`); dotfiles
 * match like other names.
 */
export function globToRe2(glob: string, opts: GlobOptions = {}): string {
  const any = opts.crossSlashes ? '.*' : '[^/]*';
  const one = opts.crossSlashes ? '.' : '[^/]';
  let out = '';
  for (let i = 0; i < glob.length; ) {
    const c = glob[i]!;
    const segmentStart = i === 0 || glob[i - 1] === '/';
    if (c === '\\') {
      out += escapeRe(glob[i + 1] ?? '\\');
      i += 2;
    } else if (glob.startsWith('**', i) && segmentStart && (i + 2 === glob.length || glob[i + 2] === '/')) {
      // `**/` : any number of leading segments (none included); a final `**`: anything.
      if (i + 2 === glob.length) {
        out += '.*';
        i += 2;
      } else {
        out += '(?:.*/)?';
        i += 3;
      }
    } else if (c === '/' && glob.startsWith('/**', i) && i + 3 === glob.length) {
      out += '(?:/.*)?';
      i += 3;
    } else if (c === '*') {
      while (glob[i] === '*') i++;
      out += any;
    } else if (c === '?') {
      out += one;
      i++;
    } else if (c === '[') {
      const end = classEnd(glob, i);
      if (end < 0) {
        out += '\\[';
        i++;
      } else {
        let body = glob.slice(i + 1, end);
        if (body.startsWith('!')) body = `^${body.slice(1)}`;
        out += `[${body}]`;
        i = end + 1;
      }
    } else if (c === '{') {
      const end = braceEnd(glob, i);
      const alternatives = end < 0 ? [] : splitTopLevel(glob.slice(i + 1, end));
      if (alternatives.length < 2) {
        out += '\\{';
        i++;
      } else {
        out += `(?:${alternatives.map((a) => globToRe2(a, opts)).join('|')})`;
        i = end + 1;
      }
    } else {
      out += escapeRe(c);
      i++;
    }
  }
  return out;
}

/** Index of the `]` closing the class opened at `start`, or -1 (a `]` first in the class is literal). */
function classEnd(glob: string, start: number): number {
  let i = start + 1;
  if (glob[i] === '!' || glob[i] === '^') i++;
  if (glob[i] === ']') i++;
  for (; i < glob.length; i++) {
    if (glob[i] === '\\') i++;
    else if (glob[i] === ']') return i;
  }
  return -1;
}

/** Index of the `}` closing the brace opened at `start`, or -1. */
function braceEnd(glob: string, start: number): number {
  let depth = 0;
  for (let i = start; i < glob.length; i++) {
    if (glob[i] === '\\') i++;
    else if (glob[i] === '{') depth++;
    else if (glob[i] === '}' && --depth === 0) return i;
  }
  return -1;
}

/** Splits a brace body on its top-level commas. */
function splitTopLevel(body: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let from = 0;
  for (let i = 0; i < body.length; i++) {
    if (body[i] === '\\') i++;
    else if (body[i] === '{') depth++;
    else if (body[i] === '}') depth--;
    else if (body[i] === ',' && depth === 0) {
      parts.push(body.slice(from, i));
      from = i + 1;
    }
  }
  parts.push(body.slice(from));
  return parts;
}
