import { ApplicationFailure } from '@temporalio/common';
import type { Logger } from 'pino';
import { DEFAULT_ROLE, type LoadedRole } from '../../validation';
import { DEFAULT_TENANT } from '../../core/constants';
import type { ActivityDeps } from '../deps';
import { audit } from '../../infra/db/records';
import { activityKey } from '../idempotency';
import { RoleIntegrityError, UnknownRoleKeyError } from '../../infra/crypto/roleCrypto';
import { availability, routeSubtask } from './router';
import { RoleRepositoryUnavailableError } from '../../infra/roles/roleService';

/** Input of loadRole: the planner's suggestion and the subtask title the router matches `handles` against. */
export interface LoadRoleInput {
  taskId: string;
  subtaskId: string;
  name: string;
  title?: string;
  /** The task's tenant: a role suspended or throttled for this tenant is treated so (default: "default"). */
  tenant?: string;
}

/** Role activities: routing and loading (the version read here is pinned for the whole embodiment). */
export function createRoleActivities({ pool, roles, logger }: Pick<ActivityDeps, 'pool' | 'roles' | 'logger'>) {
  return {
    /**
     * Routes the subtask to a role and loads that role's latest version. The planner's role is
     * used if available; an unknown, deprecated or suspended (for every tenant or for the task's) one is replaced (by `handles`, else
     * the generalist) and the reason is returned and audited. A profile failing its integrity check
     * is never used: the subtask fails.
     */
    async loadRole(input: LoadRoleInput): Promise<LoadedRole> {
      try {
        const { candidates, note: staleCandidates } = await roles.candidates(input.tenant ?? DEFAULT_TENANT);
        const route = routeSubtask({ requested: input.name, title: input.title ?? '', candidates });
        let resolved = await roles.resolve(route.name);
        let reason = route.reason;
        if (!resolved && route.name !== DEFAULT_ROLE) {
          reason = `role "${route.name}" vanished while routing; using the default "${DEFAULT_ROLE}"`;
          resolved = await roles.resolve(DEFAULT_ROLE);
        }
        if (!resolved) throw ApplicationFailure.nonRetryable(`default role "${DEFAULT_ROLE}" is missing from the role repository`, 'RoleNotFound');
        const notes = [reason, resolved.note ?? staleCandidates].filter(Boolean);
        const loaded: LoadedRole = {
          profile: resolved.role.profile,
          requested: input.name,
          checksum: resolved.role.checksum,
          source: resolved.source,
          routedBy: reason && route.routedBy === 'planner' ? 'default' : route.routedBy,
          ...(notes.length ? { fallbackReason: notes.join('; ') } : {}),
        };
        // From the tenant's (cached, change-notified) routing candidates: a throttle applies to its next embodiment.
        const throttleCap = candidates.find((c) => c.name === loaded.profile.name)?.throttleCap;
        if (throttleCap) loaded.throttleCap = throttleCap;
        await bestEffortAudit(logger, () =>
          audit(pool, input.taskId, 'role.loaded', {
            subtaskId: input.subtaskId,
            requested: input.name,
            role: `${loaded.profile.name}@${loaded.profile.version}`,
            checksum: loaded.checksum,
            source: loaded.source,
            routedBy: loaded.routedBy,
            reason: loaded.fallbackReason ?? null,
          }, activityKey()),
        );
        return loaded;
      } catch (err) {
        if (err instanceof RoleIntegrityError || err instanceof UnknownRoleKeyError) {
          await bestEffortAudit(logger, () => audit(pool, input.taskId, 'role.rejected', { subtaskId: input.subtaskId, role: err.role, error: err.message }, activityKey()));
          throw ApplicationFailure.nonRetryable(err.message, err.name);
        }
        if (err instanceof RoleRepositoryUnavailableError) throw ApplicationFailure.retryable(err.message, err.name);
        throw err;
      }
    },

    /** Names, descriptions and tools of the roles available for new work, for the planner's prompt. */
    async listRoles(): Promise<{ name: string; description: string; tools: string[] }[]> {
      const { candidates } = await roles.candidates();
      return candidates.filter((c) => !availability(c) && !c.unreadable).map(({ name, description, tools }) => ({ name, description, tools }));
    },
  };
}

/** An audit row that must not fail the step when PostgreSQL is the thing that is down. */
async function bestEffortAudit(logger: Logger, write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (err) {
    logger.warn({ err }, 'audit row not written');
  }
}

