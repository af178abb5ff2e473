import { z } from 'zod';

/** A role profile as stored in the `roles` table: what an embodiment is told and allowed to do. */
export const RoleProfile = z.strictObject({
  name: z.string().regex(/^[a-z][a-z0-9-]{0,63}$/),
  version: z.string().regex(/^\d+\.\d+\.\d+$/, 'version must be semver (x.y.z)'),
  description: z.string().min(1),
  systemPrompt: z.string().min(1).max(32 * 1024),
  toneGuide: z.string().default(''),
  constraints: z.array(z.string().min(1)).default([]),
  tools: z.array(z.string().regex(/^[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*$/, 'tool grants are exact "server.tool" names')),
  confidenceThreshold: z.number().min(0).max(1).default(0.7),
  maxIterations: z.number().int().min(1).max(64).default(8),
});
export type RoleProfile = z.infer<typeof RoleProfile>;

/** The role used when the planner names an unknown role. */
export const DEFAULT_ROLE = 'generalist';

/** What loadRole returns: the pinned profile, and why it differs from the request if it does. */
export interface LoadedRole {
  profile: RoleProfile;
  requested: string;
  fallbackReason?: string;
}
