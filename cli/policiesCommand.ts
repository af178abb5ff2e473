import fs from 'node:fs';
import os from 'node:os';
import { Option, type Command } from 'commander';
import { bootstrapPolicies } from '../infra/policies/bootstrap';
import { PolicyRepository, splitPolicyRef, type StoredPolicy } from '../infra/db/policyRepository';
import type { Actor } from '../infra/db/documentStore';
import { UsageError, withDatabase, type Action, type Print } from './commandKit';


/** Opens the repository on DATABASE_URL (migrated, default policy present) for one command. */
function withRepository<T>(fn: (repo: PolicyRepository) => Promise<T>): Promise<T> {
  return withDatabase('policy commands work on the PostgreSQL database workers use', async (pool) => {
    const repo = new PolicyRepository(pool);
    await bootstrapPolicies(repo);
    return fn(repo);
  });
}

function actor(opts: { actor?: string; by?: string; reason?: string }): Actor {
  return { actor: opts.actor ?? opts.by ?? process.env.MARE_ACTOR ?? os.userInfo().username, ...(opts.reason ? { reason: opts.reason } : {}) };
}

function flags(p: StoredPolicy): string {
  return [p.latest ? 'latest' : '', p.disabled ? 'disabled' : ''].filter(Boolean).join(',') || '-';
}

function metadata(p: StoredPolicy): Record<string, unknown> {
  return {
    name: p.name,
    version: p.version,
    checksum: p.checksum,
    publishedAt: p.publishedAt,
    publishedBy: p.publishedBy,
    latest: p.latest,
    disabled: p.disabled ?? null,
  };
}

/** `mare policies …`: the policy repository from the command line. */
export function registerPolicyCommands(program: Command, action: Action, print: Print): void {
  const policies = program
    .command('policies')
    .description(
      'manage the allow / deny / escalate policies evaluated before every tool and model call, in the repository on DATABASE_URL; workers pick up a change within a second',
    );
  // `--by` is what the roles commands call it; accepted here too, unlisted.
  const withActor = (cmd: Command): Command =>
    cmd
      .option('--actor <name>', 'who makes the change, for the audit trail (default: $MARE_ACTOR or your user name)')
      .addOption(new Option('--by <name>').hideHelp());

  policies
    .command('list')
    .description('list policies (latest versions), with their flags and rule counts')
    .option('--json', 'print as JSON')
    .action(
      action(async (opts: { json?: boolean }) => {
        const found = await withRepository((repo) => repo.list());
        if (opts.json) return print(JSON.stringify(found.map((p) => ({ ...metadata(p), document: p.document })), null, 2));
        if (!found.length) return print('no policies');
        for (const p of found) {
          const rules = `${p.document.rules.length} rule${p.document.rules.length === 1 ? '' : 's'}`;
          print(`${`${p.name}@${p.version}`.padEnd(28)} ${flags(p).padEnd(16)} ${rules.padEnd(9)} ${p.document.description ?? ''}`.trimEnd());
        }
      }),
    );

  policies
    .command('show')
    .description('show a policy document with its metadata')
    .argument('<policy>', 'name, name@version or name@range (default: latest)')
    .option('--json', 'print as JSON')
    .action(
      action(async (ref: string, opts: { json?: boolean }) => {
        const { name, spec } = splitPolicyRef(ref);
        const policy = await withRepository((repo) => repo.require(name, spec ?? 'latest'));
        if (opts.json) return print(JSON.stringify({ ...metadata(policy), document: policy.document }, null, 2));
        print(`${policy.name}@${policy.version}  ${flags(policy)}`);
        print(`checksum ${policy.checksum}, published ${policy.publishedAt.toISOString()} by ${policy.publishedBy}`);
        if (policy.disabled) print(`disabled ${policy.disabled.at.toISOString()}: ${policy.disabled.reason}`);
        print(JSON.stringify(policy.document, null, 2));
      }),
    );

  withActor(
    policies
      .command('publish')
      .description('validate and publish a policy document (JSON); a published name@version never changes, latest moves to it if it is higher')
      .argument('<file>', 'the policy, as JSON'),
  )
    .option('--reason <text>', 'why, for the audit trail')
    .action(
      action(async (file: string, opts: { actor?: string; by?: string; reason?: string }) => {
        let input: unknown;
        try {
          input = JSON.parse(fs.readFileSync(file, 'utf8'));
        } catch (err) {
          throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
        }
        const policy = await withRepository((repo) => repo.publish(input, actor(opts)));
        const state = [policy.latest ? 'now latest' : 'not latest (a higher version is)', policy.disabled ? 'the policy is disabled' : ''].filter(Boolean);
        print(`published ${policy.name}@${policy.version} (checksum ${policy.checksum.slice(0, 12)}…), ${state.join(', ')}`);
      }),
    );

  policies
    .command('history')
    .description("a policy's audit trail (or the whole repository's): who changed what, when and why")
    .argument('[name]')
    .option('--json', 'print as JSON')
    .action(
      action(async (name: string | undefined, opts: { json?: boolean }) => {
        const rows = await withRepository((repo) => repo.history(name));
        if (opts.json) return print(JSON.stringify(rows, null, 2));
        for (const r of rows) {
          print(`${r.at.toISOString()}  ${r.actor.padEnd(16)} ${r.action.padEnd(8)} ${r.name ? `${r.name}${r.version ? `@${r.version}` : ''}` : '-'}  ${r.reason ?? ''}`.trimEnd());
        }
      }),
    );

  withActor(
    policies
      .command('rollback')
      .description('move latest back to the previous version; running tasks keep the set they pinned')
      .argument('<name>')
      .requiredOption('--reason <text>', 'why, for the audit trail'),
  ).action(
    action(async (name: string, opts: { actor?: string; by?: string; reason: string }) => {
      const { from, to } = await withRepository((repo) => repo.rollback(name, actor(opts)));
      print(`${name}: latest is now ${to} (was ${from})`);
    }),
  );

  withActor(
    policies
      .command('disable')
      .description('take a policy out of force (all its versions) until it is enabled again')
      .argument('<name>')
      .requiredOption('--reason <text>', 'why, for the audit trail'),
  ).action(
    action(async (name: string, opts: { actor?: string; by?: string; reason: string }) => {
      await withRepository((repo) => repo.disable(name, actor(opts)));
      print(`disabled ${name}`);
    }),
  );

  withActor(
    policies
      .command('enable')
      .description('put a disabled policy (its latest version) back in force')
      .argument('<name>')
      .option('--reason <text>', 'why, for the audit trail'),
  ).action(
    action(async (name: string, opts: { actor?: string; by?: string; reason?: string }) => {
      await withRepository((repo) => repo.enable(name, actor(opts)));
      print(`enabled ${name}`);
    }),
  );
}
