import type { Pool, PoolClient } from 'pg';
import semver from 'semver';

/** Who does a change, and why: every change writes one append-only audit row with both. */
export interface Actor {
  actor: string;
  reason?: string;
}

/** One row of a store's append-only audit trail. */
export interface DocumentAuditRow {
  at: Date;
  actor: string;
  action: string;
  name: string | null;
  version: string | null;
  reason: string | null;
  detail: Record<string, unknown>;
}

/** A connection or a pool: what reads and audit writes run on. */
export type Queryable = Pick<Pool, 'query'> | PoolClient;

/** The columns every `<kind>_versions` row has; the rest are the kind's own (ciphertext, jsonb, …). */
export interface VersionColumns {
  name: string;
  version: string;
  schema_version: number;
  checksum: string;
  published_by: string;
}

/**
 * What one kind of versioned document is stored as. Tables are `<kind>_versions` (immutable rows),
 * `<kind>_heads` (`latest` and a flag column pair `<flag>_at`, `<flag>_reason`) and `<kind>_audit`;
 * their triggers NOTIFY listeners of every change.
 */
export interface DocumentKind<Row, Doc> {
  /** `role` or `policy`: the table prefix and the word of "no role x" messages. */
  kind: string;
  /** SELECT of versions joined with heads, aliased `v` and `h`, without WHERE. */
  selectVersions: string;
  /** A row as a document, after checking it is what was published. */
  decode: (row: Row) => Doc;
  /** Whether versions can be deprecated (`deprecated_at`): ranges and rollback then skip them. */
  deprecation: boolean;
  /** The head's on/off flag (`suspended`, `disabled`) and the audit actions that set and clear it. */
  flag: { column: string; on: string; off: string; auditLatest: boolean };
  /** A lookup that found nothing. */
  notFound: (message: string) => Error;
  /** A change that is not allowed. */
  refused: (message: string) => Error;
}

