import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Payload } from '@temporalio/common';
import pino, { type Logger } from 'pino';
import { z } from 'zod';
import type { Keyring } from '../infra/crypto/keyring';
import type { ApprovalDecision } from '../validation';
import { signApproval } from '../infra/crypto/approvalSigning';
import { EncryptionCodec, PayloadIntegrityError, PayloadKeyError } from '../infra/crypto/payloadCodec';
import { authenticate, HttpError, listen, readJson, sendJson, sha256 } from './httpKit';

/**
 * `mare codec-server`: Temporal's remote codec protocol for the Web UI and the CLI. `POST /encode`
 * and `POST /decode` take and answer `{"payloads": [{"metadata": {k: base64}, "data": base64}]}`
 * through MARE's payload codec. Every call needs the token, as `Authorization: Bearer <token>` (the
 * CLI's `--codec-auth`) or as a path prefix `/token/<token>/decode` (the Web UI sends no bearer
 * token without single sign-on, so its codec endpoint carries it). CORS answers only the configured
 * UI origins. Payloads are never logged, nor is the token.
 */

/** Tokens shorter than this are refused: the token is what keeps the payloads' plaintext from the network. */
export const MIN_CODEC_TOKEN_LENGTH = 16;
/** Where `mare dev` and `mare codec-server` listen unless told otherwise. */
export const DEFAULT_CODEC_PORT = 8888;
/** Request bodies larger than this are refused with 413 (a batch of payloads, each at most 2 MB). */
export const MAX_CODEC_BODY_BYTES = 16 * 1024 * 1024;

/** Options of `createCodecServer`. */
export interface CodecServerOptions {
  keyring: Keyring;
  token: string;
  /** Browser origins allowed to call (the Web UI's, e.g. http://localhost:8233); none: no CORS headers at all. */
  corsOrigins?: string[];
  /**
   * Host names (without port) the server answers to, besides the loopback names; any other `Host`
   * header gets 421, so a page on a rebound DNS name cannot reach it through the browser.
   */
  allowedHosts?: string[];
  /** One line per request (method, path without the token, status, payload count, duration). Default: silent. */
  logger?: Logger;
  maxBodyBytes?: number;
}

/** The names every codec server answers to: the loopback addresses, as a browser writes them in `Host`. */
export const LOOPBACK_HOSTS = ['localhost', '127.0.0.1', '[::1]'];

/** The host name of a `Host` header, lower-cased and without its port (`[::1]` keeps its brackets). */
export function hostName(header: string): string {
  const h = header.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(0, h.indexOf(']') + 1);
  const colon = h.indexOf(':');
  return colon < 0 ? h : h.slice(0, colon);
}

const Base64 = z.string().regex(/^[A-Za-z0-9+/_-]*={0,2}$/, 'must be base64');
const JsonPayload = z.object({ metadata: z.record(z.string(), Base64).optional(), data: Base64.optional() });
const CodecBody = z.object({ payloads: z.array(JsonPayload) });
type JsonPayload = z.infer<typeof JsonPayload>;

const fromJson = (p: JsonPayload): Payload => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
  data: Buffer.from(p.data ?? '', 'base64'),
});
const toJson = (p: Payload): JsonPayload => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v ?? new Uint8Array()).toString('base64')])),
  data: Buffer.from(p.data ?? new Uint8Array()).toString('base64'),
});

const ROUTE = /^(?:\/token\/([^/]+))?\/(encode|decode)$/;

