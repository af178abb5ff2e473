import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import path from 'node:path';
import { keyringVars, newKey, readKeyringFile, readKeyringFromEnv, writeKeyringFile, type Keyring, type KeyringSpec } from './keyring';

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

/** The keys this process can decrypt role profiles with; new rows are encrypted under `activeKeyId`. */
export type RoleKeyring = Keyring;

/** One encrypted profile body as stored. */
export interface SealedBody {
  keyId: string;
  iv: Buffer;
  authTag: Buffer;
  ciphertext: Buffer;
}

/** Role keys: MARE_ROLE_KEYS / MARE_ROLE_ACTIVE_KEY, MARE_ROLE_KEY_FILE, or `<data dir>/role-keys.json`. */
export const ROLE_KEYS: KeyringSpec = {
  what: 'role',
  keysVar: 'MARE_ROLE_KEYS',
  activeVar: 'MARE_ROLE_ACTIVE_KEY',
  fileVar: 'MARE_ROLE_KEY_FILE',
  fileName: 'role-keys.json',
  error: RoleKeyError,
};

/** Reads a role key file; the active key must be among its keys. */
export function readKeyFile(file: string): RoleKeyring {
  return readKeyringFile(ROLE_KEYS, file);
}

/** Writes a key file readable by its owner only. */
export const writeKeyFile = writeKeyringFile;

export { newKey };

/** Where the local stack keeps its generated key file. */
export function defaultKeyFile(dataDir: string): string {
  return path.join(dataDir, ROLE_KEYS.fileName);
}

/**
 * The role keyring from the environment: `MARE_ROLE_KEYS` ("id:base64,id:base64"; the active one is
 * `MARE_ROLE_ACTIVE_KEY` or the last listed), else the file `MARE_ROLE_KEY_FILE`, else the default
 * key file in the data directory. With `generate`, a missing default file is created (local stack only).
 */
export function keyringFromEnv(opts: { env?: NodeJS.ProcessEnv; dataDir: string; generate?: boolean; onGenerated?: (file: string) => void }): RoleKeyring {
  return readKeyringFromEnv(ROLE_KEYS, opts)!;
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
  return keyringVars(ROLE_KEYS, keyring) as { MARE_ROLE_KEYS: string; MARE_ROLE_ACTIVE_KEY: string };
}
