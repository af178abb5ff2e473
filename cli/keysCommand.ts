import { userInfo } from 'node:os';
import type { Command } from 'commander';
import type { Pool } from 'pg';
import { API_SCOPES, ApiKeyStore, parseScopes, SCOPE_MEANINGS, type ApiKeyInfo } from '../infra/db/apiKeys';
import { withDatabase, type Action, type Print } from './commandKit';

/** Opens DATABASE_URL (migrated) for one command. */
function withKeys<T>(fn: (keys: ApiKeyStore) => Promise<T>): Promise<T> {
  return withDatabase('API keys live in the PostgreSQL database `mare api` reads them from', (pool: Pool) => fn(new ApiKeyStore(pool)));
}

/** The operating-system account running the command (from the process's uid, not $USER). */
export function osIdentity(): string {
  try {
    return `os:${userInfo().username}`;
  } catch {
    return `os:uid-${process.getuid?.() ?? 'unknown'}`;
  }
}

function line(k: ApiKeyInfo): string {
  const state = k.revokedAt ? `revoked ${k.revokedAt.toISOString()}` : 'live';
  return `${k.id}  ${k.name.padEnd(20)} tenant ${k.tenant.padEnd(16)} ${k.scopes.join(',').padEnd(28)} created ${k.createdAt.toISOString()} by ${k.createdBy}  ${state}`;
}

const SCOPES_HELP = API_SCOPES.map((s) => `${s} (${SCOPE_MEANINGS[s]})`).join('; ');

/** `mare keys create|list|revoke`: the HTTP API's keys, each bound to one tenant and a set of scopes. */
export function registerKeyCommands(program: Command, action: Action, print: Print): void {
  const keys = program
    .command('keys')
    .description(
      'API keys of the HTTP API (`mare api`) in DATABASE_URL: each belongs to one tenant, sees and acts only on that tenant\'s tasks, and holds scopes; ' +
        'only the SHA-256 of a key is stored',
    );

  keys
    .command('create')
    .description('create a key and print its secret once (it is not stored and cannot be shown again)')
    .requiredOption('--name <name>', 'who holds the key; approval decisions made with it are recorded as key:<name>/<id>')
    .requiredOption('--tenant <tenant>', 'the tenant whose tasks the key submits and sees')
    .requiredOption('--scopes <list>', `comma-separated: ${SCOPES_HELP}`)
    .option('--json', 'print { id, name, tenant, scopes, secret } as JSON')
    .action(
      action(async (opts: { name: string; tenant: string; scopes: string; json?: boolean }) => {
        const scopes = parseScopes(opts.scopes);
        const { key, secret } = await withKeys((store) => store.create({ name: opts.name, tenant: opts.tenant, scopes, createdBy: osIdentity() }));
        if (opts.json) return print(JSON.stringify({ id: key.id, name: key.name, tenant: key.tenant, scopes: key.scopes, secret }));
        print(`created key ${key.id} "${key.name}" for tenant ${key.tenant} with scopes ${key.scopes.join(',')}`);
        print(`secret (shown once; send it as "Authorization: Bearer <secret>"):`);
        print(secret);
      }),
    );

  keys
    .command('list')
    .description('every key, newest first, revoked ones too; never a secret')
    .option('--json', 'print as JSON')
    .action(
      action(async (opts: { json?: boolean }) => {
        const all = await withKeys((store) => store.list());
        if (opts.json) return print(JSON.stringify(all, null, 2));
        if (!all.length) return print('no API keys');
        all.forEach((k) => print(line(k)));
      }),
    );

  keys
    .command('revoke')
    .description('revoke a key: the next request made with it is refused (401)')
    .argument('<id>', 'the key id (`mare keys list`)')
    .action(
      action(async (id: string) => {
        const { key, revoked } = await withKeys((store) => store.revoke(id));
        print(revoked ? `revoked key ${key.id} "${key.name}"` : `key ${key.id} "${key.name}" was already revoked (${key.revokedAt?.toISOString()})`);
      }),
    );
}
