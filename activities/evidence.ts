import { readFile } from 'node:fs/promises';
import { createTwoFilesPatch } from 'diff';
import type { Pool } from 'pg';
import { type ToolResult } from '../validation';
import { subtaskWorkflowId, TASK_SCOPE } from '../core/constants';
import type { AtRest } from '../infra/crypto/atRest';
import { sha256 } from '../infra/crypto/digest';
import { runSandboxed } from '../infra/sandbox';
import type { Redactor } from '../infra/secrets';
import { loadBlob } from '../infra/db/records';
import { resolveInWorkspace } from './workspace';

/** A tool call the verifier may rely on, with the digest of its output. */
export interface ToolOutputEvidence {
  callKey: string;
  tool: string;
  status: string;
  /** sha256 of the output the tool returned (the full text, also for truncated output). */
  digest: string;
  /** The output, parsed as JSON when it is JSON (for `tool_result_field`); not stored in the evidence. */
  json?: unknown;
}

/** A file a built-in tool wrote in this attempt: its unified diff against what was there before. */
export interface FileChangeEvidence {
  path: string;
  existed: boolean;
  diff: string;
}

/** What a `command_succeeds` criterion ran and what it printed (redacted, capped). */
export interface CommandEvidence {
  command: string;
  args: string[];
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
  stdout: string;
  stderr: string;
}

const DIFF_LIMIT = 20_000;
const OUTPUT_LIMIT = 8_000;

/** The call keys of one attempt (`<subtask workflow>/a<attempt>/…`), or of a whole task for task-level checks. */
function callKeyPattern(taskId: string, subtaskId: string, attempt: number): string | undefined {
  return subtaskId === TASK_SCOPE ? undefined : `${subtaskWorkflowId(taskId, subtaskId).replace(/[\\%_]/g, (c) => `\\${c}`)}/a${attempt}/%`;
}


/** The tool calls that ran (not denied) in an attempt, oldest first, with output digests (results and blobs opened). */
export async function toolOutputsOf(pool: Pool, taskId: string, subtaskId: string, attempt: number, atRest: AtRest): Promise<ToolOutputEvidence[]> {
  const pattern = callKeyPattern(taskId, subtaskId, attempt);
  const { rows } = await pool.query<{ call_key: string; tool: string; status: string; result: unknown }>(
    `SELECT c.call_key, c.tool, c.status, c.result FROM tool_calls c
      WHERE c.task_id = $1 AND c.status <> 'denied' ${pattern ? 'AND c.call_key LIKE $2' : ''}
      ORDER BY c.created_at, c.call_key`,
    pattern ? [taskId, pattern] : [taskId],
  );
  const out: ToolOutputEvidence[] = [];
  for (const r of rows) {
    const result = r.result === null ? null : atRest.openJson<ToolResult>(r.result);
    const full = result?.contentRef ? await loadBlob(pool, result.contentRef, atRest).catch(() => null) : null;
    const text = full ?? result?.content ?? '';
    let json: unknown;
    try {
      json = JSON.parse(text) as unknown;
    } catch {
      json = undefined;
    }
    out.push({ callKey: r.call_key, tool: r.tool, status: r.status, digest: sha256(text), ...(json !== undefined ? { json } : {}) });
  }
  return out;
}

/** Files the built-in write tool changed in an attempt, as unified diffs (capped) against their snapshots. */
export async function fileChangesOf(pool: Pool, workspace: string, taskId: string, subtaskId: string, attempt: number, atRest: AtRest): Promise<FileChangeEvidence[]> {
  const { redactor } = atRest;
  const pattern = callKeyPattern(taskId, subtaskId, attempt);
  const { rows } = await pool.query<{ path: string; existed: boolean; content: string | null }>(
    `SELECT DISTINCT ON (path) path, existed, content FROM workspace_snapshots
      WHERE task_id = $1 ${pattern ? 'AND call_key LIKE $2' : ''} ORDER BY path, created_at`,
    pattern ? [taskId, pattern] : [taskId],
  );
  const out: FileChangeEvidence[] = [];
  for (const r of rows) {
    const now = await resolveInWorkspace(workspace, r.path)
      .then((abs) => readFile(abs, 'utf8'))
      .catch(() => '');
    const diff = createTwoFilesPatch(`a/${r.path}`, `b/${r.path}`, atRest.openNullable(r.content) ?? '', now, '', '', { context: 2 });
    out.push({ path: r.path, existed: r.existed, diff: redactor.redact(diff.length > DIFF_LIMIT ? `${diff.slice(0, DIFF_LIMIT)}\n[diff truncated: ${diff.length} characters]` : diff) });
  }
  return out;
}

/**
 * Runs a command in the task workspace in the bubblewrap sandbox (activities/sandbox.ts): no shell,
 * no worker environment, no network, only the workspace writable, a time limit after which it is
 * killed; output capped and redacted (also hex- and base64-encoded secrets). Throws
 * `SandboxUnavailable` when the sandbox cannot be set up: the command never runs outside it.
 */
export async function runCheckCommand(workspace: string, command: string, args: string[], timeoutSeconds: number, redactor: Redactor): Promise<CommandEvidence> {
  const ran = await runSandboxed({ workspace, command, args, timeoutSeconds, maxOutputBytes: 1_000_000 });
  // Redact before cutting, so the cut cannot leave half a secret that no longer matches.
  const cap = (s: string): string => {
    const r = redactor.redact(s);
    return r.length > OUTPUT_LIMIT ? `${r.slice(0, OUTPUT_LIMIT)}\n[truncated: ${r.length} characters]` : r;
  };
  return {
    command,
    args,
    exitCode: ran.exitCode,
    signal: ran.signal,
    timedOut: ran.timedOut,
    durationMs: ran.durationMs,
    stdout: cap(ran.stdout),
    stderr: cap(ran.outputExceeded ? `${ran.stderr}\n[killed: more than 1000000 bytes of output]` : ran.stderr),
  };
}

/** Reads a dot path (`a.b.0.c`) from a JSON value. */
export function fieldAt(value: unknown, path: string): { found: boolean; value?: unknown } {
  let current: unknown = value;
  for (const key of path.split('.')) {
    if (current === null || typeof current !== 'object' || !(key in (current as Record<string, unknown>))) return { found: false };
    current = (current as Record<string, unknown>)[key];
  }
  return { found: true, value: current };
}
