import semver from 'semver';
import { z } from 'zod';
import { GlobField } from './patternFields';
import { BUILTIN_TOOLS } from './tools';
import { checkText } from './text';

/**
 * Role Embodiment Profiles (REP): what an embodiment is told and allowed to do. A profile as
 * written (`RoleProfileSource`, may `extends` a parent) is resolved into a complete `RoleProfile`
 * at publish time, so a published version never changes when its parent does.
 */

/** The version of this schema; profiles say which one they were written for. */
export const ROLE_SCHEMA_VERSION = 1;

/** The role used when no requested role is available. */
export const DEFAULT_ROLE = 'generalist';

/** System prompts larger than this are rejected (bytes of UTF-8). */
export const SYSTEM_PROMPT_MAX_BYTES = 32 * 1024;

const ROLE_NAME = /^[a-z][a-z0-9-]{0,63}$/;
const TOOL_NAME = /^[a-z][a-z0-9_-]*\.[a-zA-Z][a-zA-Z0-9_-]*$/;

const RoleName = z.string().regex(ROLE_NAME, 'must be lower-case letters, digits and dashes, starting with a letter (at most 64)');

const SemVer = z.string().refine((v) => semver.valid(v) === v, 'must be a semantic version such as 1.2.0');

/** A glob pattern: `*` within a path segment, `**` across segments, `?` one character (matched in linear time, schemas/patterns.ts). */
const Glob = GlobField;

const ToolName = z.string().superRefine((s, ctx) => {
  if (/[*?]/.test(s)) ctx.addIssue({ code: 'custom', message: 'wildcard tool grants are not allowed; grant each tool by its exact name' });
  else if (!TOOL_NAME.test(s)) ctx.addIssue({ code: 'custom', message: 'must be an exact "server.tool" name, e.g. workspace.read' });
});

/** Limits on one argument of a granted tool; checked before the call is scheduled. */
export const ArgConstraint = z
  .strictObject({
    /** The argument (a path) must match one of these globs. */
    globs: z.array(Glob).min(1).optional(),
    /** The argument, as a string, may be at most this long. */
    maxLength: z.number().int().positive().optional(),
  })
  .refine((c) => c.globs !== undefined || c.maxLength !== undefined, 'an argument constraint needs globs or maxLength');
export type ArgConstraint = z.infer<typeof ArgConstraint>;

/** One permitted tool: its exact name, the access it is granted, optional argument limits. */
export const ToolGrant = z.strictObject({
  tool: ToolName,
  access: z.enum(['read', 'write'], 'must be "read" or "write"'),
  args: z.record(z.string().regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, 'must be an argument name'), ArgConstraint).optional(),
});
export type ToolGrant = z.infer<typeof ToolGrant>;

const ToolGrants = z.array(ToolGrant).superRefine((grants, ctx) => {
  const seen = new Set<string>();
  grants.forEach((g, i) => {
    if (seen.has(g.tool)) ctx.addIssue({ code: 'custom', path: [i, 'tool'], message: `${g.tool} is granted twice` });
    seen.add(g.tool);
    const builtin = BUILTIN_TOOLS.find((t) => t.name === g.tool);
    if (builtin?.sideEffect && g.access === 'read') {
      ctx.addIssue({ code: 'custom', path: [i, 'access'], message: `${g.tool} changes the workspace; it can only be granted with access "write"` });
    }
  });
});

/** How many estimated tokens an embodiment may take in: injected context, and all calls together. */
export const TokenBudget = z.strictObject({
  /** Injected context (system, role and task layers); dependency outputs are cut to fit. */
  context: z.number().int().min(256).max(1_000_000),
  /** Input + output tokens of all model calls of one embodiment; exceeding it ends it (BudgetExceeded). */
  total: z.number().int().positive().optional(),
});
export type TokenBudget = z.infer<typeof TokenBudget>;

