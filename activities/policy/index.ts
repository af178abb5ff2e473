import type { Pool } from 'pg';
import type { Logger } from 'pino';
import { bootstrapPolicies } from '../../infra/policies/bootstrap';
import { PolicyService, type PolicyServiceOptions } from '../../infra/policies/policyService';

export { createPolicyActivities } from './activities';
export { bootstrapPolicies, bundledPolicyFile, DEFAULT_POLICY } from '../../infra/policies/bootstrap';
export * from '../../infra/db/policyRepository';
export * from '../../infra/policies/policyService';

/** The policy service a worker uses: the bundled default policy published, change notifications listened to. */
export async function openPolicyService(opts: { pool: Pool; logger?: Logger } & Partial<PolicyServiceOptions>): Promise<PolicyService> {
  const service = new PolicyService(opts);
  await bootstrapPolicies(service.repository, opts.logger);
  await service.start();
  return service;
}
