import { lstat, mkdir, readFile, readdir, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { z } from 'zod';
import {
  storableText,
  textProblem,
  textProblems,
  WorkspaceListArgs,
  WorkspaceReadArgs,
  WorkspaceWriteArgs,
  type ToolCallContext,
  type ToolResult,
  type UndoStep,
} from '../validation';
import { TOOL_OUTPUT_HISTORY_LIMIT } from '../core/constants';
import type { ActivityDeps } from './deps';
import { allowedDecisionStatement, audit, chained, putBlob, recordPolicyDecision } from '../infra/db/records';
import { atRestOf } from '../infra/crypto/atRest';
import { expandArgs } from './blobRefs';
import { sha256 } from '../infra/crypto/digest';
import { activityKey } from './idempotency';
import { detectSensitivity } from '../infra/secrets';

/** A path the tools refuse: outside the workspace, through a symlink, or malformed. */
export class WorkspacePathError extends Error {
  override readonly name = 'WorkspacePathError';
}

/** File-system errors a model's path can cause: retrying cannot help, so they go back to the model. */
const PATH_ERRORS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  ENOTDIR: 'a component of the path is a file, not a directory',
  EISDIR: 'is a directory, not a file',
  ELOOP: 'too many levels of symbolic links',
  ENAMETOOLONG: 'file name too long',
  EEXIST: 'already exists',
  ENOTEMPTY: 'directory not empty',
  EINVAL: 'invalid path',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ERR_INVALID_ARG_VALUE: 'invalid path',
};

/**
 * A file-system error caused by the path `rel` as a WorkspacePathError naming only `rel` (never the
 * server's absolute path); anything else (disk full, I/O error) is returned unchanged, to be retried.
 */