/** Fields every profile can set; a profile without `extends` must set the required ones. */
const fields = {
  description: z.string().min(1).max(2_000),
  systemPrompt: z
    .string()
    .min(1)
    .refine((s) => Buffer.byteLength(s, 'utf8') <= SYSTEM_PROMPT_MAX_BYTES, {
      message: `must be at most ${SYSTEM_PROMPT_MAX_BYTES} bytes (32 KB)`,
    }),
  toneGuide: z.string().max(4_000),
  constraints: z.array(z.string().min(1).max(1_000)).max(100),
  tools: ToolGrants,
  confidenceThreshold: z.number().min(0, 'must be between 0 and 1').max(1, 'must be between 0 and 1'),
  /** Preferred model as `provider:model`; used when the worker has that provider configured. */
  modelPreference: z.string().regex(/^[a-z-]+:.+$/, 'must look like provider:model, e.g. openai:gpt-4o-mini'),
  maxIterations: z.number().int().min(1).max(64),
  /** Verification attempts (the agent loop retried with the verifier's feedback) before escalating; default 2. */
  maxAttempts: z.number().int().min(1).max(10),
  tokenBudget: TokenBudget,
  /** Where work goes when this role cannot finish it: another role, or `human`. */
  escalateTo: z.union([z.literal('human'), RoleName]),
  /** Globs matched (case-insensitively) against a subtask's title, for routing. */
  handles: z.array(Glob).max(50),
};

const SchemaVersion = z.literal(ROLE_SCHEMA_VERSION, `unsupported schema version; this MARE reads schemaVersion ${ROLE_SCHEMA_VERSION}`);

/** `parent` or `parent@range`: the role this one inherits from. */
const Extends = z.string().regex(/^[a-z][a-z0-9-]{0,63}(@[^@\s]+)?$/, 'must be a role name, optionally with @version or @range');

/** A profile as written in profile.json: with `extends`, every field but name and version is optional; no NUL or lone surrogate anywhere. */
export const RoleProfileSource = z
  .strictObject({
    schemaVersion: SchemaVersion.optional(),
    name: RoleName,
    version: SemVer,
    extends: Extends.optional(),
    description: fields.description.optional(),
    systemPrompt: fields.systemPrompt.optional(),
    toneGuide: fields.toneGuide.optional(),
    constraints: fields.constraints.optional(),
    tools: fields.tools.optional(),
    confidenceThreshold: fields.confidenceThreshold.optional(),
    modelPreference: fields.modelPreference.optional(),
    maxIterations: fields.maxIterations.optional(),
    maxAttempts: fields.maxAttempts.optional(),
    tokenBudget: fields.tokenBudget.optional(),
    escalateTo: fields.escalateTo.optional(),
    handles: fields.handles.optional(),
  })
  .superRefine(checkText);
export type RoleProfileSource = z.infer<typeof RoleProfileSource>;

/** A complete, resolved profile: what embodiments load. `extends` names the exact parent version used. */
export const RoleProfile = z
  .strictObject({
    schemaVersion: SchemaVersion,
    name: RoleName,
    version: SemVer,
    extends: z.string().optional(),
    description: fields.description,
    systemPrompt: fields.systemPrompt,
    toneGuide: fields.toneGuide,
    constraints: fields.constraints,
    tools: fields.tools,
    confidenceThreshold: fields.confidenceThreshold,
    modelPreference: fields.modelPreference.optional(),
    maxIterations: fields.maxIterations,
    maxAttempts: fields.maxAttempts.optional(),
    tokenBudget: fields.tokenBudget,
    escalateTo: fields.escalateTo.optional(),
    handles: fields.handles,
  })
  .superRefine((p, ctx) => {
    checkText(p, ctx);
    if (p.escalateTo === p.name) ctx.addIssue({ code: 'custom', path: ['escalateTo'], message: 'a role cannot escalate to itself' });
  });
export type RoleProfile = z.infer<typeof RoleProfile>;

/** What a profile gets when neither it nor its parents set a field. */
export const ROLE_DEFAULTS = {
  schemaVersion: ROLE_SCHEMA_VERSION,
  toneGuide: '',
  constraints: [] as string[],
  tools: [] as ToolGrant[],
  confidenceThreshold: 0.7,
  maxIterations: 8,
  tokenBudget: { context: 8_000 },
  handles: [] as string[],
};

/** How a role was resolved for one subtask. */
export type RoleSource = 'repository' | 'cache' | 'last-known-good';

/** How the role was chosen for one subtask. */
export type RoutedBy = 'planner' | 'handles' | 'default';

/** What loadRole returns: the pinned profile, how it was chosen, and why it differs from the request. */
export interface LoadedRole {
  profile: RoleProfile;
  requested: string;
  /** sha256 of the profile as published. */
  checksum?: string;
  source?: RoleSource;
  routedBy?: RoutedBy;
  fallbackReason?: string;
  /** Set while the role's supervisor throttles it: embodiments that may run at once. */
  throttleCap?: number;
}
