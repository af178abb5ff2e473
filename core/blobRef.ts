/**
 * How a long tool-call argument travels through workflow history: the digest of its content, which
 * is stored in PostgreSQL. Only the model-call activity creates references, from what the model
 * wrote in that call (a `$blob` the model writes itself is turned into plain text there), so a
 * reference can only ever expand to the call's own argument. Zod-free: workflow code uses it.
 */
export interface BlobRef {
  /** sha256 (hex) of the content in the `blobs` table. */
  $blob: string;
  /** Length of the content in characters. */
  size: number;
  /** The argument was not a string: the content is its JSON text. */
  json?: true;
}

const DIGEST = /^[0-9a-f]{64}$/;

/** Whether a value has the shape of a blob reference. */
export function isBlobRef(value: unknown): value is BlobRef {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return false;
  const v = value as Record<string, unknown>;
  return typeof v.$blob === 'string' && DIGEST.test(v.$blob) && typeof v.size === 'number';
}

/** Whether any argument of a call is a blob reference (its checks then need the full text, in an activity). */
export function hasBlobRefs(args: Record<string, unknown>): boolean {
  return Object.values(args).some(isBlobRef);
}

/** Whether a value merely looks like a reference (an object with a `$blob` key): a model wrote it, so it is text. */
export function looksLikeBlobRef(value: unknown): boolean {
  return !!value && typeof value === 'object' && !Array.isArray(value) && Object.hasOwn(value, '$blob');
}
