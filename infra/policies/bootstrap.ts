import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Pool } from 'pg';
import type { Logger } from 'pino';
import { projectRoot } from '../paths';
import { parsePolicyDocument, type PolicyRepository } from '../db/policyRepository';
import { PolicyService, type PolicyServiceOptions } from './policyService';

/** The policy shipped with MARE. */
export function bundledPolicyFile(): string {
  return path.join(projectRoot(), 'policies', 'default.json');
}

/** The name of the bundled policy. */
export const DEFAULT_POLICY = 'default';

const SYSTEM = { actor: 'mare (bundled)', reason: 'bundled default policy' };

/**
 * Publishes the bundled default policy when no policy named "default" exists (a published,
 * rolled-back or disabled one is left alone). Safe to run from many workers at once.
 * Returns `name@version` when it published, undefined otherwise.
 */
export async function bootstrapPolicies(repo: PolicyRepository, logger?: Logger): Promise<string | undefined> {
  const document = parsePolicyDocument(JSON.parse(readFileSync(bundledPolicyFile(), 'utf8')));
  const published = await repo.inTransaction(async (db) => {
    await db.query(`SELECT pg_advisory_xact_lock(hashtext('mare-policies-bootstrap'))`);
    const { rowCount } = await db.query('SELECT 1 FROM policy_versions WHERE name = $1 LIMIT 1', [DEFAULT_POLICY]);
    if (rowCount) return undefined;
    await repo.insertVersion(db, document, SYSTEM);
    return `${document.name}@${document.version}`;
  });
  if (published) logger?.info({ policy: published }, 'published the bundled default policy');
  return published;
}

/** The policy service a worker uses: the bundled default policy published, change notifications listened to. */
export async function openPolicyService(opts: { pool: Pool; logger?: Logger } & Partial<PolicyServiceOptions>): Promise<PolicyService> {
  const service = new PolicyService(opts);
  await bootstrapPolicies(service.repository, opts.logger);
  await service.start();
  return service;
}
