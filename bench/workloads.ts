/** How a phase of tasks is driven (all at once, or at a fixed arrival rate) and what is measured. */
import type { Client } from '@temporalio/client';
import { workflowIdsOf, type ArmName, type RunOne } from './arms';
import { cpuSeconds, sampleRss } from './proc';
import { percentile } from './stats';

/** The figures of one arm in one phase. */
export interface PhaseFigures {
  tasks: number;
  completed: number;
  elapsedS: number;
  tasksPerS: number;
  subtasksPerS: number;
  latencyMs: { p50: number; p95: number; p99: number };
  workerCpuSPerTask: number;
  serverCpuSPerTask: number;
  workerPeakRssMiB: number;
  /** Sum over the task's workflows (parent and children), from a sample of tasks. */
  historyEventsPerTask?: number;
  stateTransitionsPerTask?: number;
}

export interface PhaseSpec {
  ids: string[];
  subtasksPerTask: number;
  /** Tasks per second; undefined starts them all at once (saturation). */
  arrivalRate?: number;
  /** Gives up waiting after this long; unfinished tasks count as not completed. */
  timeoutMs: number;
}

/** Runs the tasks, timing each from submission to result, while watching the worker and server. */
export async function runPhase(run: RunOne, spec: PhaseSpec, pids: { worker: number; server: number }): Promise<PhaseFigures> {
  const rss = sampleRss(pids.worker);
  const cpu0 = { worker: cpuSeconds(pids.worker), server: cpuSeconds(pids.server) };
  const latencies: number[] = [];
  let completed = 0;
  let firstError: Error | undefined;
  const t0 = performance.now();
  let lastDone = t0;
  const one = async (id: string): Promise<void> => {
    const start = performance.now();
    try {
      if (await run(id)) completed++;
      lastDone = performance.now();
      latencies.push(lastDone - start);
    } catch (err) {
      firstError ??= err instanceof Error ? err : new Error(String(err));
    }
  };
  const all: Promise<void>[] = [];
  for (const [i, id] of spec.ids.entries()) {
    if (spec.arrivalRate) {
      const due = t0 + (i * 1000) / spec.arrivalRate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    all.push(one(id));
  }
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    Promise.all(all).then(() => false),
    new Promise<boolean>((r) => (timer = setTimeout(() => r(true), spec.timeoutMs))),
  ]);
  clearTimeout(timer);
  const elapsedS = (lastDone - t0) / 1000;
  const n = spec.ids.length;
  const peak = rss.stop();
  if (firstError && completed === 0) throw firstError;
  if (firstError) process.stderr.write(`  first failure: ${firstError.message}\n`);
  if (timedOut) process.stderr.write(`  timed out after ${spec.timeoutMs / 1000} s with ${completed}/${n} completed\n`);
  return {
    tasks: n,
    completed,
    elapsedS,
    tasksPerS: completed / elapsedS,
    subtasksPerS: (completed * spec.subtasksPerTask) / elapsedS,
    latencyMs: { p50: percentile(latencies, 50), p95: percentile(latencies, 95), p99: percentile(latencies, 99) },
    workerCpuSPerTask: (cpuSeconds(pids.worker) - cpu0.worker) / n,
    serverCpuSPerTask: (cpuSeconds(pids.server) - cpu0.server) / n,
    workerPeakRssMiB: peak,
  };
}

/** History events and state transitions per task (parent plus children), averaged over a sample. */
export async function historyFigures(client: Client, arm: ArmName, ids: string[], m: number): Promise<{ events: number; transitions: number }> {
  let events = 0;
  let transitions = 0;
  for (const id of ids) {
    for (const wid of workflowIdsOf(arm, id, m)) {
      const d = await client.workflow.getHandle(wid).describe();
      events += d.historyLength;
      transitions += Number(d.raw.workflowExecutionInfo?.stateTransitionCount ?? NaN);
    }
  }
  return { events: events / ids.length, transitions: transitions / ids.length };
}
