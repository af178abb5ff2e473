/**
 * The sandbox of `command_succeeds` checks: bubblewrap (`bwrap`), never the worker's own process.
 *
 * A check command is chosen by the planner (a model) within the operator's allowlist, and runs on
 * files a model wrote; it is treated as hostile code. It runs:
 *  - as uid/gid 65534 in a new user namespace with every capability dropped (outside the namespace
 *    it is the worker's uid without capabilities), in new PID, mount, network, IPC, UTS and cgroup
 *    namespaces (`--unshare-all --unshare-user`, no `--share-net`: only a loopback of its own);
 *  - on a root of its own: /usr, /bin, /lib, /lib64, /sbin and a few /etc files (passwd, group,
 *    hosts, certificates, the loader cache; not /etc as a whole) read-only, the command's own
 *    install directory read-only when it lies elsewhere (Node under .mare/node), a fresh /proc that
 *    shows only the sandbox's processes, a minimal /dev, an empty tmpfs /tmp, and the task
 *    workspace as the one writable directory;
 *  - with an environment of only PATH, HOME (the workspace) and LANG (`--clearenv`), in a new
 *    session (no terminal to inject into), killed with the worker (`--die-with-parent`) and after
 *    the time limit; its output is capped.
 * bwrap reports the command's exit code on `--json-status-fd` only when the command ran in the
 * sandbox: without that report the sandbox could not be set up, and the run fails with
 * `SandboxUnavailable`. Nothing ever runs unsandboxed.
 */
import { spawn } from 'node:child_process';
import { constants as fsConstants, existsSync, lstatSync, readlinkSync, realpathSync } from 'node:fs';
import { access } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';

/** The uid and gid the command has inside the sandbox (`nobody`/`nogroup`). */
export const SANDBOX_UID = 65534;

/** Why a check could not run in the sandbox. */
export type SandboxFailure = 'bwrap-missing' | 'sandbox-setup-failed' | 'command-not-found';

/** The sandbox cannot run this command: the check fails, the command does not run at all. */
export class SandboxUnavailable extends Error {
  override readonly name = 'SandboxUnavailable';
  constructor(readonly reason: SandboxFailure, detail: string) {
    super(detail);
  }
}

/** What a sandboxed command did. Output is raw (not redacted) and capped at `maxOutputBytes` per stream. */
export interface SandboxResult {
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  /** Whether the command was killed for printing more than `maxOutputBytes` on one stream. */
  outputExceeded: boolean;
  durationMs: number;
  stdout: string;
  stderr: string;
}

/** How to run one command in the sandbox. */
export interface SandboxRequest {
  /** The task workspace: the working directory and the only writable directory. */
  workspace: string;
  /** A command name, looked up on the worker's PATH. */
  command: string;
  args: readonly string[];
  timeoutSeconds: number;
  maxOutputBytes?: number;
  /** The bwrap binary; by default `bwrap` on the worker's PATH, then /usr/bin/bwrap. */
  bwrapPath?: string;
}

// Mounted read-only when present (as the symlinks they are on merged-/usr systems).
const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32'];
// What programs commonly read from /etc; the rest (shadow, the worker's configuration) stays out.
const ETC_ENTRIES = [
  '/etc/passwd', '/etc/group', '/etc/nsswitch.conf', '/etc/hosts', '/etc/host.conf', '/etc/localtime', '/etc/timezone',
  '/etc/ld.so.cache', '/etc/ld.so.conf', '/etc/ld.so.conf.d', '/etc/alternatives', '/etc/ssl', '/etc/ca-certificates',
  '/etc/mime.types', '/etc/os-release', '/etc/debian_version', '/etc/protocols', '/etc/services',
];
const SANDBOX_LANG = 'C.UTF-8';

