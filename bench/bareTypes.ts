/** Inputs of the bare-Temporal bench arms (shared by bareWorkflows.ts and bareWorker.ts). */

export interface NoopInput {
  /** Carried only for its size, to match MARE's activity inputs. */
  payload: string;
  /** Size of the returned string, to match MARE's activity results. */
  resultBytes: number;
  /** Simulated latency (W4's slow model): uniform in delayMs ± jitterMs. */
  delayMs: number;
  jitterMs: number;
}

export interface BareChildInput {
  index?: number;
  /** One entry per activity: K steps. */
  steps: { delayMs: number; jitterMs: number }[];
  activityPayload: string;
  activityResultBytes: number;
  resultBytes: number;
}

export interface BareTaskInput {
  subtasks: number;
  child: BareChildInput;
}

export interface BareActivities {
  noop(input: NoopInput): Promise<string>;
}
