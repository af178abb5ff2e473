import type { ChildProcess } from 'node:child_process';
import { readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { errorMessage, isProcessAlive, waitForPidExit } from './stack';

/** What a pid file records: the server's pid and the pid of the MARE process that started it. */
export interface PidRecord {
  pid: number;
  ownerPid: number;
}

/** One step of a shutdown: send `signal`, then wait up to `ms` for the process to exit. */
export type StopStep = readonly [signal: NodeJS.Signals, ms: number];

/** How a supervised child ended (`error` when it could not be spawned). */
interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

/** A pid file's record, or undefined when it is missing or unreadable. */
export function readPidFile<T extends PidRecord>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** Removes a file, ignoring a missing one. */
export function removeQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // Already gone is what we wanted.
  }
}

/** Sends the steps' signals in turn until the process is gone (or a signal cannot be sent). */
export async function stopProcess(pid: number, steps: readonly StopStep[], alive = (): boolean => isProcessAlive(pid), waitExit = (ms: number) => waitForPidExit(pid, ms)): Promise<void> {
  for (const [signal, ms] of steps) {
    if (!alive()) return;
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
    if (await waitExit(ms)) return;
  }
}

/** A spawned server whose exit is watched and whose pid file is kept. */
export interface SupervisedChild {
  /** How it ended, printable (what `waitUntilReady` reports), or undefined while it runs. */
  exitReason: () => string | undefined;
  /** Stops it by the shutdown steps and removes its pid file; safe to call more than once. */
  stop: () => Promise<void>;
}

/**
 * Records a spawned server in `pidFile` (with `record` and this process as owner), sends it
 * `exitSignal` if this process exits first, and stops it by `steps`.
 */
export function superviseChild(child: ChildProcess, opts: { pidFile: string; record: object; exitSignal: NodeJS.Signals; steps: readonly StopStep[] }): SupervisedChild {
  let exited: ChildExit | undefined;
  const exitPromise = new Promise<void>((res) => {
    child.once('exit', (code, signal) => {
      exited ??= { code, signal };
      res();
    });
    child.once('error', (error) => {
      exited ??= { code: null, signal: null, error };
      res();
    });
  });
  const pid = child.pid;
  if (pid !== undefined) writeFileSync(opts.pidFile, JSON.stringify({ ...opts.record, pid, ownerPid: process.pid }));
  // Best effort so a caller that exits without stop() does not leave the server running.
  const onExit = (): void => {
    if (exited === undefined) child.kill(opts.exitSignal);
  };
  process.once('exit', onExit);

  // A plain sleep() would keep the event loop (and so the caller's process) alive for the full delay.
  const waitExit = (ms: number): Promise<boolean> =>
    new Promise<boolean>((res) => {
      const timer = setTimeout(() => res(exited !== undefined), ms);
      void exitPromise.then(() => {
        clearTimeout(timer);
        res(true);
      });
    });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (exited === undefined && pid !== undefined) await stopProcess(pid, opts.steps, () => exited === undefined, waitExit);
      process.removeListener('exit', onExit);
      if (readPidFile(opts.pidFile)?.pid === pid) removeQuietly(opts.pidFile);
    })();
    return stopping;
  };
  const exitReason = (): string | undefined =>
    exited && (exited.error ? errorMessage(exited.error) : `exit code ${String(exited.code)}, signal ${String(exited.signal)}`);
  return { exitReason, stop };
}
