import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import type { Pool, PoolClient } from 'pg';
import semver from 'semver';
import { ZodError } from 'zod';
import { PolicyDocument, type LoadedPolicy } from '../../validation/policy';
import type { Actor } from './roleRepository';
import { fieldProblems, type FieldProblem } from '../../validation/roleProfile';

/** A policy document that does not validate; `problems` names every offending field. */
export class PolicyValidationError extends Error {
  override readonly name = 'PolicyValidationError';
  constructor(
    readonly policy: string,
    readonly problems: FieldProblem[],
  ) {
    super(`invalid policy ${policy}: ${problems.map((p) => `${p.field}: ${p.message}`).join('; ')}`);
  }
}

/** A name, version or range that matches nothing. */
export class PolicyNotFoundError extends Error {
  override readonly name = 'PolicyNotFoundError';
}

/** A repository change that is not allowed (already published, nothing to roll back to, …). */
export class PolicyRepositoryError extends Error {
  override readonly name: string = 'PolicyRepositoryError';
}

/** A stored version whose content no longer matches its checksum or its row: never used. */
export class PolicyIntegrityError extends PolicyRepositoryError {
  override readonly name: string = 'PolicyIntegrityError';
}

/** A published version with its head's state. */
export interface StoredPolicy extends LoadedPolicy {
  schemaVersion: number;
  publishedAt: Date;
  publishedBy: string;
  /** Whether `latest` points at this version. */
  latest: boolean;
  /** Set when the policy (all its versions) is disabled. */
  disabled?: { at: Date; reason: string };
}

/** One row of the append-only audit trail. */
export interface PolicyAuditRow {
  at: Date;
  actor: string;
  action: string;
  name: string | null;
  version: string | null;
  reason: string | null;
  detail: Record<string, unknown>;
}

/** Parses a policy document; throws PolicyValidationError naming each bad field. */
export function parsePolicyDocument(input: unknown): PolicyDocument {
  const parsed = PolicyDocument.safeParse(input);
  if (parsed.success) return parsed.data;
  const named = input && typeof input === 'object' ? (input as { name?: unknown; version?: unknown }) : {};
  const part = (v: unknown): string => (typeof v === 'string' ? v : '?');
  // A bad record key (an argument name) is reported by zod as "Invalid key in record": say why.
  const issues = parsed.error.issues.map((issue) =>
    issue.code === 'invalid_key' ? { ...issue, message: issue.issues.map((i) => i.message).join('; ') || issue.message } : issue,
  );
  const problems = fieldProblems(new ZodError(issues)).map((p) => (p.field === '(profile)' ? { ...p, field: '(policy)' } : p));
  throw new PolicyValidationError(`${part(named.name)}@${part(named.version)}`, problems);
}

/** The checksum of a policy as published: sha256 of its canonical (RFC 8785) JSON. */
export function policyChecksum(document: PolicyDocument): string {
  return createHash('sha256').update(canonicalize(document) ?? '').digest('hex');
}

/** `name` or `name@version-or-range` split into name and spec (undefined: latest). */
export function splitPolicyRef(ref: string): { name: string; spec: string | undefined } {
  const at = ref.indexOf('@');
  return at < 0 ? { name: ref, spec: undefined } : { name: ref.slice(0, at), spec: ref.slice(at + 1) };
}

interface VersionRow {
  name: string;
  version: string;
  schema_version: number;
  checksum: string;
  document: PolicyDocument;
  published_at: Date;
  published_by: string;
  latest: string | null;
  disabled_at: Date | null;
  disabled_reason: string | null;
}

const SELECT_VERSIONS = `SELECT v.name, v.version, v.schema_version, v.checksum, v.document, v.published_at, v.published_by,
    h.latest, h.disabled_at, h.disabled_reason
  FROM policy_versions v LEFT JOIN policy_heads h ON h.name = v.name`;

type Queryable = Pick<Pool, 'query'> | PoolClient;

