import fs from 'node:fs';
import os from 'node:os';
import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import type { Command } from 'commander';
import { Pool } from 'pg';
import { bootstrapRoles } from '../infra/roles/bootstrap';
import { defaultKeyFile, keyringFromEnv, newKey, readKeyFile, writeKeyFile, type RoleKeyring } from '../infra/crypto/roleCrypto';
import { exportRoleDirectory, importRoleDirectory } from '../infra/roles/directory';
import { RoleRepository, RoleRepositoryError, type StoredRole, type TenantEnforcement } from '../infra/db/roleRepository';
import { splitRoleRef } from '../validation/roleProfile';
import type { Actor } from '../infra/db/documentStore';
import { migrate } from '../infra/db/migrate';
import { UsageError, type Action, type Print } from './commandKit';
import { dataConverterFromEnv } from '../client/client';
import { dataDir } from '../infra/paths';
import { SEARCH_ATTRIBUTES, supervisorWorkflowId } from '../core/constants';
import { TaskRequest } from '../validation/task';
import { reinstateRoleSignal } from '../workflows/definitions';


/** Opens the repository on DATABASE_URL (migrated, default roles present) for one command. */
async function withRepository<T>(fn: (repo: RoleRepository, pool: Pool) => Promise<T>): Promise<T> {
  const url = process.env.DATABASE_URL;
  if (!url) throw new UsageError('DATABASE_URL is not set: role commands work on the PostgreSQL database workers use (`mare dev` prints it)');
  const keyring = keyringFromEnv({ dataDir: dataDir() });
  await migrate(url);
  const pool = new Pool({ connectionString: url, max: 2 });
  try {
    const repo = new RoleRepository(pool, keyring);
    await bootstrapRoles(repo);
    return await fn(repo, pool);
  } finally {
    await pool.end();
  }
}

function actor(opts: { by?: string; reason?: string }): Actor {
  return { actor: opts.by ?? process.env.MARE_ACTOR ?? os.userInfo().username, ...(opts.reason ? { reason: opts.reason } : {}) };
}

/** A --tenant as tasks name tenants; anything else is a usage error before anything changes. */
function tenantOption(tenant: string | undefined): string | undefined {
  if (tenant !== undefined && !TaskRequest.shape.tenant.safeParse(tenant).success) {
    throw new UsageError(`--tenant ${JSON.stringify(tenant)}: a tenant is 1-64 of a-z, 0-9, "_" and "-", starting with a letter or digit`);
  }
  return tenant;
}

/** One line per tenant for which the role is suspended or throttled. */
function tenantLines(rows: TenantEnforcement[]): string[] {
  return rows.map((t) =>
    [
      `tenant ${t.tenant}:`,
      t.suspended ? `suspended ${t.suspended.at.toISOString()}: ${t.suspended.reason}` : '',
      t.suspended && t.throttleCap ? ';' : '',
      t.throttleCap ? `throttled to ${t.throttleCap} at once: ${t.throttleReason ?? ''}` : '',
    ].filter(Boolean).join(' ').replace(' ;', ';'),
  );
}

function flags(r: StoredRole): string {
  return [r.latest ? 'latest' : '', r.deprecated ? 'deprecated' : '', r.suspended ? 'suspended' : ''].filter(Boolean).join(',') || '-';
}

function metadata(r: StoredRole): Record<string, unknown> {
  return {
    name: r.name,
    version: r.version,
    checksum: r.checksum,
    keyId: r.keyId,
    publishedAt: r.publishedAt,
    publishedBy: r.publishedBy,
    latest: r.latest,
    deprecated: r.deprecated ?? null,
    suspended: r.suspended ?? null,
  };
}

/** The `--by` option every changing subcommand takes. */
const BY_OPTION = ['--by <actor>', 'who makes the change, for the audit trail (default: $MARE_ACTOR or your user name)'] as const;

/** `mare roles …`: the role repository from the command line. */
export function registerRoleCommands(program: Command, action: Action, print: Print): void {
  const roles = program
    .command('roles')
    .description(
      'manage role profiles in the repository on DATABASE_URL; profiles are encrypted with MARE_ROLE_KEYS or MARE_ROLE_KEY_FILE (default: the key file `mare dev` generates in .mare/)',
    );
  // Registration order is the order `mare roles --help` lists the subcommands in.
  registerBrowseCommands(roles, action, print);
  registerVersionCommands(roles, action, print);
  registerSuspensionCommands(roles, action, print);
  registerRepositoryCommands(roles, action, print);
}

