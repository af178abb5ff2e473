/** Providers allow only [a-zA-Z0-9_-] in function names, so `server.tool` travels as `server__tool`. */
export function toProviderToolName(name: string): string {
  return name.replace('.', '__');
}

/** The inverse of toProviderToolName. */
export function fromProviderToolName(name: string): string {
  return name.includes('__') ? name.replace('__', '.') : name;
}
