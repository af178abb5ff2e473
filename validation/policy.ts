import semver from 'semver';
import { z } from 'zod';
import { APPROVAL_DEFAULTS } from '../core/constants';
import { GlobField, PatternField } from './patternFields';

/** What a policy says about one call. */
export type PolicyVerdict = 'allow' | 'deny' | 'escalate';

/** Kinds of sensitive data detected in a call's arguments or in the context a model is given. */
export type Sensitivity = 'secret' | 'pii';

/** What escalation waits for: a person's decision, until the deadline; then `onTimeout` applies. */
export interface ApprovalTerms {
  timeoutSeconds: number;
  onTimeout: 'allow' | 'deny';
}

/** Everything a policy condition can look at; built deterministically in workflow code. */
export interface PolicyInput {
  kind: 'tool' | 'model';
  /** `server.tool` for a tool call; the model name (or preference) for a model call. */
  target: string;
  /** The tool call's arguments (tool calls only). */
  args?: Record<string, unknown>;
  role: string;
  tenant: string;
  /** Estimated cost in US dollars: the tool's configured cost, or estimated tokens × the model price. */
  estimatedCost: number;
  sensitivity: Sensitivity[];
}

/** The outcome of evaluating the policies in force on one call. */
export interface PolicyDecision {
  decision: PolicyVerdict;
  reason: string;
  /** `name@version` of the policy whose rule decided; absent when no rule matched. */
  policy?: string;
  rule?: string;
  /** Set when decision is `escalate`. */
  approval?: ApprovalTerms;
}

/** The version of the policy document schema; documents say which one they were written for. */
export const POLICY_SCHEMA_VERSION = 1;

/** Longest approval wait a rule may ask for: one week. */
export const POLICY_APPROVAL_MAX_SECONDS = 604_800;

// Names follow the rule of role names (schemas/role.ts).
const POLICY_NAME = /^[a-z][a-z0-9-]{0,63}$/;
const RULE_ID = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;
const ARG_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

const NonEmptyString = z.string().min(1);

const Glob = GlobField;

/** A custom message for a wrong value, and "is required" for a missing one. */
const say = (message: string) => ({ error: (issue: { input?: unknown }) => (issue.input === undefined ? 'is required' : message) });

/** One argument's condition: every field present must match; a missing argument never matches. */
export const PolicyArgCondition = z
  .strictObject({
    /** Globs over the argument (non-strings as JSON text); any one matching is enough. */
    globs: z.array(Glob).min(1).optional(),
    /** An RE2 regular expression searched for in the argument (unanchored, no flags); matched in linear time. */
    pattern: PatternField.optional(),
    /** The argument is exactly this value (same type and value). */
    equals: z.union([z.string(), z.number(), z.boolean()], say('must be a string, a number or a boolean')).optional(),
  })
  .refine((c) => c.globs !== undefined || c.pattern !== undefined || c.equals !== undefined, 'an argument condition needs globs, pattern or equals');
export type PolicyArgCondition = z.infer<typeof PolicyArgCondition>;

/** When a rule applies: every field present must match; an empty condition matches every call. */
export const PolicyCondition = z.strictObject({
  kinds: z.array(z.enum(['tool', 'model'], say('must be "tool" or "model"'))).min(1).optional(),
  /** Globs over the tool name (`fs.*`) or the model name. */
  targets: z.array(Glob).min(1).optional(),
  roles: z.array(NonEmptyString).min(1).optional(),
  tenants: z.array(NonEmptyString).min(1).optional(),
  args: z.record(z.string().regex(ARG_NAME, 'must be an argument name'), PolicyArgCondition).optional(),
  /** Matches when the call's estimated cost (US dollars) is at least this. */
  minEstimatedCost: z.number().min(0, 'must be at least 0').optional(),
  /** Matches when any of these kinds of sensitive data was detected. */
  sensitivity: z.array(z.enum(['secret', 'pii'], say('must be "secret" or "pii"'))).min(1).optional(),
});
export type PolicyCondition = z.infer<typeof PolicyCondition>;

/** What an escalated call waits for; only on `escalate` rules. */
export const PolicyApproval = z.strictObject({
  timeoutSeconds: z
    .number()
    .int('must be a whole number of seconds')
    .min(1, `must be between 1 and ${POLICY_APPROVAL_MAX_SECONDS} seconds`)
    .max(POLICY_APPROVAL_MAX_SECONDS, `must be between 1 and ${POLICY_APPROVAL_MAX_SECONDS} seconds`)
    .default(APPROVAL_DEFAULTS.timeoutSeconds),
  onTimeout: z.enum(['allow', 'deny'], say('must be "allow" or "deny"')).default(APPROVAL_DEFAULTS.onTimeout),
});

/** One rule: when it matches, its decision is the policy's verdict on the call. */
export const PolicyRule = z
  .strictObject({
    id: z.string().max(64).regex(RULE_ID, 'must be lower-case letters and digits in dash-separated words, starting with a letter (at most 64)'),
    description: z.string().max(2_000).optional(),
    when: PolicyCondition,
    decision: z.enum(['allow', 'deny', 'escalate'], say('must be "allow", "deny" or "escalate"')),
    reason: z.string().min(1, 'must not be empty').max(2_000),
    approval: PolicyApproval.optional(),
  })
  .superRefine((rule, ctx) => {
    if (rule.approval && rule.decision !== 'escalate') {
      ctx.addIssue({ code: 'custom', path: ['approval'], message: `only an "escalate" rule waits for approval (this rule says "${rule.decision}")` });
    }
  });
export type PolicyRule = z.infer<typeof PolicyRule>;

/** A policy as published: a named, versioned list of rules, evaluated in order. */
export const PolicyDocument = z.strictObject({
  schemaVersion: z.literal(POLICY_SCHEMA_VERSION, say(`unsupported schema version; this MARE reads schemaVersion ${POLICY_SCHEMA_VERSION}`)),
  name: z.string().regex(POLICY_NAME, 'must be lower-case letters, digits and dashes, starting with a letter (at most 64)'),
  version: z.string().refine((v) => semver.valid(v) === v, 'must be a semantic version such as 1.2.0'),
  description: z.string().max(2_000).optional(),
  rules: z
    .array(PolicyRule)
    .min(1, 'a policy needs at least one rule')
    .superRefine((rules, ctx) => {
      const seen = new Set<string>();
      rules.forEach((r, i) => {
        if (seen.has(r.id)) ctx.addIssue({ code: 'custom', path: [i, 'id'], message: `rule id "${r.id}" is used twice` });
        seen.add(r.id);
      });
    }),
});
export type PolicyDocument = z.infer<typeof PolicyDocument>;

/** A policy version in force, as workflows pin it: `checksum` is the sha256 of its canonical JSON. */
export interface LoadedPolicy {
  name: string;
  version: string;
  checksum: string;
  document: PolicyDocument;
}
