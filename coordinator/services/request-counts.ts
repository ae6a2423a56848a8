import { eq, sql } from 'drizzle-orm';
import type { Database } from '../db/open.ts';
import { jobServices } from '../db/schema/index.ts';
import type { Logger } from '../log.ts';

/** How often this replica adds its counts to job_services.requests. */
const flushEveryMs = 5_000;

/**
 * Requests each service job answered through this replica, added to the job's row every few
 * seconds (all replicas together make its total; the dashboard's request rate is read from it).
 * Only the replica that sends a request to the job counts it, so a forwarded one counts once.
 */
export class RequestCounts {
  private pending = new Map<string, number>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private database: Database,
    private log: Logger,
  ) {}

  count(jobId: string): void {
    this.pending.set(jobId, (this.pending.get(jobId) ?? 0) + 1);
  }

  start(): void {
    this.timer ??= setInterval(() => void this.flush(), flushEveryMs).unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.flush();
  }

  async flush(): Promise<void> {
    const counts = [...this.pending];
    this.pending.clear();
    for (const [jobId, n] of counts) {
      try {
        await this.database.db
          .update(jobServices)
          .set({ requests: sql`${jobServices.requests} + ${n}` })
          .where(eq(jobServices.jobId, jobId));
      } catch (err) {
        // Kept for the next flush: a database outage delays the figure, it does not lose it.
        this.pending.set(jobId, (this.pending.get(jobId) ?? 0) + n);
        this.log.warn('service request counts not stored yet', { jobId, error: (err as Error).message });
        return;
      }
    }
  }
}
