import type { Pool, PoolClient } from 'pg';
import semver from 'semver';
import type { RoleProfile, RoleProfileSource } from '../../validation';
import { open, RoleIntegrityError, seal, UnknownRoleKeyError, type RoleKeyring } from '../crypto/roleCrypto';
import { parseRoleSource, resolveRoleProfile, roleChecksum, splitRoleRef, type ParentLookup } from '../../validation/roleProfile';
import { globMatches } from '../../core/patterns';

/** Who does a change, and why: every change writes one append-only audit row with both. */
export interface Actor {
  actor: string;
  reason?: string;
}

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
export interface RoleAuditRow {
  at: Date;
  actor: string;
  action: string;
  name: string | null;
  version: string | null;
  reason: string | null;
  detail: Record<string, unknown>;
}

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

type Queryable = Pick<Pool, 'query'> | PoolClient;

/**
 * The REP repository in PostgreSQL: publish (immutable, checksummed, encrypted), get by exact
 * version, semver range or `latest`, list, diff, deprecate, roll back, suspend, rotate keys. Reads
 * decrypt and verify the checksum, so a changed row is never used.
 */
export class RoleRepository {
  constructor(
    private readonly pool: Pool,
    private readonly keyring: RoleKeyring,
  ) {}

  /** Validates, resolves `extends`, encrypts and publishes one version; `latest` moves if it is the highest. */
  async publish(input: unknown, who: Actor, resolveParent?: ParentLookup): Promise<StoredRole> {
    const source = parseRoleSource(input);
    const profile = await resolveRoleProfile(source, resolveParent ?? ((name, spec) => this.lookupProfile(name, spec)));
    return this.inTransaction(async (db) => {
      await this.insertVersion(db, source, profile, who);
      return (await this.getExact(db, source.name, source.version))!;
    });
  }

  /** Decrypted version by exact version, semver range, or `latest` (the default); undefined if none. */
  async get(name: string, spec = 'latest'): Promise<StoredRole | undefined> {
    if (spec === 'latest') {
      const { rows } = await this.pool.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.name = $1 AND v.version = h.latest`, [name]);
      return rows[0] && this.decrypt(rows[0]);
    }
    if (semver.valid(spec)) return this.getExact(this.pool, name, spec);
    if (!semver.validRange(spec)) throw new RoleRepositoryError(`"${spec}" is not a version, a semver range or "latest"`);
    const versions = (await this.versions(name)).filter((v) => !v.deprecatedAt).map((v) => v.version);
    const best = semver.maxSatisfying(versions, spec);
    return best ? this.getExact(this.pool, name, best) : undefined;
  }

  /** Like get, but a miss is a RoleNotFoundError naming what was asked for. */
  async require(name: string, spec = 'latest'): Promise<StoredRole> {
    const found = await this.get(name, spec);
    if (!found) throw new RoleNotFoundError(`no role ${name}@${spec}${spec === 'latest' ? '' : ' (deprecated versions are skipped for ranges)'}`);
    return found;
  }

  /** Every version of a role, oldest first, without decrypting. */
  async versions(name: string): Promise<RoleVersionInfo[]> {
    const { rows } = await this.pool.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.name = $1`, [name]);
    return rows.map(info).sort((a, b) => semver.compare(a.version, b.version));
  }

