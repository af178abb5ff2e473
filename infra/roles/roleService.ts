import { BrokenCircuitError, circuitBreaker, ConsecutiveBreaker, handleWhen, type CircuitBreakerPolicy } from 'cockatiel';
import { LRUCache } from 'lru-cache';
import type { Pool } from 'pg';
import { ChangeListener } from '../db/changeListener';
import type { Logger } from 'pino';
import type { RoleSource } from '../../validation';
import { RoleIntegrityError, UnknownRoleKeyError, type RoleKeyring } from '../crypto/roleCrypto';
import { RoleRepository, type StoredRole, type TenantEnforcement } from '../db/roleRepository';

/** What routing needs to know about each role's latest version. */
export interface RoleCandidate {
  name: string;
  version: string;
  description: string;
  tools: string[];
  handles: string[];
  deprecated: boolean;
  /** Suspended for every tenant, or (in a tenant's view) for that tenant. */
  suspended: boolean;
  /** In a tenant's view: set while the tenant's supervisor throttles the role (embodiments at once). */
  throttleCap?: number;
  /** Fails decryption or its integrity check: routed to only if asked for by name (and then refused). */
  unreadable?: string;
}

/** A role read through the service: where it came from, and a note when that was a fallback. */
export interface ResolvedRole {
  role: StoredRole;
  source: RoleSource;
  note?: string;
}

/** The repository cannot be read and nothing was read before to fall back on. */
export class RoleRepositoryUnavailableError extends Error {
  override readonly name = 'RoleRepositoryUnavailableError';
}

export interface RoleServiceOptions {
  pool: Pool;
  keyring: RoleKeyring;
  logger?: Logger;
  /** How long a cached read is served without asking PostgreSQL (invalidation usually comes first). */
  ttlMs?: number;
  maxEntries?: number;
  /** Consecutive failed reads that open the breaker, and how long it stays open before a trial read. */
  breaker?: { failures: number; halfOpenAfterMs: number };
}

/** The channel the repository's triggers notify on, with the role name as payload. */
export const ROLE_CHANNEL = 'mare_roles';

