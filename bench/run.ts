/**
 * `npm run bench`: MARE (arm O) against bare Temporal of the same shape (B1) and the box's ceiling
 * (B0), interleaved, three repetitions, each on a fresh Temporal dev server and a fresh database.
 * Writes bench/results/<date>.json and .md. See bench/README.md for what each figure means.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode } from '@temporalio/worker';
import { Command, InvalidArgumentError } from 'commander';
import { Client as PgClient, Pool } from 'pg';
import { keyringEnv, newKey } from '../infra/crypto/roleCrypto';
import { migrate } from '../infra/db/migrate';
import { createScratchDatabase } from '../infra/db/scratch';
import { projectRoot } from '../infra/paths';
import { redactUrl } from '../dev/postgres';
import { resolveTemporalCli, startTemporalDevServer, type TemporalDevServer } from '../dev/temporal';
import { TUNING_ENV, workerTuningFromEnv } from '../workers/tuning';
import { writeWorkflowBundle } from '../workers/worker';
import { armDataConverter, ARMS, benchPayloadKeyring, startArmWorker, taskRunner, type ArmName, type PayloadShape } from './arms';
import { runMicro, type MicroFigure } from './micro';
import { renderMarkdown, renderMicro } from './report';
import { FANOUTS, writeBenchScript } from './scripts';
import { historyFigures, runPhase, type PhaseFigures } from './workloads';

const WORKLOADS = ['W1', 'W2', 'W3', 'W4'] as const;
type Workload = (typeof WORKLOADS)[number];

/** Sizes of each workload; --quick shrinks them for a smoke run. */
export interface BenchSettings {
  reps: number;
  workloads: Workload[];
  warmupTasks: number;
  w1Tasks: number;
  w1Subtasks: number;
  w2DurationS: number;
  w3Tasks: number;
  w4Tasks: number;
  w4ModelDelayMs: number;
  w4ModelJitterMs: number;
  historySample: number;
  microIterations: number;
  tuning: Record<string, string>;
  sqlitePragmas: string[];
}

/** One phase's figures, keyed by repetition, workload label and arm. */
export interface RepResult {
  rep: number;
  order: ArmName[];
  /** e.g. W1, W2 (rate 12.3/s), W3 M=10, W4 */
  phases: Record<string, Partial<Record<ArmName, PhaseFigures>>>;
  w2Rate?: number;
}

export interface BenchResult {
  date: string;
  label?: string;
  machine: { cores: number; memoryGiB: number; cpu: string; os: string };
  versions: Record<string, string>;
  settings: BenchSettings;
  calibration: PayloadShape & { stepsPerSubtask: number };
  reps: RepResult[];
  micro: MicroFigure[];
}

const log = (line: string): void => void process.stderr.write(`[bench] ${line}\n`);

