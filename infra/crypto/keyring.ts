import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';

/**
 * AES-256 keyrings from the environment, shared by role encryption (activities/roles/crypto.ts) and
 * payload encryption (workers/payloadCodec.ts): several keys by id so old data stays readable after
 * a rotation, one active key for new data.
 */

/** The keys this process can decrypt with; new data is encrypted under `activeKeyId`. */
export interface Keyring {
  activeKeyId: string;
  keys: ReadonlyMap<string, Buffer>;
  /** Where the keys came from, for messages (never the keys themselves). */
  origin: string;
}

/** Which variables and default file one kind of keyring uses, and the error type it throws. */
export interface KeyringSpec {
  /** What the keys protect, for messages: "role", "payload". */
  what: string;
  keysVar: string;
  activeVar: string;
  fileVar: string;
  /** The local stack's generated key file, inside the data directory. */
  fileName: string;
  error: new (message: string) => Error;
}

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

function keyFromBase64(spec: KeyringSpec, id: string, b64: string, origin: string): Buffer {
  if (!KEY_ID.test(id)) throw new spec.error(`${origin}: key id "${id}" must be 1-64 letters, digits, dots, dashes or underscores`);
  const key = Buffer.from(b64, 'base64');
  if (key.length !== 32) throw new spec.error(`${origin}: key "${id}" must be 32 bytes, base64-encoded (got ${key.length} bytes)`);
  return key;
}

/** The key file: `{ "active": "<id>", "keys": { "<id>": "<base64 of 32 bytes>" } }`. */
const KeyFile = z.strictObject({ active: z.string(), keys: z.record(z.string(), z.string()) });

/** Reads a key file; the active key must be among its keys. */
export function readKeyringFile(spec: KeyringSpec, file: string): Keyring {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new spec.error(`cannot read ${spec.what} key file ${file}: ${(err as Error).message}`);
  }
  const parsed = KeyFile.safeParse(raw);
  if (!parsed.success) throw new spec.error(`${spec.what} key file ${file} must look like {"active": "<id>", "keys": {"<id>": "<base64>"}}`);
  const keys = new Map(Object.entries(parsed.data.keys).map(([id, b64]) => [id, keyFromBase64(spec, id, b64, file)]));
  if (!keys.has(parsed.data.active)) throw new spec.error(`${spec.what} key file ${file}: active key "${parsed.data.active}" is not among its keys`);
  return { activeKeyId: parsed.data.active, keys, origin: `key file ${file}` };
}

/** Writes a key file readable by its owner only. */
export function writeKeyringFile(file: string, keyring: Keyring): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const body = { active: keyring.activeKeyId, keys: Object.fromEntries([...keyring.keys].map(([id, k]) => [id, k.toString('base64')])) };
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(body, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

/** A new random key with an id that says when it was made. */
export function newKey(now = new Date()): { id: string; key: Buffer } {
  const stamp = now.toISOString().replace(/[-:]/g, '').slice(0, 15);
  return { id: `k${stamp}-${randomBytes(3).toString('hex')}`, key: randomBytes(32) };
}

/**
 * The keyring from the environment: `<keysVar>` ("id:base64,id:base64"; the active one is
 * `<activeVar>` or the last listed), else the file `<fileVar>`, else the default key file in the
 * data directory. With `generate`, a missing default file is created (local stack only); without
 * it, no key at all is `undefined` when `optional`, else an error.
 */
export function readKeyringFromEnv(
  spec: KeyringSpec,
  opts: { env?: NodeJS.ProcessEnv; dataDir: string; generate?: boolean; onGenerated?: (file: string) => void; optional?: boolean },
): Keyring | undefined {
  const env = opts.env ?? process.env;
  const list = env[spec.keysVar]?.trim();
  if (list) {
    const keys = new Map<string, Buffer>();
    for (const entry of list.split(',').map((s) => s.trim()).filter(Boolean)) {
      const sep = entry.indexOf(':');
      if (sep < 1) throw new spec.error(`${spec.keysVar} must look like "id:base64key,id2:base64key"`);
      keys.set(entry.slice(0, sep), keyFromBase64(spec, entry.slice(0, sep), entry.slice(sep + 1), spec.keysVar));
    }
    const activeKeyId = env[spec.activeVar]?.trim() || [...keys.keys()].at(-1)!;
    if (!keys.has(activeKeyId)) throw new spec.error(`${spec.activeVar} "${activeKeyId}" is not among ${spec.keysVar}`);
    return { activeKeyId, keys, origin: spec.keysVar };
  }
  const fromVar = env[spec.fileVar]?.trim();
  if (fromVar) return readKeyringFile(spec, fromVar);
  const file = path.join(opts.dataDir, spec.fileName);
  if (fs.existsSync(file)) return readKeyringFile(spec, file);
  if (!opts.generate) {
    if (opts.optional) return undefined;
    throw new spec.error(`no ${spec.what} encryption key: set ${spec.keysVar} or ${spec.fileVar} (or run \`mare dev\` once, which generates ${file})`);
  }
  const { id, key } = newKey();
  const keyring = { activeKeyId: id, keys: new Map([[id, key]]), origin: `key file ${file}` };
  writeKeyringFile(file, keyring);
  opts.onGenerated?.(file);
  return keyring;
}

/** The keyring as `<keysVar>` / `<activeVar>`, for handing it to another process. */
export function keyringVars(spec: KeyringSpec, keyring: Keyring): Record<string, string> {
  return {
    [spec.keysVar]: [...keyring.keys].map(([id, key]) => `${id}:${key.toString('base64')}`).join(','),
    [spec.activeVar]: keyring.activeKeyId,
  };
}
