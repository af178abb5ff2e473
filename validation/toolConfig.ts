import { RE2JS } from 're2js';
import { z } from 'zod';

/** `{{args.x}}`, `{{snapshot}}` and `{{key}}` in these arguments are filled in when the step runs. */
const UndoCall = z.strictObject({
  /** A tool of the same server (its bare name). */
  tool: z.string().min(1),
  args: z.record(z.string(), z.unknown()).default({}),
});

/**
 * How to undo a side-effecting MCP tool: `snapshot` runs before the call and what it returns is
 * kept (an error result means "nothing was there"); the undo runs `restore` with `{{snapshot}}`
 * when something was there, else `remove`.
 */
const UndoConfig = z.strictObject({
  snapshot: UndoCall,
  restore: UndoCall,
  remove: UndoCall.optional(),
});

const RetryConfig = z.strictObject({
  maximumAttempts: z.number().int().min(1).max(20).default(3),
  initialIntervalMs: z.number().int().min(10).default(1_000),
  maximumIntervalMs: z.number().int().min(10).default(20_000),
  backoffCoefficient: z.number().min(1).max(10).default(2),
});
export type ToolRetryConfig = z.infer<typeof RetryConfig>;

const McpToolConfig = z
  .strictObject({
    /** `read` tools have no side effect; `write` tools change the world and need an undo (or `irreversible`). */
    access: z.enum(['read', 'write']),
    timeoutMs: z.number().int().min(100).max(3_600_000).optional(),
    retry: RetryConfig.optional(),
    undo: UndoConfig.optional(),
    /** A write without an undo: allowed only after a person approves each call. */
    irreversible: z.boolean().default(false),
    /** Estimated cost of one call in US dollars, for policies. */
    cost: z.number().min(0).default(0),
    /** The argument through which this tool accepts an idempotency key, if it has one. */
    idempotencyKeyArg: z.string().min(1).optional(),
  })
  .refine((t) => t.access === 'write' || (!t.undo && !t.irreversible), {
    message: 'a read tool has no side effect, so it takes neither undo nor irreversible',
  })
  .refine((t) => !(t.undo && t.irreversible), { message: 'a tool with an undo is not irreversible' });
export type McpToolConfig = z.infer<typeof McpToolConfig>;

const SERVER_NAME = /^[a-z][a-z0-9-]{0,31}$/;
const TOOL_NAME = /^[A-Za-z0-9_-]{1,64}$/;

const McpServerConfig = z
  .strictObject({
    /** stdio: the command to start, its arguments, extra environment and working directory. */
    command: z.string().min(1).optional(),
    args: z.array(z.string()).default([]),
    env: z.record(z.string(), z.string()).default({}),
    cwd: z.string().optional(),
    /** streamable HTTP: the server's URL and extra request headers. */
    url: z.url({ protocol: /^https?$/ }).optional(),
    headers: z.record(z.string(), z.string()).default({}),
    connectTimeoutMs: z.number().int().min(100).max(300_000).default(10_000),
    /** Default time limit of one call of this server's tools. */
    timeoutMs: z.number().int().min(100).max(3_600_000).default(60_000),
    retry: RetryConfig.default(RetryConfig.parse({})),
    /** The tools MARE may use; tools the server lists but this map leaves out are never offered. */
    tools: z.record(z.string().regex(TOOL_NAME, 'must be a tool name of letters, digits, _ and -'), McpToolConfig),
  })
  .refine((s) => (s.command === undefined) !== (s.url === undefined), { message: 'set exactly one of command (stdio) or url (streamable HTTP)' });
export type McpServerConfig = z.infer<typeof McpServerConfig>;

const VERIFY_COMMAND_EXAMPLE = '{ "command": "npm", "args": ["test"] } or { "command": "node", "args": ["--test", "tests/[a-z0-9_/-]+\\\\.js"] }';

/** An argument pattern: RE2 syntax (linear-time matching), matched against the whole argument. */
const ArgPattern = z
  .string()
  .min(1)
  .max(1_000)
  .superRefine((p, ctx) => {
    try {
      RE2JS.compile(p);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `is not an RE2 pattern: ${(err as Error).message}` });
    }
  });

/** One allowed argument vector of `command_succeeds`: the command and a pattern per argument position. */
const VerifyCommand = z.strictObject({
  command: z.string().regex(/^[A-Za-z0-9._+-]+$/, 'must be a command name, not a path or a shell expression'),
  args: z.array(ArgPattern).max(50).default([]),
});
export type VerifyCommand = z.infer<typeof VerifyCommand>;

// A bare name used to allow the command with any arguments (`node -e <anything>`): refused, not reinterpreted.
const VerifyCommandEntry = z.unknown().transform((v, ctx): VerifyCommand => {
  if (typeof v === 'string') {
    ctx.addIssue({
      code: 'custom',
      message: `a bare command name ("${v}") is no longer accepted: allow whole argument vectors, e.g. ${VERIFY_COMMAND_EXAMPLE} (each argument must fully match the pattern at its position)`,
    });
    return z.NEVER;
  }
  const parsed = VerifyCommand.safeParse(v);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) ctx.addIssue({ code: 'custom', message: issue.message, path: issue.path });
    return z.NEVER;
  }
  return parsed.data;
});

/** The tools configuration file (MARE_TOOLS_CONFIG): MCP servers, secrets to redact, model price. */
export const ToolsConfig = z.strictObject({
  servers: z
    .record(
      z.string().regex(SERVER_NAME, 'must be lower-case letters, digits and dashes, starting with a letter').refine((n) => n !== 'workspace', 'is reserved for the built-in tools'),
      McpServerConfig,
    )
    .default({}),
  secrets: z
    .strictObject({
      /** Regular expressions of secrets to redact, in addition to the built-in shapes. */
      patterns: z.array(z.string()).default([]),
      /** Environment variables whose values are secret, in addition to *_KEY, *_TOKEN, *_SECRET, … */
      env: z.array(z.string()).default([]),
    })
    .default({ patterns: [], env: [] }),
  /** Price of 1,000 model tokens in US dollars, for the estimated cost policies see. */
  modelPricePer1kTokens: z.number().min(0).default(0),
  /**
   * Argument vectors `command_succeeds` criteria may run, sandboxed, in a task workspace: a command
   * (a name found on the worker's PATH) and one RE2 pattern per argument; none by default.
   */
  verifyCommands: z.array(VerifyCommandEntry).default([]),
});
export type ToolsConfig = z.infer<typeof ToolsConfig>;
