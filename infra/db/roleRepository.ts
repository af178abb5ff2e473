import type { Pool, PoolClient } from 'pg';
import semver from 'semver';
import { DocumentStore, type Actor, type DocumentAuditRow, type Queryable } from './documentStore';
import type { RoleProfile, RoleProfileSource } from '../../validation';
import { open, RoleIntegrityError, seal, UnknownRoleKeyError, type RoleKeyring } from '../crypto/roleCrypto';
import { parseRoleSource, resolveRoleProfile, roleChecksum, splitRoleRef, type ParentLookup } from '../../validation/roleProfile';
import { globMatches } from '../../core/patterns';

/** A published version, decrypted and checked. */
export interface StoredRole {
  name: string;
  version: string;
  /** The complete profile embodiments use. */
  profile: RoleProfile;
  /** The profile as it was published (what export writes and the checksum covers). */
  source: RoleProfileSource;
  checksum: string;
  keyId: string;
  publishedAt: Date;
  publishedBy: string;
  deprecated?: { at: Date; reason: string };
  /** Whether `latest` points at this version. */
  latest: boolean;
  /** Set when the role (all its versions) is suspended for every tenant (an operator's decision). */
  suspended?: { at: Date; reason: string };
}

/** A role's enforcement for one tenant: suspended, throttled, or both (rows with neither are not listed). */
export interface TenantEnforcement {
  role: string;
  tenant: string;
  suspended?: { at: Date; reason: string };
  /** Embodiments of the role that may run at once for this tenant. */
  throttleCap?: number;
  throttleReason?: string;
}

/** A version's metadata, without decrypting it. */
export interface RoleVersionInfo {
  name: string;
  version: string;
  checksum: string;
  keyId: string;
  publishedAt: Date;
  publishedBy: string;
  deprecatedAt: Date | null;
  deprecatedReason: string | null;
  latest: boolean;
  suspendedAt: Date | null;
  suspendedReason: string | null;
}

/** One field that differs between two versions. */
export interface FieldDiff {
  field: string;
  a: unknown;
  b: unknown;
}

/** Filters of `list`. */
export interface RoleListFilter {
  /** Glob over role names, e.g. `rev*`. */
  name?: string;
  /** Every version, not only `latest`. */
  allVersions?: boolean;
  includeDeprecated?: boolean;
  /** Only roles granted this tool. */
  tool?: string;
}

/** One row of the repository's audit trail. */
export type RoleAuditRow = DocumentAuditRow;

/** A repository change that is not allowed (already published, nothing to roll back to, …). */
export class RoleRepositoryError extends Error {
  override readonly name = 'RoleRepositoryError';
}

/** A name, version or range that matches nothing. */
export class RoleNotFoundError extends Error {
  override readonly name = 'RoleNotFoundError';
}

interface VersionRow {
  name: string;
  version: string;
  checksum: string;
  key_id: string;
  iv: Buffer;
  auth_tag: Buffer;
  ciphertext: Buffer;
  published_at: Date;
  published_by: string;
  deprecated_at: Date | null;
  deprecated_reason: string | null;
  latest: string | null;
  suspended_at: Date | null;
  suspended_reason: string | null;
}

const SELECT_VERSIONS = `
  SELECT v.name, v.version, v.checksum, v.key_id, v.iv, v.auth_tag, v.ciphertext, v.published_at, v.published_by,
         v.deprecated_at, v.deprecated_reason, h.latest, h.suspended_at, h.suspended_reason
  FROM role_versions v LEFT JOIN role_heads h ON h.name = v.name`;

/**
 * The REP repository in PostgreSQL: publish (immutable, checksummed, encrypted), get by exact
 * version, semver range or `latest`, list, diff, deprecate, roll back, suspend, rotate keys. Reads
 * decrypt and verify the checksum, so a changed row is never used.
 */
export class RoleRepository {
  private readonly store: DocumentStore<VersionRow, StoredRole>;

  constructor(
    private readonly pool: Pool,
    private readonly keyring: RoleKeyring,
  ) {
    this.store = new DocumentStore(pool, {
      kind: 'role',
      selectVersions: SELECT_VERSIONS,
      decode: (row) => this.decrypt(row),
      deprecation: true,
      flag: { column: 'suspended', on: 'suspend', off: 'reinstate', auditLatest: false },
      notFound: (message) => new RoleNotFoundError(message),
      refused: (message) => new RoleRepositoryError(message),
    });
  }

