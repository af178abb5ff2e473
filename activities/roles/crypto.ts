import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';

/**
 * Encryption at rest of role profiles: AES-256-GCM, a fresh 12-byte IV per row, the key id stored
 * with the row, and the role's name@version as additional authenticated data (a body moved to
 * another row fails authentication).
 */

/** No usable key: none configured, or key material that is not 32 bytes of base64. */
export class RoleKeyError extends Error {
  override readonly name = 'RoleKeyError';
}

/** A stored profile that fails authentication (tampered, or encrypted under different key material). */
export class RoleIntegrityError extends Error {
  override readonly name = 'RoleIntegrityError';
  constructor(readonly role: string, detail: string) {
    super(`role ${role} failed its integrity check (${detail}); it will not be used`);
  }
}

/** A stored profile encrypted under a key id this process does not have. */
export class UnknownRoleKeyError extends Error {
  override readonly name = 'UnknownRoleKeyError';
  constructor(readonly role: string, readonly keyId: string) {
    super(`role ${role} is encrypted under key "${keyId}", which is not in this process's keyring (MARE_ROLE_KEYS or the key file)`);
  }
}

/** The keys this process can decrypt with; new rows are encrypted under `activeKeyId`. */
export interface RoleKeyring {
  activeKeyId: string;
  keys: ReadonlyMap<string, Buffer>;
  /** Where the keys came from, for messages (never the keys themselves). */
  origin: string;
}

/** One encrypted profile body as stored. */
export interface SealedBody {
  keyId: string;
  iv: Buffer;
  authTag: Buffer;
  ciphertext: Buffer;
}

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

function keyFromBase64(id: string, b64: string, origin: string): Buffer {
  if (!KEY_ID.test(id)) throw new RoleKeyError(`${origin}: key id "${id}" must be 1-64 letters, digits, dots, dashes or underscores`);
  const key = Buffer.from(b64, 'base64');
  if (key.length !== 32) throw new RoleKeyError(`${origin}: key "${id}" must be 32 bytes, base64-encoded (got ${key.length} bytes)`);
  return key;
}

/** The key file: `{ "active": "<id>", "keys": { "<id>": "<base64 of 32 bytes>" } }`. */
const KeyFile = z.strictObject({ active: z.string(), keys: z.record(z.string(), z.string()) });

/** Reads a key file; the active key must be among its keys. */
export function readKeyFile(file: string): RoleKeyring {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new RoleKeyError(`cannot read role key file ${file}: ${(err as Error).message}`);
  }
  const parsed = KeyFile.safeParse(raw);
  if (!parsed.success) throw new RoleKeyError(`role key file ${file} must look like {"active": "<id>", "keys": {"<id>": "<base64>"}}`);
  const keys = new Map(Object.entries(parsed.data.keys).map(([id, b64]) => [id, keyFromBase64(id, b64, file)]));
  if (!keys.has(parsed.data.active)) throw new RoleKeyError(`role key file ${file}: active key "${parsed.data.active}" is not among its keys`);
  return { activeKeyId: parsed.data.active, keys, origin: `key file ${file}` };
}

/** Writes a key file readable by its owner only. */
export function writeKeyFile(file: string, keyring: RoleKeyring): void {
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

/** Where the local stack keeps its generated key file. */
export function defaultKeyFile(dataDir: string): string {
  return path.join(dataDir, 'role-keys.json');
}

/**
 * The keyring from the environment: `MARE_ROLE_KEYS` ("id:base64,id:base64"; the active one is
 * `MARE_ROLE_ACTIVE_KEY` or the last listed), else the file `MARE_ROLE_KEY_FILE`, else the default
 * key file in the data directory. With `generate`, a missing default file is created (local stack only).
 */
export function keyringFromEnv(opts: {
  env?: NodeJS.ProcessEnv;
  dataDir: string;
  generate?: boolean;
  onGenerated?: (file: string) => void;
}): RoleKeyring {
  const env = opts.env ?? process.env;
  const list = env.MARE_ROLE_KEYS?.trim();
  if (list) {
    const keys = new Map<string, Buffer>();
    for (const entry of list.split(',').map((s) => s.trim()).filter(Boolean)) {
      const sep = entry.indexOf(':');
      if (sep < 1) throw new RoleKeyError('MARE_ROLE_KEYS must look like "id:base64key,id2:base64key"');
      keys.set(entry.slice(0, sep), keyFromBase64(entry.slice(0, sep), entry.slice(sep + 1), 'MARE_ROLE_KEYS'));
    }
    const activeKeyId = env.MARE_ROLE_ACTIVE_KEY?.trim() || [...keys.keys()].at(-1)!;
    if (!keys.has(activeKeyId)) throw new RoleKeyError(`MARE_ROLE_ACTIVE_KEY "${activeKeyId}" is not among MARE_ROLE_KEYS`);
    return { activeKeyId, keys, origin: 'MARE_ROLE_KEYS' };
  }
  if (env.MARE_ROLE_KEY_FILE?.trim()) return readKeyFile(env.MARE_ROLE_KEY_FILE.trim());
  const file = defaultKeyFile(opts.dataDir);
  if (fs.existsSync(file)) return readKeyFile(file);
  if (!opts.generate) {
    throw new RoleKeyError(
      `no role encryption key: set MARE_ROLE_KEYS or MARE_ROLE_KEY_FILE (or run \`mare dev\` once, which generates ${file})`,
    );
  }
  const { id, key } = newKey();
  const keyring = { activeKeyId: id, keys: new Map([[id, key]]), origin: `key file ${file}` };
  writeKeyFile(file, keyring);
  opts.onGenerated?.(file);
  return keyring;
}

function aad(role: string): Buffer {
  return Buffer.from(`mare-role:${role}`, 'utf8');
}

/** Encrypts a profile body under the active key; `role` is its name@version. */
export function seal(keyring: RoleKeyring, role: string, plaintext: Buffer): SealedBody {
  const key = keyring.keys.get(keyring.activeKeyId)!;
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv).setAAD(aad(role));
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return { keyId: keyring.activeKeyId, iv, authTag: cipher.getAuthTag(), ciphertext };
}

/** Decrypts and authenticates a body; throws UnknownRoleKeyError or RoleIntegrityError. */
export function open(keyring: RoleKeyring, role: string, body: SealedBody): Buffer {
  const key = keyring.keys.get(body.keyId);
  if (!key) throw new UnknownRoleKeyError(role, body.keyId);
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, body.iv).setAAD(aad(role)).setAuthTag(body.authTag);
    return Buffer.concat([decipher.update(body.ciphertext), decipher.final()]);
  } catch {
    throw new RoleIntegrityError(role, 'AES-GCM authentication failed: the ciphertext, its IV or tag were changed');
  }
}

/** The keyring as MARE_ROLE_KEYS / MARE_ROLE_ACTIVE_KEY, for handing it to another process. */
export function keyringEnv(keyring: RoleKeyring): { MARE_ROLE_KEYS: string; MARE_ROLE_ACTIVE_KEY: string } {
  return {
    MARE_ROLE_KEYS: [...keyring.keys].map(([id, key]) => `${id}:${key.toString('base64')}`).join(','),
    MARE_ROLE_ACTIVE_KEY: keyring.activeKeyId,
  };
}
