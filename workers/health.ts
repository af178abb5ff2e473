import http from 'node:http';
import type { Pool } from 'pg';
import type { Logger } from 'pino';

/** Parses `host:port` (MARE_HEALTH_BIND and the like); a clear error naming `name` otherwise. */
export function parseBind(bind: string, name = 'MARE_HEALTH_BIND'): { host: string; port: number } {
  const sep = bind.lastIndexOf(':');
  const host = sep > 0 ? bind.slice(0, sep) : '';
  const port = Number(bind.slice(sep + 1));
  if (!host || !Number.isInteger(port) || port < 0 || port > 65_535) throw new Error(`${name}="${bind}" must look like host:port, e.g. 0.0.0.0:8081`);
  return { host, port };
}

/**
 * Worker health endpoints for an orchestrator: `/healthz` answers 200 while the process serves
 * requests (liveness); `/readyz` answers 200 only while the worker runs and PostgreSQL answers within
 * two seconds, else 503 with the reasons (readiness). Nothing else is served.
 */
export async function startHealthServer(opts: { bind: string; worker: { getState(): string }; pool: Pool; logger?: Logger }): Promise<http.Server> {
  const { host, port } = parseBind(opts.bind);
  const server = http.createServer((req, res) => {
    const reply = (status: number, body: Record<string, unknown>): void => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify(body));
    };
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET') return reply(405, { error: 'only GET' });
    if (path === '/healthz') return reply(200, { status: 'ok' });
    if (path !== '/readyz') return reply(404, { error: 'not found' });
    void readiness(opts.worker, opts.pool).then((problems) => reply(problems.length ? 503 : 200, problems.length ? { status: 'not ready', problems } : { status: 'ready' }));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  opts.logger?.info({ health: typeof address === 'object' && address ? `${address.address}:${address.port}` : opts.bind }, 'health endpoints listening (/healthz, /readyz)');
  return server;
}

async function readiness(worker: { getState(): string }, pool: Pool): Promise<string[]> {
  const problems: string[] = [];
  const state = worker.getState();
  if (state !== 'RUNNING') problems.push(`worker is ${state}`);
  const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no answer within 2 s')), 2_000).unref());
  try {
    await Promise.race([pool.query('SELECT 1'), timeout]);
  } catch (err) {
    problems.push(`PostgreSQL: ${(err as Error).message}`);
  }
  return problems;
}