  /** Validates, resolves `extends`, encrypts and publishes one version; `latest` moves if it is the highest. */
  async publish(input: unknown, who: Actor, resolveParent?: ParentLookup): Promise<StoredRole> {
    const source = parseRoleSource(input);
    const profile = await resolveRoleProfile(source, resolveParent ?? ((name, spec) => this.lookupProfile(name, spec)));
    return this.inTransaction(async (db) => {
      await this.insertVersion(db, source, profile, who);
      return (await this.store.getExact(db, source.name, source.version))!;
    });
  }

  /** Decrypted version by exact version, semver range, or `latest` (the default); undefined if none. */
  async get(name: string, spec = 'latest'): Promise<StoredRole | undefined> {
    return this.store.get(name, spec);
  }

  /** Like get, but a miss is a RoleNotFoundError naming what was asked for. */
  async require(name: string, spec = 'latest'): Promise<StoredRole> {
    const found = await this.get(name, spec);
    if (!found) throw new RoleNotFoundError(`no role ${name}@${spec}${spec === 'latest' ? '' : ' (deprecated versions are skipped for ranges)'}`);
    return found;
  }

  /** Every version of a role, oldest first, without decrypting. */
  async versions(name: string): Promise<RoleVersionInfo[]> {
    const rows = await this.store.rows('WHERE v.name = $1', [name]);
    return rows.map(info).sort((a, b) => semver.compare(a.version, b.version));
  }

  /**
   * Roles (latest versions unless allVersions), decrypted, filtered, sorted by name then version.
   * A row that fails decryption throws, unless `onUnreadable` takes it (then it is left out).
   */
  async list(filter: RoleListFilter = {}, onUnreadable?: (role: RoleVersionInfo, err: RoleIntegrityError | UnknownRoleKeyError) => void): Promise<StoredRole[]> {
    const where = filter.allVersions ? '' : 'WHERE v.version = h.latest';
    const rows = await this.store.rows(where);
    const nameMatches = filter.name ? (name: string) => globMatches(filter.name!, name) : () => true;
    // A deprecated latest is still the role's latest: it is listed (flagged), not hidden.
    const roles = rows
      .filter((r) => nameMatches(r.name) && (filter.includeDeprecated || !r.deprecated_at || !filter.allVersions))
      .flatMap((r) => {
        try {
          return [this.decrypt(r)];
        } catch (err) {
          if (!onUnreadable || !(err instanceof RoleIntegrityError || err instanceof UnknownRoleKeyError)) throw err;
          onUnreadable(info(r), err);
          return [];
        }
      })
      .filter((r) => !filter.tool || r.profile.tools.some((g) => g.tool === filter.tool));
    return roles.sort((a, b) => a.name.localeCompare(b.name) || semver.compare(a.version, b.version));
  }

  /** Field-by-field differences between two resolved profiles. */
  async diff(a: string, b: string): Promise<FieldDiff[]> {
    const [left, right] = await Promise.all([a, b].map((ref) => this.requireRef(ref)));
    return diffProfiles(left!.profile, right!.profile);
  }

  /** Marks a version deprecated: ranges skip it, and the router will not embody it. */
  async deprecate(name: string, version: string, who: Actor): Promise<void> {
    await this.inTransaction(async (db) => {
      const { rowCount } = await db.query(
        `UPDATE role_versions SET deprecated_at = now(), deprecated_reason = $3 WHERE name = $1 AND version = $2 AND deprecated_at IS NULL`,
        [name, version, who.reason ?? ''],
      );
      if (!rowCount) {
        const exists = await db.query('SELECT 1 FROM role_versions WHERE name = $1 AND version = $2', [name, version]);
        throw exists.rowCount ? new RoleRepositoryError(`${name}@${version} is already deprecated`) : new RoleNotFoundError(`no role ${name}@${version}`);
      }
      await this.store.audit(db, who, 'deprecate', name, version, {});
    });
  }

  /** Moves `latest` back to the highest non-deprecated version below it. */
  async rollback(name: string, who: Actor): Promise<{ from: string; to: string }> {
    return this.store.rollback(name, who);
  }

