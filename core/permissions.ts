import { BUILTIN_TOOL_ACCESS } from './constants';
import { globMatches } from './patterns';
import type { RoleProfile, ToolCall, ToolGrant } from '../validation';

/** The decision on one model-requested tool call: allowed, or refused with the reason. */
export type Permission = { allowed: true; grant: ToolGrant } | { allowed: false; reason: string };

/**
 * The role's grants. Profiles pinned by runs started before grants had access levels list bare
 * tool names; those keep the access the tool needs, so their histories replay unchanged.
 */
export function toolGrants(role: RoleProfile): ToolGrant[] {
  return (role.tools as (ToolGrant | string)[]).map((g) => (typeof g === 'string' ? { tool: g, access: BUILTIN_TOOL_ACCESS[g] ?? 'write' } : g));
}

/**
 * Complete mediation, in workflow code: a call runs only if the role grants the tool, at the
 * access level the tool needs (`needs`: from the tool catalog; built-in tools know theirs; anything
 * else is taken as writing), with arguments inside the grant's constraints. Deterministic.
 */
export function checkToolCall(role: RoleProfile, call: ToolCall, needs: 'read' | 'write' = BUILTIN_TOOL_ACCESS[call.name] ?? 'write'): Permission {
  const grant = toolGrants(role).find((g) => g.tool === call.name);
  if (!grant) return { allowed: false, reason: `role "${role.name}" may not use tool "${call.name}"` };
  if (needs === 'write' && grant.access !== 'write') {
    return { allowed: false, reason: `role "${role.name}" has only read access to "${call.name}", which writes` };
  }
  for (const [arg, limit] of Object.entries(grant.args ?? {})) {
    const value = call.args[arg];
    const text = typeof value === 'string' ? value : JSON.stringify(value ?? '');
    if (limit.maxLength !== undefined && text.length > limit.maxLength) {
      return { allowed: false, reason: `argument "${arg}" of "${call.name}" is longer than the ${limit.maxLength} characters role "${role.name}" allows` };
    }
    // A glob only vouches for a normalised path: `docs/../secret` would match `docs/**`.
    const normalised = !text.split('/').some((seg) => seg === '..' || seg === '.' || seg === '');
    if (limit.globs && !(normalised && limit.globs.some((glob) => safeGlob(glob, text)))) {
      const shown = text.length > 200 ? `${text.slice(0, 200)}… (${text.length} characters)` : text;
      return { allowed: false, reason: `argument "${arg}" of "${call.name}" ("${shown}") is outside ${limit.globs.join(', ')} for role "${role.name}"` };
    }
  }
  return { allowed: true, grant };
}

/** A grant glob RE2 cannot run (a profile stored before globs were checked) matches nothing: the call is refused. */
function safeGlob(glob: string, text: string): boolean {
  try {
    return globMatches(glob, text);
  } catch {
    return false;
  }
}
