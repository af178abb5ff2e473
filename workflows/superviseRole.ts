import {
  allHandlersFinished,
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  proxyActivities,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { EnforcementActivities } from '../activities';
import { DEFAULT_TENANT, oneLine, SEARCH_ATTRIBUTES } from '../core/constants';
import { decide, SUPERVISOR_DEFAULTS, type EnforcementDecision, type OutcomeReport, type SupervisorSettings, type SupervisorState } from '../core/supervisor';
import {
  acquireSlotSignal,
  embodimentOutcomeSignal,
  reinstateRoleSignal,
  releaseSlotSignal,
  retireSupervisorSignal,
  slotGrantedSignal,
  supervisorStateQuery,
} from './definitions';
import { workflowVersions } from './versions';

/** Enforcement changes the role repository and writes a record: retried until it lands. `summary`: what the Web UI shows. */
const enforcement = (summary: string): EnforcementActivities =>
  proxyActivities<EnforcementActivities>({
    startToCloseTimeout: '30 seconds',
    retry: { initialInterval: '1 second', maximumInterval: '30 seconds' },
    summary: oneLine(summary, 200),
  });

/** Input of a role's supervisor for one tenant; `carried` is its own state when it continues as new. */
export interface SuperviseRoleInput {
  role: string;
  /** The tenant whose embodiments of the role it counts and whose enforcement it decides (default: "default"). */
  tenant?: string;
  settings?: Partial<SupervisorSettings>;
  carried?: SupervisorState;
}

/**
 * The monitor–analyze–plan–execute loop of one role for one tenant, for as long as the tenant uses
 * the role (one workflow per role and tenant, so one tenant's failures never throttle or suspend
 * the role for another): every embodiment's outcome arrives as a signal and joins a rolling window; the decisions (warning,
 * throttle, suspend, reinstate after a cool-down or when a person says so) are carried out by the
 * `enforce` activity and recorded with their reason and evidence. While the role is throttled the
 * supervisor hands out slots, so at most `throttleCap` embodiments run at once. It continues as new
 * before its history grows large, carrying its window.
 */
export async function superviseRole(input: SuperviseRoleInput): Promise<SupervisorState> {
  workflowVersions();
  const settings: SupervisorSettings = { ...SUPERVISOR_DEFAULTS, ...input.carried?.settings, ...input.settings };
  const tenant = input.tenant ?? input.carried?.tenant ?? DEFAULT_TENANT;
  const state: SupervisorState = input.carried
    ? { ...input.carried, tenant, settings, runs: input.carried.runs + 1 }
    : { role: input.role, tenant, phase: 'Init', settings, window: [], seen: [], throttleCap: null, holders: [], queue: [], actions: [], actionSeq: 0, outcomesSeen: 0, runs: 1 };
  const outcomes: OutcomeReport[] = [];
  const reinstatements: { by: string; reason: string }[] = [];
  let retiring = false;

  setHandler(supervisorStateQuery, () => state);
  setHandler(embodimentOutcomeSignal, (o) => void outcomes.push(o));
  setHandler(reinstateRoleSignal, (r) => void reinstatements.push(r));
  setHandler(retireSupervisorSignal, () => void (retiring = true));
  setHandler(acquireSlotSignal, ({ workflowId }) => {
    if (!state.holders.includes(workflowId) && !state.queue.includes(workflowId)) state.queue.push(workflowId);
  });
  setHandler(releaseSlotSignal, ({ workflowId }) => {
    state.holders = state.holders.filter((w) => w !== workflowId);
    state.queue = state.queue.filter((w) => w !== workflowId);
  });

  if (state.phase === 'Init') state.phase = 'Ready';
  publish();

  const grantable = (): boolean => state.queue.length > 0 && (state.throttleCap === null || state.holders.length < state.throttleCap);
  const coolDownLeft = (): number => (state.suspendedUntil ? Date.parse(state.suspendedUntil) - now() : Infinity);
  const tooLong = (): boolean => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > settings.maxHistoryEvents;

  for (;;) {
    const wait = coolDownLeft();
    const ready = (): boolean => outcomes.length > 0 || reinstatements.length > 0 || retiring || grantable() || tooLong();
    // While suspended, the cool-down's end wakes the loop too.
    if (Number.isFinite(wait)) await condition(ready, Math.max(wait, 1));
    else await condition(ready);

    while (grantable()) {
      const workflowId = state.queue.shift()!;
      state.holders.push(workflowId);
      // An embodiment that ended while it waited cannot take the slot: give it to the next one.
      await getExternalWorkflowHandle(workflowId)
        .signal(slotGrantedSignal)
        .catch(() => (state.holders = state.holders.filter((w) => w !== workflowId)));
    }

    while (outcomes.length) {
      const o = outcomes.shift()!;
      if (state.seen.includes(o.key)) continue;
      state.seen = [...state.seen, o.key].slice(-200);
      state.outcomesSeen++;
      if (state.phase === 'Ready') state.phase = 'Active';
      const { window, decisions } = decide(state, o);
      state.window = window;
      for (const d of decisions) await apply(d, 'supervisor', o.roleVersion);
    }

    while (reinstatements.length) {
      const r = reinstatements.shift()!;
      // A person already lifted the suspension in the repository (mare roles reinstate); record it and start afresh.
      if (state.phase === 'Suspended') await apply({ action: 'reinstate', reason: r.reason || 'reinstated by a person', evidence: { window: state.window.length } }, r.by);
    }

    if (state.phase === 'Suspended' && coolDownLeft() <= 0) {
      await apply({ action: 'reinstate', reason: `cool-down of ${settings.coolDownSeconds} s elapsed`, evidence: { suspendedUntil: state.suspendedUntil } }, 'supervisor');
    }

    if (retiring) {
      state.phase = 'Retiring';
      publish();
      await condition(() => state.holders.length === 0);
      state.phase = 'Terminated';
      publish();
      return state;
    }

    if (tooLong() && !outcomes.length && !reinstatements.length) {
      await condition(allHandlersFinished);
      // A signal that arrived meanwhile is handled first, in the next turn of the loop.
      if (!outcomes.length && !reinstatements.length) await continueAsNew<typeof superviseRole>({ role: state.role, tenant: state.tenant, carried: state });
    }
  }

  /** Carries out one decision (enforce activity: repository change + record) and updates the state. */
  async function apply(d: EnforcementDecision, decidedBy: string, roleVersion?: string): Promise<void> {
    // Unique per supervisor, across continue-as-new: a supervisor started after a retired one counts from 1 again.
    const key = `${state.role}:${workflowInfo().firstExecutionRunId}:${++state.actionSeq}`;
    const cap = d.action === 'throttle' ? settings.throttleCap : null;
    await enforcement(`${d.action} ${state.role} for tenant ${state.tenant}: ${d.reason}`).enforce({ key, role: state.role, tenant: state.tenant, roleVersion, action: d.action, reason: d.reason, evidence: d.evidence, decidedBy, throttleCap: cap });
    switch (d.action) {
      case 'suspend':
        state.phase = 'Suspended';
        state.suspendedUntil = new Date(now() + settings.coolDownSeconds * 1000).toISOString();
        break;
      case 'reinstate':
        state.phase = 'Active';
        state.suspendedUntil = undefined;
        state.window = [];
        break;
      case 'throttle':
        state.throttleCap = cap;
        break;
      case 'unthrottle':
        state.throttleCap = null;
        break;
      case 'warning':
        break;
    }
    state.actions = [...state.actions, { ...d, decidedBy, at: new Date(now()).toISOString() }].slice(-50);
    publish();
  }

  function publish(): void {
    upsertSearchAttributes([
      { key: SEARCH_ATTRIBUTES.supervisorPhase, value: state.phase },
      { key: SEARCH_ATTRIBUTES.supervisorThrottle, value: state.throttleCap === null ? 'none' : String(state.throttleCap) },
      { key: SEARCH_ATTRIBUTES.roles, value: [state.role] },
      { key: SEARCH_ATTRIBUTES.tenant, value: state.tenant },
    ]);
  }
}

/** Workflow time (Temporal's replayed clock: the start of the current workflow task). */
function now(): number {
  // eslint-disable-next-line no-restricted-properties -- deterministic in workflow code
  return Date.now();
}
