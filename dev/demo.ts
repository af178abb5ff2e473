import { Client, Connection } from '@temporalio/client';
import { type TaskProgress } from '../validation';
import { TASK_QUEUE } from '../core/constants';
import path from 'node:path';
import { createLogger, processRedactor } from '../workers/logger';
import { workspaceRootFromEnv } from '../workers/worker';
import { MareClient } from '../client/client';
import { describeStack, startLocalStack } from './localStack';
import { formatResult, progressLines, webUiLink } from '../client/render';

/** The demo task: three subtasks, two roles, file tools and verification (see scripts/demo-script.json). */
export const DEMO_GOAL =
  'Write a short guide to durable execution for new engineers: outline it, draft it in guide/guide.md, and have it reviewed.';

/**
 * `npm start`: starts the local stack, runs the demo task with live progress, prints the result and
 * the Web UI link, then stops everything (unless `keep`). Returns true when the task COMPLETED.
 */
export async function runDemo(opts: { print: (line?: string) => void; keep: boolean; port?: number; uiPort?: number; codecPort?: number }): Promise<boolean> {
  const { print } = opts;
  // Worker logs would interleave with the demo's own output; warnings and errors still show.
  const redactor = processRedactor();
  const logger = createLogger('mare-demo', { redactor });
  if (!process.env.MARE_LOG_LEVEL) logger.level = 'warn';
  print('Starting the local stack (Temporal dev server, PostgreSQL, one worker)…');
  const stack = await startLocalStack({ logger, redactor, print, port: opts.port, uiPort: opts.uiPort, codecPort: opts.codecPort });
  try {
    describeStack(stack).forEach((l) => print(l));
    print();
    const connection = await Connection.connect({ address: stack.address });
    const client = new MareClient(new Client({ connection, namespace: stack.namespace, dataConverter: stack.dataConverter }), TASK_QUEUE);
    const taskId = `demo-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    const { workflowId } = await client.submitTask({ taskId, goal: DEMO_GOAL });
    print(`Task ${taskId}: ${DEMO_GOAL}`);
    let prev: TaskProgress | undefined;
    for await (const p of client.watchTask(taskId, { intervalMs: 250 })) {
      progressLines(prev, p).forEach((l) => print(l));
      prev = p;
    }
    const result = await client.result(taskId);
    print();
    print(formatResult(result));
    print();
    print(`Web UI: ${webUiLink(stack.uiUrl, stack.namespace, workflowId)}`);
    print(`Files:  ${path.join(workspaceRootFromEnv(), taskId)}`);
    await connection.close();
    if (opts.keep) {
      print('The stack keeps running so you can browse the run. Press Ctrl-C to stop.');
      await new Promise<void>((resolve) => process.once('SIGINT', resolve));
    } else {
      print('The run stays in .mare/temporal.sqlite: `npx mare dev` (or `npm start -- --keep`) serves the Web UI again.');
    }
    return result.status === 'COMPLETED';
  } finally {
    print('Stopping the local stack…');
    await stack.stop();
  }
}
