import { ApplicationFailure } from '@temporalio/common';
import type { Pool } from 'pg';
import { storableText, type PolicyDecision } from '../../validation';
import type { AtRest } from '../crypto/atRest';
import { sha256 } from '../crypto/digest';
import type { Redactor } from '../secrets';

/**
 * Stores content once under the sha256 of its plaintext and returns the digest. The content is
 * sealed under the payload keyring (redacted without one): use `loadBlob` to read it back.
 */
export async function putBlob(pool: Pool, content: string, atRest: AtRest): Promise<string> {
  const hash = sha256(content);
  await pool.query('INSERT INTO blobs (hash, content, size) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING', [
    hash,
    atRest.sealText(content),
    Buffer.byteLength(content),
  ]);
  return hash;
}

/** The content `putBlob` stored under a digest, opened; a typed BlobMissing failure when there is none. */
export async function loadBlob(pool: Pool, hash: string, atRest: AtRest): Promise<string> {
  const { rows } = await pool.query<{ content: string }>('SELECT content FROM blobs WHERE hash = $1', [hash]);
  if (!rows[0]) throw ApplicationFailure.nonRetryable(`blob ${hash} is missing from the blobs table`, 'BlobMissing');
  return atRest.openText(rows[0].content);
}

/** Appends an audit event at most once per `key` (an activity passes its own, so retries reuse it). */
export async function audit(pool: Pool, taskId: string, kind: string, data: unknown, key: string): Promise<void> {
  await pool.query(
    'INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ($1, $2, $3, $4) ON CONFLICT (event_key) DO NOTHING',
    [`${key}:${kind}`, taskId, kind, JSON.stringify(storableText(data))],
  );
}

/** An audit event: of which task, what kind, its data, and the key that makes it once-only. */
export interface AuditEvent {
  taskId: string;
  kind: string;
  data: unknown;
  key: string;
}

/**
 * A write (an INSERT or UPDATE with parameters $1…$n) and its audit event in ONE statement: one
 * round trip to PostgreSQL instead of two for the bookkeeping every task and subtask does. Both
 * take effect, or neither.
 */
export async function writeAudited(pool: Pool, sql: string, params: unknown[], event: AuditEvent): Promise<void> {
  const n = params.length;
  await pool.query(
    `WITH written AS (${sql})
     INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ($${n + 1}, $${n + 2}, $${n + 3}, $${n + 4}) ON CONFLICT (event_key) DO NOTHING`,
    [...params, `${event.key}:${event.kind}`, event.taskId, event.kind, JSON.stringify(storableText(event.data))],
  );
}

/** One policy decision, with the key of the call it was made for. */
export interface PolicyDecisionRecord {
  taskId: string;
  subtaskId: string;
  key: string;
  kind: 'tool' | 'model';
  target: string;
  decision: PolicyDecision;
}

/**
 * Records a policy decision with the policy version and rule that made it (once per key); one that
 * is not an allow is also audited under `auditKey`. An allowed call's decision is recorded by the
 * call's own activity; others by the recordPolicyDecision activity.
 */
export async function recordPolicyDecision(pool: Pool, redactor: Redactor, input: PolicyDecisionRecord, auditKey: string): Promise<void> {
  const { decision: d } = input;
  await pool.query(
    `INSERT INTO policy_decisions (decision_key, task_id, subtask_id, kind, target, decision, reason, policy, rule)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (decision_key) DO NOTHING`,
    [input.key, input.taskId, input.subtaskId, input.kind, input.target, d.decision, redactor.redact(d.reason), d.policy ?? null, d.rule ?? null],
  );
  if (d.decision !== 'allow') {
    await audit(pool, input.taskId, `policy.${d.decision}`, { subtaskId: input.subtaskId, kind: input.kind, target: input.target, policy: d.policy, rule: d.rule, reason: redactor.redact(d.reason) }, auditKey);
  }
}
