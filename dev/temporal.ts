import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readdirSync, statSync, writeSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { Connection } from '@temporalio/client';
import { assertPortFree, errorMessage, fileSize, findFreePort, findOnPath, isExecutableFile, isProcessAlive, processCommandLine, run, StackError, tailFile, waitUntilReady } from './stack';
import { readPidFile, removeQuietly, stopProcess, superviseChild, type PidRecord, type StopStep } from './pidFile';
import { dataDir } from '../infra/paths';

import { SearchAttributeType } from '@temporalio/common';
import { SEARCH_ATTRIBUTES } from '../core/constants';

export { StackError } from './stack';

/** A search attribute type name as spelled by `temporal server start-dev --search-attribute`. */
const CLI_TYPE_NAMES: Record<SearchAttributeType, SearchAttributeTypeName> = {
  [SearchAttributeType.KEYWORD]: 'Keyword',
  [SearchAttributeType.TEXT]: 'Text',
  [SearchAttributeType.INT]: 'Int',
  [SearchAttributeType.DOUBLE]: 'Double',
  [SearchAttributeType.BOOL]: 'Bool',
  [SearchAttributeType.DATETIME]: 'Datetime',
  [SearchAttributeType.KEYWORD_LIST]: 'KeywordList',
};

/** The custom search attributes MARE registers on its namespace (the keys the workflows set). */
export const MARE_SEARCH_ATTRIBUTES: Record<string, SearchAttributeTypeName> = Object.fromEntries(
  Object.values(SEARCH_ATTRIBUTES).map((key) => [key.name, CLI_TYPE_NAMES[key.type]]),
);

/** The type names the Temporal CLI accepts. */
export type SearchAttributeTypeName = 'Keyword' | 'Text' | 'Int' | 'Double' | 'Bool' | 'Datetime' | 'KeywordList';

/** The Temporal CLI release that `go install` builds (later releases can no longer be go-installed). */
export const TEMPORAL_CLI_GO_VERSION = 'v1.5.1';

const TEMPORAL_CLI_GO_PACKAGE = 'github.com/temporalio/cli/cmd/temporal';

// Values of temporal.api.enums.v1.IndexedValueType; @temporalio/proto is only a transitive dependency.
const INDEXED_VALUE_TYPE: Record<SearchAttributeTypeName, number> = {
  Text: 1,
  Keyword: 2,
  Int: 3,
  Double: 4,
  Bool: 5,
  Datetime: 6,
  KeywordList: 7,
};

type Log = (msg: string) => void;

const noop: Log = () => undefined;

const exeName = process.platform === 'win32' ? 'temporal.exe' : 'temporal';

/** Directory holding the Temporal CLI downloaded through the Temporal SDK. */
function sdkDownloadDir(): string {
  return join(dataDir(), 'temporal-cli');
}

/** Lists the directories where `go install` puts binaries: $GOBIN, each $GOPATH/bin, and ~/go/bin. */
async function goBinDirectories(goPath: string | undefined): Promise<string[]> {
  const dirs: string[] = [];
  if (goPath !== undefined) {
    const res = await run(goPath, ['env', 'GOBIN', 'GOPATH'], { cwd: tmpdir(), timeoutMs: 30_000 });
    if (res.code === 0) {
      const [gobin = '', gopath = ''] = res.stdout.split('\n').map((l) => l.trim());
      if (gobin !== '') dirs.push(gobin);
      for (const p of gopath.split(delimiter)) if (p !== '') dirs.push(join(p, 'bin'));
    }
  }
  if (process.env.GOBIN) dirs.push(process.env.GOBIN);
  dirs.push(join(homedir(), 'go', 'bin'));
  return [...new Set(dirs.map((d) => resolve(d)))];
}

/** Returns the newest Temporal CLI previously downloaded through the SDK into dir, if any. */
function findSdkDownloadedCli(dir: string): string | undefined {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return undefined;
  }
  // The SDK names its download "temporal-sdk-typescript-<sdk version>" (or "temporal-<version>" for pinned versions).
  const candidates = names
    .filter((n) => n.startsWith('temporal-') && !n.endsWith('.downloading'))
    .map((n) => join(dir, n))
    .filter(isExecutableFile)
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  return candidates[0];
}