async function main(): Promise<void> {
  const program = new Command('bench')
    .description('MARE against bare Temporal: throughput, latency, fan-out and many-in-flight; see bench/README.md')
    .option('--reps <n>', 'repetitions (each on a fresh server and database)', positiveInt, 3)
    .option('--workloads <list>', 'comma-separated subset of W1,W2,W3,W4', parseWorkloads, [...WORKLOADS])
    .option('--arms <list>', 'comma-separated subset of B0,B1,O,O+enc (O+enc: O with payload encryption; not run in W3); W2 still probes B1 for its rate', parseArms, [...ARMS])
    .option('--quick', 'small sizes and one repetition: a smoke run, not a measurement')
    .option('--micro-only', 'only the in-process micro-figures (role retrieval, routing, injection, plan validation); needs PostgreSQL, not Temporal')
    .option('--label <text>', 'suffix of the result files, e.g. the tuning being tried')
    .option('--out <dir>', 'where results go', path.join(projectRoot(), 'bench', 'results'))
    .parse();
  const opts = program.opts<{ reps: number; workloads: Workload[]; arms: ArmName[]; quick?: boolean; microOnly?: boolean; label?: string; out: string }>();
  const quick = Boolean(opts.quick);
  // WAL lets the dev server's SQLite file keep up with 2.4× more bare-Temporal work here (bench/TUNING.md).
  const pragmas = (process.env.MARE_BENCH_SQLITE_PRAGMAS ?? 'journal_mode=wal,synchronous=normal').split(',').map((p) => p.trim()).filter(Boolean);
  const tuningEnv = Object.fromEntries(Object.values(TUNING_ENV).flatMap((k) => (process.env[k] ? [[k, process.env[k]]] : [])));
  workerTuningFromEnv(); // fails early, naming the variable, on a bad value
  const settings: BenchSettings = {
    reps: quick ? 1 : opts.reps,
    workloads: opts.workloads,
    warmupTasks: quick ? 3 : 10,
    w1Tasks: quick ? 40 : 500,
    w1Subtasks: 3,
    w2DurationS: quick ? 10 : 30,
    w3Tasks: quick ? 10 : 100,
    w4Tasks: quick ? 100 : 1000,
    w4ModelDelayMs: 1000,
    w4ModelJitterMs: 500,
    historySample: quick ? 2 : 5,
    microIterations: quick ? 200 : 2000,
    tuning: tuningEnv,
    sqlitePragmas: pragmas,
  };

  const { url: databaseUrl, version: postgresVersion } = await adminDatabase();
  // One role key for the whole run, inherited by every worker process (each rep has a fresh database).
  if (!process.env.MARE_ROLE_KEYS && !process.env.MARE_ROLE_KEY_FILE) {
    const { id, key } = newKey();
    Object.assign(process.env, keyringEnv({ activeKeyId: id, keys: new Map([[id, key]]), origin: 'bench' }));
  }
  if (opts.microOnly) {
    const micro = await measureMicro(databaseUrl, settings.microIterations);
    const date = new Date().toISOString();
    const machine = { cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30), cpu: os.cpus()[0]?.model ?? 'unknown', os: `${os.type()} ${os.release()}` };
    mkdirSync(opts.out, { recursive: true });
    const base = path.join(opts.out, `${date.slice(0, 10)}-micro${opts.label ? `-${opts.label}` : ''}`);
    writeFileSync(`${base}.json`, `${JSON.stringify({ date, machine, postgres: postgresVersion, iterations: settings.microIterations, micro }, null, 2)}\n`);
    const md = `## Micro-figures ${date.slice(0, 10)}\n\nMachine: ${machine.cores} cores (${machine.cpu}), PostgreSQL ${postgresVersion}.\n\n${renderMicro(micro)}\n`;
    writeFileSync(`${base}.md`, md);
    process.stdout.write(md);
    log(`wrote ${base}.json and ${base}.md`);
    return;
  }
  // O+enc's payload key, for its worker and its client alike; every other arm runs unencrypted in both.
  const payloadKeyring = benchPayloadKeyring();
  const cliPath = await resolveTemporalCli(log);
  const runVersions = { ...versions(cliPath), postgres: postgresVersion }; // before the run: the code measured
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const work = path.join(projectRoot(), '.mare', 'bench', stamp);
  mkdirSync(work, { recursive: true });
  log(`work directory ${work}`);
  const bundles = {
    // MARE_BENCH_WORKFLOW_BUNDLE runs arm O on another build's workflows (A/B runs for bench/TUNING.md).
    mare: process.env.MARE_BENCH_WORKFLOW_BUNDLE ?? (await writeWorkflowBundle(path.join(work, 'mare-bundle.js'), quietLogger)),
    bare: path.join(work, 'bare-bundle.js'),
  };
  writeFileSync(bundles.bare, (await bundleWorkflowCode({ workflowsPath: require.resolve('./bareWorkflows'), logger: quietLogger })).code);
  const scripts = {
    instant: writeBenchScript(path.join(work, 'script-instant.json')),
    slow: writeBenchScript(path.join(work, 'script-slow.json'), settings.w4ModelDelayMs, settings.w4ModelJitterMs),
  };

  /** A fresh Temporal dev server (its own SQLite file) and a fresh database for one block of work. */
  const withStack = async <T>(name: string, fn: (s: { server: TemporalDevServer; client: Client; dbUrl: string }) => Promise<T>): Promise<T> => {
    const server = await startTemporalDevServer({ cliPath, port: 0, uiPort: 0, sqlitePragmas: pragmas, dbFile: path.join(work, `${name}.sqlite`), logFile: path.join(work, `${name}.temporal.log`) });
    const db = await createScratchDatabase(databaseUrl, `mare_bench_${process.pid}_${name.replace(/\W/g, '_').toLowerCase()}`);
    const connection = await Connection.connect({ address: server.address });
    try {
      return await fn({ server, client: new Client({ connection }), dbUrl: db.url });
    } finally {
      await connection.close();
      await server.stop();
      await db.drop();
    }
  };

  /** Starts an arm's worker, warms it up, runs the phase, samples histories, stops the worker. */
  const runArm = async (
    s: { server: TemporalDevServer; client: Client; dbUrl: string },
    arm: ArmName,
    label: string,
    phase: { m: number; tasks: number; rate?: number; slow?: boolean; timeoutMs: number },
  ): Promise<PhaseFigures> => {
    const workspaceDir = path.join(work, 'workspaces', `${label}-${arm}`.replace(/\W/g, '_'));
    const worker = await startArmWorker(arm, {
      temporalAddress: s.server.address,
      databaseUrl: s.dbUrl,
      modelScript: phase.slow ? scripts.slow : scripts.instant,
      workspaceDir,
      bundles,
      tuning: tuningEnv,
      payloadKeyring,
    });
    try {
      const slow = phase.slow ? { delayMs: settings.w4ModelDelayMs, jitterMs: settings.w4ModelJitterMs } : undefined;
      const dataConverter = armDataConverter(arm, payloadKeyring);
      const client = dataConverter ? new Client({ connection: s.client.connection, dataConverter }) : s.client;
      const run = taskRunner(arm, client, arm === 'B0' ? 1 : phase.m, calibration, slow);
      const prefix = `${label.replace(/\W/g, '')}-${arm.replace(/\W/g, '')}`;
      if (!phase.slow) {
        const warm = Array.from({ length: settings.warmupTasks }, (_, i) => `${prefix}-warm-${i}`);
        await runPhase(run, { ids: warm, subtasksPerTask: phase.m, timeoutMs: 300_000 }, { worker: worker.pid, server: s.server.pid });
      }
      const ids = Array.from({ length: phase.tasks }, (_, i) => `${prefix}-${i}`);
      const figures = await runPhase(
        run,
        { ids, subtasksPerTask: arm === 'B0' ? 1 : phase.m, arrivalRate: phase.rate, timeoutMs: phase.timeoutMs },
        { worker: worker.pid, server: s.server.pid },
      );
      if (settings.historySample > 0 && figures.completed > 0) {
        const h = await historyFigures(client, arm, ids.slice(0, settings.historySample), arm === 'B0' ? 1 : phase.m);
        figures.historyEventsPerTask = h.events;
        figures.stateTransitionsPerTask = h.transitions;
      }
      log(
        `${label} ${arm}: ${figures.completed}/${figures.tasks} in ${figures.elapsedS.toFixed(1)} s, ${figures.tasksPerS.toFixed(2)} tasks/s, p50 ${figures.latencyMs.p50.toFixed(0)} ms, p99 ${figures.latencyMs.p99.toFixed(0)} ms, worker ${(figures.workerCpuSPerTask * 1000).toFixed(1)} ms CPU/task, RSS ${figures.workerPeakRssMiB.toFixed(0)} MiB`,
      );
      return figures;
    } finally {
      await worker.stop();
      rmSync(workspaceDir, { recursive: true, force: true });
    }
  };

  // Calibration: what MARE's activities carry, so B1 carries the same.
  log('calibration: measuring MARE payload sizes');
  let calibration: PayloadShape & { stepsPerSubtask: number } = { activityInputBytes: 0, activityResultBytes: 0, childResultBytes: 0, stepsPerSubtask: 0 };
  calibration = await withStack('calibration', async (s) => {
    await runArm(s, 'O', 'calibration', { m: 3, tasks: 3, timeoutMs: 300_000 });
    return measureShape(s.client, 'calibration-O-0');
  });
  log(`calibration: ${JSON.stringify(calibration)}`);

  const reps: RepResult[] = [];
  for (let rep = 1; rep <= settings.reps; rep++) {
    // Interleaved: each repetition runs every arm, in an order rotated per repetition.
    const order = ARMS.map((_, i) => ARMS[(i + rep - 1) % ARMS.length]!).filter((a) => opts.arms.includes(a));
    const result: RepResult = { rep, order, phases: {} };
    reps.push(result);
    const set = (label: string, arm: ArmName, f: PhaseFigures): void => void ((result.phases[label] ??= {})[arm] = f);
    for (const workload of settings.workloads) {
      await withStack(`rep${rep}-${workload}`, async (s) => {
        if (workload === 'W1') {
          for (const arm of order) set('W1', arm, await runArm(s, arm, `r${rep}-W1`, { m: settings.w1Subtasks, tasks: settings.w1Tasks, timeoutMs: 1_800_000 }));
        } else if (workload === 'W2') {
          const b1 = result.phases.W1?.B1?.tasksPerS ?? (await runArm(s, 'B1', `r${rep}-W2-probe`, { m: settings.w1Subtasks, tasks: settings.w1Tasks, timeoutMs: 1_800_000 })).tasksPerS;
          const rate = (result.w2Rate = b1 / 2);
          const tasks = Math.max(1, Math.round(rate * settings.w2DurationS));
          for (const arm of order) set('W2', arm, await runArm(s, arm, `r${rep}-W2`, { m: settings.w1Subtasks, tasks, rate, timeoutMs: 1_800_000 }));
        } else if (workload === 'W3') {
          for (const m of FANOUTS) {
            for (const arm of order.filter((a) => a !== 'B0' && a !== 'O+enc')) set(`W3 M=${m}`, arm, await runArm(s, arm, `r${rep}-W3-M${m}`, { m, tasks: settings.w3Tasks, timeoutMs: 1_800_000 }));
          }
        } else {
          for (const arm of order.filter((a) => a !== 'B0')) set('W4', arm, await runArm(s, arm, `r${rep}-W4`, { m: settings.w1Subtasks, tasks: settings.w4Tasks, slow: true, timeoutMs: 1_800_000 }));
        }
      });
    }
  }

  log('micro-figures');
  const micro = await measureMicro(databaseUrl, settings.microIterations);

  const result: BenchResult = {
    date: new Date().toISOString(),
    label: opts.label,
    machine: { cores: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30), cpu: os.cpus()[0]?.model ?? 'unknown', os: `${os.type()} ${os.release()}` },
    versions: runVersions,
    settings,
    calibration,
    reps,
    micro,
  };
  mkdirSync(opts.out, { recursive: true });
  const base = path.join(opts.out, `${result.date.slice(0, 10)}${opts.label ? `-${opts.label}` : ''}${quick ? '-quick' : ''}`);
  writeFileSync(`${base}.json`, `${JSON.stringify(result, null, 2)}\n`);
  const md = renderMarkdown(result);
  writeFileSync(`${base}.md`, md);
  process.stdout.write(`${md}\n`);
  log(`wrote ${base}.json and ${base}.md`);
  rmSync(work, { recursive: true, force: true });
}

