import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { AtRest } from '../infra/crypto/atRest';
import type { ModelClient } from '../infra/models/model';
import type { PolicyService } from '../infra/policies/policyService';
import type { RoleService } from '../infra/roles/roleService';
import type { Redactor } from '../infra/secrets';
import type { ToolCatalog } from '../infra/tools/catalog';

/** What activities need from the outside world; injected by the worker (and by tests). */
export interface ActivityDeps {
  pool: Pool;
  model: ModelClient;
  /** Role reads: cached, invalidated on change, behind a circuit breaker. */
  roles: RoleService;
  /** Each task gets `<workspaceRoot>/<taskId>`; tools cannot leave it. */
  workspaceRoot: string;
  /** Built-in and configured MCP tools, with the connections to their servers. */
  tools: ToolCatalog;
  /** The policies in force: cached, invalidated on change. */
  policies: PolicyService;
  /** Redacts known secrets from what is logged, audited and recorded. */
  redactor: Redactor;
  /**
   * Seals content MARE reads back (transcripts, blobs, tool results, snapshots) under the payload
   * keyring; the worker wires it from its payload keyring. Absent: that content is redacted instead.
   */
  atRest?: AtRest;
  logger: Logger;
  /** The approvers' public keys (key id → hex Ed25519), from the payload keyring; absent: approvals need no signature. */
  approverKeys?: Record<string, string>;
}
