import type { Pool, PoolClient } from 'pg';
import type { Logger } from 'pino';

/**
 * A PostgreSQL LISTEN on one channel for a worker's cache (roles, policies): `onChange` gets each
 * notification's payload, and `undefined` ("anything may have changed") after connecting and when
 * the connection is lost, since notifications may have been missed; a lost connection is released
 * once and reopened a second later.
 */
export class ChangeListener {
  private client?: PoolClient;
  private readonly released = new WeakSet<PoolClient>();
  private reconnect?: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly opts: { pool: Pool; channel: string; what: string; logger?: Logger },
    private readonly onChange: (payload: string | undefined) => void,
  ) {}

  /** Starts (or, after a loss, restarts) listening. */
  async start(): Promise<void> {
    if (this.closed || this.client) return;
    let lose: (err: Error) => void = (err) => this.lost(undefined, err);
    try {
      const client = await this.opts.pool.connect();
      lose = (err) => this.lost(client, err);
      client.on('notification', (msg) => this.onChange(msg.payload));
      client.on('error', lose);
      await client.query(`LISTEN ${this.opts.channel}`);
      this.client = client;
      this.onChange(undefined); // changes made while not listening went unnoticed
    } catch (err) {
      lose(err as Error);
    }
  }

  /** Stops listening for good. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnect);
    const client = this.client;
    this.client = undefined;
    if (client) {
      await client.query(`UNLISTEN ${this.opts.channel}`).catch(() => undefined);
      this.releaseOnce(client);
    }
  }

  /** A broken connection can report several errors after its LISTEN failed or it was closed: release it once. */
  private releaseOnce(client: PoolClient, err?: Error): void {
    if (this.released.has(client)) return;
    this.released.add(client);
    client.release(err);
  }

  private lost(client: PoolClient | undefined, err: Error): void {
    if (client === this.client) this.client = undefined;
    if (client) this.releaseOnce(client, err);
    this.onChange(undefined);
    if (this.closed) return;
    this.opts.logger?.warn({ err }, `${this.opts.what} change listener lost; reconnecting`);
    this.reconnect = setTimeout(() => void this.start(), 1_000);
    this.reconnect.unref();
  }
}