/** Code-point order of names: the order evaluatePolicies takes policies in. */
export function byName(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * Versioned policies in PostgreSQL (plain jsonb): publish (immutable, checksummed), get by exact
 * version, semver range or `latest`, list, roll back, disable and enable. Every change writes one
 * `policy_audit` row; every change notifies `mare_policies` (from triggers), which workers' caches
 * listen on.
 */
export class PolicyRepository {
  constructor(private readonly pool: Pool) {}

  /** Validates and publishes one version; `latest` moves to it if it is higher. A disabled policy stays disabled. */
  async publish(input: unknown, who: Actor): Promise<StoredPolicy> {
    const document = parsePolicyDocument(input);
    return this.inTransaction(async (db) => {
      await this.insertVersion(db, document, who);
      return (await this.getExact(db, document.name, document.version))!;
    });
  }

  /** A version by exact version, semver range (the highest satisfying) or `latest` (the default); undefined if none. */
  async get(name: string, spec = 'latest'): Promise<StoredPolicy | undefined> {
    if (spec === 'latest') {
      const { rows } = await this.pool.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.name = $1 AND v.version = h.latest`, [name]);
      return rows[0] && stored(rows[0]);
    }
    if (semver.valid(spec)) return this.getExact(this.pool, name, spec);
    if (!semver.validRange(spec)) throw new PolicyRepositoryError(`"${spec}" is not a version, a semver range or "latest"`);
    const { rows } = await this.pool.query<{ version: string }>('SELECT version FROM policy_versions WHERE name = $1', [name]);
    const best = semver.maxSatisfying(
      rows.map((r) => r.version),
      spec,
    );
    return best ? this.getExact(this.pool, name, best) : undefined;
  }

  /** Like get, but a miss is a PolicyNotFoundError naming what was asked for. */
  async require(name: string, spec = 'latest'): Promise<StoredPolicy> {
    const found = await this.get(name, spec);
    if (!found) throw new PolicyNotFoundError(`no policy ${name}${spec === 'latest' ? '' : `@${spec}`}`);
    return found;
  }

  /** The latest version of every policy, disabled ones included (flagged), by name. */
  async list(): Promise<StoredPolicy[]> {
    const { rows } = await this.pool.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.version = h.latest`);
    return rows.map(stored).sort(byName);
  }

  /** Every version of one policy, oldest first. */
  async versions(name: string): Promise<StoredPolicy[]> {
    const { rows } = await this.pool.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.name = $1`, [name]);
    return rows.map(stored).sort((a, b) => semver.compare(a.version, b.version));
  }

  /** The policies in force: the latest version of every policy that is not disabled, by name. */
  async active(): Promise<LoadedPolicy[]> {
    const { rows } = await this.pool.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.version = h.latest AND h.disabled_at IS NULL`);
    return rows.map((r) => {
      const { name, version, checksum, document } = stored(r);
      return { name, version, checksum, document };
    }).sort(byName);
  }

  /** The audit trail, oldest first; optionally for one policy. */
  async history(name?: string): Promise<PolicyAuditRow[]> {
    const { rows } = await this.pool.query<PolicyAuditRow>(
      `SELECT at, actor, action, name, version, reason, detail FROM policy_audit ${name ? 'WHERE name = $1' : ''} ORDER BY id`,
      name ? [name] : [],
    );
    return rows;
  }

  /** Moves `latest` back to the highest version below it. */
  async rollback(name: string, who: Actor): Promise<{ from: string; to: string }> {
    return this.inTransaction(async (db) => {
      const head = await db.query<{ latest: string }>('SELECT latest FROM policy_heads WHERE name = $1 FOR UPDATE', [name]);
      const from = head.rows[0]?.latest;
      if (!from) throw new PolicyNotFoundError(`no policy ${name}`);
      const { rows } = await db.query<{ version: string }>('SELECT version FROM policy_versions WHERE name = $1', [name]);
      const to = semver.rsort(rows.map((r) => r.version).filter((v) => semver.lt(v, from)))[0];
      if (!to) throw new PolicyRepositoryError(`${name}@${from} has no earlier version to roll back to`);
      await db.query('UPDATE policy_heads SET latest = $2, updated_at = now() WHERE name = $1', [name, to]);
      await writePolicyAudit(db, who, 'rollback', name, to, { from, to });
      return { from, to };
    });
  }

  /** Disables a policy: none of its versions is evaluated until it is enabled again. */
  async disable(name: string, who: Actor): Promise<void> {
    await this.setDisabled(name, who, true);
  }

  /** Puts a disabled policy (its latest version) back in force. */
  async enable(name: string, who: Actor): Promise<void> {
    await this.setDisabled(name, who, false);
  }

  /** Inserts one version in an open transaction; `latest` moves to it if it is higher than the current one. */
  async insertVersion(db: PoolClient, document: PolicyDocument, who: Actor): Promise<void> {
    const id = `${document.name}@${document.version}`;
    const checksum = policyChecksum(document);
    const inserted = await db.query(
      `INSERT INTO policy_versions (name, version, schema_version, checksum, document, published_by)
       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING`,
      [document.name, document.version, document.schemaVersion, checksum, JSON.stringify(document), who.actor],
    );
    if (!inserted.rowCount) {
      const { rows } = await db.query<{ checksum: string }>('SELECT checksum FROM policy_versions WHERE name = $1 AND version = $2', [document.name, document.version]);
      const same = rows[0]?.checksum === checksum;
      throw new PolicyRepositoryError(
        `${id} is already published${same ? ' with the same content' : ` with different content (checksum ${rows[0]?.checksum.slice(0, 12)}…)`}; published versions are immutable, publish a new version`,
      );
    }
    const head = await db.query<{ latest: string }>('SELECT latest FROM policy_heads WHERE name = $1 FOR UPDATE', [document.name]);
    const current = head.rows[0]?.latest;
    const moves = !current || semver.gt(document.version, current);
    if (!current) await db.query('INSERT INTO policy_heads (name, latest) VALUES ($1, $2)', [document.name, document.version]);
    else if (moves) await db.query('UPDATE policy_heads SET latest = $2, updated_at = now() WHERE name = $1', [document.name, document.version]);
    await writePolicyAudit(db, who, 'publish', document.name, document.version, { checksum, latest: moves, ...(current ? { previous: current } : {}) });
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

  private async getExact(db: Queryable, name: string, version: string): Promise<StoredPolicy | undefined> {
    const { rows } = await db.query<VersionRow>(`${SELECT_VERSIONS} WHERE v.name = $1 AND v.version = $2`, [name, version]);
    return rows[0] && stored(rows[0]);
  }

  private async setDisabled(name: string, who: Actor, disabled: boolean): Promise<void> {
    await this.inTransaction(async (db) => {
      const { rows } = await db.query<{ latest: string; disabled_at: Date | null }>('SELECT latest, disabled_at FROM policy_heads WHERE name = $1 FOR UPDATE', [name]);
      const head = rows[0];
      if (!head) throw new PolicyNotFoundError(`no policy ${name}`);
      if (Boolean(head.disabled_at) === disabled) throw new PolicyRepositoryError(`${name} is ${disabled ? 'already' : 'not'} disabled`);
      await db.query(
        disabled
          ? 'UPDATE policy_heads SET disabled_at = now(), disabled_reason = $2, updated_at = now() WHERE name = $1'
          : 'UPDATE policy_heads SET disabled_at = NULL, disabled_reason = NULL, updated_at = now() WHERE name = $1',
        disabled ? [name, who.reason ?? ''] : [name],
      );
      await writePolicyAudit(db, who, disabled ? 'disable' : 'enable', name, head.latest, {});
    });
  }
}

/** A row as a stored policy, after checking that its content is what was published. */
function stored(row: VersionRow): StoredPolicy {
  const id = `${row.name}@${row.version}`;
  if (policyChecksum(row.document) !== row.checksum) throw new PolicyIntegrityError(`policy ${id} fails its integrity check: its checksum does not match its content`);
  if (row.document.name !== row.name || row.document.version !== row.version) throw new PolicyIntegrityError(`policy ${id} fails its integrity check: its content names another policy`);
  return {
    name: row.name,
    version: row.version,
    checksum: row.checksum,
    document: row.document,
    schemaVersion: row.schema_version,
    publishedAt: row.published_at,
    publishedBy: row.published_by,
    latest: row.latest === row.version,
    ...(row.disabled_at ? { disabled: { at: row.disabled_at, reason: row.disabled_reason ?? '' } } : {}),
  };
}

/** Writes one append-only audit row of the policy repository. */
export async function writePolicyAudit(db: Queryable, who: Actor, action: string, name: string | null, version: string | null, detail: object): Promise<void> {
  await db.query('INSERT INTO policy_audit (actor, action, name, version, reason, detail) VALUES ($1, $2, $3, $4, $5, $6)', [
    who.actor,
    action,
    name,
    version,
    who.reason ?? null,
    JSON.stringify(detail),
  ]);
}
