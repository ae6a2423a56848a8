import type { Clock } from '../clock.ts';
import type { Config } from '../config.ts';
import type { DatabaseAvailability } from '../db/availability.ts';
import type { Database } from '../db/open.ts';
import type { Logger } from '../log.ts';
import { SchedulerLoop } from '../scheduler/loop.ts';
import { topics, type Signals } from '../signals.ts';
import { SigningKeys } from './keys.ts';
import { LeaseNotifier } from './notifier.ts';
import { LeaseService } from './service.ts';
import { LeaseSweeper } from './sweeper.ts';

export interface LeaseSide {
  leases: LeaseService;
  scheduler: SchedulerLoop;
  sweeper: LeaseSweeper;
  /** Starts the scheduler loop, the expiry sweeper and the long-poll wake-ups. */
  start(): Promise<void>;
  /** Stops them; waiting long-polls answer at once. */
  stop(): Promise<void>;
}

/** The scheduler and the lease side of one coordinator, as startCoordinator builds them. */
export async function createLeaseSide(opts: {
  database: Database;
  availability: DatabaseAvailability;
  clock: Clock;
  config: Config;
  log: Logger;
  signals: Signals;
}): Promise<LeaseSide> {
  const { database, availability, clock, config, log, signals } = opts;
  const keys = await SigningKeys.load({ db: database.db, clock, keyFile: config.signingKeyFile, leaseTtlSeconds: config.leaseTtlSeconds });
  const notifier = new LeaseNotifier(signals, database);
  const leases = new LeaseService(database, clock, keys, notifier, { issuer: config.name, leaseTtlSeconds: config.leaseTtlSeconds, billing: config.billing });
  const scheduler = new SchedulerLoop({
    database,
    clock,
    log,
    signals,
    leaseTtlSeconds: config.leaseTtlSeconds,
    batchSize: config.schedulerBatchSize,
    tickMs: config.schedulerTickMs,
    billing: config.billing,
    onLeased: (nodeIds) => notifier.leased(nodeIds),
  });
  const sweeper = new LeaseSweeper({
    database,
    clock,
    log,
    leaseTtlSeconds: config.leaseTtlSeconds,
    availability,
    // Expired leases free capacity on nodes the sweep does not name: read them all again.
    onFreed: () => signals.emit(topics.nodeChanged),
  });
  return {
    leases,
    scheduler,
    sweeper,
    async start() {
      await notifier.start();
      await scheduler.start();
      sweeper.start();
    },
    async stop() {
      await sweeper.stop();
      await scheduler.stop();
      await notifier.stop();
    },
  };
}
