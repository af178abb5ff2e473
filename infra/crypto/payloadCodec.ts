import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { METADATA_ENCODING_KEY, type DataConverter, type Payload, type PayloadCodec } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { readKeyringFromEnv, type Keyring, type KeyringSpec } from './keyring';

/**
 * Encryption of every payload MARE hands to Temporal (workflow inputs and results, activity
 * arguments and results, signals, updates, memo-free failures' messages and stack traces): the
 * original payload, serialized as a Temporal `Payload` protobuf, is sealed with AES-256-GCM under
 * the active payload key. The key id travels in the payload's metadata, so a rotated-out key that
 * is still in the keyring keeps decoding old histories.
 */

/** The encoding of a payload this codec sealed. */
export const ENCRYPTED_ENCODING = 'binary/encrypted';
/** The metadata entry naming the key a payload was sealed under. */
export const KEY_ID_METADATA = 'encryption-key-id';
/** The metadata entry naming the cipher, so another implementation can tell what it has. */
const CIPHER_METADATA = 'encryption-cipher';
const CIPHER = 'AES-256-GCM';

/** No usable payload key: malformed key material, or a payload sealed under a key this process lacks. */
export class PayloadKeyError extends Error {
  override readonly name = 'PayloadKeyError';
}

/** A sealed payload that fails authentication: tampered with, or sealed under different key material. */
export class PayloadIntegrityError extends Error {
  override readonly name = 'PayloadIntegrityError';
}

/** Payload keys: MARE_PAYLOAD_KEYS / MARE_PAYLOAD_ACTIVE_KEY, MARE_PAYLOAD_KEY_FILE, or `<data dir>/payload-keys.json`. */
export const PAYLOAD_KEYS: KeyringSpec = {
  what: 'payload',
  keysVar: 'MARE_PAYLOAD_KEYS',
  activeVar: 'MARE_PAYLOAD_ACTIVE_KEY',
  fileVar: 'MARE_PAYLOAD_KEY_FILE',
  fileName: 'payload-keys.json',
  error: PayloadKeyError,
};

const utf8 = (s: string): Uint8Array => Buffer.from(s, 'utf8');
const text = (b: Uint8Array | null | undefined): string => (b ? Buffer.from(b).toString('utf8') : '');

/** The AES-256-GCM payload codec: 12-byte random IV, ciphertext, 16-byte tag in `data`. */
export class EncryptionCodec implements PayloadCodec {
  constructor(readonly keyring: Keyring) {}

  encode(payloads: Payload[]): Promise<Payload[]> {
    return Promise.resolve(payloads.map((p) => this.seal(p)));
  }

  decode(payloads: Payload[]): Promise<Payload[]> {
    // A thrown PayloadKeyError or PayloadIntegrityError becomes the rejection.
    return Promise.resolve().then(() => payloads.map((p) => this.open(p)));
  }

  private seal(payload: Payload): Payload {
    const keyId = this.keyring.activeKeyId;
    const key = this.keyring.keys.get(keyId)!;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', key, iv);
    const plain = temporal.api.common.v1.Payload.encode(payload).finish();
    const sealed = Buffer.concat([iv, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    return {
      metadata: { [METADATA_ENCODING_KEY]: utf8(ENCRYPTED_ENCODING), [KEY_ID_METADATA]: utf8(keyId), [CIPHER_METADATA]: utf8(CIPHER) },
      data: sealed,
    };
  }

  private open(payload: Payload): Payload {
    // Payloads written before encryption was switched on stay readable as they are.
    if (text(payload.metadata?.[METADATA_ENCODING_KEY]) !== ENCRYPTED_ENCODING) return payload;
    const keyId = text(payload.metadata?.[KEY_ID_METADATA]);
    const key = this.keyring.keys.get(keyId);
    if (!key) throw new PayloadKeyError(`a payload is encrypted under key "${keyId}", which is not in this process's payload keyring (${this.keyring.origin})`);
    const data = Buffer.from(payload.data ?? new Uint8Array());
    if (data.length < 28) throw new PayloadIntegrityError('an encrypted payload is too short to hold an IV and a tag');
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, 12)).setAuthTag(data.subarray(data.length - 16));
      const plain = Buffer.concat([decipher.update(data.subarray(12, data.length - 16)), decipher.final()]);
      return temporal.api.common.v1.Payload.decode(plain);
    } catch {
      throw new PayloadIntegrityError(`an encrypted payload under key "${keyId}" failed AES-GCM authentication: it was changed, or sealed with other key material`);
    }
  }
}

/**
 * The payload keyring from the environment, or undefined when none is configured (encryption off).
 * `MARE_PAYLOAD_KEYS=none` switches encryption off even where the local stack's key file exists.
 */
export function payloadKeyringFromEnv(opts: { env?: NodeJS.ProcessEnv; dataDir: string; generate?: boolean; onGenerated?: (file: string) => void }): Keyring | undefined {
  if ((opts.env ?? process.env).MARE_PAYLOAD_KEYS?.trim() === 'none') return undefined;
  return readKeyringFromEnv(PAYLOAD_KEYS, { ...opts, optional: true });
}

/**
 * The data converter of every MARE worker and client. Failures always carry their message and
 * stack trace in encoded attributes (workers/failureConverter.ts, which is also in every workflow
 * bundle); with a keyring those attributes and all payloads are encrypted.
 */
export function mareDataConverter(keyring: Keyring | undefined): DataConverter {
  return {
    failureConverterPath: FAILURE_CONVERTER_PATH,
    ...(keyring ? { payloadCodecs: [new EncryptionCodec(keyring)] } : {}),
  };
}

/** The module exporting MARE's failure converter, for the worker and the workflow bundler. */
export const FAILURE_CONVERTER_PATH = require.resolve('./failureConverter');
