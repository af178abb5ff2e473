import type { Criterion } from '../validation/criteria';

// Zod-free on purpose: workflow code imports this module, and every module a workflow imports is
// initialised again for each workflow run (see the no-restricted-imports rule for workflows/ in
// eslint.config.js).

/** A one-line, human-readable form of a criterion (for prompts and feedback). */
export function describeCriterion(c: Criterion): string {
  switch (c.kind) {
    case 'file_exists':
      return `file ${c.path} exists`;
    case 'file_contains':
      return `file ${c.path} contains "${c.text}"`;
    case 'file_matches':
      return `file ${c.path} matches /${c.pattern}/`;
    case 'output_contains':
      return `the final answer contains "${c.text}"`;
    case 'judged':
      return `judged: ${c.rubric}`;
    case 'json_schema':
      return `${c.path ? `file ${c.path}` : 'the final answer'} is JSON matching the given schema`;
    case 'tool_result_field':
      return `a ${c.tool} result has field ${c.field}${c.equals !== undefined ? ` = ${JSON.stringify(c.equals)}` : ''}`;
    case 'command_succeeds':
      return `command \`${[c.command, ...c.args].join(' ')}\` exits 0 within ${c.timeoutSeconds} s`;
  }
}

/** Argument names that say what a tool call acts on, most telling first. */
const TARGET_ARGS = ['path', 'file', 'filename', 'uri', 'url', 'name', 'key', 'id', 'query'];

/**
 * What a tool call acts on, for summaries: the first of its `path`, `file`, `uri`, `url`, `name`,
 * `key`, `id` or `query` arguments that is a short string ('' when none is).
 */
export function toolCallTarget(args: Record<string, unknown> | undefined): string {
  for (const key of TARGET_ARGS) {
    const value = args?.[key];
    if (typeof value === 'string' && value.trim()) return value.length > 80 ? `${value.slice(0, 79)}…` : value;
  }
  return '';
}

/** The attempt a call key belongs to (`…/a2/i1/c0` → 2), or undefined. */
export function attemptOfCallKey(callKey: string): number | undefined {
  const m = /\/a(\d+)\//.exec(callKey);
  return m ? Number(m[1]) : undefined;
}
