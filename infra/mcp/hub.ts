import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { getDefaultEnvironment, StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { Logger } from 'pino';
import type { McpServerConfig, ToolsConfig } from '../../validation/toolConfig';

/** A tool as an MCP server lists it. Its description and annotations are untrusted text. */
export interface ListedTool {
  name: string;
  description: string;
  inputSchema: Record<string, unknown>;
}

/** What one MCP tool call returned, flattened to text for the model. */
export interface McpCallResult {
  isError: boolean;
  text: string;
}

/** A server that cannot be reached or answered with a protocol error: the call may be retried. */
export class McpUnavailableError extends Error {
  override readonly name = 'McpUnavailableError';
}

/** How long a server's tool listing is trusted before it is asked again. */
const LISTING_TTL_MS = 5 * 60_000;

interface Connection {
  client: Client;
  listing?: { tools: ListedTool[]; at: number };
}

/**
 * The worker's connections to its configured MCP servers, opened on first use through the official
 * MCP TypeScript SDK (stdio or streamable HTTP) and reopened after the server goes away.
 */
export class McpHub {
  private readonly connections = new Map<string, Promise<Connection>>();

  constructor(
    private readonly config: ToolsConfig,
    private readonly logger?: Logger,
  ) {}

  /** The configured server, or a typed error. */
  server(name: string): McpServerConfig {
    const server = this.config.servers[name];
    if (!server) throw new McpUnavailableError(`no MCP server "${name}" is configured`);
    return server;
  }

  /** The server's tools, from its cached listing. */
  async listTools(serverName: string): Promise<ListedTool[]> {
    const conn = await this.connect(serverName);
    if (conn.listing && Date.now() - conn.listing.at < LISTING_TTL_MS) return conn.listing.tools;
    const tools: ListedTool[] = [];
    try {
      let cursor: string | undefined;
      do {
        const page = await conn.client.listTools(cursor ? { cursor } : undefined, { timeout: this.server(serverName).connectTimeoutMs });
        for (const t of page.tools) tools.push({ name: t.name, description: t.description ?? '', inputSchema: t.inputSchema });
        cursor = page.nextCursor;
      } while (cursor);
    } catch (err) {
      this.drop(serverName);
      throw new McpUnavailableError(`MCP server "${serverName}" did not list its tools: ${(err as Error).message}`);
    }
    conn.listing = { tools, at: Date.now() };
    return tools;
  }

  /**
   * Calls one tool. `onProgress` fires on the server's progress notifications (the call's time
   * limit restarts with each). A tool's own error is a result with `isError`; a transport or
   * protocol failure is an McpUnavailableError.
   */
  async callTool(
    serverName: string,
    tool: string,
    args: Record<string, unknown>,
    opts: { timeoutMs: number; signal?: AbortSignal; idempotencyKey?: string; onProgress?: () => void },
  ): Promise<McpCallResult> {
    const conn = await this.connect(serverName);
    let result: Awaited<ReturnType<Client['callTool']>>;
    try {
      result = await conn.client.callTool(
        { name: tool, arguments: args, ...(opts.idempotencyKey ? { _meta: { 'mare/idempotencyKey': opts.idempotencyKey } } : {}) },
        undefined,
        {
          timeout: opts.timeoutMs,
          resetTimeoutOnProgress: true,
          ...(opts.signal ? { signal: opts.signal } : {}),
          ...(opts.onProgress ? { onprogress: opts.onProgress } : {}),
        },
      );
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      // A timed-out request leaves the connection usable; anything else may have broken it.
      if (!/timed out/i.test((err as Error).message)) this.drop(serverName);
      throw new McpUnavailableError(`MCP call ${serverName}.${tool} failed: ${(err as Error).message}`);
    }
    return { isError: result.isError === true, text: flatten(result) };
  }

  /** Closes every connection (stdio servers are stopped). */
  async close(): Promise<void> {
    const all = [...this.connections.values()];
    this.connections.clear();
    await Promise.all(all.map((p) => p.then((c) => c.client.close()).catch(() => undefined)));
  }

  private connect(serverName: string): Promise<Connection> {
    let conn = this.connections.get(serverName);
    if (!conn) {
      conn = this.open(serverName);
      this.connections.set(serverName, conn);
      conn.catch(() => this.connections.delete(serverName));
    }
    return conn;
  }

  private async open(serverName: string): Promise<Connection> {
    const server = this.server(serverName);
    const transport: Transport = server.command
      ? new StdioClientTransport({
          command: server.command,
          args: server.args,
          env: { ...getDefaultEnvironment(), ...server.env },
          ...(server.cwd ? { cwd: server.cwd } : {}),
          stderr: 'ignore',
        })
      : new StreamableHTTPClientTransport(new URL(server.url ?? ''), { requestInit: { headers: server.headers } });
    const client = new Client({ name: 'mare', version: '1.0.0' });
    // A server that exits or drops the stream is reopened on the next call.
    client.onclose = () => {
      const stored = this.connections.get(serverName);
      void stored?.then((c) => c.client === client && this.connections.get(serverName) === stored && this.connections.delete(serverName)).catch(() => undefined);
    };
    try {
      await client.connect(transport, { timeout: server.connectTimeoutMs });
    } catch (err) {
      await client.close().catch(() => undefined);
      throw new McpUnavailableError(`cannot connect to MCP server "${serverName}": ${(err as Error).message}`);
    }
    this.logger?.info({ server: serverName, transport: server.command ? 'stdio' : 'streamable-http' }, 'MCP server connected');
    return { client };
  }

  private drop(serverName: string): void {
    const conn = this.connections.get(serverName);
    this.connections.delete(serverName);
    void conn?.then((c) => c.client.close()).catch(() => undefined);
  }
}

/** Text items joined; other content described; structured content as JSON when there is no text. */
function flatten(result: Awaited<ReturnType<Client['callTool']>>): string {
  const content = (result.content ?? []) as { type: string; text?: string; mimeType?: string; resource?: { uri?: string; text?: string } }[];
  const parts = content.map((c) => {
    if (c.type === 'text') return c.text ?? '';
    if (c.type === 'resource') return c.resource?.text ?? `[resource ${c.resource?.uri ?? ''}]`;
    return `[${c.type}${c.mimeType ? ` ${c.mimeType}` : ''} content omitted]`;
  });
  if (!parts.some((p) => p.length) && result.structuredContent) return JSON.stringify(result.structuredContent);
  return parts.join('\n');
}
