import type { Command } from 'commander';
import type { ApprovalView } from '../validation';
import { MareClient } from '../client/client';
import { UsageError, type Action, type Print } from './commandKit';
import { osIdentity } from './keysCommand';

/**
 * Who decides from the command line: the operating-system account (from the uid, not $USER), and
 * `--by` only as a note next to it, so a name typed on the command line cannot stand alone.
 */
export function approverIdentity(by: string | undefined): string {
  const os = osIdentity();
  const named = by?.trim();
  // The workflow's validator takes at most 200 characters of `by`; the account needs room too.
  if (named && named.length > 120) throw new UsageError('--by: at most 120 characters');
  return named && named !== os ? `${named} (via ${os})` : os;
}

function line(a: ApprovalView): string {
  const decided = a.status === 'pending' ? `until ${a.deadline}, then ${a.onTimeout}` : `by ${a.decidedBy ?? '?'}: ${a.decisionReason ?? ''}`;
  return `${a.taskId}  ${a.approvalId}  ${a.status.padEnd(9)} ${a.kind} ${a.target} ${JSON.stringify(a.args)}\n    ${a.reason}${a.policy ? ` (${a.policy})` : ''}; ${decided}`;
}

/** `mare approvals list`, `mare approve` and `mare deny`: human decisions on escalated calls. */
export function registerApprovalCommands(program: Command, action: Action, print: Print): void {
  program
    .command('approvals')
    .description('calls that policies escalated to a person')
    .command('list')
    .description('pending approvals of every running task (or all approvals of one task with --task)')
    .option('--task <taskId>', 'only this task, including decided approvals')
    .option('--json', 'print as JSON')
    .action(
      action(async (opts: { task?: string; json?: boolean }) => {
        const client = await MareClient.connect();
        try {
          const approvals = opts.task ? await client.approvals(opts.task) : await client.pendingApprovals();
          if (opts.json) return print(JSON.stringify(approvals, null, 2));
          if (!approvals.length) return print(opts.task ? `task ${opts.task} has no approvals` : 'no pending approvals');
          approvals.forEach((a) => print(line(a)));
        } finally {
          await client.close();
        }
      }),
    );

  for (const [name, decision] of [
    ['approve', 'approve'],
    ['deny', 'deny'],
  ] as const) {
    program
      .command(name)
      .description(`${decision === 'approve' ? 'approve' : 'deny'} a pending approval; the waiting call ${decision === 'approve' ? 'runs' : 'goes back to the model as an error'}`)
      .argument('<taskId>')
      .argument('<approvalId>')
      .requiredOption('--reason <text>', 'why (recorded with the decision)')
      .option('--by <who>', 'on whose behalf; recorded next to the operating-system account that runs the command, which is always recorded')
      .option('--update-id <id>', 'idempotency key: sending the same id again has no further effect')
      .option('--json', 'print the decided approval as JSON')
      .action(
        action(async (taskId: string, approvalId: string, opts: { reason: string; by?: string; updateId?: string; json?: boolean }) => {
          if (!opts.reason.trim()) throw new UsageError('--reason must not be empty');
          const client = await MareClient.connect();
          try {
            const view = await client.decideApproval(
              taskId,
              { approvalId, decision, reason: opts.reason, by: approverIdentity(opts.by) },
              opts.updateId ? { updateId: opts.updateId } : {},
            );
            print(opts.json ? JSON.stringify(view, null, 2) : `approval ${approvalId} of task ${taskId}: ${view.status}`);
          } finally {
            await client.close();
          }
        }),
      );
  }
}
