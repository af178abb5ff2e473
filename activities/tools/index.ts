import { ApplicationFailure } from '@temporalio/common';
import type { ToolCatalogView, UndoStep } from '../../validation';
import type { ActivityDeps } from '../deps';
import { recordCompensationMetric } from '../metrics';
import { undoWorkspaceWrite } from '../workspace';
import { createMcpToolActivities, undoMcpCall } from './mcpTools';

export { DEFAULT_TOOLS_CONFIG, loadToolsConfig, ToolCatalog, ToolsConfigError, type ToolDescriptor } from '../../infra/tools/catalog';

export { createMcpToolActivities };

/**
 * The catalog the workflow pins, and undo. The MCP tool activities, one per configured tool and
 * named after it, are registered by the worker next to these (createMcpToolActivities).
 */
export function createToolActivities(deps: ActivityDeps) {
  return {
    /** What the workflow needs to know about the tools a role is granted (unknown names left out). */
    toolCatalog({ tools }: { tools: string[] }): Promise<ToolCatalogView> {
      return Promise.resolve(deps.tools.view(tools));
    },

    /** Carries out one undo step, built-in or MCP; running it twice has the effect of running it once. */
    async compensate(step: UndoStep): Promise<string> {
      const entry = deps.tools.mcpTool(step.tool);
      if (step.tool !== 'workspace.write' && !entry) throw ApplicationFailure.nonRetryable(`no undo is known for tool ${step.tool}`, 'NoUndoKnown');
      const detail = entry ? await undoMcpCall(deps, entry, step) : await undoWorkspaceWrite(deps, step);
      recordCompensationMetric(step.tool);
      return detail;
    },
  };
}
