import { lt, sql } from 'drizzle-orm';
import { parseDurationSeconds, type Pool, type PoolHistory, type PoolHistoryPoint } from '../../shared/pool.ts';
import type { Clock } from '../clock.ts';
import { lockKeys } from '../db/migrate.ts';
import type { Database } from '../db/open.ts';
import { poolHistory } from '../db/schema/index.ts';
import { describeFailure, type Logger } from '../log.ts';
import { ApiError } from '../errors.ts';
import type { PoolStats } from './stats.ts';

/** The most points one history answer carries; a longer span gets a coarser step. */
export const maxHistoryPoints = 1440;

/** A pool snapshot as one point of the history. */
export function toHistorySample(pool: Pool): Omit<PoolHistoryPoint, 'at'> {
  const gpus = {
    online: pool.gpus.online + pool.migDevices.online,
    free: pool.gpus.free + pool.migDevices.free,
    busy: pool.gpus.busy + pool.migDevices.busy,
    draining: pool.gpus.draining + pool.migDevices.draining,
    offline: pool.gpus.offline + pool.migDevices.offline,
  };
  let utilSum = 0;
  let utilCount = 0;
  for (const m of pool.models) {
    if (m.avgUtilizationPct === null) continue;
    utilSum += m.avgUtilizationPct * m.online;
    utilCount += m.online;
  }
  return {
    gpus,
    allocationPct: gpus.online ? Math.round((gpus.busy / gpus.online) * 1000) / 10 : null,
    avgUtilizationPct: utilCount ? Math.round((utilSum / utilCount) * 10) / 10 : null,
    queueDepth: pool.queue.depth,
    oldestWaitSeconds: pool.queue.oldestWaitSeconds,
    models: pool.models.map((m) => ({ model: m.model, kind: m.kind, online: m.online, free: m.free, busy: m.busy })),
  };
}

export interface HistoryOptions {
  stepSeconds: number;
  retentionSeconds: number;
}

/**
 * Keeps the pool's counts at a fixed step: each tick computes a snapshot and, holding the
 * pool-history advisory lock for its transaction, writes the row for the step it falls in
 * (once: the step's start is the key) and prunes rows past retention.
 */
export class PoolHistoryWriter {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;

  constructor(
    private database: Database,
    private clock: Clock,
    private stats: PoolStats,
    private opts: HistoryOptions,
    private log: Logger,
  ) {}

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.running?.catch(() => {});
  }

  private schedule(delayMs: number) {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.tick()
        .then(() => {})
        .catch((err) => this.log.warn('pool history tick failed', { error: describeFailure(err) }))
        .finally(() => {
          this.running = null;
          const stepMs = this.opts.stepSeconds * 1000;
          // The next step's start, plus a little so the clock is surely past it.
          this.schedule(stepMs - (Date.now() % stepMs) + 50);
        });
    }, delayMs);
    this.timer.unref();
  }

  /** Writes this step's row (if no one has yet) and prunes old ones; returns whether it wrote. */
  async tick(): Promise<boolean> {
    const now = this.clock.now();
    const stepMs = this.opts.stepSeconds * 1000;
    const at = new Date(Math.floor(now.getTime() / stepMs) * stepMs);
    const sample = toHistorySample(await this.stats.compute());
    const cutoff = new Date(now.getTime() - this.opts.retentionSeconds * 1000);
    return this.database.db.transaction(async (tx) => {
      // One writer at a time on PostgreSQL: whoever does not get the lock leaves it to the holder.
      const result = (await tx.execute(sql`select pg_try_advisory_xact_lock(${lockKeys.poolHistory}) as ok`)) as unknown;
      const rows = (Array.isArray(result) ? result : (result as { rows: unknown[] }).rows) as { ok: boolean }[];
      if (!rows[0]?.ok) return false;
      const inserted = await tx.insert(poolHistory).values({ at, sample }).onConflictDoNothing().returning({ at: poolHistory.at });
      await tx.delete(poolHistory).where(lt(poolHistory.at, cutoff));
      return inserted.length > 0;
    });
  }
}

function sinceOf(raw: string | undefined, now: Date): Date {
  if (!raw) return new Date(now.getTime() - 3_600_000);
  const back = parseDurationSeconds(raw);
  return back !== null ? new Date(now.getTime() - back * 1000) : new Date(raw);
}

/** The history since a time, one point per step (the last sample in each step), oldest first. */
export async function readHistory(
  database: Database,
  now: Date,
  baseStepSeconds: number,
  query: { since?: string | undefined; step?: string | undefined },
): Promise<PoolHistory> {
  const since = sinceOf(query.since, now);
  if (since.getTime() > now.getTime()) throw new ApiError('validation', 'since is in the future', [{ path: 'since', message: 'in the future' }]);
  const asked = query.step ? (/^\d+$/.test(query.step) ? Number(query.step) : parseDurationSeconds(query.step)!) : baseStepSeconds;
  const span = (now.getTime() - since.getTime()) / 1000;
  // A whole number of base steps, and few enough points to draw.
  let step = Math.max(baseStepSeconds, Math.ceil(asked / baseStepSeconds) * baseStepSeconds);
  while (span / step > maxHistoryPoints) step *= 2;
  // The bucket expression is written twice and must read the same (DISTINCT ON = ORDER BY): an integer literal.
  const bucket = sql.raw(`floor(extract(epoch from at) / ${Math.trunc(step)})`);
  const rows = await database.rows<{ at: unknown; sample: unknown }>(sql`
    select distinct on (${bucket}) at, sample
    from pool_history where at >= ${since.toISOString()}::timestamptz
    order by ${bucket}, at desc`);
  const points = rows
    .map((r) => {
      const sample = (typeof r.sample === 'string' ? JSON.parse(r.sample) : r.sample) as Omit<PoolHistoryPoint, 'at'>;
      const at = r.at instanceof Date ? r.at : new Date(String(r.at));
      return { ...sample, at: at.toISOString() };
    })
    .sort((a, b) => a.at.localeCompare(b.at));
  return { since: since.toISOString(), until: now.toISOString(), step, points };
}

