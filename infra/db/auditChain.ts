import type { Pool } from 'pg';
import { sha256 } from '../crypto/digest';

/** The prev_hash of the first event (db/migrations/1700000000004_audit_chain.sql). */
export const GENESIS_HASH = '0'.repeat(64);

/** Rows read per query while verifying, so a large table is never loaded at once. */
export const VERIFY_PAGE_SIZE = 5_000;

/**
 * `at` as the text the database hashes (the body of SQL `mare_audit_time`), computed by the query
 * so both sides hash the same string (JS dates have no microseconds). Repeated here rather than
 * calling the function, so verification does not trust a function stored next to the data.
 */
export const AUDIT_AT_TEXT_SQL = `coalesce(to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || CASE WHEN at < '0001-01-01T00:00:00Z' THEN ' BC' ELSE '' END, at::text)`;

/** The hashed fields of one audit event, as text exactly as PostgreSQL writes them. */
export interface AuditChainFields {
  chainSeq: string;
  prevHash: string;
  eventKey: string;
  taskId: string;
  kind: string;
  /** `data::text` (jsonb's normalised text). */
  data: string;
  /** `at` in UTC ISO form with microseconds (see AUDIT_AT_TEXT_SQL). */
  at: string;
}

/**
 * sha256 (hex) of the canonical text: `mare-audit-v1\n`, then per field `<UTF-8 byte length>:<value>\n`
 * in the order chain_seq, prev_hash, event_key, task_id, kind, data, at. Same as SQL `mare_audit_hash`.
 */
export function auditEventHash(f: AuditChainFields): string {
  const fields = [f.chainSeq, f.prevHash, f.eventKey, f.taskId, f.kind, f.data, f.at];
  const text = `mare-audit-v1\n${fields.map((v) => `${Buffer.byteLength(v, 'utf8')}:${v}\n`).join('')}`;
  return sha256(text);
}

/** The outcome of a verification: intact (with the newest hash) or the first broken link. */
export type AuditChainReport =
  | { ok: true; events: number; /** hash of the newest event (GENESIS_HASH when empty): record it elsewhere to detect a cut tail */ head: string }
  | { ok: false; events: number; brokenAt: { chainSeq: number; id: number; reason: string } };

interface ChainRow {
  id: string;
  chain_seq: string;
  prev_hash: string;
  hash: string;
  event_key: string;
  task_id: string;
  kind: string;
  data: string;
  at: string;
}

/**
 * Recomputes the audit chain in chain_seq order, a page at a time inside one read-only snapshot,
 * and names the first broken link: a gap in chain_seq (a deleted event), a prev_hash that is not the
 * previous event's hash, or content that does not match its hash (an edited event). `events` counts
 * the events checked, up to and including a broken one.
 */
export async function verifyAuditChain(pool: Pool, opts: { pageSize?: number } = {}): Promise<AuditChainReport> {
  const pageSize = opts.pageSize ?? VERIFY_PAGE_SIZE;
  const client = await pool.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    let events = 0;
    let prevSeq = 0n;
    let prevHash = GENESIS_HASH;
    for (;;) {
      const { rows } = await client.query<ChainRow>(
        `SELECT id::text, chain_seq::text, prev_hash, hash, event_key, task_id, kind, data::text AS data, ${AUDIT_AT_TEXT_SQL} AS at
           FROM audit_events WHERE chain_seq > $1 ORDER BY audit_events.chain_seq LIMIT $2`,
        [prevSeq.toString(), pageSize],
      );
      for (const row of rows) {
        events++;
        const seq = BigInt(row.chain_seq);
        const broken = (reason: string): AuditChainReport => ({ ok: false, events, brokenAt: { chainSeq: Number(seq), id: Number(row.id), reason } });
        if (seq !== prevSeq + 1n) {
          const missing = seq - prevSeq === 2n ? `event #${prevSeq + 1n} is` : `events #${prevSeq + 1n}–#${seq - 1n} are`;
          return broken(`${missing} missing (deleted): chain_seq goes from ${prevSeq} to ${seq}`);
        }
        if (row.prev_hash !== prevHash) {
          return broken(`prev_hash does not match the hash of ${prevSeq === 0n ? 'the genesis (64 zeros)' : `event #${prevSeq}`}: the link was rewritten`);
        }
        const expected = auditEventHash({
          chainSeq: row.chain_seq,
          prevHash: row.prev_hash,
          eventKey: row.event_key,
          taskId: row.task_id,
          kind: row.kind,
          data: row.data,
          at: row.at,
        });
        if (expected !== row.hash) return broken('content does not match its hash (edited)');
        prevSeq = seq;
        prevHash = row.hash;
      }
      if (rows.length < pageSize) return { ok: true, events, head: prevHash };
    }
  } finally {
    await client.query('ROLLBACK').catch(() => undefined);
    client.release();
  }
}