/** The micro-figures, on a scratch database of their own. */
async function measureMicro(databaseUrl: string, iterations: number): Promise<MicroFigure[]> {
  const db = await createScratchDatabase(databaseUrl, `mare_bench_${process.pid}_micro`);
  await migrate(db.url);
  const pool = new Pool({ connectionString: db.url, max: 4 });
  try {
    return await runMicro(pool, iterations);
  } finally {
    await pool.end();
    await db.drop();
  }
}

/** Sizes of MARE's model and tool activity payloads and of a subtask's result, from one task's histories. */
async function measureShape(client: Client, taskId: string): Promise<PayloadShape & { stepsPerSubtask: number }> {
  const parentId = `mare-task-${taskId}`;
  const parent = await client.workflow.getHandle(parentId).fetchHistory();
  const size = (p: { payloads?: { data?: Uint8Array | null }[] | null } | null | undefined): number => (p?.payloads ?? []).reduce((n, x) => n + (x.data?.length ?? 0), 0);
  const childResults = (parent.events ?? []).flatMap((e) => (e.childWorkflowExecutionCompletedEventAttributes ? [size(e.childWorkflowExecutionCompletedEventAttributes.result)] : []));
  const inputs: number[] = [];
  const results: number[] = [];
  let steps = 0;
  for (const childId of (parent.events ?? []).flatMap((e) => (e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId ? [e.startChildWorkflowExecutionInitiatedEventAttributes.workflowId] : []))) {
    const events = (await client.workflow.getHandle(childId).fetchHistory()).events ?? [];
    const stepIds = new Set<string>();
    for (const e of events) {
      const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
      if (name === 'callModel' || name?.startsWith('workspace.')) {
        stepIds.add(String(e.eventId));
        inputs.push(size(e.activityTaskScheduledEventAttributes?.input));
      }
      const done = e.activityTaskCompletedEventAttributes;
      if (done && stepIds.has(String(done.scheduledEventId))) results.push(size(done.result));
    }
    steps = Math.max(steps, stepIds.size);
  }
  const mean = (xs: number[]): number => (xs.length ? Math.round(xs.reduce((a, b) => a + b, 0) / xs.length) : 0);
  if (!inputs.length || !childResults.length) throw new Error(`calibration task ${taskId} has no model or tool activities in its history`);
  return { activityInputBytes: mean(inputs), activityResultBytes: mean(results), childResultBytes: mean(childResults), stepsPerSubtask: steps };
}

