import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Pool } from 'pg';
import { z } from 'zod';

/**
 * API keys of the HTTP API: each bound to one tenant and a set of scopes, stored in PostgreSQL
 * (`api_keys`) as the SHA-256 of a 256-bit random secret, and managed with `mare keys`.
 */

/** What a key may do. `admin` implies every other scope and every tenant (operators). */
export const API_SCOPES = ['submit', 'read', 'approve', 'commands', 'admin'] as const;
export type ApiScope = (typeof API_SCOPES)[number];

/** What each scope allows, for `--help` and the docs. */
export const SCOPE_MEANINGS: Record<ApiScope, string> = {
  submit: 'submit tasks and cancel them',
  read: 'read tasks, their events and their approvals',
  approve: 'decide approvals',
  commands: 'submit command_succeeds criteria, which run a command on a worker',
  admin: 'every scope in every tenant, for operators',
};

/** Tenant names, as a task's `tenant`. */
export const Tenant = z.string().regex(/^[a-z0-9][a-z0-9_-]{0,63}$/, 'tenants are 1-64 chars of lowercase letters, digits, "_" or "-"');
/** Key names: the identity an approval decision records. */
export const KeyName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$/, 'key names are 1-100 chars of letters, digits, ".", "_", "@", "+" or "-"');
/** Key ids, the public part of a key. */
export const KeyId = z.string().regex(/^[0-9a-f]{16}$/, 'key ids are 16 hex digits');

/** The name the bootstrap key (MARE_API_KEY) goes by; no stored key can take it. */
export const BOOTSTRAP_KEY_NAME = 'bootstrap';

/** Who is calling: the key that authenticated the request. */
export interface Principal {
  keyId: string;
  name: string;
  tenant: string;
  scopes: readonly ApiScope[];
  /** Recorded as `by` of the approval decisions this key makes: `key:<name>/<id>`. */
  identity: string;
}

/** A stored key as `mare keys list` shows it: never its secret. */
export interface ApiKeyInfo {
  id: string;
  name: string;
  tenant: string;
  scopes: ApiScope[];
  createdBy: string;
  createdAt: Date;
  revokedAt: Date | null;
}

/** Bad input to a key command (name, tenant, scopes, unknown id): nothing was changed. */
export class ApiKeyError extends Error {
  override readonly name = 'ApiKeyError';
}

/** A presented key that is not valid: the message is safe to send to the caller. */
export class ApiKeyRejectedError extends Error {
  override readonly name = 'ApiKeyRejectedError';
}

const TOKEN = /^mare_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;
// Compared against when no stored key matches, so that every presented key costs one comparison.
const DUMMY_DIGEST = Buffer.alloc(32);

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Whether `principal` holds `scope` (admin holds them all). */
export function hasScope(principal: Principal, scope: ApiScope): boolean {
  return principal.scopes.includes(scope) || principal.scopes.includes('admin');
}

/** `submit,read` → the scopes, each known and named once. */
export function parseScopes(list: string): ApiScope[] {
  const scopes = list.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = scopes.filter((s) => !(API_SCOPES as readonly string[]).includes(s));
  if (unknown.length || !scopes.length) throw new ApiKeyError(`scopes: ${unknown.length ? `unknown scope "${unknown.join('", "')}"` : 'none given'}; use a comma-separated subset of ${API_SCOPES.join(', ')}`);
  return [...new Set(scopes)] as ApiScope[];
}

/** The principal of the operator's bootstrap key (MARE_API_KEY): admin, tenant `default`. */
export function bootstrapPrincipal(): Principal {
  return { keyId: 'env', name: BOOTSTRAP_KEY_NAME, tenant: 'default', scopes: ['admin'], identity: `key:${BOOTSTRAP_KEY_NAME}/env` };
}

interface KeyRow {
  id: string;
  name: string;
  tenant: string;
  scopes: ApiScope[];
  secret_sha256: Buffer;
  created_by: string;
  created_at: Date;
  revoked_at: Date | null;
}