/** Builds the Temporal CLI with `go install`, logging to <dataDir>/temporal-cli-build.log. */
async function goInstallTemporalCli(goPath: string, log: Log): Promise<string> {
  const base = dataDir();
  mkdirSync(base, { recursive: true });
  const buildLog = join(base, 'temporal-cli-build.log');
  const offset = fileSize(buildLog);
  const target = `${TEMPORAL_CLI_GO_PACKAGE}@${TEMPORAL_CLI_GO_VERSION}`;
  log(`Temporal CLI not found; building it with \`go install ${target}\` (takes a few minutes; output in ${buildLog})`);
  const fd = openSync(buildLog, 'a');
  writeSync(fd, `\n=== ${new Date().toISOString()} go install ${target}\n`);
  const started = Date.now();
  const child = spawn(goPath, ['install', target], { cwd: tmpdir(), stdio: ['ignore', fd, fd] });
  closeSync(fd);
  // A heartbeat reassures whoever watches the console that a multi-minute build is progressing.
  const heartbeat = setInterval(() => log(`still building the Temporal CLI (${Math.round((Date.now() - started) / 1000)}s)`), 30_000);
  const code = await new Promise<number | null>((res) => {
    child.once('error', () => res(null));
    child.once('exit', (c) => res(c));
  }).finally(() => clearInterval(heartbeat));
  if (code !== 0) {
    throw new StackError(
      `go install ${target} failed (exit ${String(code)}):\n${tailFile(buildLog, 20, offset)}`,
      'TEMPORAL_CLI_BUILD_FAILED',
    );
  }
  for (const dir of await goBinDirectories(goPath)) {
    const candidate = join(dir, exeName);
    if (isExecutableFile(candidate)) {
      log(`built the Temporal CLI in ${Math.round((Date.now() - started) / 1000)}s: ${candidate}`);
      return candidate;
    }
  }
  throw new StackError(`go install ${target} succeeded but no ${exeName} appeared in Go's bin directories`, 'TEMPORAL_CLI_BUILD_FAILED');
}

// Runs in a child Node process so that the SDK's process-wide Runtime singleton is never created in the caller.
const SDK_DOWNLOAD_SCRIPT = `
const { TestWorkflowEnvironment } = require(process.env.MARE_TEMPORAL_TESTING_MODULE);
TestWorkflowEnvironment.createLocal({
  server: {
    executable: { type: 'cached-download', downloadDir: process.env.MARE_TEMPORAL_DOWNLOAD_DIR, ttl: '3650d' },
    ip: '127.0.0.1',
    ui: false,
  },
})
  .then((env) => env.teardown())
  .catch((err) => { console.error(err && err.stack ? err.stack : String(err)); process.exit(1); });
`;

/** Downloads the Temporal CLI the way @temporalio/testing does, and returns the cached binary's path. */
async function sdkDownloadTemporalCli(log: Log): Promise<string> {
  let testingModule: string;
  try {
    testingModule = require.resolve('@temporalio/testing');
  } catch {
    throw new StackError('@temporalio/testing is not installed (it is a devDependency)', 'TEMPORAL_CLI_DOWNLOAD_FAILED');
  }
  const dir = sdkDownloadDir();
  mkdirSync(dir, { recursive: true });
  log(`Temporal CLI not found; downloading it through the Temporal SDK into ${dir}`);
  // The SDK has no download-only API: it downloads while starting a throwaway in-memory dev server.
  const res = await run(process.execPath, ['-e', SDK_DOWNLOAD_SCRIPT], {
    env: { ...process.env, MARE_TEMPORAL_TESTING_MODULE: testingModule, MARE_TEMPORAL_DOWNLOAD_DIR: dir },
    timeoutMs: 10 * 60_000,
  });
  const found = findSdkDownloadedCli(dir);
  if (res.code === 0 && found !== undefined) return found;
  const output = `${res.stderr}\n${res.stdout}`.trim().split('\n').slice(-15).join('\n');
  throw new StackError(`the Temporal SDK download failed: ${output || errorMessage(res.error)}`, 'TEMPORAL_CLI_DOWNLOAD_FAILED');
}

