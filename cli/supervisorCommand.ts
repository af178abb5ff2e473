import { WorkflowNotFoundError } from '@temporalio/client';
import type { Command } from 'commander';
import { DEFAULT_TENANT, SEARCH_ATTRIBUTES, supervisorWorkflowId } from '../core/constants';
import { windowStats, type SupervisorState } from '../core/supervisor';
import { TaskRequest } from '../validation/task';
import { retireSupervisorSignal, supervisorStateQuery } from '../workflows/definitions';
import { MareClient } from '../client/client';
import { UsageError, type Action, type Print } from './commandKit';

const ROLE_NAME = /^[a-z][a-z0-9-]{0,63}$/;

/** A --tenant as tasks name tenants (default: the default tenant); anything else is a usage error. */
function tenantOf(tenant: string | undefined): string {
  if (tenant === undefined) return DEFAULT_TENANT;
  if (!TaskRequest.shape.tenant.safeParse(tenant).success) throw new UsageError(`--tenant ${JSON.stringify(tenant)}: a tenant is 1-64 of a-z, 0-9, "_" and "-", starting with a letter or digit`);
  return tenant;
}

/**
 * `mare supervisor show|retire <role> [--tenant t]` and `mare supervisor list [role]`: the
 * supervisor workflows of roles, one per role and tenant.
 */
export function registerSupervisorCommands(program: Command, action: Action, print: Print): void {
  const supervisor = program
    .command('supervisor')
    .description("a role's supervisor for one tenant (one per role and tenant): its phase, rolling window, throttle and decisions (see `mare report enforcement` for the full record)");

  /** Runs `fn` on the supervisor of the role for the tenant; a role without one is a clear error. */
  async function withSupervisor<T>(role: string, tenant: string, fn: (handle: ReturnType<MareClient['client']['workflow']['getHandle']>) => Promise<T>): Promise<T> {
    const client = await MareClient.connect();
    try {
      return await fn(client.client.workflow.getHandle(supervisorWorkflowId(role, tenant)));
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) {
        throw new UsageError(`role "${role}" has no supervisor${tenant === DEFAULT_TENANT ? '' : ` for tenant ${tenant}`} yet: one starts with the role's first finished embodiment${tenant === DEFAULT_TENANT ? '' : ' for the tenant'}`);
      }
      throw err;
    } finally {
      await client.close();
    }
  }

  supervisor
    .command('show')
    .description("the supervisor's state for one tenant: lifecycle phase, window figures, throttle, suspension, recent decisions")
    .argument('<role>')
    .option('--tenant <tenant>', 'whose supervisor (default: "default")')
    .option('--json', 'print the whole state as JSON')
    .action(
      action(async (role: string, opts: { json?: boolean; tenant?: string }) => {
        const state = await withSupervisor(role, tenantOf(opts.tenant), (handle) => handle.query(supervisorStateQuery));
        if (opts.json) return print(JSON.stringify(state, null, 2));
        describe(state).forEach((l) => print(l));
      }),
    );

  supervisor
    .command('list')
    .description('every running supervisor (of one role, if given): one line per role and tenant with its phase and throttle')
    .argument('[role]')
    .option('--json', 'print the states as JSON')
    .action(
      action(async (role: string | undefined, opts: { json?: boolean }) => {
        if (role !== undefined && !ROLE_NAME.test(role)) throw new UsageError(`"${role}" is not a role name`);
        const client = await MareClient.connect();
        try {
          const query = `WorkflowType = 'superviseRole' AND ExecutionStatus = 'Running'${role ? ` AND ${SEARCH_ATTRIBUTES.roles.name} = '${role}'` : ''}`;
          const states: SupervisorState[] = [];
          for await (const wf of client.client.workflow.list({ query })) {
            // One that ended between the listing and the query is left out.
            const state = await client.client.workflow.getHandle(wf.workflowId).query(supervisorStateQuery).catch(() => undefined);
            if (state) states.push({ ...state, tenant: state.tenant ?? DEFAULT_TENANT });
          }
          states.sort((a, b) => (a.role === b.role ? (a.tenant < b.tenant ? -1 : 1) : a.role < b.role ? -1 : 1));
          if (opts.json) return print(JSON.stringify(states, null, 2));
          if (!states.length) return print(`no running supervisor${role ? ` of ${role}` : ''}`);
          for (const s of states) print(summary(s));
        } finally {
          await client.close();
        }
      }),
    );

  supervisor
    .command('retire')
    .description("wind the tenant's supervisor down: Retiring until no embodiment holds a slot, then Terminated (the next embodiment of the role for the tenant starts a new one)")
    .argument('<role>')
    .option('--tenant <tenant>', 'whose supervisor (default: "default")')
    .action(
      action(async (role: string, opts: { tenant?: string }) => {
        const tenant = tenantOf(opts.tenant);
        await withSupervisor(role, tenant, (handle) => handle.signal(retireSupervisorSignal));
        print(`asked the supervisor of ${role}${tenant === DEFAULT_TENANT ? '' : ` for tenant ${tenant}`} to retire`);
      }),
    );
}

function summary(s: SupervisorState): string {
  return `supervisor of ${s.role} for tenant ${s.tenant}: ${s.phase}${s.suspendedUntil ? ` until ${s.suspendedUntil}` : ''}; throttle ${s.throttleCap === null ? 'none' : `${s.throttleCap} at once (${s.holders.length} running, ${s.queue.length} waiting)`}`;
}

function describe(s: SupervisorState): string[] {
  const w = windowStats(s.window);
  return [
    summary(s),
    `window: ${w.n} embodiments, success ${(w.successRate * 100).toFixed(0)}%, mean score ${w.meanScore.toFixed(2)}, mean latency ${Math.round(w.meanLatencyMs)} ms; ${s.outcomesSeen} outcomes seen, run ${s.runs}`,
    ...s.actions.slice(-10).map((a) => `  ${a.at}  ${a.action.padEnd(10)} by ${a.decidedBy}: ${a.reason}`),
  ];
}