function isUnder(dir: string, file: string): boolean {
  const rel = path.relative(dir, file);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

function underSystemDir(file: string): boolean {
  return SYSTEM_DIRS.some((d) => existsSync(d) && isUnder(realpathSync(d), file));
}

async function executable(file: string): Promise<boolean> {
  try {
    await access(file, fsConstants.X_OK);
    return lstatSync(realpathSync(file)).isFile();
  } catch {
    return false;
  }
}

/** The first executable `name` on the worker's PATH (absolute directories only), or undefined. */
export async function findOnPath(name: string, pathVar = process.env.PATH ?? ''): Promise<string | undefined> {
  for (const dir of pathVar.split(path.delimiter)) {
    if (!path.isAbsolute(dir)) continue;
    const candidate = path.join(dir, name);
    if (await executable(candidate)) return candidate;
  }
  return undefined;
}

/**
 * The directory to mount for a command outside the system directories: the prefix holding its
 * `bin` directory (so an interpreter finds its libraries), else the directory holding it.
 */
function installDir(real: string): string {
  const dir = path.dirname(real);
  const prefix = path.basename(dir) === 'bin' ? path.dirname(dir) : dir;
  // Never the root or a top-level directory: that would mount most of the machine.
  return path.dirname(prefix) === '/' ? dir : prefix;
}

/** The bwrap arguments (before the command) for a workspace and the directories to mount read-only. */
function bwrapArgs(workspace: string, readOnly: readonly string[], sandboxPath: string): string[] {
  const args = ['--unshare-all', '--unshare-user', '--uid', String(SANDBOX_UID), '--gid', String(SANDBOX_UID), '--cap-drop', 'ALL'];
  args.push('--die-with-parent', '--new-session', '--clearenv', '--setenv', 'PATH', sandboxPath, '--setenv', 'HOME', workspace, '--setenv', 'LANG', SANDBOX_LANG);
  for (const dir of SYSTEM_DIRS) {
    if (!existsSync(dir)) continue;
    const st = lstatSync(dir);
    if (st.isSymbolicLink()) args.push('--symlink', readlinkSync(dir), dir);
    else args.push('--ro-bind', dir, dir);
  }
  for (const entry of ETC_ENTRIES) if (existsSync(entry)) args.push('--ro-bind', entry, entry);
  args.push('--proc', '/proc', '--dev', '/dev', '--tmpfs', '/tmp');
  for (const dir of readOnly) args.push('--ro-bind', dir, dir);
  // Last, so the workspace is writable even when it lies under /tmp or an install directory.
  // The sandbox's root is a tmpfs holding the mount points: read-only too, so a write outside the
  // workspace and /tmp fails instead of landing in it.
  args.push('--bind', workspace, workspace, '--remount-ro', '/', '--chdir', workspace);
  return args;
}

/**
 * Runs `command args…` in a bubblewrap sandbox in the workspace (see the module comment). Throws
 * `SandboxUnavailable` when bwrap is missing, cannot create its namespaces, or the command is not
 * on the worker's PATH; a command that runs and fails is a result, not an exception.
 */
export async function runSandboxed(req: SandboxRequest): Promise<SandboxResult> {
  const bwrap = req.bwrapPath ?? (await findOnPath('bwrap')) ?? '/usr/bin/bwrap';
  if (!(await executable(bwrap))) {
    throw new SandboxUnavailable('bwrap-missing', `bubblewrap (bwrap) is not installed at ${bwrap}: command checks run only in its sandbox (Debian/Ubuntu: apt-get install bubblewrap)`);
  }
  const found = await findOnPath(req.command);
  if (!found) throw new SandboxUnavailable('command-not-found', `command "${req.command}" is not on the worker's PATH`);
  const real = realpathSync(found);
  const workspace = realpathSync(req.workspace);
  const readOnly: string[] = [];
  const pathDirs: string[] = [];
  if (!underSystemDir(real)) {
    readOnly.push(installDir(real));
    // The command's own directory first, so `#!/usr/bin/env node` finds the same interpreter family.
    pathDirs.push(path.dirname(real));
  }
  pathDirs.push('/usr/local/bin', '/usr/bin', '/bin');
  const argv = [...bwrapArgs(workspace, readOnly, pathDirs.join(':')), '--json-status-fd', '3', real, ...req.args];
  const maxOutput = req.maxOutputBytes ?? 1_000_000;

  const started = Date.now();
  return new Promise<SandboxResult>((resolve, reject) => {
    const child = spawn(bwrap, argv, { cwd: '/', env: {}, stdio: ['ignore', 'pipe', 'pipe', 'pipe'], windowsHide: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let status = '';
    const sizes = [0, 0];
    let timedOut = false;
    let outputExceeded = false;
    const kill = (): void => {
      child.kill('SIGKILL');
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, req.timeoutSeconds * 1000);
    const collect = (into: Buffer[], i: 0 | 1) => (chunk: Buffer) => {
      const size = sizes[i] ?? 0;
      if (size < maxOutput) into.push(chunk.subarray(0, maxOutput - size));
      sizes[i] = size + chunk.length;
      if (size + chunk.length > maxOutput && !outputExceeded) {
        outputExceeded = true;
        kill();
      }
    };
    // stdio is ['ignore', 'pipe', 'pipe', 'pipe']: the three pipes exist.
    const [, stdoutPipe, stderrPipe, statusPipe] = child.stdio as unknown as [null, Readable, Readable, Readable];
    stdoutPipe.on('data', collect(out, 0));
    stderrPipe.on('data', collect(err, 1));
    statusPipe.on('data', (chunk: Buffer) => {
      status += chunk.toString('utf8');
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new SandboxUnavailable('bwrap-missing', `bubblewrap could not be started (${bwrap}): ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString('utf8');
      // bwrap reports {"exit-code": N} only for a command that ran: without it (and not killed by us)
      // the namespaces, the mounts or the exec failed.
      const exit = /"exit-code"\s*:\s*(\d+)/.exec(status);
      if (!exit && !timedOut && !outputExceeded) {
        reject(new SandboxUnavailable('sandbox-setup-failed', `bubblewrap could not set up the sandbox (it needs user, PID, mount and network namespaces): ${stderr.trim().slice(-500) || `exit ${code ?? signal}`}`));
        return;
      }
      // bwrap exits with the command's code (128+N when signal N killed it); ours killed bwrap itself.
      resolve({
        exitCode: timedOut || outputExceeded ? null : exit ? Number(exit[1]) : code,
        signal: timedOut || outputExceeded ? 'SIGKILL' : signal,
        timedOut,
        outputExceeded,
        durationMs: Date.now() - started,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr,
      });
    });
  });
}