/**
 * Finds the Temporal CLI: $TEMPORAL_CLI_PATH, `temporal` on PATH, Go's bin directories, an earlier SDK download in
 * <dataDir>/temporal-cli, then builds it with `go install` when Go is available, then downloads it through the
 * Temporal SDK (@temporalio/testing's cached download, needs internet); throws TEMPORAL_CLI_NOT_FOUND otherwise.
 */
export async function resolveTemporalCli(log: Log = noop): Promise<string> {
  const fromEnv = process.env.TEMPORAL_CLI_PATH;
  if (fromEnv !== undefined && fromEnv.trim() !== '') {
    const full = resolve(fromEnv);
    if (!isExecutableFile(full)) {
      throw new StackError(`TEMPORAL_CLI_PATH=${fromEnv} is not an existing executable file`, 'TEMPORAL_CLI_PATH_INVALID');
    }
    return full;
  }

  const onPath = findOnPath('temporal');
  if (onPath !== undefined) return onPath;

  const goPath = findOnPath('go');
  const goBins = await goBinDirectories(goPath);
  for (const dir of goBins) {
    const candidate = join(dir, exeName);
    if (isExecutableFile(candidate)) return candidate;
  }

  const downloaded = findSdkDownloadedCli(sdkDownloadDir());
  if (downloaded !== undefined) return downloaded;

  const failures: string[] = [];
  if (goPath !== undefined) {
    try {
      return await goInstallTemporalCli(goPath, log);
    } catch (err) {
      failures.push(errorMessage(err));
      log(`building the Temporal CLI failed; trying the SDK download next`);
    }
  }
  try {
    return await sdkDownloadTemporalCli(log);
  } catch (err) {
    failures.push(errorMessage(err));
  }

  throw new StackError(
    [
      'Temporal CLI not found. Any one of these fixes it:',
      '  - set TEMPORAL_CLI_PATH to the path of a `temporal` binary;',
      '  - put `temporal` on PATH (https://docs.temporal.io/cli#install);',
      `  - install Go (https://go.dev/dl/) so MARE can build it with \`go install ${TEMPORAL_CLI_GO_PACKAGE}@${TEMPORAL_CLI_GO_VERSION}\``,
      `    (looked in ${goBins.join(', ')});`,
      `  - allow internet access to temporal.download so the Temporal SDK can download it into ${sdkDownloadDir()}.`,
      ...(failures.length > 0 ? ['What was tried:', ...failures.map((f) => `  - ${f}`)] : []),
    ].join('\n'),
    'TEMPORAL_CLI_NOT_FOUND',
  );
}

/** Options for startTemporalDevServer. */
export interface TemporalDevServerOptions {
  /** Path of the Temporal CLI binary (see resolveTemporalCli). */
  cliPath: string;
  /** SQLite file holding all server state; persists across restarts. Default <dataDir>/temporal.sqlite. */
  dbFile?: string;
  /** Frontend gRPC port; 0 picks a free one. Default 7233. */
  port?: number;
  /** Web UI port; 0 picks a free one. Default port + 1000 (8233 for the default port). */
  uiPort?: number;
  /** Namespace to create at start. Default "default". */
  namespace?: string;
  /** Custom search attributes to register. Default MARE_SEARCH_ATTRIBUTES; pass {} for none. */
  searchAttributes?: Record<string, SearchAttributeTypeName>;
  /** Server log file. Default <dataDir>/temporal.log. */
  logFile?: string;
  /** SQLite pragmas for the server's database file, e.g. ["journal_mode=wal"]. Default none. */
  sqlitePragmas?: string[];
  /** How long to wait for the server to accept connections. Default 60s. */
  startTimeoutMs?: number;
  /** Remote codec endpoint the Web UI decodes payloads with (MARE's codec server). Default none. */
  uiCodecEndpoint?: string;
  /** Progress messages for a console. */
  log?: Log;
}