  /**
   * Suspends a role: the router sends its subtasks elsewhere until it is reinstated. Without a
   * tenant for every tenant (the role's flag); with one for that tenant's subtasks only.
   */
  async suspend(name: string, who: Actor, tenant?: string): Promise<void> {
    if (tenant === undefined) await this.store.setFlag(name, who, true);
    else await this.setTenantSuspended(name, tenant, who, true);
  }

  /** Lifts a suspension: the global one, or one tenant's. */
  async reinstate(name: string, who: Actor, tenant?: string): Promise<void> {
    if (tenant === undefined) await this.store.setFlag(name, who, false);
    else await this.setTenantSuspended(name, tenant, who, false);
  }

  /** Per-tenant suspensions and throttles in force (of one role, or of all), by role and tenant. */
  async tenantEnforcement(name?: string): Promise<TenantEnforcement[]> {
    const { rows } = await this.pool.query<{ role: string; tenant: string; suspended_at: Date | null; suspended_reason: string | null; throttle_cap: number | null; throttle_reason: string | null }>(
      `SELECT role, tenant, suspended_at, suspended_reason, throttle_cap, throttle_reason FROM role_tenant_enforcement
        WHERE ($1::text IS NULL OR role = $1) AND (suspended_at IS NOT NULL OR throttle_cap IS NOT NULL)
        ORDER BY role, tenant`,
      [name ?? null],
    );
    return rows.map((r) => ({
      role: r.role,
      tenant: r.tenant,
      ...(r.suspended_at ? { suspended: { at: r.suspended_at, reason: r.suspended_reason ?? '' } } : {}),
      ...(r.throttle_cap ? { throttleCap: r.throttle_cap, throttleReason: r.throttle_reason ?? '' } : {}),
    }));
  }

  /**
   * Re-encrypts every row not yet under the keyring's active key. Old keys must still be in the
   * keyring; rows are checked (decrypted, checksum verified) before they are rewritten.
   */
  async rotate(who: Actor): Promise<{ rotated: number; keyId: string }> {
    return this.inTransaction(async (db) => {
      const rows = await this.store.rows('WHERE v.key_id <> $1 FOR UPDATE OF v', [this.keyring.activeKeyId], db);
      for (const row of rows) {
        const stored = this.decrypt(row);
        const sealed = seal(this.keyring, `${row.name}@${row.version}`, bodyOf(stored.source, stored.profile));
        await db.query('UPDATE role_versions SET key_id = $3, iv = $4, auth_tag = $5, ciphertext = $6 WHERE name = $1 AND version = $2', [
          row.name,
          row.version,
          sealed.keyId,
          sealed.iv,
          sealed.authTag,
          sealed.ciphertext,
        ]);
      }
      await this.store.audit(db, who, 'rotate-key', null, null, { keyId: this.keyring.activeKeyId, rotated: rows.length });
      return { rotated: rows.length, keyId: this.keyring.activeKeyId };
    });
  }

  /** The audit trail, oldest first; optionally for one role. */
  async auditTrail(name?: string): Promise<RoleAuditRow[]> {
    return this.store.auditTrail(name);
  }

  /**
   * Inserts one version in an open transaction (import publishes many in one). `latest` moves to it
   * if it is the highest, unless `moveLatest` is false (import sets `latest` from its index instead).
   */
  async insertVersion(db: PoolClient, source: RoleProfileSource, profile: RoleProfile, who: Actor, moveLatest = true): Promise<void> {
    const checksum = roleChecksum(source);
    const sealed = seal(this.keyring, `${source.name}@${source.version}`, bodyOf(source, profile));
    await this.store.insertVersion(
      db,
      { name: source.name, version: source.version, schema_version: profile.schemaVersion, checksum, key_id: sealed.keyId, iv: sealed.iv, auth_tag: sealed.authTag, ciphertext: sealed.ciphertext, published_by: who.actor },
      moveLatest,
    );
    await this.store.audit(db, who, 'publish', source.name, source.version, { checksum, keyId: sealed.keyId, extends: profile.extends ?? null });
  }

  /** Runs `fn` in one transaction on one connection. */
  async inTransaction<T>(fn: (db: PoolClient) => Promise<T>): Promise<T> {
    return this.store.inTransaction(fn);
  }

  /** Writes one append-only audit row of the repository (import's own changes). */
  async audit(db: Queryable, who: Actor, action: string, name: string | null, version: string | null, detail: object): Promise<void> {
    await this.store.audit(db, who, action, name, version, detail);
  }

