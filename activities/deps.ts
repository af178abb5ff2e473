import type { Pool } from 'pg';
import type { Logger } from 'pino';
import type { ModelClient } from './model';

/** What activities need from the outside world; injected by the worker (and by tests). */
export interface ActivityDeps {
  pool: Pool;
  model: ModelClient;
  /** Each task gets `<workspaceRoot>/<taskId>`; tools cannot leave it. */
  workspaceRoot: string;
  logger: Logger;
}