/** A running Temporal dev server. */
export interface TemporalDevServer {
  /** gRPC address, host:port. */
  address: string;
  /** Web UI URL. */
  uiUrl: string;
  namespace: string;
  /** Process id of the `temporal server start-dev` process. */
  pid: number;
  logFile: string;
  /** Stops the server (SIGTERM, then SIGKILL after 10s); safe to call more than once. */
  stop(): Promise<void>;
}

interface TemporalPidFile extends PidRecord {
  address: string;
}

/** SIGTERM, then SIGKILL after 10s. */
const TEMPORAL_STOP: readonly StopStep[] = [
  ['SIGTERM', 10_000],
  ['SIGKILL', 5_000],
];

/** Deals with a server recorded in pidFile: stops it if its owner died, refuses if its owner still runs. */
async function handleLeftoverServer(pidFile: string, dbFile: string, log: Log): Promise<void> {
  const recorded = readPidFile<TemporalPidFile>(pidFile);
  if (recorded === undefined) return;
  const cmdline = isProcessAlive(recorded.pid) ? await processCommandLine(recorded.pid) : undefined;
  // Checking the command line guards against a recycled pid now belonging to an unrelated process.
  if (cmdline !== undefined && cmdline.includes('start-dev') && cmdline.includes(dbFile)) {
    if (isProcessAlive(recorded.ownerPid)) {
      throw new StackError(
        `A Temporal dev server (pid ${recorded.pid}, started by pid ${recorded.ownerPid}) is already running on ${recorded.address} with ${dbFile}; connect to it or stop it first`,
        'TEMPORAL_ALREADY_RUNNING',
      );
    }
    log(`stopping a Temporal dev server (pid ${recorded.pid}) left over from an earlier run`);
    await stopProcess(recorded.pid, TEMPORAL_STOP);
  }
  removeQuietly(pidFile);
}

/** Checks the namespace answers and the search attributes exist, registering missing ones; throws when not ready. */
async function checkReady(address: string, namespace: string, searchAttributes: Record<string, SearchAttributeTypeName>): Promise<void> {
  const connection = await Connection.connect({ address, connectTimeout: 2_000 });
  try {
    await connection.workflowService.getSystemInfo({});
    await connection.workflowService.describeNamespace({ namespace });
    // start-dev only registers search attributes when it creates the namespace, so an older database file lacks new ones.
    await registerSearchAttributes(connection, namespace, searchAttributes);
  } finally {
    await connection.close();
  }
}

/**
 * Registers the search attributes a namespace lacks (`mare dev` on an older database file, and
 * `mare setup` on a cluster); one that exists with another type is a StackError. Returns what was
 * added and what was already there.
 */
export async function registerSearchAttributes(
  connection: Connection,
  namespace: string,
  searchAttributes: Record<string, SearchAttributeTypeName> = MARE_SEARCH_ATTRIBUTES,
): Promise<{ added: string[]; existing: string[] }> {
  const listed = await connection.operatorService.listSearchAttributes({ namespace });
  const have: Record<string, number | null | undefined> = listed.customAttributes ?? {};
  const missing: Record<string, number> = {};
  const existing: string[] = [];
  for (const [name, type] of Object.entries(searchAttributes)) {
    const current = have[name];
    if (current === undefined || current === null) {
      missing[name] = INDEXED_VALUE_TYPE[type];
    } else if (current !== INDEXED_VALUE_TYPE[type]) {
      throw new StackError(`Search attribute ${name} already exists in namespace ${namespace} with a different type than ${type}`, 'SEARCH_ATTRIBUTE_TYPE_MISMATCH');
    } else {
      existing.push(name);
    }
  }
  if (Object.keys(missing).length > 0) await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: missing });
  return { added: Object.keys(missing), existing };
}