  /** The resolved profile of a published parent, for `extends`. */
  async lookupProfile(name: string, spec: string | undefined, db: Queryable = this.pool): Promise<RoleProfile | undefined> {
    if (spec && semver.valid(spec)) return (await this.store.getExact(db, name, spec))?.profile;
    return (await this.get(name, spec ?? 'latest'))?.profile;
  }

  private async requireRef(ref: string): Promise<StoredRole> {
    const { name, spec } = splitRoleRef(ref);
    return this.require(name, spec ?? 'latest');
  }

  private async setTenantSuspended(name: string, tenant: string, who: Actor, suspended: boolean): Promise<void> {
    await this.inTransaction(async (db) => {
      const head = await db.query('SELECT 1 FROM role_heads WHERE name = $1 FOR UPDATE', [name]);
      if (!head.rowCount) throw new RoleNotFoundError(`no role ${name}`);
      const { rows } = await db.query<{ suspended_at: Date | null }>('SELECT suspended_at FROM role_tenant_enforcement WHERE role = $1 AND tenant = $2 FOR UPDATE', [name, tenant]);
      if (Boolean(rows[0]?.suspended_at) === suspended) throw new RoleRepositoryError(`${name} is ${suspended ? 'already' : 'not'} suspended for tenant ${tenant}`);
      await db.query(
        `INSERT INTO role_tenant_enforcement (role, tenant, suspended_at, suspended_reason) VALUES ($1, $2, CASE WHEN $3 THEN now() END, CASE WHEN $3 THEN $4 END)
         ON CONFLICT (role, tenant) DO UPDATE SET suspended_at = EXCLUDED.suspended_at, suspended_reason = EXCLUDED.suspended_reason, updated_at = now()`,
        [name, tenant, suspended, who.reason ?? ''],
      );
      await this.store.audit(db, who, suspended ? 'suspend' : 'reinstate', name, null, { tenant });
    });
  }

  /** Decrypts a row and checks its checksum; a mismatch is a RoleIntegrityError. */
  private decrypt(row: VersionRow): StoredRole {
    const id = `${row.name}@${row.version}`;
    const plain = open(this.keyring, id, { keyId: row.key_id, iv: row.iv, authTag: row.auth_tag, ciphertext: row.ciphertext });
    const body = JSON.parse(plain.toString('utf8')) as { source: RoleProfileSource; profile: RoleProfile };
    if (roleChecksum(body.source) !== row.checksum) throw new RoleIntegrityError(id, 'its checksum does not match its content');
    if (body.profile.name !== row.name || body.profile.version !== row.version) throw new RoleIntegrityError(id, 'its content names another role');
    return {
      name: row.name,
      version: row.version,
      profile: body.profile,
      source: body.source,
      checksum: row.checksum,
      keyId: row.key_id,
      publishedAt: row.published_at,
      publishedBy: row.published_by,
      ...(row.deprecated_at ? { deprecated: { at: row.deprecated_at, reason: row.deprecated_reason ?? '' } } : {}),
      latest: row.latest === row.version,
      ...(row.suspended_at ? { suspended: { at: row.suspended_at, reason: row.suspended_reason ?? '' } } : {}),
    };
  }
}

function bodyOf(source: RoleProfileSource, profile: RoleProfile): Buffer {
  return Buffer.from(JSON.stringify({ source, profile }), 'utf8');
}

function info(r: VersionRow): RoleVersionInfo {
  return {
    name: r.name,
    version: r.version,
    checksum: r.checksum,
    keyId: r.key_id,
    publishedAt: r.published_at,
    publishedBy: r.published_by,
    deprecatedAt: r.deprecated_at,
    deprecatedReason: r.deprecated_reason,
    latest: r.latest === r.version,
    suspendedAt: r.suspended_at,
    suspendedReason: r.suspended_reason,
  };
}

/** Top-level fields whose values differ (compared as JSON), in the order of the profile schema. */
export function diffProfiles(a: RoleProfile, b: RoleProfile): FieldDiff[] {
  const fields = [...new Set([...Object.keys(a), ...Object.keys(b)])];
  return fields
    .filter((f) => JSON.stringify(a[f as keyof RoleProfile]) !== JSON.stringify(b[f as keyof RoleProfile]))
    .map((field) => ({ field, a: a[field as keyof RoleProfile] ?? null, b: b[field as keyof RoleProfile] ?? null }));
}