  /**
   * Roles (latest versions unless allVersions), decrypted, filtered, sorted by name then version.
   * A row that fails decryption throws, unless `onUnreadable` takes it (then it is left out).
   */
  async list(filter: RoleListFilter = {}, onUnreadable?: (role: RoleVersionInfo, err: RoleIntegrityError | UnknownRoleKeyError) => void): Promise<StoredRole[]> {
    const where = filter.allVersions ? '' : 'WHERE v.version = h.latest';
    const { rows } = await this.pool.query<VersionRow>(`${SELECT_VERSIONS} ${where}`);
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
      await writeAudit(db, who, 'deprecate', name, version, {});
    });
  }

  /** Moves `latest` back to the highest non-deprecated version below it. */
  async rollback(name: string, who: Actor): Promise<{ from: string; to: string }> {
    return this.inTransaction(async (db) => {
      const head = await db.query<{ latest: string }>('SELECT latest FROM role_heads WHERE name = $1 FOR UPDATE', [name]);
      const from = head.rows[0]?.latest;
      if (!from) throw new RoleNotFoundError(`no role ${name}`);
      const { rows } = await db.query<{ version: string }>('SELECT version FROM role_versions WHERE name = $1 AND deprecated_at IS NULL', [name]);
      const to = semver.rsort(rows.map((r) => r.version).filter((v) => semver.lt(v, from)))[0];
      if (!to) throw new RoleRepositoryError(`${name}@${from} has no earlier (non-deprecated) version to roll back to`);
      await db.query('UPDATE role_heads SET latest = $2, updated_at = now() WHERE name = $1', [name, to]);
      await writeAudit(db, who, 'rollback', name, to, { from, to });
      return { from, to };
    });
  }

  /**
   * Suspends a role: the router sends its subtasks elsewhere until it is reinstated. Without a
   * tenant for every tenant (the role's flag); with one for that tenant's subtasks only.
   */
  async suspend(name: string, who: Actor, tenant?: string): Promise<void> {
    if (tenant === undefined) await this.setSuspended(name, who, true);
    else await this.setTenantSuspended(name, tenant, who, true);
  }

  /** Lifts a suspension: the global one, or one tenant's. */
  async reinstate(name: string, who: Actor, tenant?: string): Promise<void> {
    if (tenant === undefined) await this.setSuspended(name, who, false);
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
      const { rows } = await db.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.key_id <> $1 FOR UPDATE OF v`, [this.keyring.activeKeyId]);
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
      await writeAudit(db, who, 'rotate-key', null, null, { keyId: this.keyring.activeKeyId, rotated: rows.length });
      return { rotated: rows.length, keyId: this.keyring.activeKeyId };
    });
  }

  /** The audit trail, oldest first; optionally for one role. */
  async auditTrail(name?: string): Promise<RoleAuditRow[]> {
    const { rows } = await this.pool.query<RoleAuditRow>(
      `SELECT at, actor, action, name, version, reason, detail FROM role_audit ${name ? 'WHERE name = $1' : ''} ORDER BY id`,
      name ? [name] : [],
    );
    return rows;
  }

  /**
   * Inserts one version in an open transaction (import publishes many in one). `latest` moves to it
   * if it is the highest, unless `moveLatest` is false (import sets `latest` from its index instead).
   */
  async insertVersion(db: PoolClient, source: RoleProfileSource, profile: RoleProfile, who: Actor, moveLatest = true): Promise<void> {
    const id = `${source.name}@${source.version}`;
    const checksum = roleChecksum(source);
    const sealed = seal(this.keyring, id, bodyOf(source, profile));
    const inserted = await db.query(
      `INSERT INTO role_versions (name, version, schema_version, checksum, key_id, iv, auth_tag, ciphertext, published_by)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING`,
      [source.name, source.version, profile.schemaVersion, checksum, sealed.keyId, sealed.iv, sealed.authTag, sealed.ciphertext, who.actor],
    );
    if (!inserted.rowCount) {
      const { rows } = await db.query<{ checksum: string }>('SELECT checksum FROM role_versions WHERE name = $1 AND version = $2', [source.name, source.version]);
      const same = rows[0]?.checksum === checksum;
      throw new RoleRepositoryError(
        `${id} is already published${same ? ' with the same content' : ` with different content (checksum ${rows[0]?.checksum.slice(0, 12)}…)`}; published versions are immutable, publish a new version`,
      );
    }
    // latest moves to the new version only if it is higher than the current one.
    await db.query(
      `INSERT INTO role_heads (name, latest) VALUES ($1, $2)
       ON CONFLICT (name) DO UPDATE SET latest = EXCLUDED.latest, updated_at = now()
       WHERE $3::boolean`,
      [source.name, source.version, moveLatest && (await this.isNewHighest(db, source.name, source.version))],
    );
    await writeAudit(db, who, 'publish', source.name, source.version, { checksum, keyId: sealed.keyId, extends: profile.extends ?? null });
  }

  /** Runs `fn` in one transaction on one connection. */
  async inTransaction<T>(fn: (db: PoolClient) => Promise<T>): Promise<T> {
    const db = await this.pool.connect();
    try {
      await db.query('BEGIN');
      const out = await fn(db);
      await db.query('COMMIT');
      return out;
    } catch (err) {
      await db.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      db.release();
    }
  }

  /** The resolved profile of a published parent, for `extends`. */
  async lookupProfile(name: string, spec: string | undefined, db: Queryable = this.pool): Promise<RoleProfile | undefined> {
    if (spec && semver.valid(spec)) return (await this.getExact(db, name, spec))?.profile;
    return (await this.get(name, spec ?? 'latest'))?.profile;
  }

  private async requireRef(ref: string): Promise<StoredRole> {
    const { name, spec } = splitRoleRef(ref);
    return this.require(name, spec ?? 'latest');
  }

  private async getExact(db: Queryable, name: string, version: string): Promise<StoredRole | undefined> {
    const { rows } = await db.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.name = $1 AND v.version = $2`, [name, version]);
    return rows[0] && this.decrypt(rows[0]);
  }

  private async isNewHighest(db: PoolClient, name: string, version: string): Promise<boolean> {
    const { rows } = await db.query<{ latest: string }>('SELECT latest FROM role_heads WHERE name = $1 FOR UPDATE', [name]);
    return !rows[0] || semver.gt(version, rows[0].latest);
  }

  private async setSuspended(name: string, who: Actor, suspended: boolean): Promise<void> {
    await this.inTransaction(async (db) => {
      const { rows } = await db.query<{ suspended_at: Date | null }>('SELECT suspended_at FROM role_heads WHERE name = $1 FOR UPDATE', [name]);
      if (!rows[0]) throw new RoleNotFoundError(`no role ${name}`);
      if (Boolean(rows[0].suspended_at) === suspended) throw new RoleRepositoryError(`${name} is ${suspended ? 'already' : 'not'} suspended`);
      await db.query(
        suspended
          ? 'UPDATE role_heads SET suspended_at = now(), suspended_reason = $2, updated_at = now() WHERE name = $1'
          : 'UPDATE role_heads SET suspended_at = NULL, suspended_reason = NULL, updated_at = now() WHERE name = $1',
        suspended ? [name, who.reason ?? ''] : [name],
      );
      await writeAudit(db, who, suspended ? 'suspend' : 'reinstate', name, null, {});
    });
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
      await writeAudit(db, who, suspended ? 'suspend' : 'reinstate', name, null, { tenant });
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

/** Writes one append-only audit row of the repository. */
export async function writeAudit(db: Queryable, who: Actor, action: string, name: string | null, version: string | null, detail: object): Promise<void> {
  await db.query('INSERT INTO role_audit (actor, action, name, version, reason, detail) VALUES ($1, $2, $3, $4, $5, $6)', [
    who.actor,
    action,
    name,
    version,
    who.reason ?? null,
    JSON.stringify(detail),
  ]);
}

/** Top-level fields whose values differ (compared as JSON), in the order of the profile schema. */
export function diffProfiles(a: RoleProfile, b: RoleProfile): FieldDiff[] {
  const fields = [...new Set([...Object.keys(a), ...Object.keys(b)])];
  return fields
    .filter((f) => JSON.stringify(a[f as keyof RoleProfile]) !== JSON.stringify(b[f as keyof RoleProfile]))
    .map((field) => ({ field, a: a[field as keyof RoleProfile] ?? null, b: b[field as keyof RoleProfile] ?? null }));
}
