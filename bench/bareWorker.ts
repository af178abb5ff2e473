/**
 * The bare-Temporal bench worker (arms B0 and B1): its own process, so its CPU and memory are
 * measured alone, with the same tuning variables as `mare worker` (workers/tuning.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { workerTuningFromEnv } from '../workers/tuning';
import type { BareActivities, NoopInput } from './bareTypes';

export const BARE_TASK_QUEUE = 'bench-bare';

const activities: BareActivities = {
  async noop({ resultBytes, delayMs, jitterMs }: NoopInput): Promise<string> {
    const delay = Math.max(0, delayMs + (jitterMs ? Math.round((Math.random() * 2 - 1) * jitterMs) : 0));
    if (delay > 0) await sleep(delay);
    return 'x'.repeat(resultBytes);
  },
};

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const connection = await NativeConnection.connect({ address: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:7233' });
  const worker = await Worker.create({
    connection,
    taskQueue: BARE_TASK_QUEUE,
    ...(process.env.MARE_BARE_WORKFLOW_BUNDLE
      ? { workflowBundle: { codePath: process.env.MARE_BARE_WORKFLOW_BUNDLE } }
      : { workflowsPath: require.resolve('./bareWorkflows') }),
    activities,
    ...workerTuningFromEnv(),
  });
  process.stdout.write('worker started\n');
  await worker.run();
  await connection.close();
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}
