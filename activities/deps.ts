import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { ModelClient } from './model';
import type { RoleService } from './roles/service';

/** What activities need from the outside world; injected by the worker (and by tests). */
export interface ActivityDeps {
  pool: Pool;
  model: ModelClient;
  /** Role reads: cached, invalidated on change, behind a circuit breaker. */
  roles: RoleService;
  /** Each task gets `<workspaceRoot>/<taskId>`; tools cannot leave it. */
  workspaceRoot: string;
  logger: Logger;
}
