import type { Pool } from 'pg';
import type { Logger } from 'pino';
import { bootstrapPolicies } from './bootstrap';
import { PolicyService, type PolicyServiceOptions } from './service';

export { createPolicyActivities } from './activities';
export { bootstrapPolicies, bundledPolicyFile, DEFAULT_POLICY } from './bootstrap';
export * from './repository';
export * from './service';

/** The policy service a worker uses: the bundled default policy published, change notifications listened to. */
export async function openPolicyService(opts: { pool: Pool; logger?: Logger } & Partial<PolicyServiceOptions>): Promise<PolicyService> {
  const service = new PolicyService(opts);
  await bootstrapPolicies(service.repository, opts.logger);
  await service.start();
  return service;
}
