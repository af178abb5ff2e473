import { execFile } from 'node:child_process';
import { accessSync, closeSync, constants, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, join } from 'node:path';

/** An error from the local dev stack, with a stable machine-readable code. */
export class StackError extends Error {
  override readonly name = 'StackError';

  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
  }
}

/** Returns whether path is an existing regular file that this process may execute. */
export function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Finds an executable by name on $PATH, like `command -v`. */
export function findOnPath(name: string): string | undefined {
  const names = process.platform === 'win32' ? [`${name}.exe`, name] : [name];
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    for (const candidate of names) {
      const full = join(dir, candidate);
      if (isExecutableFile(full)) return full;
    }
  }
  return undefined;
}

/** Runs a command to completion and returns its exit code and output (never throws on a non-zero exit). */
export function run(
  file: string,
  args: readonly string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<{ code: number | null; stdout: string; stderr: string; error?: Error }> {
  return new Promise((resolvePromise) => {
    execFile(
      file,
      args,
      { cwd: options.cwd, env: options.env, timeout: options.timeoutMs ?? 0, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
        resolvePromise({ code, stdout: String(stdout), stderr: String(stderr), ...(error === null ? {} : { error }) });
      },
    );
  });
}

/** Returns the last `lines` lines of a file starting at byte `fromOffset` (to skip earlier runs' output). */
export function tailFile(path: string, lines = 30, fromOffset = 0): string {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const size = statSync(path).size;
    // Reading only the end keeps this cheap even when a log has grown over many runs.
    const start = Math.max(fromOffset, size - 64 * 1024);
    const buf = Buffer.alloc(Math.max(0, size - start));
    readSync(fd, buf, 0, buf.length, start);
    return buf.toString('utf8').split('\n').filter((l) => l.trim() !== '').slice(-lines).join('\n');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Returns the current size of a file, or 0 when it does not exist. */
export function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** Resolves true when nothing is listening on host:port (we could bind it ourselves). */
export function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const server = createServer();
    server.once('error', () => resolvePromise(false));
    server.listen({ port, host, exclusive: true }, () => {
      server.close(() => resolvePromise(true));
    });
  });
}

/** Asks the OS for a currently free TCP port on host. */
export function findFreePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolvePromise(port));
    });
  });
}

/** Throws a PORT_IN_USE StackError when host:port is already taken. */
export async function assertPortFree(port: number, what: string, hint: string, host = '127.0.0.1'): Promise<void> {
  if (!(await isPortFree(port, host))) {
    throw new StackError(`${what}: port ${host}:${port} is already in use by another process. ${hint}`, 'PORT_IN_USE');
  }
}

/** Returns whether a process with this pid is running (EPERM still means it exists; a zombie does not count). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    // An exited orphan stays a zombie forever in containers whose PID 1 never reaps children.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** Returns a process's command line (arguments joined by spaces), or undefined when it cannot be read. */
export async function processCommandLine(pid: number): Promise<string | undefined> {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
  } catch {
    // No /proc (macOS): ask ps instead.
    const res = await run('ps', ['-p', String(pid), '-o', 'args=']);
    return res.code === 0 && res.stdout.trim() !== '' ? res.stdout.trim() : undefined;
  }
}

/** Waits until the process with this pid is gone; resolves false on timeout. */
export async function waitForPidExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isProcessAlive(pid)) return true;
    await sleep(100);
  }
  return !isProcessAlive(pid);
}

/** Resolves after ms milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolvePromise) => setTimeout(resolvePromise, ms));
}

/** Returns a printable "message" of any thrown value. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** What `waitUntilReady` needs to know about a server process it is waiting for. */
export interface ReadinessWait {
  /** e.g. "PostgreSQL"; used in error messages. */
  name: string;
  /** Where it should answer, e.g. "127.0.0.1:54329". */
  where: string;
  /** How the process ended, once it has; undefined while it runs. */
  exitReason(): string | undefined;
  /** Resolves once the server answers; a StackError from it is final, anything else is retried. */
  probe(): Promise<void>;
  stop(): Promise<void>;
  timeoutMs: number;
  intervalMs: number;
  logFile: string;
  logOffset: number;
  /** Prefix of the error codes: `<prefix>_START_FAILED` and `<prefix>_START_TIMEOUT`. */
  codePrefix: string;
}

/**
 * Polls a freshly spawned server until it answers. If it exits or does not answer in time, stops
 * it and throws a StackError carrying the tail of its log.
 */
export async function waitUntilReady(w: ReadinessWait): Promise<void> {
  const deadline = Date.now() + w.timeoutMs;
  let lastError = 'no attempt finished';
  for (;;) {
    const exit = w.exitReason();
    if (exit !== undefined) {
      await w.stop();
      throw new StackError(`${w.name} exited during startup (${exit}). Last lines of ${w.logFile}:\n${tailFile(w.logFile, 30, w.logOffset)}`, `${w.codePrefix}_START_FAILED`);
    }
    try {
      await w.probe();
      return;
    } catch (err) {
      if (err instanceof StackError) {
        await w.stop();
        throw err;
      }
      lastError = errorMessage(err);
    }
    if (Date.now() > deadline) {
      await w.stop();
      throw new StackError(
        `${w.name} did not accept connections on ${w.where} within ${w.timeoutMs}ms (last error: ${lastError}). Last lines of ${w.logFile}:\n${tailFile(w.logFile, 30, w.logOffset)}`,
        `${w.codePrefix}_START_TIMEOUT`,
      );
    }
    await sleep(w.intervalMs);
  }
}