function principalOf(row: Pick<KeyRow, 'id' | 'name' | 'tenant' | 'scopes'>): Principal {
  return { keyId: row.id, name: row.name, tenant: row.tenant, scopes: row.scopes, identity: `key:${row.name}/${row.id}` };
}

/** The API keys in PostgreSQL. */
export class ApiKeyStore {
  constructor(private readonly pool: Pool) {}

  /** Creates a key and returns it with its secret, which is not stored and cannot be shown again. */
  async create(input: { name: string; tenant: string; scopes: ApiScope[]; createdBy: string }): Promise<{ key: ApiKeyInfo; secret: string }> {
    const name = KeyName.safeParse(input.name);
    if (!name.success) throw new ApiKeyError(`--name: ${name.error.issues[0]?.message}`);
    if (name.data === BOOTSTRAP_KEY_NAME) throw new ApiKeyError(`--name: "${BOOTSTRAP_KEY_NAME}" is the name of MARE_API_KEY; choose another`);
    const tenant = Tenant.safeParse(input.tenant);
    if (!tenant.success) throw new ApiKeyError(`--tenant: ${tenant.error.issues[0]?.message}`);
    const scopes = parseScopes(input.scopes.join(','));
    const id = randomBytes(8).toString('hex');
    const secret = `mare_${id}_${randomBytes(32).toString('base64url')}`;
    try {
      const { rows } = await this.pool.query<KeyRow>(
        `INSERT INTO api_keys (id, name, tenant, scopes, secret_sha256, created_by) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *`,
        [id, name.data, tenant.data, scopes, sha256(secret), input.createdBy],
      );
      return { key: info(rows[0]!), secret };
    } catch (err) {
      if ((err as { code?: string }).code === '23505') throw new ApiKeyError(`a live key named "${name.data}" exists already: revoke it first, or choose another name`);
      throw err;
    }
  }

  /** Every key, newest first, revoked ones too; never a secret. */
  async list(): Promise<ApiKeyInfo[]> {
    const { rows } = await this.pool.query<KeyRow>(`SELECT * FROM api_keys ORDER BY created_at DESC, id`);
    return rows.map(info);
  }

  /** Revokes a key at once (the next request with it is a 401); `false` if it was already revoked. */
  async revoke(id: string): Promise<{ key: ApiKeyInfo; revoked: boolean }> {
    if (!KeyId.safeParse(id).success) throw new ApiKeyError(`no key with id "${id}"`);
    const { rows } = await this.pool.query<KeyRow>(`UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING *`, [id]);
    if (rows[0]) return { key: info(rows[0]), revoked: true };
    const { rows: existing } = await this.pool.query<KeyRow>(`SELECT * FROM api_keys WHERE id = $1`, [id]);
    if (!existing[0]) throw new ApiKeyError(`no key with id "${id}"`);
    return { key: info(existing[0]), revoked: false };
  }

  /**
   * The principal of a presented secret, or an ApiKeyRejectedError. The row is found by the key's
   * public id; its secret's digest is compared in constant time.
   */
  async authenticate(secret: string): Promise<Principal> {
    const parts = TOKEN.exec(secret);
    const { rows } = parts ? await this.pool.query<KeyRow>(`SELECT * FROM api_keys WHERE id = $1`, [parts[1]]) : { rows: [] as KeyRow[] };
    const row = rows[0];
    const matches = timingSafeEqual(sha256(secret), row ? row.secret_sha256 : DUMMY_DIGEST) && row !== undefined;
    if (!row || !matches) throw new ApiKeyRejectedError('invalid API key');
    if (row.revoked_at) throw new ApiKeyRejectedError('this API key has been revoked');
    return principalOf(row);
  }
}

function info(row: KeyRow): ApiKeyInfo {
  return { id: row.id, name: row.name, tenant: row.tenant, scopes: row.scopes, createdBy: row.created_by, createdAt: row.created_at, revokedAt: row.revoked_at };
}