/** Starts `temporal server start-dev` on 127.0.0.1 with a persistent SQLite file and waits until it serves requests. */
export async function startTemporalDevServer(opts: TemporalDevServerOptions): Promise<TemporalDevServer> {
  const log = opts.log ?? noop;
  const namespace = opts.namespace ?? 'default';
  const searchAttributes: Record<string, SearchAttributeTypeName> = opts.searchAttributes ?? { ...MARE_SEARCH_ATTRIBUTES };
  for (const [name, type] of Object.entries(searchAttributes)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name) || INDEXED_VALUE_TYPE[type] === undefined) {
      throw new StackError(`Invalid search attribute ${name}=${String(type)}`, 'INVALID_SEARCH_ATTRIBUTE');
    }
  }
  if (!isExecutableFile(opts.cliPath)) {
    throw new StackError(`Temporal CLI ${opts.cliPath} is not an executable file`, 'TEMPORAL_CLI_PATH_INVALID');
  }

  const dbFile = resolve(opts.dbFile ?? join(dataDir(), 'temporal.sqlite'));
  const logFile = resolve(opts.logFile ?? join(dataDir(), 'temporal.log'));
  mkdirSync(dirname(dbFile), { recursive: true });
  mkdirSync(dirname(logFile), { recursive: true });
  // The pid file sits next to the database because the database is what two servers must never share.
  const pidFile = `${dbFile}.pid`;
  await handleLeftoverServer(pidFile, dbFile, log);

  const port = opts.port === 0 ? await findFreePort() : (opts.port ?? 7233);
  const requestedUiPort = opts.uiPort ?? port + 1000;
  const uiPort = requestedUiPort === 0 ? await findFreePort() : requestedUiPort;
  const hint = 'Stop it, or choose other ports for the Temporal dev server.';
  await assertPortFree(port, 'Temporal dev server gRPC', hint);
  await assertPortFree(uiPort, 'Temporal dev server Web UI', hint);

  const args = ['server', 'start-dev', '--ip', '127.0.0.1', '--port', String(port), '--ui-port', String(uiPort), '--db-filename', dbFile];
  if (namespace !== 'default') args.push('--namespace', namespace);
  for (const [name, type] of Object.entries(searchAttributes)) args.push('--search-attribute', `${name}=${type}`);
  for (const pragma of opts.sqlitePragmas ?? []) args.push('--sqlite-pragma', pragma);
  if (opts.uiCodecEndpoint) args.push('--ui-codec-endpoint', opts.uiCodecEndpoint);
  // Same as the SDK's test server: skip the startup call home to Temporal's version-check service.
  args.push('--dynamic-config-value', 'frontend.enableServerVersionCheck=false');

  const logOffset = fileSize(logFile);
  const fd = openSync(logFile, 'a');
  // The codec endpoint carries the codec server's token: keep it out of the log.
  writeSync(fd, `\n=== ${new Date().toISOString()} ${opts.cliPath} ${args.join(' ').replace(/\/token\/[^/\s]+/g, '/token/***')}\n`);
  const child = spawn(opts.cliPath, args, { stdio: ['ignore', fd, fd] });
  closeSync(fd);

  const address = `127.0.0.1:${port}`;
  const pid = child.pid;
  const { exitReason, stop } = superviseChild(child, { pidFile, record: { address }, exitSignal: 'SIGTERM', steps: TEMPORAL_STOP });

  await waitUntilReady({
    name: 'Temporal dev server',
    where: address,
    exitReason,
    probe: () => checkReady(address, namespace, searchAttributes),
    stop,
    timeoutMs: opts.startTimeoutMs ?? 60_000,
    intervalMs: 250,
    logFile,
    logOffset,
    codePrefix: 'TEMPORAL',
  });

  log(`Temporal dev server ready on ${address} (Web UI http://127.0.0.1:${uiPort}, logs ${logFile})`);
  return { address, uiUrl: `http://127.0.0.1:${uiPort}`, namespace, pid: pid ?? -1, logFile, stop };
}
