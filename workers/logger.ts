import pino, { type Logger } from 'pino';

/** The process logger. MARE_LOG_LEVEL sets the level (default info). */
export function createLogger(name = 'mare'): Logger {
  return pino({ name, level: process.env.MARE_LOG_LEVEL ?? 'info' });
}
