import { WorkflowNotFoundError } from '@temporalio/client';
import type { Command } from 'commander';
import { supervisorWorkflowId } from '../schemas/constants';
import { windowStats, type SupervisorState } from '../schemas/supervisor';
import { retireSupervisorSignal, supervisorStateQuery } from '../workflows/definitions';
import { MareClient } from './client';
import { UsageError, type Action, type Print } from './commandKit';


/** `mare supervisor show <role>` and `mare supervisor retire <role>`: a role's supervisor workflow. */
export function registerSupervisorCommands(program: Command, action: Action, print: Print): void {
  const supervisor = program.command('supervisor').description("a role's supervisor: its phase, rolling window, throttle and decisions (see `mare report enforcement` for the full record)");

  /** Runs `fn` on the role's supervisor; a role without one is a clear error. */
  async function withSupervisor<T>(role: string, fn: (handle: ReturnType<MareClient['client']['workflow']['getHandle']>) => Promise<T>): Promise<T> {
    const client = await MareClient.connect();
    try {
      return await fn(client.client.workflow.getHandle(supervisorWorkflowId(role)));
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) throw new UsageError(`role "${role}" has no supervisor yet: one starts with the role's first finished embodiment`);
      throw err;
    }
    finally {
      await client.close();
    }
  }

  supervisor
    .command('show')
    .description("the supervisor's state: lifecycle phase, window figures, throttle, suspension, recent decisions")
    .argument('<role>')
    .option('--json', 'print the whole state as JSON')
    .action(
      action(async (role: string, opts: { json?: boolean }) => {
        const state = await withSupervisor(role, (handle) => handle.query(supervisorStateQuery));
        if (opts.json) return print(JSON.stringify(state, null, 2));
        describe(state).forEach((l) => print(l));
      }),
    );

  supervisor
    .command('retire')
    .description('wind the supervisor down: Retiring until no embodiment holds a slot, then Terminated (the next embodiment of the role starts a new one)')
    .argument('<role>')
    .action(
      action(async (role: string) => {
        await withSupervisor(role, (handle) => handle.signal(retireSupervisorSignal));
        print(`asked the supervisor of ${role} to retire`);
      }),
    );
}

function describe(s: SupervisorState): string[] {
  const w = windowStats(s.window);
  return [
    `supervisor of ${s.role}: ${s.phase}${s.suspendedUntil ? ` until ${s.suspendedUntil}` : ''}; throttle ${s.throttleCap === null ? 'none' : `${s.throttleCap} at once (${s.holders.length} running, ${s.queue.length} waiting)`}`,
    `window: ${w.n} embodiments, success ${(w.successRate * 100).toFixed(0)}%, mean score ${w.meanScore.toFixed(2)}, mean latency ${Math.round(w.meanLatencyMs)} ms; ${s.outcomesSeen} outcomes seen, run ${s.runs}`,
    ...s.actions.slice(-10).map((a) => `  ${a.at}  ${a.action.padEnd(10)} by ${a.decidedBy}: ${a.reason}`),
  ];
}
