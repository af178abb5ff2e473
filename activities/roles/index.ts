import type { Pool } from 'pg';
import type { Logger } from 'pino';
import { bootstrapRoles } from './bootstrap';
import { type RoleKeyring } from './crypto';
import { roleCacheOptionsFromEnv, RoleService, type RoleServiceOptions } from './service';

export { createRoleActivities, type LoadRoleInput } from './activities';
export { bootstrapRoles, bundledRolesDir } from './bootstrap';
export * from './crypto';
export * from './directory';
export * from './repository';
export * from './router';
export * from './service';
export * from './validate';

/**
 * The role service a worker uses: bundled defaults and first-release roles published, change
 * notifications listened to. Cache settings come from the environment unless given.
 */
export async function openRoleService(opts: { pool: Pool; keyring: RoleKeyring; logger?: Logger } & Partial<RoleServiceOptions>): Promise<RoleService> {
  const service = new RoleService({ ...roleCacheOptionsFromEnv(), ...opts });
  await bootstrapRoles(service.repository, opts.logger);
  await service.start();
  return service;
}
