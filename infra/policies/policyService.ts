import type { Pool } from 'pg';
import { ChangeListener } from '../db/changeListener';
import type { Logger } from 'pino';
import type { LoadedPolicy } from '../../validation/policy';
import { PolicyRepository } from '../db/policyRepository';

/** The channel the policy tables' triggers notify on, with the policy name as payload. */
export const POLICY_CHANNEL = 'mare_policies';

/** How long the policies in force are served from memory when no change notification arrives. */
export const POLICY_CACHE_TTL_MS = 30_000;

export interface PolicyServiceOptions {
  pool: Pool;
  logger?: Logger;
  /** How long a cached read is served without asking PostgreSQL (invalidation usually comes first). */
  ttlMs?: number;
}

interface Cached {
  policies: LoadedPolicy[];
  at: number;
}

/**
 * The policies in force for one worker: `active()` is read once and served from memory until a
 * change anywhere (PostgreSQL LISTEN/NOTIFY on `mare_policies`) or the TTL empties it. A lost
 * listener connection empties the cache and reconnects. Read errors are not masked: a worker that
 * cannot read the policies does not decide calls with an old set.
 */
export class PolicyService {
  readonly repository: PolicyRepository;
  readonly stats = { hits: 0, misses: 0, invalidations: 0 };
  private cached?: Cached;
  private loading?: Promise<LoadedPolicy[]>;
  /** Bumped by every invalidation: a read that started before one is not cached. */
  private generation = 0;
  private readonly ttlMs: number;
  private readonly listener: ChangeListener;

  constructor(private readonly opts: PolicyServiceOptions) {
    this.repository = new PolicyRepository(opts.pool);
    this.ttlMs = opts.ttlMs ?? POLICY_CACHE_TTL_MS;
    this.listener = new ChangeListener({ pool: opts.pool, channel: POLICY_CHANNEL, what: 'policy', logger: opts.logger }, () => this.invalidate());
  }

  /** Starts listening for changes. Without it, the cached set lives until its TTL. */
  async start(): Promise<void> {
    await this.listener.start();
  }

  /** Drops the cached set: the next read goes to PostgreSQL. */
  invalidate(): void {
    this.stats.invalidations++;
    this.generation++;
    this.cached = undefined;
    this.loading = undefined;
  }

  /** The policies in force (latest version of each enabled policy), by name. */
  async active(): Promise<LoadedPolicy[]> {
    if (this.cached && Date.now() - this.cached.at < this.ttlMs) {
      this.stats.hits++;
      return this.cached.policies;
    }
    if (this.loading) {
      this.stats.hits++;
      return this.loading;
    }
    this.stats.misses++;
    const generation = this.generation;
    const at = Date.now();
    const loading = this.repository.active().then(
      (policies) => {
        if (generation === this.generation) this.cached = { policies, at };
        return policies;
      },
      (err: unknown) => {
        if (this.loading === loading) this.loading = undefined;
        throw err;
      },
    );
    this.loading = loading;
    try {
      return await loading;
    } finally {
      if (this.loading === loading) this.loading = undefined;
    }
  }

  /** Stops listening. */
  async close(): Promise<void> {
    await this.listener.close();
  }
}
