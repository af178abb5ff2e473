/** CPU time and memory of a process, read from /proc (Linux), for per-arm worker and server figures. */
import { readFileSync } from 'node:fs';

// USER_HZ is 100 on every Linux this runs on (getconf CLK_TCK); /proc/<pid>/stat counts in it.
const CLOCK_TICKS = 100;

/** User + system CPU seconds a process has used so far (NaN once it is gone). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** Resident set size in MiB (NaN once it is gone). */
export function rssMiB(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Samples a process's RSS every intervalMs; `stop` returns the peak. */
export function sampleRss(pid: number, intervalMs = 250): { stop(): number } {
  let peak = rssMiB(pid);
  const timer = setInterval(() => {
    const now = rssMiB(pid);
    if (now > peak || !Number.isFinite(peak)) peak = now;
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      const now = rssMiB(pid);
      return Math.max(peak, Number.isFinite(now) ? now : 0);
    },
  };
}
