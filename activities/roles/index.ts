import type { Pool } from 'pg';
import type { Logger } from 'pino';
import { bootstrapRoles } from '../../infra/roles/bootstrap';
import { type RoleKeyring } from '../../infra/crypto/roleCrypto';
import { roleCacheOptionsFromEnv, RoleService, type RoleServiceOptions } from '../../infra/roles/roleService';

export { createRoleActivities, type LoadRoleInput } from './activities';
export { bootstrapRoles, bundledRolesDir } from '../../infra/roles/bootstrap';
export * from '../../infra/crypto/roleCrypto';
export * from '../../infra/roles/directory';
export * from '../../infra/db/roleRepository';
export type { Actor } from '../../infra/db/documentStore';
export * from './router';
export * from '../../infra/roles/roleService';
export * from '../../validation/roleProfile';

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