/** The PostgreSQL server to create bench databases on (DATABASE_URL, else the local one on 5432) and its version. */
async function adminDatabase(): Promise<{ url: string; version: string }> {
  const url = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const c = new PgClient({ connectionString: url, connectionTimeoutMillis: 3_000 });
  try {
    await c.connect();
    const { rows } = await c.query<{ server_version: string }>('SHOW server_version');
    return { url, version: rows[0]?.server_version ?? 'unknown' };
  } catch (err) {
    throw new Error(`the bench needs PostgreSQL: set DATABASE_URL (tried ${redactUrl(url)}: ${(err as Error).message})`);
  } finally {
    await c.end().catch(() => undefined);
  }
}

function versions(cliPath: string): Record<string, string> {
  const pkg = (name: string): string => (JSON.parse(readFileSync(require.resolve(`${name}/package.json`), 'utf8')) as { version: string }).version;
  const safe = (fn: () => string): string => {
    try {
      return fn().trim();
    } catch {
      return 'unknown';
    }
  };
  return {
    node: process.version,
    temporalCli: safe(() => execFileSync(cliPath, ['--version'], { encoding: 'utf8' })),
    temporalSdk: pkg('@temporalio/worker'),
    mareCommit: safe(
      () =>
        execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: projectRoot(), encoding: 'utf8' }).trim() +
        (execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: projectRoot(), encoding: 'utf8' }).trim() ? '+uncommitted changes' : ''),
    ),
  };
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

function parseArms(v: string): ArmName[] {
  const list = v.split(',').map((a) => a.trim().toUpperCase().replace('+ENC', '+enc'));
  const bad = list.filter((a) => !(ARMS as string[]).includes(a));
  if (bad.length) throw new InvalidArgumentError(`unknown arm ${bad.join(', ')}; choose from ${ARMS.join(', ')}`);
  return list as ArmName[];
}

function parseWorkloads(v: string): Workload[] {
  const list = v.split(',').map((w) => w.trim().toUpperCase());
  const bad = list.filter((w) => !(WORKLOADS as readonly string[]).includes(w));
  if (bad.length) throw new InvalidArgumentError(`unknown workload ${bad.join(', ')}; choose from ${WORKLOADS.join(', ')}`);
  return list as Workload[];
}

const noop = (): void => undefined;
const quietLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: (m: string) => log(m), log: noop };

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