/** Runs `fn` in one transaction on one connection. */
export async function inTransaction<T>(pool: Pool, fn: (db: PoolClient) => Promise<T>): Promise<T> {
  const db = await pool.connect();
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

/**
 * A versioned-document store in PostgreSQL: publish immutable checksummed versions with a `latest`
 * head, read latest, exact or semver range, roll back, flag the head on and off, and write one
 * audit row per change. The repositories of roles and policies are its users.
 */
export class DocumentStore<Row, Doc> {
  private readonly versionsTable: string;
  private readonly headsTable: string;
  private readonly auditTable: string;

  constructor(
    private readonly pool: Pool,
    private readonly doc: DocumentKind<Row, Doc>,
  ) {
    this.versionsTable = `${doc.kind}_versions`;
    this.headsTable = `${doc.kind}_heads`;
    this.auditTable = `${doc.kind}_audit`;
  }

  /** Runs `fn` in one transaction on one connection. */
  async inTransaction<T>(fn: (db: PoolClient) => Promise<T>): Promise<T> {
    return inTransaction(this.pool, fn);
  }

  /** Writes one append-only audit row. */
  async audit(db: Queryable, who: Actor, action: string, name: string | null, version: string | null, detail: object): Promise<void> {
    await db.query(`INSERT INTO ${this.auditTable} (actor, action, name, version, reason, detail) VALUES ($1, $2, $3, $4, $5, $6)`, [
      who.actor,
      action,
      name,
      version,
      who.reason ?? null,
      JSON.stringify(detail),
    ]);
  }

  /** The audit trail, oldest first; optionally for one name. */
  async auditTrail(name?: string): Promise<DocumentAuditRow[]> {
    const { rows } = await this.pool.query<DocumentAuditRow>(
      `SELECT at, actor, action, name, version, reason, detail FROM ${this.auditTable} ${name ? 'WHERE name = $1' : ''} ORDER BY id`,
      name ? [name] : [],
    );
    return rows;
  }

  /** Rows of the versions-with-heads select, filtered by `where` (may be empty). */
  async rows(where = '', params: unknown[] = [], db: Queryable = this.pool): Promise<Row[]> {
    return (await db.query<Row & object>(`${this.doc.selectVersions} ${where}`, params)).rows;
  }

  /** A version by exact version, semver range (the highest satisfying) or `latest`; undefined if none. */
  async get(name: string, spec: string): Promise<Doc | undefined> {
    if (spec === 'latest') {
      const [row] = await this.rows('WHERE v.name = $1 AND v.version = h.latest', [name]);
      return row && this.doc.decode(row);
    }
    if (semver.valid(spec)) return this.getExact(this.pool, name, spec);
    if (!semver.validRange(spec)) throw this.doc.refused(`"${spec}" is not a version, a semver range or "latest"`);
    const best = semver.maxSatisfying(await this.liveVersions(this.pool, name), spec);
    return best ? this.getExact(this.pool, name, best) : undefined;
  }

  /** One exact version, decoded; undefined if none. */
  async getExact(db: Queryable, name: string, version: string): Promise<Doc | undefined> {
    const [row] = await this.rows('WHERE v.name = $1 AND v.version = $2', [name, version], db);
    return row && this.doc.decode(row);
  }

  /**
   * Inserts one version row in an open transaction; an existing (name, version) is refused. Then
   * `latest` moves to it if it is the highest (a new name gets a head in any case). Returns the
   * previous `latest` and whether it moved.
   */
  async insertVersion(db: PoolClient, row: VersionColumns & Record<string, unknown>, moveLatest = true): Promise<{ previous?: string; moved: boolean }> {
    const columns = Object.keys(row);
    const inserted = await db.query(
      `INSERT INTO ${this.versionsTable} (${columns.join(', ')}) VALUES (${columns.map((_, i) => `$${i + 1}`).join(', ')}) ON CONFLICT DO NOTHING`,
      Object.values(row),
    );
    if (!inserted.rowCount) {
      const { rows } = await db.query<{ checksum: string }>(`SELECT checksum FROM ${this.versionsTable} WHERE name = $1 AND version = $2`, [row.name, row.version]);
      const same = rows[0]?.checksum === row.checksum;
      throw this.doc.refused(
        `${row.name}@${row.version} is already published${same ? ' with the same content' : ` with different content (checksum ${rows[0]?.checksum.slice(0, 12)}…)`}; published versions are immutable, publish a new version`,
      );
    }
    const head = await db.query<{ latest: string }>(`SELECT latest FROM ${this.headsTable} WHERE name = $1 FOR UPDATE`, [row.name]);
    const previous = head.rows[0]?.latest;
    const moved = moveLatest && (!previous || semver.gt(row.version, previous));
    if (!previous) await db.query(`INSERT INTO ${this.headsTable} (name, latest) VALUES ($1, $2)`, [row.name, row.version]);
    else if (moved) await this.setLatest(db, row.name, row.version);
    return { ...(previous ? { previous } : {}), moved };
  }

  /** Points `latest` of `name` at `version`, in an open transaction. */
  private async setLatest(db: Queryable, name: string, version: string): Promise<void> {
    await db.query(`UPDATE ${this.headsTable} SET latest = $2, updated_at = now() WHERE name = $1`, [name, version]);
  }

  /** Moves `latest` back to the highest (non-deprecated) version below it. */
  async rollback(name: string, who: Actor): Promise<{ from: string; to: string }> {
    return this.inTransaction(async (db) => {
      const head = await db.query<{ latest: string }>(`SELECT latest FROM ${this.headsTable} WHERE name = $1 FOR UPDATE`, [name]);
      const from = head.rows[0]?.latest;
      if (!from) throw this.doc.notFound(`no ${this.doc.kind} ${name}`);
      const to = semver.rsort((await this.liveVersions(db, name)).filter((v) => semver.lt(v, from)))[0];
      if (!to) throw this.doc.refused(`${name}@${from} has no earlier${this.doc.deprecation ? ' (non-deprecated)' : ''} version to roll back to`);
      await this.setLatest(db, name, to);
      await this.audit(db, who, 'rollback', name, to, { from, to });
      return { from, to };
    });
  }

  /** Sets or clears the head's flag (suspends, disables, …) of `name`, for all its versions. */
  async setFlag(name: string, who: Actor, on: boolean): Promise<void> {
    const { column, auditLatest } = this.doc.flag;
    await this.inTransaction(async (db) => {
      const { rows } = await db.query<{ latest: string; flag_at: Date | null }>(`SELECT latest, ${column}_at AS flag_at FROM ${this.headsTable} WHERE name = $1 FOR UPDATE`, [name]);
      const head = rows[0];
      if (!head) throw this.doc.notFound(`no ${this.doc.kind} ${name}`);
      if (Boolean(head.flag_at) === on) throw this.doc.refused(`${name} is ${on ? 'already' : 'not'} ${column}`);
      await db.query(
        on
          ? `UPDATE ${this.headsTable} SET ${column}_at = now(), ${column}_reason = $2, updated_at = now() WHERE name = $1`
          : `UPDATE ${this.headsTable} SET ${column}_at = NULL, ${column}_reason = NULL, updated_at = now() WHERE name = $1`,
        on ? [name, who.reason ?? ''] : [name],
      );
      await this.audit(db, who, on ? this.doc.flag.on : this.doc.flag.off, name, auditLatest ? head.latest : null, {});
    });
  }

  /** Versions of `name` that ranges and rollback may pick (deprecated ones are left out). */
  private async liveVersions(db: Queryable, name: string): Promise<string[]> {
    const { rows } = await db.query<{ version: string }>(
      `SELECT version FROM ${this.versionsTable} WHERE name = $1${this.doc.deprecation ? ' AND deprecated_at IS NULL' : ''}`,
      [name],
    );
    return rows.map((r) => r.version);
  }
}
