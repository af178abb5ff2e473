/** The markdown report of a bench run: medians with their spread over repetitions, and the ratios. */
import { ARMS, type ArmName } from './arms';
import type { MicroFigure } from './micro';
import type { BenchResult } from './run';
import { fmt, fmtSpread, spread, type Spread } from './stats';
import type { PhaseFigures } from './workloads';

type Pick = (f: PhaseFigures) => number | undefined;

function figure(result: BenchResult, phase: string, arm: ArmName, pick: Pick): Spread {
  return spread(result.reps.flatMap((r) => {
    const f = r.phases[phase]?.[arm];
    const v = f ? pick(f) : undefined;
    return v === undefined ? [] : [v];
  }));
}

/** The ratio rows of a table: each MARE arm (O, O+enc) against B1, and B1 against B0, where both ran. */
function ratioRows(result: BenchResult, phase: string, present: ArmName[], cols: [string, Pick, number?][], withB0 = true): string[][] {
  const pairs: [ArmName, ArmName][] = [['O', 'B1'], ['O+enc', 'B1'], ['O+enc', 'O'], ...(withB0 ? ([['B1', 'B0']] as [ArmName, ArmName][]) : [])];
  return pairs
    .filter(([a, b]) => present.includes(a) && present.includes(b))
    .map(([a, b]) => [`${a}/${b}`, '', ...cols.map(([, pick]) => ratio(figure(result, phase, a, pick), figure(result, phase, b, pick)))]);
}

const ratio = (a: Spread, b: Spread): string => (Number.isFinite(a.median) && Number.isFinite(b.median) && b.median !== 0 ? `${fmt(a.median / b.median, 2)}×` : 'n/a');

