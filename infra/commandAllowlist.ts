/**
 * The operator's allowlist of `command_succeeds` argument vectors (the tools configuration's
 * `verifyCommands`). The planner, a model, writes the criteria; an entry names a command and one
 * pattern per argument, so `node` for `node --test tests/x.js` does not also allow `node -e <code>`.
 *
 * A criterion runs only when its command equals an entry's command, it has exactly as many
 * arguments as the entry has patterns, and every argument fully matches the pattern at its
 * position. Patterns are RE2 syntax compiled with re2js (linear time: a pattern cannot be made to
 * backtrack on a model-written argument); `.` does not match a newline.
 */
import { RE2JS } from 're2js';
import type { VerifyCommand } from '../validation/toolConfig';

type Compiled = { command: string; args: RE2JS[] };

// Entries are read from a frozen configuration; compile each pattern once per entry object.
const compiledEntries = new WeakMap<VerifyCommand, Compiled>();

function compiled(entry: VerifyCommand): Compiled {
  let c = compiledEntries.get(entry);
  if (!c) {
    c = { command: entry.command, args: entry.args.map((p) => RE2JS.compile(p)) };
    compiledEntries.set(entry, c);
  }
  return c;
}

/** Whether some entry allows exactly this command with exactly these arguments. */
export function commandAllowed(entries: readonly VerifyCommand[], command: string, args: readonly string[]): boolean {
  return entries.some((entry) => {
    if (entry.command !== command || entry.args.length !== args.length) return false;
    const c = compiled(entry);
    return c.args.every((pattern, i) => pattern.matches(args[i]!));
  });
}

/** The entries as the operator would write them on a command line (`node --test <tests/...>`), for messages. */
export function describeAllowed(entries: readonly VerifyCommand[]): string {
  return entries.length ? entries.map((e) => [e.command, ...e.args.map((p) => `<${p}>`)].join(' ')).join(', ') : 'none';
}
