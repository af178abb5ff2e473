import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { Keyring } from './keyring';
import type { Redactor } from '../secrets';

/**
 * What MARE writes to PostgreSQL that holds model or tool content. Two kinds of column:
 *  - read back to function (transcripts fed to the model, blobs expanded into tool arguments, tool
 *    results replayed on a retry, snapshots an undo restores): sealed with AES-256-GCM under the
 *    active payload key, so they are readable through MARE with the key and by nobody else; with
 *    no payload keyring configured they are redacted instead (the secret is lost, never stored);
 *  - display only (goal, plan, results, outputs, evidence, reasons): redacted before they are written.
 * A sealed text is `mare-sealed:v1:<key id>:<base64 of iv | ciphertext | tag>`; in a jsonb column it
 * is stored as that JSON string.
 */

/** The prefix of a sealed column value. */
export const SEALED_PREFIX = 'mare-sealed:v1:';
// Binds a sealed value to MARE's at-rest format, so a sealed Temporal payload cannot be passed off as one.
const AAD = Buffer.from('mare-at-rest-v1', 'utf8');

/** A sealed value under a key this process does not hold. */
export class AtRestKeyError extends Error {
  override readonly name = 'AtRestKeyError';
}

/** A sealed value that fails authentication: changed in the database, or sealed with other key material. */
export class AtRestIntegrityError extends Error {
  override readonly name = 'AtRestIntegrityError';
}

/** Seals (or, without a keyring, redacts) content before it is stored, and opens it when MARE reads it back. */
export class AtRest {
  constructor(
    readonly redactor: Redactor,
    readonly keyring?: Keyring,
  ) {}

  /** Whether sealed columns are encrypted (true) or redacted (false: no payload keyring). */
  get encrypts(): boolean {
    return this.keyring !== undefined;
  }

  /** A text column MARE reads back: sealed under the active payload key, or redacted without one. */
  sealText(text: string): string {
    if (!this.keyring) return this.redactor.redact(text);
    const keyId = this.keyring.activeKeyId;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.keyring.keys.get(keyId)!, iv).setAAD(AAD);
    const sealed = Buffer.concat([iv, cipher.update(text, 'utf8'), cipher.final(), cipher.getAuthTag()]);
    return `${SEALED_PREFIX}${keyId}:${sealed.toString('base64')}`;
  }

  /** The text a sealText value stood for; values written before sealing was switched on come back as they are. */
  openText(stored: string): string {
    if (!stored.startsWith(SEALED_PREFIX)) return stored;
    const rest = stored.slice(SEALED_PREFIX.length);
    const colon = rest.indexOf(':');
    const keyId = rest.slice(0, colon);
    const key = colon > 0 ? this.keyring?.keys.get(keyId) : undefined;
    if (!key) throw new AtRestKeyError(`a stored value is sealed under payload key "${keyId}", which this process does not hold (${this.keyring?.origin ?? 'no payload keyring configured'})`);
    const data = Buffer.from(rest.slice(colon + 1), 'base64');
    if (data.length < 28) throw new AtRestIntegrityError('a sealed value is too short to hold an IV and a tag');
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, 12)).setAAD(AAD).setAuthTag(data.subarray(data.length - 16));
      return Buffer.concat([decipher.update(data.subarray(12, data.length - 16)), decipher.final()]).toString('utf8');
    } catch {
      throw new AtRestIntegrityError(`a value sealed under payload key "${keyId}" failed AES-GCM authentication`);
    }
  }

  /** A jsonb parameter for a column MARE reads back: the sealed JSON as a JSON string, or the redacted JSON. */
  sealJson(value: unknown): string {
    return this.keyring ? JSON.stringify(this.sealText(JSON.stringify(value))) : JSON.stringify(this.redactor.redactDeep(value));
  }

  /** The value a sealJson column held (as node-postgres parsed it); unsealed values come back as they are. */
  openJson<T>(stored: unknown): T {
    return (typeof stored === 'string' && stored.startsWith(SEALED_PREFIX) ? JSON.parse(this.openText(stored)) : stored) as T;
  }

  /** A nullable text column MARE reads back. */
  sealNullable(text: string | null): string | null {
    return text === null ? null : this.sealText(text);
  }

  /** The text of a nullable sealed column. */
  openNullable(stored: string | null): string | null {
    return stored === null ? null : this.openText(stored);
  }
}

/** The at-rest sealer of a set of activity dependencies (redaction only when none was wired in). */
export function atRestOf(deps: { atRest?: AtRest; redactor: Redactor }): AtRest {
  return deps.atRest ?? new AtRest(deps.redactor);
}
