import type { Command } from 'commander';
import type { Pool } from 'pg';
import { AUDIT_AT_TEXT_SQL, verifyAuditChain } from '../infra/db/auditChain';
import { positiveInt, withDatabase, type Action, type Print } from './commandKit';


/** Opens DATABASE_URL (migrated) for one command. */
function withDb<T>(fn: (pool: Pool) => Promise<T>): Promise<T> {
  return withDatabase('audit commands work on the PostgreSQL database workers use', fn);
}

interface AuditRow {
  id: string;
  chain_seq: string;
  at: string;
  task_id: string;
  kind: string;
  event_key: string;
  data: unknown;
  hash: string;
}

/** `mare audit verify` and `mare audit list`: the hash-chained audit trail in audit_events. */
export function registerAuditCommands(program: Command, action: Action, print: Print): void {
  const audit = program.command('audit').description('the hash-chained audit trail of tasks (audit_events) on DATABASE_URL');

  audit
    .command('verify')
    .description('recompute the hash chain and name the first broken link (exit 1 when broken)')
    .option('--json', 'print the report as JSON')
    .action(
      action(async (opts: { json?: boolean }) => {
        const report = await withDb((pool) => verifyAuditChain(pool));
        if (opts.json) print(JSON.stringify(report, null, 2));
        else if (report.ok) print(`audit trail intact: ${report.events} events`);
        else print(`audit trail broken at event #${report.brokenAt.chainSeq} (id ${report.brokenAt.id}): ${report.brokenAt.reason}`);
        if (!report.ok) process.exitCode = 1;
      }),
    );

  audit
    .command('list')
    .description('the most recent events, oldest first')
    .option('--task <taskId>', 'only events of this task')
    .option('--limit <n>', 'how many', positiveInt, 50)
    .option('--json', 'print as JSON')
    .action(
      action(async (opts: { task?: string; limit: number; json?: boolean }) => {
        const rows = await withDb(async (pool) => {
          const { rows: newest } = await pool.query<AuditRow>(
            `SELECT id::text, chain_seq::text, ${AUDIT_AT_TEXT_SQL} AS at, task_id, kind, event_key, data, hash FROM audit_events
              WHERE $1::text IS NULL OR task_id = $1 ORDER BY audit_events.chain_seq DESC LIMIT $2`,
            [opts.task ?? null, opts.limit],
          );
          return newest.reverse();
        });
        if (opts.json) {
          const events = rows.map((r) => ({ seq: Number(r.chain_seq), id: Number(r.id), at: r.at, taskId: r.task_id, kind: r.kind, eventKey: r.event_key, data: r.data, hash: r.hash }));
          return print(JSON.stringify(events, null, 2));
        }
        if (!rows.length) return print(opts.task ? `no audit events for task ${opts.task}` : 'no audit events');
        for (const r of rows) print(`#${r.chain_seq.padEnd(7)} ${r.at}  ${r.task_id.padEnd(24)} ${r.kind}`);
      }),
    );
}
