/** A failure's message with its cause's, which is where Temporal puts the interesting part. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) {
    const cause = (err as { cause?: unknown }).cause;
    return cause instanceof Error && cause.message ? `${err.message}: ${cause.message}` : err.message;
  }
  return String(err);
}

/** The type of a failure, looking through Temporal's wrappers (activity, child workflow) to the cause that has one. */
export function failureType(err: unknown): string {
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) {
    const type = (e as { type?: unknown }).type;
    if (typeof type === 'string' && type) return type;
    if (!(e as { cause?: unknown }).cause) return e.name;
  }
  return 'Error';
}
