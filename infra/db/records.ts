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
  const statement = auditStatement({ taskId, kind, data, key });
  await pool.query(statement.sql, statement.params);
}

/** An audit event: of which task, what kind, its data, and the key that makes it once-only. */
export interface AuditEvent {
  taskId: string;
  kind: string;
  data: unknown;
  key: string;
}

/** One SQL statement and its parameters ($1…$n). */
export interface Statement {
  sql: string;
  params: unknown[];
}

/**
 * `first` (an INSERT or UPDATE) and then `then` in ONE statement: one round trip to PostgreSQL
 * instead of two, for the bookkeeping every task, subtask and call does (each round trip costs the
 * worker a socket write and PostgreSQL a wake-up, bench/TUNING.md). Both take effect, or neither;
 * `then` (which may start with its own WITH) does not see the rows `first` wrote.
 */
export function chained(first: Statement, then: Statement): Statement {
  const n = first.params.length;
  const rest = then.sql.replace(/\$(\d+)/g, (_, d: string) => `$${Number(d) + n}`).trimStart();
  return { sql: `WITH written AS (${first.sql})${rest.startsWith('WITH ') ? `, ${rest.slice(5)}` : ` ${rest}`}`, params: [...first.params, ...then.params] };
}

/** The statement that appends an audit event once per key. */
function auditStatement(event: AuditEvent): Statement {
  return {
    sql: 'INSERT INTO audit_events (event_key, task_id, kind, data) VALUES ($1, $2, $3, $4) ON CONFLICT (event_key) DO NOTHING',
    params: [`${event.key}:${event.kind}`, event.taskId, event.kind, JSON.stringify(storableText(event.data))],
  };
}

/** A write (an INSERT or UPDATE with parameters $1…$n) and its audit event, in one statement. */
export async function writeAudited(pool: Pool, sql: string, params: unknown[], event: AuditEvent): Promise<void> {
  const statement = chained({ sql, params }, auditStatement(event));
  await pool.query(statement.sql, statement.params);
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
  const row = policyDecisionStatement(redactor, input);
  const statement = d.decision === 'allow' ? row : chained(row, auditStatement({ taskId: input.taskId, kind: `policy.${d.decision}`, data: { subtaskId: input.subtaskId, kind: input.kind, target: input.target, policy: d.policy, rule: d.rule, reason: redactor.redact(d.reason) }, key: auditKey }));
  await pool.query(statement.sql, statement.params);
}

/** The row of an ALLOWED decision, to chain in front of the call's own first statement; undefined for any other (those are audited too). */
export function allowedDecisionStatement(redactor: Redactor, input: PolicyDecisionRecord | undefined): Statement | undefined {
  return input?.decision.decision === 'allow' ? policyDecisionStatement(redactor, input) : undefined;
}

function policyDecisionStatement(redactor: Redactor, input: PolicyDecisionRecord): Statement {
  const { decision: d } = input;
  return {
    sql: `INSERT INTO policy_decisions (decision_key, task_id, subtask_id, kind, target, decision, reason, policy, rule)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (decision_key) DO NOTHING`,
    params: [input.key, input.taskId, input.subtaskId, input.kind, input.target, d.decision, redactor.redact(d.reason), d.policy ?? null, d.rule ?? null],
  };
}
