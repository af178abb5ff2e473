import { z } from 'zod';
import { WorkspacePath } from './workspacePath';
import type { PolicyDecision, Sensitivity } from './policy';

/** A tool call requested by a model. `id` is unique within one subtask run. */
export const ToolCall = z.object({
  id: z.string().min(1),
  name: z.string().min(1),
  args: z.record(z.string(), z.unknown()),
  /** Sensitive data the model-call activity detected in the arguments (secrets, personal data). */
  sensitivity: z.array(z.enum(['secret', 'pii'])).optional(),
});
export type ToolCall = z.infer<typeof ToolCall>;

/** What a tool returns to the workflow; large content is stored in PostgreSQL and referenced. */
export interface ToolResult {
  ok: boolean;
  /** Text given back to the model (truncated when large; see contentRef). */
  content: string;
  /** sha256 of the full content in the `blobs` table when `content` was truncated. */
  contentRef?: string;
  /** Sensitive data detected in the output; the context given to later model calls carries it. */
  sensitivity?: Sensitivity[];
}

/** What the workflow needs to know about a tool to mediate and schedule a call of it. */
export interface ToolInfo {
  /** `workspace.read`, or `server.tool` for an MCP tool. */
  name: string;
  builtin: boolean;
  access: 'read' | 'write';
  /** An undo is known (built-in, or configured for the MCP tool). */
  undo: boolean;
  /** A write without an undo that may run only after a person approves it. */
  irreversible: boolean;
  timeoutMs: number;
  retry: { maximumAttempts: number; initialIntervalMs: number; maximumIntervalMs: number; backoffCoefficient: number };
  /** Estimated cost of one call in US dollars. */
  cost: number;
}

/** The tools an embodiment may use, as the workers are configured; pinned for the run. */
export interface ToolCatalogView {
  tools: ToolInfo[];
  /** Price of 1,000 model tokens in US dollars, for the estimated cost of model calls. */
  modelPricePer1kTokens: number;
}

/** Identifies one tool call durably: the key for idempotent writes and for its undo snapshot. */
export interface ToolCallContext {
  taskId: string;
  subtaskId: string;
  callKey: string;
  /** The policy decision that allowed the call; the tool's activity records it. */
  policy?: PolicyDecision;
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
