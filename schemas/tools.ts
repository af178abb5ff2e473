import { z } from 'zod';
import { WorkspacePath } from './criteria';

/** A tool call requested by a model. `id` is unique within one subtask run. */
export const ToolCall = z.object({
  id: z.string().min(1),
  name: z.string().min(1),
  args: z.record(z.string(), z.unknown()),
});
export type ToolCall = z.infer<typeof ToolCall>;

/** What a tool returns to the workflow; large content is stored in PostgreSQL and referenced. */
export interface ToolResult {
  ok: boolean;
  /** Text given back to the model (truncated when large; see contentRef). */
  content: string;
  /** sha256 of the full content in the `blobs` table when `content` was truncated. */
  contentRef?: string;
}

/** Identifies one tool call durably: the key for idempotent writes and for its undo snapshot. */
export interface ToolCallContext {
  taskId: string;
  subtaskId: string;
  callKey: string;
}

/** Arguments of the built-in workspace tools. */
export const WorkspaceReadArgs = z.strictObject({ path: WorkspacePath });
export const WorkspaceWriteArgs = z.strictObject({ path: WorkspacePath, content: z.string().max(1_000_000) });
export const WorkspaceListArgs = z.strictObject({ path: WorkspacePath.optional() });

/** A tool as the model sees it, and whether calling it changes the world (then it needs an undo). */
export interface ToolSpec {
  name: string;
  description: string;
  inputSchema: z.ZodType;
  sideEffect: boolean;
}

/** The built-in tools. MCP tools join this catalog in a later issue. */
export const BUILTIN_TOOLS: readonly ToolSpec[] = [
  {
    name: 'workspace.read',
    description: 'Read a UTF-8 text file from the task workspace.',
    inputSchema: WorkspaceReadArgs,
    sideEffect: false,
  },
  {
    name: 'workspace.write',
    description: 'Create or overwrite a UTF-8 text file in the task workspace.',
    inputSchema: WorkspaceWriteArgs,
    sideEffect: true,
  },
  {
    name: 'workspace.list',
    description: 'List files in the task workspace (optionally under a sub-directory).',
    inputSchema: WorkspaceListArgs,
    sideEffect: false,
  },
];

export type BuiltinToolName = 'workspace.read' | 'workspace.write' | 'workspace.list';

/** An undo registered before a side effect; the compensate activity carries it out, idempotently. */
export interface UndoStep {
  tool: string;
  callKey: string;
  taskId: string;
  subtaskId: string;
  args: Record<string, unknown>;
}

/** The recorded outcome of one undo step. */
export interface CompensationOutcome {
  step: UndoStep;
  ok: boolean;
  detail: string;
}
