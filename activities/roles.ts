import { ApplicationFailure } from '@temporalio/common';
import { DEFAULT_ROLE, RoleProfile, type LoadedRole } from '../schemas';
import type { ActivityDeps } from './deps';
import { audit } from './store';

/** Role profiles from PostgreSQL; the version read here is pinned for the whole embodiment. */
export function createRoleActivities({ pool }: Pick<ActivityDeps, 'pool'>) {
  async function latest(name: string): Promise<RoleProfile | undefined> {
    const { rows } = await pool.query<{ profile: unknown }>(
      `SELECT profile FROM roles WHERE name = $1 ORDER BY string_to_array(version, '.')::int[] DESC LIMIT 1`,
      [name],
    );
    if (!rows[0]) return undefined;
    const parsed = RoleProfile.safeParse(rows[0].profile);
    if (!parsed.success) {
      throw ApplicationFailure.nonRetryable(`stored role "${name}" is invalid: ${parsed.error.message}`, 'InvalidRoleProfile');
    }
    return parsed.data;
  }

  return {
    /** Loads the latest version of a role; an unknown role falls back to the generalist, with the reason. */
    async loadRole(input: { taskId: string; subtaskId: string; name: string }): Promise<LoadedRole> {
      const found = await latest(input.name);
      if (found) return { profile: found, requested: input.name };
      const fallback = await latest(DEFAULT_ROLE);
      if (!fallback) throw ApplicationFailure.nonRetryable(`default role "${DEFAULT_ROLE}" is missing`, 'RoleNotFound');
      const fallbackReason = `role "${input.name}" does not exist; using "${DEFAULT_ROLE}"`;
      await audit(pool, input.taskId, 'role.fallback', { subtaskId: input.subtaskId, requested: input.name, reason: fallbackReason });
      return { profile: fallback, requested: input.name, fallbackReason };
    },

    /** Names and descriptions of the available roles, for the planner's prompt. */
    async listRoles(): Promise<{ name: string; description: string; tools: string[] }[]> {
      const { rows } = await pool.query<{ profile: RoleProfile }>(
        `SELECT DISTINCT ON (name) profile FROM roles ORDER BY name, string_to_array(version, '.')::int[] DESC`,
      );
      return rows.map((r) => ({ name: r.profile.name, description: r.profile.description, tools: r.profile.tools }));
    },
  };
}
