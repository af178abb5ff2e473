import canonicalize from 'canonicalize';
import type { Pool, PoolClient } from 'pg';
import semver from 'semver';
import { ZodError } from 'zod';
import { PolicyDocument, type LoadedPolicy } from '../../validation/policy';
import { sha256 } from '../crypto/digest';
import { DocumentStore, type Actor, type DocumentAuditRow } from './documentStore';
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
export type PolicyAuditRow = DocumentAuditRow;

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
  return sha256(canonicalize(document) ?? '');
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
  private readonly store: DocumentStore<VersionRow, StoredPolicy>;

  constructor(pool: Pool) {
    this.store = new DocumentStore(pool, {
      kind: 'policy',
      selectVersions: SELECT_VERSIONS,
      decode: stored,
      deprecation: false,
      flag: { column: 'disabled', on: 'disable', off: 'enable', auditLatest: true },
      notFound: (message) => new PolicyNotFoundError(message),
      refused: (message) => new PolicyRepositoryError(message),
    });
  }

  /** Validates and publishes one version; `latest` moves to it if it is higher. A disabled policy stays disabled. */
  async publish(input: unknown, who: Actor): Promise<StoredPolicy> {
    const document = parsePolicyDocument(input);
    return this.inTransaction(async (db) => {
      await this.insertVersion(db, document, who);
      return (await this.store.getExact(db, document.name, document.version))!;
    });
  }

  /** A version by exact version, semver range (the highest satisfying) or `latest` (the default); undefined if none. */
  async get(name: string, spec = 'latest'): Promise<StoredPolicy | undefined> {
    return this.store.get(name, spec);
  }

  /** Like get, but a miss is a PolicyNotFoundError naming what was asked for. */
  async require(name: string, spec = 'latest'): Promise<StoredPolicy> {
    const found = await this.get(name, spec);
    if (!found) throw new PolicyNotFoundError(`no policy ${name}${spec === 'latest' ? '' : `@${spec}`}`);
    return found;
  }

  /** The latest version of every policy, disabled ones included (flagged), by name. */
  async list(): Promise<StoredPolicy[]> {
    return (await this.store.rows('WHERE v.version = h.latest')).map(stored).sort(byName);
  }

  /** Every version of one policy, oldest first. */
  async versions(name: string): Promise<StoredPolicy[]> {
    const rows = await this.store.rows('WHERE v.name = $1', [name]);
    return rows.map(stored).sort((a, b) => semver.compare(a.version, b.version));
  }

  /** The policies in force: the latest version of every policy that is not disabled, by name. */
  async active(): Promise<LoadedPolicy[]> {
    const rows = await this.store.rows('WHERE v.version = h.latest AND h.disabled_at IS NULL');
    return rows.map((r) => {
      const { name, version, checksum, document } = stored(r);
      return { name, version, checksum, document };
    }).sort(byName);
  }

  /** The audit trail, oldest first; optionally for one policy. */
  async history(name?: string): Promise<PolicyAuditRow[]> {
    return this.store.auditTrail(name);
  }

  /** Moves `latest` back to the highest version below it. */
  async rollback(name: string, who: Actor): Promise<{ from: string; to: string }> {
    return this.store.rollback(name, who);
  }

  /** Disables a policy: none of its versions is evaluated until it is enabled again. */
  async disable(name: string, who: Actor): Promise<void> {
    await this.store.setFlag(name, who, true);
  }

  /** Puts a disabled policy (its latest version) back in force. */
  async enable(name: string, who: Actor): Promise<void> {
    await this.store.setFlag(name, who, false);
  }

  /** Inserts one version in an open transaction; `latest` moves to it if it is higher than the current one. */
  async insertVersion(db: PoolClient, document: PolicyDocument, who: Actor): Promise<void> {
    const checksum = policyChecksum(document);
    const { previous, moved } = await this.store.insertVersion(db, {
      name: document.name,
      version: document.version,
      schema_version: document.schemaVersion,
      checksum,
      document: JSON.stringify(document),
      published_by: who.actor,
    });
    await this.store.audit(db, who, 'publish', document.name, document.version, { checksum, latest: moved, ...(previous ? { previous } : {}) });
  }

  /** Runs `fn` in one transaction on one connection. */
  async inTransaction<T>(fn: (db: PoolClient) => Promise<T>): Promise<T> {
    return this.store.inTransaction(fn);
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