function table(headers: string[], rows: string[][]): string {
  return [`| ${headers.join(' | ')} |`, `| ${headers.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

export function renderMarkdown(result: BenchResult): string {
  const s = result.settings;
  const arms = (phase: string): ArmName[] => ARMS.filter((a) => result.reps.some((r) => r.phases[phase]?.[a]));
  const out: string[] = [];
  out.push(`## Bench ${result.date.slice(0, 10)}${result.label ? ` (${result.label})` : ''}`);
  out.push('');
  out.push(
    `Machine: ${result.machine.cores} cores (${result.machine.cpu}), ${result.machine.memoryGiB} GiB, ${result.machine.os}. ` +
      `Versions: Node ${result.versions.node}, ${result.versions.temporalCli}, Temporal TS SDK ${result.versions.temporalSdk}, PostgreSQL ${result.versions.postgres}, MARE ${result.versions.mareCommit}. ` +
      `Settings: ${s.reps} repetition(s), arms interleaved in rotated order, each repetition and workload on a fresh dev server (SQLite file${s.sqlitePragmas.length ? `, ${s.sqlitePragmas.join(', ')}` : ''}) and database, ${s.warmupTasks} warm-up tasks per arm; ` +
      `payload encryption (client and worker alike): ${ARMS.filter((a) => result.reps.some((r) => Object.values(r.phases).some((ph) => ph[a]))).map((a) => `${a} ${a === 'O+enc' ? 'AES-256-GCM' : 'off'}`).join(', ')}; ` +
      `worker tuning ${Object.keys(s.tuning).length ? Object.entries(s.tuning).map(([k, v]) => `${k}=${v}`).join(' ') : 'MARE defaults'}. ` +
      `Cells are median (min–max) over repetitions. Payloads: B1 activities carry ${result.calibration.activityInputBytes} B in and ${result.calibration.activityResultBytes} B out, children return ${result.calibration.childResultBytes} B, as measured on MARE's; K = ${result.calibration.stepsPerSubtask} model and tool calls per subtask.`,
  );

  const cols: [string, Pick, number?][] = [
    ['tasks/s', (f) => f.tasksPerS],
    ['subtasks/s', (f) => f.subtasksPerS],
    ['worker CPU ms/task', (f) => f.workerCpuSPerTask * 1000],
    ['server CPU ms/task', (f) => f.serverCpuSPerTask * 1000],
    ['worker peak RSS MiB', (f) => f.workerPeakRssMiB, 0],
    ['history events/task', (f) => f.historyEventsPerTask],
    ['state transitions/task', (f) => f.stateTransitionsPerTask],
  ];
  const throughputTable = (phase: string): string => {
    const a = arms(phase);
    const rows = a.map((arm) => [arm, `${completion(result, phase, arm)}`, ...cols.map(([, pick, d]) => fmtSpread(figure(result, phase, arm, pick), d))]);
    rows.push(...ratioRows(result, phase, a, cols));
    return table(['arm', 'completed', ...cols.map(([h]) => h)], rows);
  };

  if (result.reps.some((r) => r.phases.W1)) {
    out.push('', `### W1: ${s.w1Tasks} tasks of M=${s.w1Subtasks} at saturation`, '', throughputTable('W1'));
  }
  if (result.reps.some((r) => r.phases.W2)) {
    const rates = spread(result.reps.flatMap((r) => (r.w2Rate ? [r.w2Rate] : [])));
    const lat: [string, Pick][] = [
      ['p50 ms', (f) => f.latencyMs.p50],
      ['p95 ms', (f) => f.latencyMs.p95],
      ['p99 ms', (f) => f.latencyMs.p99],
      ['worker CPU ms/task', (f) => f.workerCpuSPerTask * 1000],
    ];
    const a = arms('W2');
    const rows = a.map((arm) => [arm, completion(result, 'W2', arm), ...lat.map(([, pick]) => fmtSpread(figure(result, 'W2', arm, pick), 0))]);
    rows.push(...ratioRows(result, 'W2', a, lat));
    out.push('', `### W2: end-to-end latency at a fixed arrival rate of ${fmtSpread(rates)} tasks/s (50% of B1's W1 saturation) for ${s.w2DurationS} s`, '', table(['arm', 'completed', ...lat.map(([h]) => h)], rows));
    // What MARE adds to each durable step of a subtask (model, tool, model), at p50: the task's added latency over its M × K steps.
    const steps = s.w1Subtasks * result.calibration.stepsPerSubtask;
    const added = (a.filter((arm) => arm === 'O' || arm === 'O+enc') as ArmName[]).map((arm) => {
      const extra = figure(result, 'W2', arm, (f) => f.latencyMs.p50).median - figure(result, 'W2', 'B1', (f) => f.latencyMs.p50).median;
      return `${arm} ${Number.isFinite(extra) && steps ? fmt(extra / steps, 1) : 'n/a'} ms`;
    });
    if (added.length && a.includes('B1')) out.push('', `p50 latency MARE adds per subtask step (over B1, ${steps} steps per task: M = ${s.w1Subtasks} subtasks of K = ${result.calibration.stepsPerSubtask}): ${added.join(', ')}.`);
  }
  const w3 = Object.keys(result.reps[0]?.phases ?? {}).filter((p) => p.startsWith('W3'));
  if (w3.length) {
    const rows = w3.map((phase) => {
      const b1 = figure(result, phase, 'B1', (f) => f.tasksPerS);
      const o = figure(result, phase, 'O', (f) => f.tasksPerS);
      return [
        phase.replace('W3 ', ''),
        fmtSpread(b1),
        fmtSpread(o),
        fmtSpread(figure(result, phase, 'B1', (f) => f.subtasksPerS)),
        fmtSpread(figure(result, phase, 'O', (f) => f.subtasksPerS)),
        ratio(o, b1),
        fmtSpread(figure(result, phase, 'O', (f) => f.stateTransitionsPerTask)),
        fmtSpread(figure(result, phase, 'B1', (f) => f.stateTransitionsPerTask)),
      ];
    });
    out.push('', `### W3: fan-out, ${s.w3Tasks} tasks per M at saturation`, '', table(['M', 'B1 tasks/s', 'O tasks/s', 'B1 subtasks/s', 'O subtasks/s', 'O/B1 tasks/s', 'O transitions/task', 'B1 transitions/task'], rows));
  }
  if (result.reps.some((r) => r.phases.W4)) {
    const cols4: [string, Pick, number?][] = [
      ['elapsed s', (f) => f.elapsedS],
      ['tasks/s', (f) => f.tasksPerS],
      ['p50 ms', (f) => f.latencyMs.p50, 0],
      ['p99 ms', (f) => f.latencyMs.p99, 0],
      ['worker peak RSS MiB', (f) => f.workerPeakRssMiB, 0],
      ['worker CPU ms/task', (f) => f.workerCpuSPerTask * 1000],
    ];
    const a = arms('W4');
    const rows = a.map((arm) => [arm, completion(result, 'W4', arm), ...cols4.map(([, pick, d]) => fmtSpread(figure(result, 'W4', arm, pick), d))]);
    rows.push(...ratioRows(result, 'W4', a, cols4, false));
    out.push('', `### W4: ${s.w4Tasks} tasks in flight at once, model calls ${s.w4ModelDelayMs} ± ${s.w4ModelJitterMs} ms`, '', table(['arm', 'completed', ...cols4.map(([h]) => h)], rows));
  }
  if (result.micro.length) out.push('', renderMicro(result.micro));
  return `${out.join('\n')}\n`;
}

/** The micro-figures table (also the whole report of `npm run bench -- --micro-only`). */
export function renderMicro(micro: MicroFigure[]): string {
  const rows = micro.map((m) => [m.name, String(m.iterations), m.note ? m.note : fmt(m.p50Us), m.note ? '' : fmt(m.p99Us)]);
  return ['### Micro-figures (in process)', '', table(['code path', 'iterations', 'p50 µs', 'p99 µs'], rows)].join('\n');
}

function completion(result: BenchResult, phase: string, arm: ArmName): string {
  const fs = result.reps.flatMap((r) => (r.phases[phase]?.[arm] ? [r.phases[phase][arm]] : []));
  return `${fs.reduce((n, f) => n + f.completed, 0)}/${fs.reduce((n, f) => n + f.tasks, 0)}`;
}