/** `mare roles list` and `mare roles show`. */
function registerBrowseCommands(roles: Command, action: Action, print: Print): void {
  roles
    .command('list')
    .description('list roles (latest versions unless --all-versions)')
    .option('--all-versions', 'every version, not only latest')
    .option('--include-deprecated', 'with --all-versions: include deprecated versions (a deprecated latest is always listed, flagged)')
    .option('--name <glob>', 'only roles whose name matches, e.g. "rev*"')
    .option('--tool <tool>', 'only roles granted this tool')
    .option('--json', 'print as JSON')
    .action(
      action(async (opts: { allVersions?: boolean; includeDeprecated?: boolean; name?: string; tool?: string; json?: boolean }) => {
        const found = await withRepository((repo) => repo.list(opts));
        if (opts.json) return print(JSON.stringify(found.map((r) => ({ ...metadata(r), profile: r.profile })), null, 2));
        if (!found.length) return print('no roles');
        for (const r of found) {
          print(`${`${r.name}@${r.version}`.padEnd(28)} ${flags(r).padEnd(20)} ${r.profile.tools.map((g) => `${g.tool}(${g.access})`).join(' ')}`);
        }
      }),
    );

  roles
    .command('show')
    .description('show a role as embodiments get it (inheritance resolved), with its metadata')
    .argument('<role>', 'name, name@version or name@range (default: latest)')
    .option('--source', 'show the profile as published (before inheritance), not the resolved one')
    .option('--json', 'print as JSON')
    .action(
      action(async (ref: string, opts: { source?: boolean; json?: boolean }) => {
        const { name, spec } = splitRoleRef(ref);
        const [role, tenants] = await withRepository(async (repo) => [await repo.require(name, spec ?? 'latest'), await repo.tenantEnforcement(name)] as const);
        const profile = opts.source ? role.source : role.profile;
        if (opts.json) return print(JSON.stringify({ ...metadata(role), tenants, profile }, null, 2));
        print(`${role.name}@${role.version}  ${flags(role)}`);
        print(`checksum ${role.checksum}, key ${role.keyId}, published ${role.publishedAt.toISOString()} by ${role.publishedBy}`);
        if (role.deprecated) print(`deprecated ${role.deprecated.at.toISOString()}: ${role.deprecated.reason}`);
        if (role.suspended) print(`suspended ${role.suspended.at.toISOString()}: ${role.suspended.reason}`);
        tenantLines(tenants).forEach((l) => print(l));
        print(JSON.stringify(profile, null, 2));
      }),
    );
}

/** `mare roles publish`, `diff`, `deprecate` and `rollback`: the versions of a role. */
function registerVersionCommands(roles: Command, action: Action, print: Print): void {
  roles
    .command('publish')
    .description('validate and publish a profile.json; a published name@version never changes')
    .argument('<file>', 'the profile, as JSON')
    .option(...BY_OPTION)
    .option('--reason <text>', 'why, for the audit trail')
    .action(
      action(async (file: string, opts: { by?: string; reason?: string }) => {
        let input: unknown;
        try {
          input = JSON.parse(fs.readFileSync(file, 'utf8'));
        } catch (err) {
          throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
        }
        const role = await withRepository((repo) => repo.publish(input, actor(opts)));
        print(`published ${role.name}@${role.version} (checksum ${role.checksum.slice(0, 12)}…)${role.latest ? ', now latest' : ''}`);
      }),
    );

  roles
    .command('diff')
    .description('field-by-field differences between two versions (resolved profiles)')
    .argument('<a>', 'name@version (or name for latest)')
    .argument('<b>', 'name@version (or name for latest)')
    .option('--json', 'print as JSON')
    .action(
      action(async (a: string, b: string, opts: { json?: boolean }) => {
        const diffs = await withRepository((repo) => repo.diff(a, b));
        if (opts.json) return print(JSON.stringify(diffs, null, 2));
        if (!diffs.length) return print('no differences');
        for (const d of diffs) print(`${d.field}:\n  - ${JSON.stringify(d.a)}\n  + ${JSON.stringify(d.b)}`);
      }),
    );

  roles
    .command('deprecate')
    .description('deprecate a version: ranges skip it and the router falls back to another role')
    .argument('<role>', 'name@version')
    .requiredOption('--reason <text>', 'why, for the audit trail')
    .option(...BY_OPTION)
    .action(
      action(async (ref: string, opts: { by?: string; reason: string }) => {
        const { name, spec } = splitRoleRef(ref);
        if (!spec) throw new UsageError(`say which version: ${name}@<version>`);
        await withRepository((repo) => repo.deprecate(name, spec, actor(opts)));
        print(`deprecated ${name}@${spec}`);
      }),
    );

  roles
    .command('rollback')
    .description('move latest back to the previous (non-deprecated) version; running embodiments keep theirs')
    .argument('<name>')
    .requiredOption('--reason <text>', 'why, for the audit trail')
    .option(...BY_OPTION)
    .action(
      action(async (name: string, opts: { by?: string; reason: string }) => {
        const { from, to } = await withRepository((repo) => repo.rollback(name, actor(opts)));
        print(`${name}: latest is now ${to} (was ${from})`);
      }),
    );
}