/** The codec server, not yet listening. */
export function createCodecServer(opts: CodecServerOptions): http.Server {
  if (opts.token.length < MIN_CODEC_TOKEN_LENGTH) throw new Error(`the codec server token must be at least ${MIN_CODEC_TOKEN_LENGTH} characters`);
  const codec = new EncryptionCodec(opts.keyring);
  const tokenDigest = sha256(opts.token);
  const origins = new Set(opts.corsOrigins ?? []);
  const logger = opts.logger ?? pino({ level: 'silent' });
  const maxBodyBytes = opts.maxBodyBytes ?? MAX_CODEC_BODY_BYTES;
  // A bare IPv6 address (two colons or more) is bracketed, as a Host header writes it.
  const hosts = new Set([...LOOPBACK_HOSTS, ...(opts.allowedHosts ?? []).map((h) => hostName(h.split(':').length > 2 && !h.startsWith('[') ? `[${h}]` : h))]);

  const handle = async (req: IncomingMessage, res: ServerResponse, cors: Record<string, string>): Promise<number> => {
    const pathname = (req.url ?? '').split('?')[0] ?? '';
    if (req.method === 'GET' && pathname === '/healthz') return reply(res, 200, { status: 'ok' }, cors);
    const route = ROUTE.exec(pathname);
    if (!route) throw new HttpError(404, 'not found: the codec server answers POST /encode and POST /decode');
    if (req.method !== 'POST') throw new HttpError(405, `method ${req.method ?? ''} not allowed`, {}, { allow: 'POST, OPTIONS' });
    const pathToken = route[1];
    if (pathToken !== undefined) authenticate(`Bearer ${pathToken}`, tokenDigest, 'codec token');
    else authenticate(req.headers.authorization, tokenDigest, 'codec token');
    const parsed = CodecBody.safeParse(await readJson(req, maxBodyBytes));
    if (!parsed.success) throw new HttpError(400, `invalid request: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(body)'}: ${i.message}`).join('; ')}`);
    const payloads = parsed.data.payloads.map(fromJson);
    const out = route[2] === 'encode' ? await codec.encode(payloads.map((p) => signedDecision(p, opts.keyring))) : (await codec.decode(payloads)).map(readableNull);
    return reply(res, 200, { payloads: out.map(toJson) }, cors);
  };

  return http.createServer((req, res) => {
    const started = process.hrtime.bigint();
    const origin = req.headers.origin;
    const allowed = origin !== undefined && origins.has(origin);
    const cors: Record<string, string> = allowed ? { 'access-control-allow-origin': origin, 'access-control-allow-credentials': 'true', vary: 'Origin' } : { vary: 'Origin' };
    const logLine = (status: number): void =>
      logger.info({ method: req.method, path: (req.url ?? '').split('?')[0]?.replace(/^\/token\/[^/]+/, '/token/***'), status, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'codec request');
    // DNS rebinding: a browser that was told evil.example is 127.0.0.1 still says "Host: evil.example".
    if (!hosts.has(hostName(req.headers.host ?? ''))) {
      reply(res, 421, { error: `this codec server does not answer to host "${(req.headers.host ?? '').slice(0, 100)}"` }, { vary: 'Origin' });
      return logLine(421);
    }
    if (req.method === 'OPTIONS') {
      // A preflight from any other origin gets no CORS headers, so the browser refuses the call.
      const status = allowed ? 204 : 403;
      res.writeHead(status, allowed ? { ...cors, 'access-control-allow-methods': 'POST, OPTIONS', 'access-control-allow-headers': 'authorization, content-type, x-namespace', 'access-control-max-age': '600' } : cors);
      res.end();
      return logLine(status);
    }
    handle(req, res, cors).then(logLine, (err: unknown) => {
      const status = err instanceof HttpError ? err.status : err instanceof PayloadKeyError || err instanceof PayloadIntegrityError ? 422 : 500;
      if (status === 500) logger.error({ err: err instanceof Error ? err.name : 'unknown' }, 'codec request failed');
      const message = err instanceof Error && status !== 500 ? err.message : 'internal error';
      reply(res, status, { error: message }, { ...cors, ...(err instanceof HttpError ? err.headers : {}) });
      logLine(status);
    });
  });
}

/**
 * An approval decision the Web UI sends (Send an Update, `decideApproval`) is signed here with the
 * approvers' key: holding the codec token is what lets a person approve from the Web UI. `by`
 * defaults to "web-ui". Any other payload passes unchanged.
 */
function signedDecision(payload: Payload, keyring: Keyring): Payload {
  if (Buffer.from(payload.metadata?.encoding ?? new Uint8Array()).toString() !== 'json/plain') return payload;
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(payload.data ?? new Uint8Array()).toString('utf8'));
  } catch {
    return payload;
  }
  const d = value as Partial<ApprovalDecision> | null;
  if (!d || typeof d !== 'object' || typeof d.approvalId !== 'string' || (d.decision !== 'approve' && d.decision !== 'deny') || typeof d.reason !== 'string') return payload;
  const { signature: _ignored, ...fields } = d as ApprovalDecision;
  const signed = signApproval(keyring, { ...fields, by: typeof fields.by === 'string' && fields.by ? fields.by : 'web-ui' });
  return { ...payload, data: Buffer.from(JSON.stringify(signed), 'utf8') };
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string>): number {
  sendJson(res, status, body, headers);
  return status;
}

/** No usable codec token: none configured, or one too short. */
export class CodecTokenError extends Error {
  override readonly name = 'CodecTokenError';
}

/**
 * The codec server's token: MARE_CODEC_TOKEN, else the file MARE_CODEC_TOKEN_FILE, else the file
 * `<data dir>/codec-token`; with `generate` (the local stack) a missing file is created with a random
 * token, readable by its owner only. Never a command-line argument: other users can read those.
 */
export function codecTokenFromEnv(opts: { env?: NodeJS.ProcessEnv; dataDir: string; generate?: boolean }): { token: string; origin: string } {
  const env = opts.env ?? process.env;
  const fromEnv = env.MARE_CODEC_TOKEN?.trim();
  const file = env.MARE_CODEC_TOKEN_FILE?.trim() || path.join(opts.dataDir, 'codec-token');
  let found: { token: string; origin: string } | undefined = fromEnv ? { token: fromEnv, origin: 'MARE_CODEC_TOKEN' } : undefined;
  if (!found && fs.existsSync(file)) found = { token: fs.readFileSync(file, 'utf8').trim(), origin: `token file ${file}` };
  if (!found && opts.generate) {
    fs.mkdirSync(opts.dataDir, { recursive: true });
    const token = randomBytes(24).toString('base64url');
    fs.writeFileSync(file, `${token}\n`, { mode: 0o600 });
    found = { token, origin: `token file ${file}` };
  }
  if (!found) throw new CodecTokenError(`no codec server token: set MARE_CODEC_TOKEN or MARE_CODEC_TOKEN_FILE (at least ${MIN_CODEC_TOKEN_LENGTH} characters), or run \`mare dev\` once, which generates ${file}`);
  if (found.token.length < MIN_CODEC_TOKEN_LENGTH) throw new CodecTokenError(`the codec server token from ${found.origin} must be at least ${MIN_CODEC_TOKEN_LENGTH} characters`);
  return found;
}