/** Cache settings from MARE_ROLE_CACHE_TTL_MS and MARE_ROLE_CACHE_SIZE. */
export function roleCacheOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): Pick<RoleServiceOptions, 'ttlMs' | 'maxEntries'> {
  const num = (name: string): number | undefined => {
    const raw = env[name]?.trim();
    if (!raw) return undefined;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name}="${raw}" must be a positive integer`);
    return n;
  };
  return { ttlMs: num('MARE_ROLE_CACHE_TTL_MS'), maxEntries: num('MARE_ROLE_CACHE_SIZE') };
}

type Entry = { role: StoredRole | undefined } | { candidates: RoleCandidate[]; tenants: TenantEnforcement[] };

const CANDIDATES = '*candidates';

/**
 * Role reads for one worker: an LRU cache with a TTL, emptied for a role within moments of a
 * publish, rollback, deprecation or suspension anywhere (PostgreSQL LISTEN/NOTIFY), and a circuit
 * breaker around the repository. While reads fail, the last version read successfully is served
 * and marked `last-known-good`. Integrity errors are never masked by a fallback.
 */
export class RoleService {
  readonly repository: RoleRepository;
  readonly stats = { hits: 0, misses: 0, invalidations: 0, fallbacks: 0 };
  private readonly cache: LRUCache<string, Entry>;
  private readonly lastKnownGood: LRUCache<string, Entry>;
  private readonly breaker: CircuitBreakerPolicy;
  private readonly listener: ChangeListener;

  constructor(private readonly opts: RoleServiceOptions) {
    this.repository = new RoleRepository(opts.pool, opts.keyring);
    this.cache = new LRUCache({ max: opts.maxEntries ?? 500, ttl: opts.ttlMs ?? 60_000 });
    this.lastKnownGood = new LRUCache({ max: (opts.maxEntries ?? 500) * 2 });
    const { failures = 3, halfOpenAfterMs = 10_000 } = opts.breaker ?? {};
    const counted = handleWhen((err) => !(err instanceof RoleIntegrityError || err instanceof UnknownRoleKeyError));
    this.breaker = circuitBreaker(counted, { halfOpenAfter: halfOpenAfterMs, breaker: new ConsecutiveBreaker(failures) });
    this.breaker.onStateChange((state) => opts.logger?.warn({ state }, 'role repository circuit breaker changed state'));
    // A notification names the role; undefined (connected, or the connection lost) means anything may have changed.
    this.listener = new ChangeListener({ pool: opts.pool, channel: ROLE_CHANNEL, what: 'role', logger: opts.logger }, (name) => this.invalidate(name));
  }

  /** Starts listening for changes. Without it, cached reads live until their TTL. */
  async start(): Promise<void> {
    await this.listener.start();
  }

  /** Drops cached reads of one role (and the routing candidates), or everything. */
  invalidate(name?: string): void {
    this.stats.invalidations++;
    if (!name) return this.cache.clear();
    for (const key of this.cache.keys()) if (key.startsWith(`${name}@`)) this.cache.delete(key);
    this.cache.delete(CANDIDATES);
  }

  /** A role by exact version, range or `latest`; undefined if there is no such role. */
  async resolve(name: string, spec = 'latest'): Promise<ResolvedRole | undefined> {
    const found = await this.read(`${name}@${spec}`, async () => ({ role: await this.repository.get(name, spec) }));
    if (!('role' in found.entry) || !found.entry.role) return undefined;
    return { role: found.entry.role, source: found.source, ...(found.note ? { note: found.note } : {}) };
  }

  /**
   * Latest version of every role with its handles and availability, for routing. With a tenant,
   * the tenant's view: a role suspended for that tenant is suspended, and its throttle is the
   * tenant's; without one, only the global suspension counts.
   */
  async candidates(tenant?: string): Promise<{ candidates: RoleCandidate[]; note?: string }> {
    const found = await this.read(CANDIDATES, async () => {
      const unreadable: RoleCandidate[] = [];
      const roles = await this.repository.list({ includeDeprecated: true }, (info, err) => {
        this.opts.logger?.error({ role: `${info.name}@${info.version}`, err }, 'role profile unreadable; it will not be used');
        const common = { name: info.name, version: info.version, description: '', tools: [], handles: [] };
        unreadable.push({ ...common, deprecated: Boolean(info.deprecatedAt), suspended: Boolean(info.suspendedAt), unreadable: err.message });
      });
      return {
        candidates: unreadable.concat(roles.map((r) => ({
          name: r.name,
          version: r.version,
          description: r.profile.description,
          tools: r.profile.tools.map((g) => g.tool),
          handles: r.profile.handles,
          deprecated: Boolean(r.deprecated),
          suspended: Boolean(r.suspended),
        }))),
        tenants: await this.repository.tenantEnforcement(),
      };
    });
    const entry = 'candidates' in found.entry ? found.entry : { candidates: [], tenants: [] };
    const candidates = tenant === undefined ? entry.candidates : entry.candidates.map((c) => {
      const own = entry.tenants.find((t) => t.role === c.name && t.tenant === tenant);
      return own ? { ...c, suspended: c.suspended || Boolean(own.suspended), ...(own.throttleCap ? { throttleCap: own.throttleCap } : {}) } : c;
    });
    return { candidates, ...(found.note ? { note: found.note } : {}) };
  }

  /** Stops listening. */
  async close(): Promise<void> {
    await this.listener.close();
  }

  private async read(key: string, load: () => Promise<Entry>): Promise<{ entry: Entry; source: RoleSource; note?: string }> {
    const hit = this.cache.get(key);
    if (hit) {
      this.stats.hits++;
      return { entry: hit, source: 'cache' };
    }
    this.stats.misses++;
    try {
      const entry = await this.breaker.execute(load);
      this.cache.set(key, entry);
      this.lastKnownGood.set(key, entry);
      return { entry, source: 'repository' };
    } catch (err) {
      if (err instanceof RoleIntegrityError || err instanceof UnknownRoleKeyError) throw err;
      const reason = err instanceof BrokenCircuitError ? 'circuit breaker open after repeated failures' : (err as Error).message;
      const stale = this.lastKnownGood.get(key);
      if (!stale) throw new RoleRepositoryUnavailableError(`role repository unavailable (${reason}) and no earlier read of ${key} to fall back on`);
      this.stats.fallbacks++;
      this.opts.logger?.warn({ key, reason }, 'role repository unavailable; serving the last known good version');
      return { entry: stale, source: 'last-known-good', note: `role repository unavailable (${reason}); served the last known good version` };
    }
  }
}
