import type { Plan, TaskProgress, TaskResult } from '../validation';

/** Help text for when the offline model answered. */
export const OFFLINE_NOTICE =
  'Offline model: the "scripted" model gives canned answers from a JSON script (no model is configured). For a real one, set ' +
  'MARE_MODEL=openai:<model> with OPENAI_API_KEY, MARE_MODEL=anthropic:<model> with ANTHROPIC_API_KEY, or ' +
  'MARE_MODEL=openai-compatible:<model> with MARE_OPENAI_COMPATIBLE_URL (Ollama, vLLM, llama.cpp).';

/** The plan as an indented list, one subtask a line. */
export function formatPlan(plan: Plan, fallbackReason?: string): string {
  const lines = plan.subtasks.map(
    (s) => `  ${s.id.padEnd(12)} ${`[${s.role}]`.padEnd(13)} ${s.title}${s.dependsOn.length ? `  (after ${s.dependsOn.join(', ')})` : ''}`,
  );
  if (fallbackReason) lines.unshift(`  (the model's plan was unusable: ${fallbackReason}; running the task as one subtask)`);
  return `Plan (${plan.subtasks.length} subtasks):\n${lines.join('\n')}`;
}

/** Lines describing what changed between two progress snapshots. */
export function progressLines(prev: TaskProgress | undefined, next: TaskProgress): string[] {
  const lines: string[] = [];
  if (!prev?.plan && next.plan) lines.push(formatPlan(next.plan, next.planFallbackReason));
  for (const s of next.subtasks) {
    const before = prev?.subtasks.find((p) => p.id === s.id);
    if (before && before.state === s.state && before.latestStep === s.latestStep) continue;
    if (!before && s.state === 'pending') continue;
    lines.push(`  ${s.id.padEnd(12)} ${s.state.padEnd(10)} ${s.latestStep}`);
  }
  if (prev?.phase !== next.phase && next.phase === 'compensating') lines.push('  rolling back: running compensations in reverse order');
  return lines;
}

/** A human-readable summary of a finished task. */
export function formatResult(result: TaskResult): string {
  const lines = [`Task ${result.taskId}: ${result.status}${result.cancelled ? ' (cancelled)' : ''}`];
  if (result.error) lines.push(`  reason: ${result.error}`);
  for (const s of result.subtasks) {
    lines.push(
      `  ${s.id.padEnd(12)} ${s.status.padEnd(9)} role ${s.role}@${s.roleVersion}, ${s.attempts} attempt(s), score ${s.score.toFixed(2)}, evidence ${s.evidenceIds.map((e) => e.slice(0, 12)).join(', ') || '-'}`,
    );
    if (s.roleFallbackReason) lines.push(`      role fallback: ${s.roleFallbackReason}`);
    if (s.deniedToolCalls) lines.push(`      ${s.deniedToolCalls} tool call(s) denied by the role's permissions`);
    if (s.output) lines.push(...s.output.split('\n').map((l) => `      | ${l}`));
  }
  for (const c of result.compensations) lines.push(`  undo ${c.step.tool} (${c.step.subtaskId}): ${c.ok ? 'ok' : 'FAILED'}: ${c.detail}`);
  lines.push(`  tokens: ${result.usage.inputTokens} in, ${result.usage.outputTokens} out; models: ${result.models.join(', ') || '-'}`);
  if (usedOfflineModel(result)) lines.push(OFFLINE_NOTICE);
  return lines.join('\n');
}

/** True when the offline scripted model answered any call of the task. */
export function usedOfflineModel(result: TaskResult): boolean {
  return result.models.some((m) => m.startsWith('scripted:'));
}

/** The Web UI page of a workflow. */
export function webUiLink(uiUrl: string, namespace: string, workflowId: string): string {
  return `${uiUrl.replace(/\/$/, '')}/namespaces/${encodeURIComponent(namespace)}/workflows/${encodeURIComponent(workflowId)}`;
}

/** The Web UI's workflow list, filtered by a visibility query. */
export function webUiListLink(uiUrl: string, namespace: string, query: string): string {
  return `${uiUrl.replace(/\/$/, '')}/namespaces/${encodeURIComponent(namespace)}/workflows?query=${encodeURIComponent(query)}`;
}

/** The columns to add to the Web UI's workflow list (per browser: "Configure Columns" on the list). */
export const WEB_UI_COLUMNS = ['MareTaskStatus', 'MareTaskId', 'MareRoles', 'MarePendingApproval'] as const;

/** Ready-made Web UI links: tasks with their MARE status, tasks that did not complete, approvals waiting for a person. */
export function webUiLinks(uiUrl: string, namespace: string): string[] {
  const link = (query: string): string => webUiListLink(uiUrl, namespace, query);
  return [
    `Tasks:             ${link("WorkflowType = 'orchestrateTask'")}`,
    `Tasks not done:    ${link("WorkflowType = 'orchestrateTask' AND MareTaskStatus IN ('COMPENSATED', 'FAILED')")}`,
    `Pending approvals: ${link("MarePendingApproval IS NOT NULL AND ExecutionStatus = 'Running'")}`,
    `Columns to add:    ${WEB_UI_COLUMNS.join(', ')} (workflow list → Configure Columns; kept per browser)`,
  ];
}
