import { and, asc, inArray, lt } from 'drizzle-orm';
import type { Clock } from '../clock.ts';
import type { Database } from '../db/open.ts';
import { jobs } from '../db/schema/index.ts';
import { expireLease, liveStatuses } from '../jobs/transitions.ts';
import { describeFailure, type Logger } from '../log.ts';

export interface SweeperOptions {
  database: Database;
  clock: Clock;
  log: Logger;
  leaseTtlSeconds: number;
  /** Capacity was freed: the scheduler should look again. */
  onFreed: () => void;
  intervalMs?: number;
}

/**
 * Takes back leases past their expiry: the job goes back to the queue (or fails when its
 * placements are used, or ends cancelled when its owner asked), and the node's capacity is freed,
 * one transaction per job. After the coordinator starts it waits one lease TTL before expiring
 * anything, so that agents that kept running through an outage can reconnect and renew first.
 */
export class LeaseSweeper {
  private readonly startedAt: number;
  private timer: NodeJS.Timeout | null = null;
  private sweeping: Promise<number> | null = null;
  private stopped = false;

  constructor(private opts: SweeperOptions) {
    this.startedAt = opts.clock.now().getTime();
  }

  start(): void {
    const every = this.opts.intervalMs ?? Math.min(5000, Math.max(200, (this.opts.leaseTtlSeconds * 1000) / 4));
    const tick = () => {
      if (this.stopped) return;
      this.timer = setTimeout(async () => {
        await this.sweep().catch((err) => this.opts.log.error('lease sweep failed', { error: describeFailure(err) }));
        tick();
      }, every);
      this.timer.unref?.();
    };
    tick();
  }

  /** When the grace after start ends: nothing expires before then. */
  get graceEndsAt(): Date {
    return new Date(this.startedAt + this.opts.leaseTtlSeconds * 1000);
  }

  /** One sweep: returns how many leases it took back. */
  sweep(): Promise<number> {
    this.sweeping ??= this.sweepNow().finally(() => {
      this.sweeping = null;
    });
    return this.sweeping;
  }

  private async sweepNow(): Promise<number> {
    const now = this.opts.clock.now();
    if (now.getTime() < this.graceEndsAt.getTime()) return 0;
    const { db } = this.opts.database;
    let total = 0;
    for (;;) {
      const due = await db
        .select({ id: jobs.id })
        .from(jobs)
        .where(and(inArray(jobs.status, [...liveStatuses]), lt(jobs.leaseExpiresAt, now)))
        .orderBy(asc(jobs.leaseExpiresAt))
        .limit(200);
      let n = 0;
      for (const { id } of due) {
        if (this.stopped) return total;
        const ended = await db.transaction((tx) => expireLease(tx, id, now));
        if (ended) {
          n++;
          this.opts.log.info('lease expired', { jobId: id, status: ended.status });
        }
      }
      total += n;
      if (due.length < 200 || n === 0) break;
    }
    if (total) this.opts.onFreed();
    return total;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.sweeping?.catch(() => {});
  }
}
