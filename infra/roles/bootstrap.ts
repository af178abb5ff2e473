import path from 'node:path';
import type { Pool } from 'pg';
import type { Logger } from 'pino';
import { BUILTIN_TOOLS, ROLE_SCHEMA_VERSION } from '../../validation';
import { projectRoot } from '../paths';
import { importRoleDirectory, type ImportReport } from './directory';
import { RoleRepositoryError, type RoleRepository } from '../db/roleRepository';
import type { RoleKeyring } from '../crypto/roleCrypto';
import { roleCacheOptionsFromEnv, RoleService, type RoleServiceOptions } from './roleService';
import { parseRoleSource, resolveRoleProfile } from '../../validation/roleProfile';

/** The default roles shipped with MARE, in the seed layout. */
export function bundledRolesDir(): string {
  return path.join(projectRoot(), 'reps');
}

const SYSTEM = { actor: 'mare', reason: 'bundled default roles' };

/**
 * Makes the repository ready for workers: moves rows of the first release's plaintext `roles`
 * table into the encrypted repository (and deletes them), then publishes any bundled default role
 * version that is missing. Safe to run from many workers at once.
 */
export async function bootstrapRoles(repo: RoleRepository, logger?: Logger): Promise<{ legacy: string[]; defaults: ImportReport }> {
  const legacy = await migrateLegacyRoles(repo);
  if (legacy.length) logger?.info({ roles: legacy }, 'moved plaintext roles into the encrypted role repository');
  const defaults = await importRoleDirectory(repo, bundledRolesDir(), SYSTEM, { onConflict: 'skip' });
  if (defaults.published.length) logger?.info({ roles: defaults.published }, 'published bundled default roles');
  return { legacy, defaults };
}

async function migrateLegacyRoles(repo: RoleRepository): Promise<string[]> {
  return repo.inTransaction(async (db) => {
    await db.query(`SELECT pg_advisory_xact_lock(hashtext('mare-roles-import'))`);
    const { rows } = await db.query<{ name: string; version: string; profile: Record<string, unknown> }>(
      'SELECT name, version, profile FROM legacy_roles ORDER BY name, version FOR UPDATE',
    );
    const moved: string[] = [];
    for (const row of rows) {
      const source = parseRoleSource(upgradeLegacyProfile(row.profile));
      const profile = await resolveRoleProfile(source, (name, spec) => repo.lookupProfile(name, spec, db));
      try {
        await repo.insertVersion(db, source, profile, { actor: 'mare-migration', reason: 'moved from the plaintext roles table' });
      } catch (err) {
        if (!(err instanceof RoleRepositoryError)) throw err; // already there (same or other content): keep the published one
      }
      await db.query('DELETE FROM legacy_roles WHERE name = $1 AND version = $2', [row.name, row.version]);
      moved.push(`${row.name}@${row.version}`);
    }
    return moved;
  });
}

/** First-release profiles granted tools by name; grants now carry an access level. */
function upgradeLegacyProfile(profile: Record<string, unknown>): Record<string, unknown> {
  const tools = Array.isArray(profile.tools)
    ? (profile.tools as unknown[]).map((t): unknown =>
        typeof t === 'string' ? { tool: t, access: BUILTIN_TOOLS.find((b) => b.name === t)?.sideEffect === false ? 'read' : 'write' } : t,
      )
    : profile.tools;
  return { ...profile, schemaVersion: ROLE_SCHEMA_VERSION, tools };
}

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
