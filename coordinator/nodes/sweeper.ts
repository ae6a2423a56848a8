import { describeFailure } from '../log.ts';
import { and, eq, lt, sql } from 'drizzle-orm';
import { metricsRetentionDays } from '../../shared/nodes.ts';
import { toNumber, type DbOrTx } from '../db/open.ts';
import { nodeMetrics, nodes } from '../db/schema/index.ts';
import type { AppDeps } from '../deps.ts';

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

const pruneEveryMs = 10 * 60_000;

/**
 * The nodes' periodic chores, on every coordinator (both are idempotent, so replicas need no
 * election): the offline sweep about twice per TTL, and metrics pruning every ten minutes.
 */
export function startNodeSweeper(deps: Pick<AppDeps, 'database' | 'clock' | 'log' | 'config'>): { stop(): Promise<void> } {
  const { db } = deps.database;
  const sweepEveryMs = Math.min(5_000, Math.max(250, (deps.config.nodeTtlSeconds * 1000) / 2));
  let lastPrune = 0;
  let running: Promise<void> | null = null;
  let stopped = false;

  const tick = async () => {
    const now = deps.clock.now();
    try {
      for (const node of await markOfflineNodes(db, now, deps.config.nodeTtlSeconds)) {
        deps.log.info('node offline', { nodeId: node.id, accountId: node.accountId, ttlSeconds: deps.config.nodeTtlSeconds });
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
