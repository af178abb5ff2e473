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
import { keyringVars, newKey, type Keyring } from '../infra/crypto/keyring';
import { mareDataConverter, PAYLOAD_KEYS } from '../infra/crypto/payloadCodec';
import { type TaskResult } from '../validation';
import { TASK_QUEUE, taskWorkflowId } from '../core/constants';
import { BARE_TASK_QUEUE } from './bareWorker';
import type { BareChildInput, BareTaskInput } from './bareTypes';
import type { b0Task, b1Task } from './bareWorkflows';
import { benchGoal, STEPS } from './scripts';

export type ArmName = 'B0' | 'B1' | 'O' | 'O+enc';
export const ARMS: ArmName[] = ['B0', 'B1', 'O', 'O+enc'];

/** Arms that run MARE's worker; O+enc is O with every payload AES-256-GCM encrypted (client and worker). */
export const isMare = (arm: ArmName): boolean => arm === 'O' || arm === 'O+enc';

/**
 * The payload key of a run's O+enc arm, generated per bench run and handed to its worker and its
 * client. Every other arm runs with encryption off in both (MARE_PAYLOAD_KEYS=none), whatever key
 * file `npm start` left in .mare/: client and worker always agree.
 */
export function benchPayloadKeyring(): Keyring {
  const { id, key } = newKey();
  return { activeKeyId: id, keys: new Map([[id, key]]), origin: 'bench' };
}

/** The payload encryption of an arm, as its worker's environment and the report say it. */
export function payloadEncryption(arm: ArmName, keyring: Keyring): { env: Record<string, string>; label: string } {
  return arm === 'O+enc' ? { env: keyringVars(PAYLOAD_KEYS, keyring), label: 'AES-256-GCM' } : { env: { MARE_PAYLOAD_KEYS: 'none' }, label: 'off' };
}

/** The data converter of an arm's client: the same encryption as its worker. */
export function armDataConverter(arm: ArmName, keyring: Keyring): ReturnType<typeof mareDataConverter> | undefined {
  return arm === 'O+enc' ? mareDataConverter(keyring) : undefined;
}

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
  env: { temporalAddress: string; databaseUrl: string; modelScript: string; workspaceDir: string; bundles: { mare: string; bare: string }; tuning: NodeJS.ProcessEnv; payloadKeyring: Keyring },
): Promise<WorkerProcess> {
  const args = isMare(arm) ? [path.join(DIST, 'cli', 'mare.js'), 'worker', '--identity', `bench-${arm}`] : [path.join(DIST, 'bench', 'bareWorker.js')];
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
      ...payloadEncryption(arm, env.payloadKeyring).env,
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
  if (isMare(arm)) {
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
  const parent = isMare(arm) ? taskWorkflowId(id) : `b1-${id}`;
  return [parent, ...Array.from({ length: m }, (_, i) => `${parent}--s${i}`)];
}