/** `mare roles suspend` and `mare roles reinstate`. */
function registerSuspensionCommands(roles: Command, action: Action, print: Print): void {
  roles
    .command('suspend')
    .description('suspend a role: the router sends its subtasks to another role until it is reinstated; for every tenant, or with --tenant for one')
    .argument('<name>')
    .requiredOption('--reason <text>', 'why, for the audit trail')
    .option('--tenant <tenant>', "only this tenant's subtasks (the other tenants keep the role)")
    .option(...BY_OPTION)
    .action(
      action(async (name: string, opts: { by?: string; reason: string; tenant?: string }) => {
        const tenant = tenantOption(opts.tenant);
        await withRepository((repo) => repo.suspend(name, actor(opts), tenant));
        print(`suspended ${name}${tenant === undefined ? '' : ` for tenant ${tenant}`}`);
      }),
    );

  roles
    .command('reinstate')
    .description(
      "lift a suspension (the repository's flag, which the router reads): the global one, or with --tenant one tenant's, and tell that tenant's supervisor. Prints the per-tenant suspensions and throttles still in force",
    )
    .argument('<name>')
    .requiredOption('--reason <text>', 'why, for the audit trail')
    .option('--tenant <tenant>', "lift this tenant's suspension (set by its supervisor or an operator), not the global one")
    .option(...BY_OPTION)
    .action(action((name: string, opts: { by?: string; reason: string; tenant?: string }) => reinstateRole(name, opts, print)));
}

/** `mare roles reinstate`: lifts the suspension, prints what is still in force, and tells a tenant's supervisor. */
async function reinstateRole(name: string, opts: { by?: string; reason: string; tenant?: string }, print: Print): Promise<void> {
  const tenant = tenantOption(opts.tenant);
  const who = actor(opts);
  const remaining = await withRepository(async (repo) => {
    try {
      await repo.reinstate(name, who, tenant);
    } catch (err) {
      if (!(err instanceof RoleRepositoryError)) throw err;
      if (tenant !== undefined) {
        // Lifted already (the supervisor's cool-down or another person won the race): say so, and bring a lagging supervisor along.
        throw new RoleRepositoryError(`${name} is not suspended for tenant ${tenant}${await catchUpSupervisor(name, tenant, who)}`);
      }
      const suspendedFor = (await repo.tenantEnforcement(name)).filter((t) => t.suspended).map((t) => t.tenant);
      throw new RoleRepositoryError(`${name} is not suspended${suspendedFor.length ? ` for every tenant; it is suspended for tenant(s) ${suspendedFor.join(', ')} (use --tenant)` : ''}`);
    }
    return repo.tenantEnforcement(name);
  });
  print(`reinstated ${name}${tenant === undefined ? '' : ` for tenant ${tenant}`}`);
  tenantLines(remaining).forEach((l) => print(`still in force: ${l}`));
  // A global suspension is an operator's: no supervisor set it, so none is told.
  if (tenant !== undefined) await tellSupervisor(name, tenant, who);
}

/** `mare roles history`, `import`, `export` and `rotate-key`: the repository as a whole. */
function registerRepositoryCommands(roles: Command, action: Action, print: Print): void {
  roles
    .command('history')
    .description("a role's audit trail (or the whole repository's): who changed what, when and why")
    .argument('[name]')
    .option('--json', 'print as JSON')
    .action(
      action(async (name: string | undefined, opts: { json?: boolean }) => {
        const rows = await withRepository((repo) => repo.auditTrail(name));
        if (opts.json) return print(JSON.stringify(rows, null, 2));
        for (const r of rows) {
          print(`${r.at.toISOString()}  ${r.actor.padEnd(14)} ${r.action.padEnd(10)} ${r.name ? `${r.name}${r.version ? `@${r.version}` : ''}` : '-'}  ${r.reason ?? ''}`);
        }
      }),
    );

  roles
    .command('import')
    .description('publish every version in a directory of the layout reps/{name}/{version}/profile.json + metadata.json + reps/index.json (all or nothing)')
    .argument('<dir>')
    .option(...BY_OPTION)
    .option('--reason <text>', 'why, for the audit trail')
    .option('--json', 'print the report as JSON')
    .action(
      action(async (dir: string, opts: { by?: string; reason?: string; json?: boolean }) => {
        const report = await withRepository((repo) => importRoleDirectory(repo, dir, actor({ ...opts, reason: opts.reason ?? `import from ${dir}` })));
        if (opts.json) return print(JSON.stringify(report, null, 2));
        print(`published ${report.published.length} (${report.published.join(', ') || 'none'}), unchanged ${report.unchanged.length}, deprecated ${report.deprecated.length}`);
      }),
    );

  roles
    .command('export')
    .description('write every version (plaintext) in the seed layout into a new or empty directory')
    .argument('<dir>')
    .action(
      action(async (dir: string) => {
        const { roles: n, versions } = await withRepository((repo) => exportRoleDirectory(repo, dir));
        print(`exported ${versions} versions of ${n} roles to ${dir}`);
      }),
    );

  roles
    .command('rotate-key')
    .description(
      're-encrypt every profile under the active key. With a key file (MARE_ROLE_KEY_FILE or the default), a new key is generated into it first and made active; old keys stay so old rows still decrypt. With MARE_ROLE_KEYS, list the new key there and name it in MARE_ROLE_ACTIVE_KEY.',
    )
    .option(...BY_OPTION)
    .option('--reason <text>', 'why, for the audit trail', 'key rotation')
    .action(action((opts: { by?: string; reason: string }) => rotateKey(opts, print)));
}

