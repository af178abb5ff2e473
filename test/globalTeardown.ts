/** Stops the embedded PostgreSQL that globalSetup started, if it started one. */
export default async function globalTeardown(): Promise<void> {
  await (globalThis as { __marePostgres?: { stop(): Promise<void> } }).__marePostgres?.stop();
}