export function workspaceError(err: unknown, rel: string): unknown {
  if (err instanceof WorkspacePathError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const what = code !== undefined ? PATH_ERRORS[code] : undefined;
  return what ? new WorkspacePathError(`${rel}: ${what} (${code})`) : err;
}

/** The directory of one task's workspace. */
export function taskWorkspace(root: string, taskId: string): string {
  return path.join(root, taskId);
}

/**
 * Resolves a model-supplied relative path inside the task workspace, refusing anything that
 * escapes it, including through symlinks.
 */
export async function resolveInWorkspace(workspace: string, rel: string): Promise<string> {
  if (path.isAbsolute(rel) || rel.split(/[\\/]/).includes('..')) {
    throw new WorkspacePathError(`path "${rel}" is outside the task workspace`);
  }
  await mkdir(workspace, { recursive: true });
  // A task workspace swapped for a symlink would move every path of the task elsewhere.
  if (!(await lstat(workspace)).isDirectory()) throw new WorkspacePathError('the task workspace is a symbolic link or not a directory: refused');
  const root = await realpath(workspace);
  const target = path.resolve(root, rel);
  if (target !== root && !target.startsWith(root + path.sep)) throw new WorkspacePathError(`path "${rel}" is outside the task workspace`);
  // The deepest existing ancestor must still be inside once symlinks are followed.
  let probe = target;
  for (;;) {
    try {
      const real = await realpath(probe);
      if (real !== root && !real.startsWith(root + path.sep)) throw new WorkspacePathError(`path "${rel}" leaves the workspace through a symlink`);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      probe = path.dirname(probe);
    }
  }
  return target;
}

/** The built-in workspace tools and their undo. Tool failures go back to the model as tool errors. */
export function createWorkspaceActivities(deps: ActivityDeps) {
  const { pool, workspaceRoot, redactor } = deps;
  const atRest = atRestOf(deps);
  /**
   * Validates arguments and runs the tool; bad input becomes a tool error, infrastructure errors
   * retry. A retry of a call that already finished returns the recorded result (its idempotency key
   * is the workflow and activity id), so nothing applies twice.
   */
  async function run<S extends z.ZodType>(
    ctx: ToolCallContext,
    tool: string,
    schema: S,
    rawArgs: unknown,
    fn: (args: z.infer<S>, workspace: string) => Promise<ToolResult>,
  ): Promise<ToolResult> {
    // The allowed decision's row and the lookup of an earlier run of this call: one statement.
    const decision = ctx.policy && { taskId: ctx.taskId, subtaskId: ctx.subtaskId, key: ctx.callKey, kind: 'tool' as const, target: tool, decision: ctx.policy };
    const allowed = allowedDecisionStatement(redactor, decision);
    const lookup = { sql: 'SELECT result FROM tool_calls WHERE call_key = $1 AND result IS NOT NULL', params: [ctx.callKey] };
    const statement = allowed ? chained(allowed, lookup) : lookup;
    const earlier = await pool.query<{ result: unknown }>(statement.sql, statement.params);
    if (earlier.rows[0]) return atRest.openJson<ToolResult>(earlier.rows[0].result);
    if (decision && !allowed) await recordPolicyDecision(pool, redactor, decision, activityKey());
    const args = await expandArgs(pool, rawArgs, atRest);
    const parsed = schema.safeParse(args);
    const dirty = textProblems(args);
    let result: ToolResult;
    if (dirty.length) {
      result = { ok: false, content: `invalid arguments for ${tool}: ${dirty.map((p) => `${p.path.join('.') || '(arguments)'}: ${p.message}`).join('; ')}` };
    } else if (!parsed.success) {
      result = { ok: false, content: `invalid arguments for ${tool}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}` };
    } else {
      try {
        result = await fn(parsed.data, taskWorkspace(workspaceRoot, ctx.taskId));
      } catch (err) {
        const rel = (parsed.data as { path?: unknown }).path;
        const mapped = workspaceError(err, typeof rel === 'string' ? rel : '.');
        if (!(mapped instanceof WorkspacePathError)) throw err;
        result = { ok: false, content: mapped.message };
      }
    }
    const sensitivity = detectSensitivity(result.content, redactor);
    if (sensitivity.length) result.sensitivity = sensitivity;
    await pool.query(
      `INSERT INTO tool_calls (call_key, task_id, subtask_id, tool, args, status, detail, attempts, idempotency_key, result)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
       ON CONFLICT (call_key) DO UPDATE SET attempts = GREATEST(tool_calls.attempts, EXCLUDED.attempts), result = EXCLUDED.result`,
      [
        ctx.callKey,
        ctx.taskId,
        ctx.subtaskId,
        tool,
        JSON.stringify(storableText(redactor.redactDeep(redactContent(args)))),
        result.ok ? 'ok' : 'error',
        redactor.redact(result.content.slice(0, 500)),
        Context.current().info.attempt,
        activityKey(),
        atRest.sealJson(result),
      ],
    );
    return result;
  }

  return {
    async 'workspace.read'(ctx: ToolCallContext, args: unknown): Promise<ToolResult> {
      return run(ctx, 'workspace.read', WorkspaceReadArgs, args, async ({ path: rel }, ws) => {
        const content = await readFile(await resolveInWorkspace(ws, rel), 'utf8');
        // PostgreSQL cannot store NUL: a binary file is an answer to the model, not a retried activity.
        if (textProblem(content) !== undefined) return { ok: false, content: `${rel} is not a text file (it contains NUL bytes): workspace.read reads UTF-8 text` };
        if (content.length <= TOOL_OUTPUT_HISTORY_LIMIT) return { ok: true, content };
        const ref = await putBlob(pool, content, atRest);
        return {
          ok: true,
          content: `${content.slice(0, TOOL_OUTPUT_HISTORY_LIMIT)}\n[truncated: ${content.length} characters in all, stored as blob ${ref}]`,
          contentRef: ref,
        };
      });
    },

    async 'workspace.list'(ctx: ToolCallContext, args: unknown): Promise<ToolResult> {
      return run(ctx, 'workspace.list', WorkspaceListArgs, args, async ({ path: rel }, ws) => {
        const dir = await resolveInWorkspace(ws, rel ?? '.');
        const entries = (await readdir(dir, { recursive: true, withFileTypes: true }))
          .filter((e) => e.isFile())
          .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
          .sort();
        return { ok: true, content: entries.length ? entries.slice(0, 500).join('\n') : '(empty)' };
      });
    },

    /** Snapshots what was there (once per call key), then writes atomically. */
    async 'workspace.write'(ctx: ToolCallContext, args: unknown): Promise<ToolResult> {
      return run(ctx, 'workspace.write', WorkspaceWriteArgs, args, async ({ path: rel, content }, ws) => {
        const target = await resolveInWorkspace(ws, rel);
        const previous = await readFile(target, 'utf8').catch((err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return null;
          throw err;
        });
        // The snapshot is text in PostgreSQL, which cannot hold NUL: a binary file is not overwritten.
        if (previous !== null && textProblem(previous) !== undefined) return { ok: false, content: `${rel} is not a text file (it contains NUL bytes): workspace.write does not replace it` };
        // ON CONFLICT keeps the first snapshot: a retry after a crash must not snapshot its own write.
        await pool.query(
          `INSERT INTO workspace_snapshots (call_key, task_id, path, existed, content) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (call_key) DO NOTHING`,
          [ctx.callKey, ctx.taskId, rel, previous !== null, atRest.sealNullable(previous)],
        );
        await mkdir(path.dirname(target), { recursive: true });
        const tmp = `${target}.mare-${sha256(ctx.callKey).slice(0, 12)}.tmp`;
        await writeFile(tmp, content, 'utf8');
        await rename(tmp, target);
        return { ok: true, content: `wrote ${Buffer.byteLength(content)} bytes to ${rel}` };
      });
    },
  };
}

/** Undoes one workspace.write from its snapshot; running it twice has the effect of running it once. */
export async function undoWorkspaceWrite(deps: Pick<ActivityDeps, 'pool' | 'workspaceRoot' | 'redactor' | 'atRest'>, step: UndoStep): Promise<string> {
  const { pool, workspaceRoot } = deps;
  const { rows } = await pool.query<{ path: string; existed: boolean; content: string | null }>(
    'SELECT path, existed, content FROM workspace_snapshots WHERE call_key = $1',
    [step.callKey],
  );
  const snap = rows[0];
  let detail: string;
  if (!snap) {
    detail = 'nothing to undo: the write never ran';
  } else {
    // A path that now leaves the workspace (say, a directory swapped for a symlink) is never followed;
    // retrying cannot help, so the undo fails at once and the task reports it.
    const target = await resolveInWorkspace(taskWorkspace(workspaceRoot, step.taskId), snap.path).catch((err: unknown) => {
      const mapped = workspaceError(err, snap.path);
      throw mapped instanceof WorkspacePathError ? ApplicationFailure.nonRetryable(`undo refused: ${mapped.message}`, 'UndoRefused') : err;
    });
    if (snap.existed) {
      await writeFile(target, atRestOf(deps).openNullable(snap.content) ?? '', 'utf8');
      detail = `restored previous content of ${snap.path}`;
    } else {
      const existed = await stat(target).then(() => true, () => false);
      await rm(target, { force: true });
      detail = existed ? `deleted ${snap.path}, which the write had created` : `${snap.path} already absent`;
    }
  }
  await audit(pool, step.taskId, 'compensation.applied', { callKey: step.callKey, detail }, activityKey());
  return detail;
}

/** File contents are large and may be sensitive: the tool_calls row keeps their digest only. */
function redactContent(args: unknown): unknown {
  if (args && typeof args === 'object' && typeof (args as { content?: unknown }).content === 'string') {
    const content = (args as { content: string }).content;
    return { ...args, content: `sha256:${sha256(content)} (${content.length} chars)` };
  }
  return args;
}