/** `mare roles rotate-key`: re-encrypts every profile, under a newly generated key when the keys live in a key file. */
async function rotateKey(opts: { by?: string; reason: string }, print: Print): Promise<void> {
  const { rotated, keyId } = await withRepository(async (repo, pool) => {
    if (process.env.MARE_ROLE_KEYS?.trim()) return repo.rotate(actor(opts));
    // Only once the database is reachable: a new key is saved, then used.
    const file = process.env.MARE_ROLE_KEY_FILE?.trim() || defaultKeyFile(dataDir());
    const current = readKeyFile(file);
    const { id, key } = newKey();
    const keyring: RoleKeyring = { activeKeyId: id, keys: new Map([...current.keys, [id, key]]), origin: current.origin };
    writeKeyFile(file, keyring);
    print(`generated key ${id} into ${file}`);
    return new RoleRepository(pool, keyring).rotate(actor(opts));
  });
  print(`re-encrypted ${rotated} role versions under key ${keyId}`);
}

/** How long the reinstate command waits for Temporal before it gives up on the supervisor. */
const SUPERVISOR_CONNECT_TIMEOUT = '5s';

/** Runs `fn` on a Temporal client connected like the Temporal CLI (closed after). */
async function withTemporal<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const { connectionOptions, namespace } = loadClientConnectConfig();
  const connection = await Connection.connect({ ...connectionOptions, connectTimeout: SUPERVISOR_CONNECT_TIMEOUT });
  try {
    return await fn(new Client({ connection, namespace, dataConverter: dataConverterFromEnv() }));
  } finally {
    await connection.close();
  }
}

function describeError(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Tells the role's supervisor for the tenant (if Temporal and the supervisor can be reached) that a
 * person lifted the tenant's suspension, so it starts a fresh window now instead of at the end of its cool-down. The
 * repository already says the role is reinstated, so every outcome here is a note on stderr.
 */
async function tellSupervisor(name: string, tenant: string, who: Actor): Promise<void> {
  const workflowId = supervisorWorkflowId(name, tenant);
  try {
    await withTemporal((client) => client.workflow.getHandle(workflowId).signal(reinstateRoleSignal, { by: who.actor, reason: who.reason ?? '' }));
    process.stderr.write(`told the role's supervisor (${workflowId})\n`);
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) {
      process.stderr.write(`note: ${name} has no running supervisor for tenant ${tenant} (${workflowId}), so there is no one else to tell; one starts with the role's next finished embodiment for the tenant\n`);
    } else {
      process.stderr.write(`note: the role's supervisor (${workflowId}) was not told (${describeError(err)}); it records the reinstatement when its cool-down ends\n`);
    }
  }
}

/**
 * The repository says the role is not suspended for the tenant. A tenant's supervisor whose phase (its search attribute)
 * still says Suspended is behind the repository: it is told, so it records the reinstatement and
 * starts a fresh window. Returns what to add to the error message ('' when there is nothing to say).
 */
async function catchUpSupervisor(name: string, tenant: string, who: Actor): Promise<string> {
  const workflowId = supervisorWorkflowId(name, tenant);
  const phase = await withTemporal((client) => client.workflow.getHandle(workflowId).describe()).then(
    (d) => (d.status.name === 'RUNNING' ? d.typedSearchAttributes.get(SEARCH_ATTRIBUTES.supervisorPhase) : undefined),
    // No supervisor, or Temporal out of reach: the repository's answer stands alone.
    () => undefined,
  );
  if (phase !== 'Suspended') return '';
  try {
    await withTemporal((client) => client.workflow.getHandle(workflowId).signal(reinstateRoleSignal, { by: who.actor, reason: who.reason ?? '' }));
    return `; its supervisor (${workflowId}) still said Suspended and was told, so it records the reinstatement now`;
  } catch (err) {
    return `; its supervisor (${workflowId}) still says Suspended and was not told (${describeError(err)}): it records the reinstatement when its cool-down ends`;
  }
}
