import { timingSafeEqual } from 'node:crypto';
import { WorkflowNotFoundError, type WorkflowExecutionDescription } from '@temporalio/client';
import { type ApprovalView } from '../validation';
import { SEARCH_ATTRIBUTES, taskWorkflowId } from '../core/constants';
import { ApiKeyRejectedError, bootstrapPrincipal, hasScope, type ApiKeyStore, type ApiScope, type Principal } from '../infra/db/apiKeys';
import { TaskNotFoundError, type MareClient, type SubmitTaskInput } from '../client/client';
import { HttpError, sha256 } from './httpKit';

/**
 * Who may do what through the HTTP API: the key of a request gives its principal (tenant, scopes,
 * identity); a principal sees only its tenant's tasks (another tenant's task is "no such task"),
 * and each route needs a scope. `admin` holds every scope in every tenant.
 */

/** The workflow type of a task's run. */
const TASK_WORKFLOW_TYPE = 'orchestrateTask';

/** The principal of a request to a route that needs no key: no tenant, no scope. */
export const ANONYMOUS: Principal = { keyId: '', name: 'anonymous', tenant: '', scopes: [], identity: 'anonymous' };

function unauthorized(message: string): HttpError {
  return new HttpError(401, message, {}, { 'www-authenticate': 'Bearer realm="mare"' });
}

/** Authenticates requests: the operator's bootstrap key (if any) first, then the stored keys (if any). */
export function createAuthenticator(opts: { bootstrapKey?: string; keys?: ApiKeyStore }): (header: string | undefined) => Promise<Principal> {
  const bootstrapDigest = opts.bootstrapKey === undefined ? undefined : sha256(opts.bootstrapKey);
  return async (header) => {
    const found = /^Bearer[ ]+(\S+)\s*$/i.exec(header ?? '');
    const token = found?.[1];
    if (!token) throw unauthorized('missing API key: send "Authorization: Bearer <key>"');
    // Digests of equal length keep the comparison constant-time whatever the presented key's length.
    if (bootstrapDigest && timingSafeEqual(sha256(token), bootstrapDigest)) return bootstrapPrincipal();
    if (!opts.keys) throw unauthorized('invalid API key');
    try {
      return await opts.keys.authenticate(token);
    } catch (err) {
      if (err instanceof ApiKeyRejectedError) throw unauthorized(err.message);
      throw err;
    }
  };
}

/** 403 unless the principal holds `scope`. */
export function requireScope(principal: Principal, scope: ApiScope, what: string): void {
  if (!hasScope(principal, scope)) throw new HttpError(403, `this API key (${principal.identity}) lacks the "${scope}" scope needed to ${what}`);
}

/** The tenant a task run was started for (its MareTenant search attribute; runs without one: "default"). */
export function tenantOf(described: WorkflowExecutionDescription): string {
  return described.typedSearchAttributes.get(SEARCH_ATTRIBUTES.tenant) ?? 'default';
}

/** Whether the principal may see a task of `tenant`. */
export function mayAccess(principal: Principal, tenant: string): boolean {
  return principal.tenant === tenant || hasScope(principal, 'admin');
}

/**
 * The task's description if the principal may see it; a TaskNotFoundError (404) when it does not
 * exist or belongs to another tenant, so that the two cannot be told apart.
 */
export async function describeOwnTask(client: MareClient, principal: Principal, taskId: string): Promise<WorkflowExecutionDescription> {
  let described: WorkflowExecutionDescription;
  try {
    described = await client.client.workflow.getHandle(taskWorkflowId(taskId)).describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new TaskNotFoundError(taskId);
    throw err;
  }
  // A task id can spell a subtask's workflow id ("<task>--<subtask>"): only task runs are tasks.
  if (described.type !== TASK_WORKFLOW_TYPE || !mayAccess(principal, tenantOf(described))) throw new TaskNotFoundError(taskId);
  return described;
}

/** The approvals whose tasks the principal may see. */
export async function ownApprovals(client: MareClient, principal: Principal, approvals: ApprovalView[]): Promise<ApprovalView[]> {
  if (hasScope(principal, 'admin')) return approvals;
  const visible = new Map<string, Promise<boolean>>();
  const check = async (taskId: string): Promise<boolean> => {
    try {
      await describeOwnTask(client, principal, taskId);
      return true;
    } catch (err) {
      if (err instanceof TaskNotFoundError) return false;
      throw err;
    }
  };
  const keep = await Promise.all(
    approvals.map((a) => {
      if (!visible.has(a.taskId)) visible.set(a.taskId, check(a.taskId));
      return visible.get(a.taskId)!;
    }),
  );
  return approvals.filter((_, i) => keep[i]);
}

/**
 * A submission as the principal may make it: the tenant comes from the key (a different `tenant`
 * in the body is a 400; an admin key may name any tenant), and `command_succeeds` criteria need the
 * `commands` scope (403). `bodyTenant` is the body's own `tenant`, before defaults.
 */
export function authorizeSubmission<T extends SubmitTaskInput>(principal: Principal, input: T, bodyTenant: unknown): T & { tenant: string } {
  let tenant = principal.tenant;
  if (bodyTenant !== undefined && bodyTenant !== principal.tenant) {
    if (!hasScope(principal, 'admin')) {
      throw new HttpError(400, `invalid request: tenant: this API key belongs to tenant "${principal.tenant}"; omit "tenant" or send "${principal.tenant}"`, {
        issues: [{ path: 'tenant', message: `must be omitted or "${principal.tenant}" (the key's tenant)` }],
      });
    }
    tenant = input.tenant ?? principal.tenant;
  }
  if (input.acceptanceCriteria?.some((c) => c.kind === 'command_succeeds')) requireScope(principal, 'commands', 'submit command_succeeds criteria');
  return { ...input, tenant };
}

/** The task a submission returned belongs to the principal's tenant; else its id was taken by another tenant (409). */
export async function checkSubmitted(client: MareClient, taskId: string, tenant: string): Promise<void> {
  const described = await client.client.workflow.getHandle(taskWorkflowId(taskId)).describe();
  if (described.type !== TASK_WORKFLOW_TYPE || tenantOf(described) !== tenant) throw new HttpError(409, `task id "${taskId}" is already in use: choose another (or omit taskId for a random one)`);
}

/**
 * The `by` of an approval decision: the key's identity. A `by` in the body that says otherwise is
 * a 400: the approver is who holds the key, not what the body claims.
 */
export function decisionBy(principal: Principal, bodyBy: string | undefined): string {
  if (bodyBy !== undefined && bodyBy !== principal.identity) {
    throw new HttpError(400, `invalid request: by: decisions are recorded as made by this API key (${principal.identity}); omit "by"`, {
      issues: [{ path: 'by', message: `must be omitted or "${principal.identity}"` }],
    });
  }
  return principal.identity;
}
