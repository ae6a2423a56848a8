import { describeFailure } from '../log.ts';
import { and, eq, lt, sql } from 'drizzle-orm';
import { metricsRetentionDays } from '../../shared/nodes.ts';
import { toNumber, type DbOrTx } from '../db/open.ts';
import { nodeMetrics, nodes } from '../db/schema/index.ts';
import type { AppDeps } from '../deps.ts';
import { topics } from '../signals.ts';

/** Nodes whose last heartbeat is older than the TTL go offline; their next heartbeat brings them back. */
export async function markOfflineNodes(db: DbOrTx, at: Date, ttlSeconds: number): Promise<{ id: string; accountId: string }[]> {
  const cutoff = new Date(at.getTime() - ttlSeconds * 1000);
  return db
    .update(nodes)
    .set({ status: 'offline' })
    .where(and(eq(nodes.status, 'online'), lt(nodes.lastHeartbeatAt, cutoff)))
    .returning({ id: nodes.id, accountId: nodes.accountId });
}

/** Drops per-minute samples older than the retention. */
export async function pruneNodeMetrics(db: DbOrTx, at: Date): Promise<number> {
  const cutoff = new Date(at.getTime() - metricsRetentionDays * 86_400_000);
  const result = await db.execute(
    sql`with gone as (delete from ${nodeMetrics} where ${lt(nodeMetrics.at, cutoff)} returning 1) select count(*)::int as n from gone`,
  );
  const rows = (Array.isArray(result) ? result : (result as unknown as { rows: unknown[] }).rows) as { n: unknown }[];
  return toNumber(rows[0]?.n);
}

/**
 * The offline sweep as a coordinator runs it: heartbeats missed while the database (or this
 * coordinator) was away are no node's fault, so a node goes offline only for a TTL of silence
 * while both were there: nothing while the database is away, nor within a TTL of its return.
 */
export async function sweepOfflineNodes(
  deps: Pick<AppDeps, 'database' | 'availability' | 'config'>,
  now: Date,
): Promise<{ id: string; accountId: string }[]> {
  const ttlMs = deps.config.nodeTtlSeconds * 1000;
  if (!deps.availability.available || now.getTime() - deps.availability.upSince.getTime() < ttlMs) return [];
  return markOfflineNodes(deps.database.db, now, deps.config.nodeTtlSeconds);
}

const pruneEveryMs = 10 * 60_000;

/**
 * The nodes' periodic chores, on every coordinator (both are idempotent, so replicas need no
 * election): the offline sweep about twice per TTL, and metrics pruning every ten minutes.
 */
export function startNodeSweeper(deps: Pick<AppDeps, 'database' | 'availability' | 'clock' | 'log' | 'config' | 'signals'>): { stop(): Promise<void> } {
  const { db } = deps.database;
  const sweepEveryMs = Math.min(5_000, Math.max(250, (deps.config.nodeTtlSeconds * 1000) / 2));
  let lastPrune = 0;
  let running: Promise<void> | null = null;
  let stopped = false;

  const tick = async () => {
    const now = deps.clock.now();
    try {
      for (const node of await sweepOfflineNodes(deps, now)) {
        deps.log.info('node offline', { nodeId: node.id, accountId: node.accountId, ttlSeconds: deps.config.nodeTtlSeconds });
        // The scheduler stops planning on it now, not at its next full read.
        deps.signals.emit(topics.nodeChanged, node.id);
      }
      if (now.getTime() - lastPrune >= pruneEveryMs) {
        lastPrune = now.getTime();
        const pruned = await pruneNodeMetrics(db, now);
        if (pruned) deps.log.info('node metrics pruned', { rows: pruned });
      }
    } catch (err) {
      if (!stopped) deps.log.warn('node sweep failed', { error: describeFailure(err) });
    }
  };
  const timer = setInterval(() => {
    if (!running) running = tick().finally(() => (running = null));
  }, sweepEveryMs);
  timer.unref();
  return {
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
