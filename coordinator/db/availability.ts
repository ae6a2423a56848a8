import { sql } from 'drizzle-orm';
import type { Clock } from '../clock.ts';
import type { Logger } from '../log.ts';
import type { Database } from './open.ts';

/** postgres.js's own codes for a connection it lost or could not make. */
const driverCodes = new Set(['CONNECTION_CLOSED', 'CONNECTION_DESTROYED', 'CONNECTION_ENDED', 'CONNECT_TIMEOUT']);
/** The socket's: nothing answers, or the connection broke. */
const socketCodes = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);
/** The server's: shutting down, crashed, starting up, or out of connections (SQLSTATE class 08 too). */
const serverStates = new Set(['57P01', '57P02', '57P03', '53300']);

/**
 * Whether an error says the database could not be reached or went away (a 503 and a retry), as
 * opposed to a query it refused. drizzle wraps the driver's error: the chain of causes is read.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  for (let e = err as { code?: unknown; cause?: unknown; errors?: unknown } | undefined, depth = 0; e && depth < 5; depth++) {
    const code = typeof e.code === 'string' ? e.code : '';
    if (driverCodes.has(code) || socketCodes.has(code) || serverStates.has(code) || code.startsWith('08')) return true;
    // Node gives an AggregateError when every address of a host refused.
    if (Array.isArray(e.errors) && e.errors.some((x) => isDatabaseUnavailable(x))) return true;
    e = e.cause as typeof e;
  }
  return false;
}

/** How often the coordinator asks the database whether it is there. */
const probeEveryMs = 1000;
/** A probe that takes longer than this counts as the database being away. */
const probeTimeoutMs = 3000;

/**
 * What this coordinator last saw of its database: whether it answers, and since when. The sweepers
 * judge missed heartbeats only over time the database was there (agents could not heartbeat while
 * it was away), and /readyz answers 503 while it is not. On PGlite the database is in-process:
 * always there.
 */
export class DatabaseAvailability {
  private upSinceMs: number;
  private downSinceMs: number | null = null;
  private timer: NodeJS.Timeout | null = null;
  private probing: Promise<void> | null = null;
  private stopped = false;

  constructor(
    private database: Database,
    private clock: Clock,
    private log: Logger,
  ) {
    this.upSinceMs = clock.now().getTime();
  }

  get available(): boolean {
    return this.downSinceMs === null;
  }

  /** When the database last came back (or this coordinator started): missed heartbeats count from here. */
  get upSince(): Date {
    return new Date(this.upSinceMs);
  }

  start(): void {
    if (this.database.driver !== 'postgres') return;
    const tick = () => {
      if (this.stopped) return;
      this.timer = setTimeout(() => {
        this.probing = this.probe().finally(() => {
          this.probing = null;
          tick();
        });
      }, probeEveryMs);
      this.timer.unref?.();
    };
    tick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.probing;
  }

  /** One look at the database (the loop runs it every second). */
  async probe(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.database.rows(sql`select 1`),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(Object.assign(new Error('the database did not answer in time'), { code: 'CONNECT_TIMEOUT' })), probeTimeoutMs);
        }),
      ]);
      this.sawUp();
    } catch (err) {
      this.sawDown(err);
    } finally {
      clearTimeout(timer);
    }
  }

  private sawUp() {
    if (this.downSinceMs === null) return;
    const now = this.clock.now().getTime();
    this.log.info('database back', { awayMs: now - this.downSinceMs });
    this.downSinceMs = null;
    this.upSinceMs = now;
  }

  private sawDown(err: unknown) {
    if (this.downSinceMs !== null || this.stopped) return;
    this.downSinceMs = this.clock.now().getTime();
    this.log.warn('database unavailable', { error: String((err as Error)?.message ?? err) });
  }
}
