import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Small pieces shared by MARE's HTTP servers (`mare api`, `mare codec-server`) on plain node:http. */

/** A sender that keeps going after its body was refused is cut off after this many bytes. */
const DRAIN_LIMIT_BYTES = 16 * 1024 * 1024;

/** An answer decided by the server itself (auth, routing, validation), with its status and headers. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly extra: Record<string, unknown> = {},
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export const JSON_HEADERS = { 'content-type': 'application/json; charset=utf-8', 'x-content-type-options': 'nosniff' };

/** Sends `body` as JSON, never cached. */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...JSON_HEADERS, 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

/** The SHA-256 digest of a secret: digests are compared, so the comparison is constant-time whatever the length. */
export function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Checks "Authorization: Bearer <key>" against the key digest; throws a 401 HttpError otherwise. */
export function authenticate(header: string | undefined, keyDigest: Buffer, what = 'API key'): void {
  const unauthorized = (message: string): HttpError => new HttpError(401, message, {}, { 'www-authenticate': 'Bearer realm="mare"' });
  const found = /^Bearer[ ]+(\S+)\s*$/i.exec(header ?? '');
  if (!found?.[1]) throw unauthorized(`missing ${what}: send "Authorization: Bearer <${what === 'API key' ? 'key' : 'token'}>"`);
  if (!timingSafeEqual(sha256(found[1]), keyDigest)) throw unauthorized(`invalid ${what}`);
}

/** Arrays and objects nested deeper than this in a request body are refused with 400. */
export const MAX_BODY_DEPTH = 64;

/** Reads and parses a JSON body of at most `limit` bytes (413 beyond it, 415 for another media type, 400 nested deeper than `maxDepth`). */
export async function readJson(req: IncomingMessage, limit: number, maxDepth = MAX_BODY_DEPTH): Promise<unknown> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? '';
  if (type && type !== 'application/json' && !type.endsWith('+json')) {
    drain(req);
    throw new HttpError(415, `request bodies are JSON: send "Content-Type: application/json" (got "${type}")`);
  }
  const tooLarge = (): HttpError => new HttpError(413, `request body larger than ${limit} bytes`);
  if (Number(req.headers['content-length'] ?? 0) > limit) {
    drain(req);
    throw tooLarge();
  }
  const raw = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size <= limit) return void chunks.push(chunk);
      req.off('data', onData);
      drain(req);
      reject(tooLarge());
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
  const text = raw.toString('utf8');
  // Checked before parsing: a deeply nested body would overflow the stack of whatever walks it later.
  if (jsonDepth(text) > maxDepth) throw new HttpError(400, `request body is nested deeper than ${maxDepth} levels`, { issues: [] });
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new HttpError(400, 'request body is not valid JSON', { issues: [] });
  }
}

/** The deepest nesting of arrays and objects in JSON text (strings skipped), without parsing it. */
export function jsonDepth(text: string): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) deepest = Math.max(deepest, ++depth);
    else if (c === 0x5d || c === 0x7d) depth--;
  }
  return deepest;
}

/** Discards the rest of a refused body so the answer reaches the client; a sender that keeps going is cut off. */
export function drain(req: IncomingMessage): void {
  let discarded = 0;
  req.on('data', (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > DRAIN_LIMIT_BYTES) req.socket.destroy();
  });
  req.resume();
}

/** Starts `server` listening on `host:port` (0: any free port); resolves with the bound address. */
export async function listen(server: Server, port: number, host: string): Promise<AddressInfo> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server.address() as AddressInfo;
}
