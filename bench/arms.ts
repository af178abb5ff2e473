/**
 * The three arms: how each one's worker process starts and how one task of it is submitted and
 * awaited. Every arm's worker is its own OS process with the same tuning variables, so CPU and
 * memory are per arm.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { MareClient } from '../client/client';
import { type TaskResult } from '../validation';
import { TASK_QUEUE, taskWorkflowId } from '../core/constants';
import { BARE_TASK_QUEUE } from './bareWorker';
import type { BareChildInput, BareTaskInput } from './bareTypes';
import type { b0Task, b1Task } from './bareWorkflows';
import { benchGoal, STEPS } from './scripts';

export type ArmName = 'B0' | 'B1' | 'O';
export const ARMS: ArmName[] = ['B0', 'B1', 'O'];

/** Payload sizes B1 copies from MARE (measured in the calibration run). */
export interface PayloadShape {
  activityInputBytes: number;
  activityResultBytes: number;
  childResultBytes: number;
}

/** A worker process of one arm. */
export interface WorkerProcess {
  pid: number;
  stop(): Promise<void>;
}

const DIST = path.join(__dirname, '..');

/** Starts the arm's worker and resolves once it polls. */
export async function startArmWorker(
  arm: ArmName,
  env: { temporalAddress: string; databaseUrl: string; modelScript: string; workspaceDir: string; bundles: { mare: string; bare: string }; tuning: NodeJS.ProcessEnv },
): Promise<WorkerProcess> {
  const args = arm === 'O' ? [path.join(DIST, 'cli', 'mare.js'), 'worker', '--identity', 'bench-O'] : [path.join(DIST, 'bench', 'bareWorker.js')];
  const child = spawn(process.execPath, args, {
    env: {
      ...process.env,
      ...env.tuning,
      TEMPORAL_ADDRESS: env.temporalAddress,
      TEMPORAL_NAMESPACE: 'default',
      DATABASE_URL: env.databaseUrl,
      MARE_MODEL: `scripted:${env.modelScript}`,
      MARE_WORKSPACE_DIR: env.workspaceDir,
      MARE_WORKFLOW_BUNDLE: env.bundles.mare,
      MARE_BARE_WORKFLOW_BUNDLE: env.bundles.bare,
      MARE_LOG_LEVEL: 'info',
      // e.g. --cpu-prof --cpu-prof-dir=/tmp/prof to profile the workers of a run
      ...(process.env.MARE_BENCH_WORKER_NODE_OPTIONS ? { NODE_OPTIONS: process.env.MARE_BENCH_WORKER_NODE_OPTIONS } : {}),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await waitForStart(child, arm);
  return {
    pid: child.pid!,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

async function waitForStart(child: ChildProcess, arm: ArmName): Promise<void> {
  let output = '';
  let timer: NodeJS.Timeout | undefined;
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      if (output.length < 20_000) output += chunk.toString();
      if (output.includes('worker started')) resolve();
    });
    child.stderr!.on('data', (chunk: Buffer) => {
      if (output.length < 20_000) output += chunk.toString();
    });
    child.once('exit', (code) => reject(new Error(`${arm} worker exited (${code}) before it started:\n${output}`)));
    timer = setTimeout(() => reject(new Error(`${arm} worker did not start within 120 s:\n${output}`)), 120_000);
  }).finally(() => clearTimeout(timer));
  // Keep draining its output so the pipe never blocks the worker; MARE_BENCH_WORKER_LOG keeps it in a file.
  child.stdout!.removeAllListeners('data');
  if (process.env.MARE_BENCH_WORKER_LOG) child.stdout!.pipe(createWriteStream(process.env.MARE_BENCH_WORKER_LOG, { flags: 'a' }));
  else child.stdout!.resume();
  child.stderr!.removeAllListeners('data');
  child.stderr!.on('data', (chunk: Buffer) => process.stderr.write(`[${arm} worker] ${chunk.toString()}`));
}

/** Runs one task of an arm to completion; resolves with whether it ended as it should. */
export type RunOne = (id: string) => Promise<boolean>;

/** The per-task runner of an arm for fan-out M; `slow` adds W4's simulated model latency to B1. */
export function taskRunner(arm: ArmName, client: Client, m: number, shape: PayloadShape, slow?: { delayMs: number; jitterMs: number }): RunOne {
  if (arm === 'O') {
    const mare = new MareClient(client, TASK_QUEUE);
    return async (id) => {
      await mare.submitTask({ taskId: id, goal: benchGoal(m), tenant: 'bench', concurrency: m });
      const result: TaskResult = await mare.result(id);
      return result.status === 'COMPLETED';
    };
  }
  const payload = 'p'.repeat(shape.activityInputBytes);
  if (arm === 'B0') {
    return async (id) => {
      const out = await client.workflow.execute<typeof b0Task>('b0Task', { taskQueue: BARE_TASK_QUEUE, workflowId: `b0-${id}`, args: [payload] });
      return typeof out === 'string';
    };
  }
  const child: BareChildInput = {
    steps: STEPS.map((kind) => (kind === 'model' && slow ? slow : { delayMs: 0, jitterMs: 0 })),
    activityPayload: payload,
    activityResultBytes: shape.activityResultBytes,
    resultBytes: shape.childResultBytes,
  };
  const input: BareTaskInput = { subtasks: m, child };
  return async (id) => {
    const out = await client.workflow.execute<typeof b1Task>('b1Task', { taskQueue: BARE_TASK_QUEUE, workflowId: `b1-${id}`, args: [input] });
    return Array.isArray(out) && out.length === m;
  };
}

/** Workflow ids of one task of an arm (parent first), for history and state-transition counts. */
export function workflowIdsOf(arm: ArmName, id: string, m: number): string[] {
  if (arm === 'B0') return [`b0-${id}`];
  const parent = arm === 'O' ? taskWorkflowId(id) : `b1-${id}`;
  return [parent, ...Array.from({ length: m }, (_, i) => `${parent}--s${i}`)];
}