/** `mare codec-server`: serves the codec until SIGINT or SIGTERM, then closes it. */
export async function serveCodec(opts: CodecServerOptions & { port: number; host: string; print: (line: string) => void }): Promise<void> {
  // A server bound to one address answers to that address too; a wildcard bind answers to no extra name.
  const bound = ['0.0.0.0', '::', ''].includes(opts.host) ? [] : [opts.host];
  const server = createCodecServer({ ...opts, allowedHosts: [...(opts.allowedHosts ?? []), ...bound] });
  const { port } = await listen(server, opts.port, opts.host);
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  opts.print(`MARE codec server on http://${host}:${port} (POST /encode, /decode; CORS for ${opts.corsOrigins?.length ? opts.corsOrigins.join(', ') : 'no origin'}). Press Ctrl-C to stop.`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  opts.print('stopping…');
  await new Promise<void>((resolve) => server.close(() => resolve()));
  opts.print('stopped.');
}

const BINARY_NULL = 'binary/null';

/**
 * A decoded `binary/null` payload (what a void activity, signal or update returns) as JSON `null`:
 * the Web UI parses every decoded payload as JSON and fails on the empty data of `binary/null`
 * ("Could not parse payload: Unexpected end of JSON input"). Decoding is for people; the history keeps the original.
 */
function readableNull(p: Payload): Payload {
  const encoding = p.metadata?.encoding;
  if (!encoding || new TextDecoder().decode(encoding) !== BINARY_NULL) return p;
  return { ...p, metadata: { ...p.metadata, encoding: new TextEncoder().encode('json/plain') }, data: new TextEncoder().encode('null') };
}
